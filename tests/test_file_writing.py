"""Destinations checked before work starts, files replaced in one rename, shared permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diffract_core.errors import DestinationError
from diffract_core.file_writing import (
    check_destination,
    give_usual_permissions,
    prepare_destination,
    replace_atomically,
)


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`folder` reads as read-only to os.access (root may write anywhere, so chmod cannot show it)."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("keep me")
    with pytest.raises(DestinationError, match=r"--out .*README.md is a file, not a folder: choose a folder"):
        prepare_destination(tmp_path / "README.md", "--out")
    with pytest.raises(DestinationError, match=r"cannot be created: .*README.md is a file, not a folder"):
        check_destination(tmp_path / "README.md" / "run", "out")
    assert (tmp_path / "README.md").read_text() == "keep me"


def test_a_read_only_parent_is_refused_without_creating_anything(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    read_only(monkeypatch, tmp_path)
    with pytest.raises(DestinationError, match=rf"its nearest existing folder {tmp_path} is read-only for this user"):
        prepare_destination(tmp_path / "a" / "b", "the destination")
    assert not (tmp_path / "a").exists()
    with pytest.raises(DestinationError, match="it is read-only"):
        check_destination(tmp_path, "the destination")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_debris(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")

    def crash(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        replace_atomically(path, crash)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    replace_atomically(path, lambda temporary: temporary.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_usual_permissions_follow_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir(mode=0o700)
    (folder / "weights.safetensors").touch(mode=0o600)
    previous = os.umask(0o022)
    try:
        give_usual_permissions(folder)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "weights.safetensors").stat().st_mode) == 0o644
