"""`python -m diffract_core atlas`: a toy atlas from a prompt file, and a prompt file the toy cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffract_core.atlas import Atlas
from diffract_core.cli import main
from diffract_core.toy.embedded import TOY_TRANSCODERS


def test_atlas_of_the_toy_from_a_prompt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two objects and one\na red circle and a blue square\nan orange triangle\na green square\n")
    out = tmp_path / "atlas"
    args = ["atlas", "--release", str(TOY_TRANSCODERS), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
            "--sites", "img:0 txt:0", "--batch", "2", "--k", "8", "--top-n", "2", "--crops", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: 3 prompts, 2 sites,") and "(0 of 2 batches resumed)" in printed
    atlas = Atlas.load(out)
    assert atlas.sites == [("img", 0), ("txt", 0)] and atlas.settings.sampling.steps == 2
    assert atlas.info["model"]["kind"] == "toy" and atlas.info["crop_sheets"] == ["crops-000.jpg"]


def test_a_prompt_the_toy_cannot_read_is_named_by_file_and_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# colours\na red circle\n\na pink circle\n")
    out = tmp_path / "atlas"
    assert main(["atlas", "--release", str(TOY_TRANSCODERS), "--prompts", str(prompts), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {prompts}, line 4: the toy cannot read 'a pink circle'")
    assert "unknown: ['pink']" in error
    assert not out.exists() and not (tmp_path / ".atlas.build").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = tmp_path / "prompts.txt", tmp_path / "atlas"
    prompts.write_text("a red circle\n")
    out.write_text("not a folder")
    assert main(["atlas", "--release", str(TOY_TRANSCODERS), "--prompts", str(prompts), "--out", str(out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
