"""Reading hostile files: FIFOs and folders refused without blocking, sizes bounded before reading,
JSON nesting measured without recursion."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from diffract_core.errors import CorruptFileError, UnreadableFileError
from diffract_core.file_reading import check_readable_file, json_depth, parse_json, read_regular_file


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are a POSIX feature")
def test_a_fifo_is_refused_at_once(tmp_path: Path, returns_within) -> None:
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableFileError, match=r"is a FIFO \(named pipe\), not a regular file.*re-download"):
        returns_within(10, lambda: check_readable_file(fifo, "re-download it"))
    with pytest.raises(UnreadableFileError, match="FIFO"):
        returns_within(10, lambda: read_regular_file(fifo, max_bytes=100, fix="re-download it"))


def test_folders_and_oversized_files_are_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="is a folder, not a regular file"):
        check_readable_file(tmp_path, "pick a file")
    (tmp_path / "big.json").write_bytes(b" " * 2048)
    with pytest.raises(CorruptFileError,
                       match=r"big.json is 2.0 KiB, more than such a file can be \(1.0 KiB\); shrink"):
        read_regular_file(tmp_path / "big.json", max_bytes=1024, fix="shrink it")
    assert read_regular_file(tmp_path / "big.json", max_bytes=2048, fix="") == b" " * 2048
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing.json", max_bytes=10, fix="")


def test_permission_denied_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads everything, so the refusal comes from os.open, as it would for any other user."""
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    real_open = os.open

    def denied(target, *args, **kwargs):
        if Path(target) == path:
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(UnreadableFileError, match=r"cannot be read: permission denied.*chmod a\+r"):
        check_readable_file(path, "re-download it")


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_is_measured_without_recursion(depth: int) -> None:
    text = "[" * depth + "]" * depth
    assert json_depth(text.encode()) == depth
    with pytest.raises(CorruptFileError, match=f"nests {depth} levels deep.*re-convert"):
        parse_json(text, "config.json", "re-convert")
    nested_object = '{"a":' * depth + "1" + "}" * depth
    with pytest.raises(CorruptFileError, match="levels deep"):
        parse_json(nested_object.encode(), "manifest.json", "re-convert")


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"label": "[[[[{{{{" * 100, "escaped": 'a \\" [[[[ "', "list": [[1], [2, [3]]]})
    assert json_depth(text.encode()) == 4
    assert parse_json(text, "x", "")["list"] == [[1], [2, [3]]]


def test_json_problems_name_the_file_and_the_fix() -> None:
    with pytest.raises(CorruptFileError, match=r"state.json is not valid JSON \(.*\); pass --no-resume"):
        parse_json(b'{"step": ', "state.json", "pass --no-resume")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        parse_json(b"\xff\xfe", "state.json", "pass --no-resume")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        parse_json("1" * 5000, "state.json", "")  # longer than Python converts to an integer
    with pytest.raises(CorruptFileError, match="holds NaN"):
        parse_json('{"a": NaN}', "c.json", "", allow_constants=False)
    assert parse_json('{"a": NaN}', "c.json", "")["a"] != 0
