"""Headless Chromium (Debian's `chromium`, driven by Playwright's Python client) for the viewer tests.

Without a browser the tests skip, unless DIFFRACT_REQUIRE_BROWSER=1 (as `.ci/run` sets): then a
missing browser fails them. Screenshots go to test-artifacts/web/ (or $DIFFRACT_ARTIFACTS/web/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if os.environ.get("DIFFRACT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (DIFFRACT_REQUIRE_BROWSER=1): install Debian's chromium and pip's playwright")
    pytest.skip(reason)


@pytest.fixture(scope="session")
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
def page(browser):  # noqa: ANN001, ANN201 - playwright types are optional at import time
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"the page reported errors: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("DIFFRACT_ARTIFACTS", ROOT / "test-artifacts")) / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
