"""Writing outputs so that nothing is left half-done: destinations checked before any work starts,
files replaced in one rename, and the permissions that files meant to be shared need."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import DestinationError


def check_destination(path: Path, what: str) -> Path:
    """Refuse an output folder that cannot be written, without creating anything: a file standing
    where the folder (or one of its parents) should be, or a read-only nearest existing folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DestinationError(f"{what} {path} is a file, not a folder: choose a folder (a new or an existing one)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DestinationError(
            f"{what} {path} cannot be created: {existing} is a file, not a folder; choose another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else f"its nearest existing folder {existing}"
        raise DestinationError(
            f"{what} {path} cannot be written: {where} is read-only for this user; choose a writable folder "
            "or change its permissions"
        )
    return path


def prepare_destination(path: Path, what: str) -> Path:
    """`check_destination`, then create the folder."""
    check_destination(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"{what} {path} cannot be created ({exc.strerror}); choose another folder") from exc
    return path


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary)` fills a hidden file beside `path`, which is flushed to disk and renamed over
    `path`: a crash, even kill -9, leaves the old file or the new one, never a part. The temporary's
    name is fixed, so the next write over a killed one reuses it and no debris accumulates."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def give_usual_permissions(folder: Path) -> None:
    """What `mkdir` and `open` would have given under the user's umask, for a folder and the files in
    it. mkdtemp makes private folders and safetensors private files; releases, atlases and circuits
    are read by everyone who can read the folder they are in."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
