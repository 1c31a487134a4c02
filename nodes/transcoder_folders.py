"""The `transcoders` model folder: registered with ComfyUI's folder_paths, listed by release.

ComfyUI applies `extra_model_paths.yaml` before custom nodes load, so a user's `transcoders:` entry
may already exist; `add_model_folder_path` appends `models/transcoders` to it and leaves its other
paths, their order and its extension filter alone.

ComfyUI surface used: `folder_paths.models_dir`, `.add_model_folder_path`, `.get_folder_paths`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import folder_paths

from ..diffract_core.errors import CorruptFileError, MissingPathError, SettingsError
from ..diffract_core.toy import ASSETS as TOY_ASSETS
from ..diffract_core.transcoders import CONFIG_FILE, MANIFEST_FILE, site_folders

FOLDER_NAME = "transcoders"
_RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def register_transcoder_folder() -> None:
    """`models/transcoders`, then the pack's own folder holding the embedded toy's `diffract-toy` release."""
    folder_paths.add_model_folder_path(FOLDER_NAME, os.path.join(folder_paths.models_dir, FOLDER_NAME))
    folder_paths.add_model_folder_path(FOLDER_NAME, str(TOY_ASSETS))


def _is_release(folder: Path) -> bool:
    if (folder / MANIFEST_FILE).is_file():
        return True
    try:
        return any((site / CONFIG_FILE).is_file() for site in site_folders(folder))
    except CorruptFileError:  # listed, so that loading it shows the reason
        return True


def release_folders() -> dict[str, Path]:
    """Release name -> folder, over every registered transcoders path (the first path wins a name)."""
    found: dict[str, Path] = {}
    for root in folder_paths.get_folder_paths(FOLDER_NAME):
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for folder in sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in found and _is_release(folder):
                found[folder.name] = folder
    return found


def release_folder(name: str) -> Path:
    folders = release_folders()
    if name not in folders:
        roots = ", ".join(folder_paths.get_folder_paths(FOLDER_NAME))
        listed = ", ".join(sorted(folders)) or "none"
        raise MissingPathError(
            f"no transcoder release named {name!r} in the transcoders folders ({roots}); found: {listed}. "
            "Download one with Download Transcoders from Hub, or convert released .pt files with "
            "`python -m diffract_core convert SRC models/transcoders/NAME`, then refresh"
        )
    return folders[name]


def download_destination(name: str) -> Path:
    """`<first transcoders path>/<name>`, for a plain folder name only."""
    if not _RELEASE_NAME.match(name) or name in (".", ".."):
        raise SettingsError(
            f"folder name {name!r} is not a plain folder name: use letters, digits, '.', '_' or '-' "
            "(no slashes), e.g. DifFRACT"
        )
    return Path(folder_paths.get_folder_paths(FOLDER_NAME)[0]) / name
