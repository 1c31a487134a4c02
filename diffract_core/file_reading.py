"""Reading files that may come from strangers: only regular files (a FIFO or a device would block
or never end), never more bytes than a file of its kind can hold, and JSON whose nesting is
measured before it is parsed (the json module recurses once per level, so a deeply nested file
would otherwise end in a RecursionError).

A missing file raises FileNotFoundError unchanged: what a missing file means is the caller's to say.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptFileError, DiffractError, UnreadableFileError

# safetensors' dtype names, as a file's header gives them
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I16": torch.int16,
                      "I32": torch.int32, "I64": torch.int64}

MAX_JSON_DEPTH = 64  # our files nest at most a handful of levels

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_STEP = np.zeros(256, dtype=np.int64)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1
_SCAN_CHUNK = 1 << 22


def _open_regular(path: Path, fix: str) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file. O_NONBLOCK makes opening
    a FIFO return at once instead of waiting for a writer; on a regular file it changes nothing."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise UnreadableFileError(
            f"{path} cannot be read: permission denied. Give your user read access to it (chmod a+r), or {fix}"
        ) from exc
    except OSError as exc:
        raise UnreadableFileError(f"{path} cannot be opened ({exc.strerror}); {fix}") from exc
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise UnreadableFileError(f"{path} is {_file_kind(mode)}, not a regular file, so it is not read; {fix}")
    return descriptor


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def check_readable_file(path: Path, fix: str) -> int:
    """Refuse what a library would block on or misreport (a FIFO, a device, a folder, no read
    permission) before handing it the path; returns the file's size in bytes."""
    descriptor = _open_regular(Path(path), fix)
    try:
        return os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)


def read_regular_file(path: Path, *, max_bytes: int, fix: str, error: type[DiffractError] = CorruptFileError) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, checked before anything is read."""
    path = Path(path)
    with os.fdopen(_open_regular(path, fix), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise error(f"{path} is {describe_size(size)}, more than such a file can be "
                        f"({describe_size(max_bytes)}); {fix}")
        data = handle.read(size + 1)  # read(n) reserves n bytes up front: ask for what fstat reported
    if len(data) > size:  # it grew while being read
        raise error(f"{path} changed while it was read; {fix}")
    return data


def describe_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def json_depth(data: bytes) -> int:
    """How deep the brackets of a JSON text nest, counted without recursion: strings are blanked
    out, then a running sum of +1 per opening and -1 per closing bracket is taken chunk by chunk."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, len(skeleton), _SCAN_CHUNK):
        levels = np.cumsum(_BRACKET_STEP[skeleton[start : start + _SCAN_CHUNK]]) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


def parse_json(
    data: bytes | str,
    source: str,
    fix: str,
    *,
    error: type[DiffractError] = CorruptFileError,
    max_depth: int = MAX_JSON_DEPTH,
    allow_constants: bool = True,
) -> Any:
    """Parse JSON that may be hostile: nesting deeper than `max_depth` is refused before parsing, and
    NaN / Infinity too unless `allow_constants`. Every problem is an `error` naming `source` and `fix`."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(f"{source} nests {depth} levels deep, more than such a file ever does ({max_depth}); "
                    f"it is damaged or crafted: {fix}")
    try:
        text = raw.decode("utf-8") if isinstance(data, bytes) else data
        if allow_constants:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except _ConstantError as exc:
        raise error(f"{source} holds {exc.args[0]}, which is not a number such a file can contain; {fix}") from None
    except ValueError as exc:  # not UTF-8, not JSON, or an integer too long for Python to convert
        raise error(f"{source} is not valid JSON ({exc}); {fix}") from None


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _ConstantError(name)
