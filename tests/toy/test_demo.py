"""The demo refuses an output folder it could not write its report into before it samples anything,
and its report's building blocks: images enlarged by the browser, figures linked to their definitions."""

from __future__ import annotations

import os
from base64 import b64decode
from io import BytesIO
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffract_core.errors import DestinationError, DiffractError
from diffract_core.toy import demo
from diffract_core.toy.demo import GLOSSARY, prepare_report_folder, run_demo
from diffract_core.toy.report import figure, glossary_html, table, term_id


@pytest.fixture
def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the toy is the demo's first piece of work: reaching it fails the test."""

    def load_toy(*_args: object) -> None:
        raise AssertionError("the demo started working before it checked its output folder")

    monkeypatch.setattr(demo, "load_toy", load_toy)


def read_only(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """`path` reads as read-only to os.access (root may write anywhere, so chmod cannot show it)."""
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode, *a, **k: not (Path(p) == path and mode & os.W_OK) and real_access(p, mode, *a, **k),
    )


@pytest.mark.usefixtures("no_sampling")
def test_a_file_where_the_folder_should_be_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("keep me")
    with pytest.raises(DestinationError, match=r"README.md is a file, not a folder: choose a folder"):
        run_demo(tmp_path / "README.md")
    with pytest.raises(DiffractError, match=r"cannot be created: .*README.md is a file, not a folder"):
        run_demo(tmp_path / "README.md" / "demo")
    assert (tmp_path / "README.md").read_text() == "keep me"


@pytest.mark.usefixtures("no_sampling")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_only(monkeypatch, tmp_path)
    with pytest.raises(DestinationError, match=r"is read-only for this user; choose a writable folder"):
        run_demo(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_sampling")
def test_a_report_file_that_cannot_be_replaced_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "report.html").mkdir()
    with pytest.raises(DestinationError, match=r"report.html is not a file, and the demo writes its report.html there"):
        run_demo(tmp_path)
    (tmp_path / "report.html").rmdir()
    (tmp_path / "circuit.json").write_text("{}")
    read_only(monkeypatch, tmp_path / "circuit.json")
    with pytest.raises(DestinationError, match=r"circuit.json is read-only for this user"):
        run_demo(tmp_path)


def test_missing_folders_are_created(tmp_path: Path) -> None:
    assert prepare_report_folder(tmp_path / "a" / "b").is_dir()
    (tmp_path / "a" / "b" / "report.html").write_text("an earlier report")
    assert prepare_report_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"


def test_figures_keep_their_pixels_and_let_the_browser_enlarge_them() -> None:
    image = torch.rand(3, 32, 32)
    html = figure(image, "as generated", 10, "big")
    assert 'width="320" height="320"' in html and 'class="pixel"' in html and '<figure class="big">' in html
    data = html.split('src="data:image/png;base64,')[1].split('"')[0]
    assert Image.open(BytesIO(b64decode(data))).size == (32, 32)


def test_column_names_link_to_their_definition() -> None:
    html = table(["steering", "fixed"], [("circuit", "no")], GLOSSARY)
    assert f'<a class="term" href="#{term_id("fixed")}" title="' in html and "<th>steering</th>" in html
    assert f'<dt id="{term_id("fixed")}">fixed</dt>' in glossary_html(GLOSSARY)
    assert len({term_id(name) for name in GLOSSARY}) == len(GLOSSARY), "two glossary entries share an id"
