"""Test-wide safety: nothing may reach the network. huggingface_hub reads HF_HUB_OFFLINE when it is
first imported, which happens after this file runs.

`returns_within`: runs a call that must not block (a FIFO handed to a loader, a silent server) in a
thread, and fails instead of hanging the suite.

Browser fixtures for the viewer tests (tests/web/ and the opt-in tests/comfyui/): headless Chromium
(Debian's `chromium`, driven by Playwright's Python client). Without a browser they skip, unless
DIFFRACT_REQUIRE_BROWSER=1 (as `.ci/run` sets): then a missing browser fails them. Screenshots go to
test-artifacts/web/ (or $DIFFRACT_ARTIFACTS/web/).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


OUR_URLS = ("/extensions/", "/diffract/", "file://")


def _returns_within(seconds: float, call: Callable[[], Any]) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:  # noqa: BLE001 - re-raised in the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def returns_within() -> Callable[[float, Callable[[], Any]], Any]:
    return _returns_within


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if os.environ.get("DIFFRACT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (DIFFRACT_REQUIRE_BROWSER=1): install Debian's chromium and pip's playwright")
    pytest.skip(reason)


# Module scope: Playwright's sync API runs an event loop in this thread while it is open, which
# would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium on PATH")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):  # playwright types are optional at import time
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A failed request logs "Failed to load resource" without its URL: those are judged by URL below
    # (a fresh ComfyUI user folder answers 404 for user.css and the like; our files must never fail).
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.on("response", lambda response: errors.append(f"HTTP {response.status} for {response.url}")
            if response.status >= 400 and any(part in response.url for part in OUR_URLS) else None)
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"the page reported errors: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("DIFFRACT_ARTIFACTS", ROOT / "test-artifacts")) / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def labelled_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny atlas world's release (tests/atlas/tiny_world.py) with its feature atlas beside it, for
    the tests of what shows atlas labels (viewers, nodes, browser)."""
    from diffract_core.atlas import build_atlas
    from diffract_core.transcoders import TranscoderSet
    from tests.atlas.tiny_world import PROMPTS, SETTINGS, decode, encoder, tiny_model, write_release

    model = tiny_model()
    release = write_release(tmp_path_factory.mktemp("labelled") / "release", model)
    build_atlas(model, encoder(model), TranscoderSet.open(release), PROMPTS, release / "atlas", SETTINGS, decode=decode)
    return release
