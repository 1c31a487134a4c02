"""Convert released `.pt` checkpoints to the native format, and report what a folder holds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CorruptFileError, MissingPathError, OutputExistsError, UnknownFileNameError
from ..file_reading import check_readable_file, describe_size
from ..file_writing import prepare_destination
from .config import TranscoderConfig
from .native import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    file_sha256,
    read_site_config,
    recover_interrupted_writes,
    save_site,
    site_folder_name,
    site_folders,
    write_manifest,
)
from .release import (
    RELEASE_NAME_HELP,
    ReleaseName,
    config_from_release,
    load_release_state_dict,
    native_tensors,
    parse_release_name,
)

Progress = Callable[[int, int, str], None]


def find_release_files(src: Path) -> dict[Path, ReleaseName]:
    """Every `.pt` file under `src` with its parsed name. Unknown names and duplicate sites are
    refused before anything is written."""
    if src.is_file():
        return {src: parse_release_name(src)}
    if not src.is_dir():
        raise MissingPathError(f"{src} does not exist")
    files = sorted(src.rglob("*.pt"))
    if not files:
        raise UnknownFileNameError(f"{src} holds no .pt files; expected files named {RELEASE_NAME_HELP}")
    names = {path: parse_release_name(path) for path in files}
    seen: dict[ReleaseName, Path] = {}
    for path, name in names.items():
        if name in seen:
            raise UnknownFileNameError(
                f"{seen[name]} and {path} are both {name.file_name}; keep one of them in the folder"
            )
        seen[name] = path
    return names


def convert_file(
    path: Path,
    dst: Path,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    provenance: Mapping[str, object] | None = None,
) -> Path:
    """Convert one released checkpoint into the site folder `dst/{kind}_{stream}_{layer}/`."""
    name = parse_release_name(path)
    state_dict = load_release_state_dict(path)
    config = config_from_release(
        state_dict,
        name,
        provenance={
            "source_file": path.name,
            "source_sha256": file_sha256(path),
            "source_dtype": str(state_dict["encoder.weight"].dtype).removeprefix("torch."),
            **(provenance or {}),
        },
    )
    return save_site(dst, config, native_tensors(state_dict, dtype), overwrite=overwrite)


def is_converted(dst: Path, name: ReleaseName, dtype: torch.dtype | None = None) -> bool:
    """True if `dst` already holds a complete site converted from a file of this name. A site
    stored in another dtype than the one asked for is an error, not a silent skip."""
    folder = dst / site_folder_name(name.kind, name.stream, name.layer)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        return False
    config = read_site_config(folder)
    if config.provenance.get("source_file") != name.file_name:
        return False
    if dtype is not None and config.torch_dtype != dtype:
        raise OutputExistsError(
            f"{folder} already holds {name.file_name} as {config.dtype}, not {str(dtype).removeprefix('torch.')}; "
            "pass overwrite=True (CLI: --overwrite) to convert it again"
        )
    return True


def convert_release(
    src: Path,
    dst: Path,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Convert a release folder (transcoder_*.pt and sae_*.pt) into a native release folder.
    Sites already converted are kept unless `overwrite`; what a killed earlier run left is resolved first."""
    files = find_release_files(src)
    prepare_destination(dst, "the destination")
    recover_interrupted_writes(dst)
    written = []
    for done, (path, name) in enumerate(files.items()):
        if progress:
            progress(done, len(files), path.name)
        if overwrite or not is_converted(dst, name, dtype):
            written.append(convert_file(path, dst, dtype=dtype, overwrite=overwrite))
        else:
            written.append(dst / site_folder_name(name.kind, name.stream, name.layer))
        write_manifest(dst)
    if progress:
        progress(len(files), len(files), "done")
    return written


@dataclass(frozen=True)
class SiteReport:
    path: Path
    kind: str
    stream: str
    layer: int
    d_model: int
    d_features: int
    dtype: str
    size_bytes: int
    sha256: str
    checksum_status: str  # "ok", "MISMATCH" or "unrecorded"

    def row(self) -> list[str]:
        return [
            self.stream,
            str(self.layer),
            self.kind,
            str(self.d_model),
            str(self.d_features),
            self.dtype,
            describe_size(self.size_bytes),
            f"{self.sha256[:16]} ({self.checksum_status})",
            f"{self.path.parent.name}/{self.path.name}",  # the release and the site
        ]


REPORT_HEADER = ["stream", "layer", "kind", "D", "F", "dtype", "size", "sha256", "path"]


def inspect_path(path: Path) -> list[SiteReport]:
    """Reports for a native release folder, one native site folder, a folder of native releases (such
    as ComfyUI's models/transcoders), a `.pt` file or a folder of them."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return [_native_report(path)]
    if path.is_dir() and site_folders(path):
        return [_native_report(p) for p in site_folders(path)]
    releases = ([child for child in sorted(path.iterdir()) if child.is_dir() and site_folders(child)]
                if path.is_dir() else [])
    if releases:
        return [_native_report(site) for release in releases for site in site_folders(release)]
    return [_release_report(file, name) for file, name in find_release_files(path).items()]


def _native_report(folder: Path) -> SiteReport:
    config = read_site_config(folder)
    weights = folder / WEIGHTS_FILE
    _check_readable(weights)
    checksum = file_sha256(weights)
    recorded = config.provenance.get("weights_sha256")
    status = "unrecorded" if recorded is None else ("ok" if recorded == checksum else "MISMATCH")
    return _report(folder, config, weights.stat().st_size, checksum, status)


def _check_readable(weights: Path) -> None:
    check_readable_file(weights, "re-convert or re-download the site")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except Exception as exc:
        raise CorruptFileError(f"{weights} cannot be read ({exc}); re-convert or re-download the site") from exc


def _release_report(path: Path, name: ReleaseName) -> SiteReport:
    config = config_from_release(load_release_state_dict(path), name, provenance={})
    return _report(path, config, path.stat().st_size, file_sha256(path), "unrecorded")


def _report(path: Path, config: TranscoderConfig, size: int, checksum: str, status: str) -> SiteReport:
    return SiteReport(
        path=path,
        kind=config.kind,
        stream=config.site.stream,
        layer=config.site.layer,
        d_model=config.d_model,
        d_features=config.d_features,
        dtype=config.dtype,
        size_bytes=size,
        sha256=checksum,
        checksum_status=status,
    )


def format_reports(reports: list[SiteReport]) -> str:
    rows = [REPORT_HEADER, *(report.row() for report in sorted(reports, key=lambda r: (r.kind, r.stream, r.layer)))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(REPORT_HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
