"""The pack's native format: one folder per site holding `config.json` and `weights.safetensors`,
plus a release-level `manifest.json` listing the sites.

Loading memory-maps the safetensors file: tensors are views of the file's pages, so a 1.2 GB site
costs page cache, not a second private copy, unless the caller asks for another dtype or device.

Writing a site never leaves a release without it: the new site is written into a hidden staging
folder, the old one renamed aside, the new one renamed in, and only then the old one deleted. A run
killed on the way leaves hidden folders that `recover_interrupted_writes` resolves on the next write:
an old site whose replacement never arrived goes back in place, everything else is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigMismatchError, CorruptFileError, DestinationError, OutputExistsError
from ..file_reading import SAFETENSORS_DTYPES, check_readable_file, parse_json, read_regular_file
from ..file_writing import give_usual_permissions, prepare_destination, write_text_atomically
from .config import DTYPES, TranscoderConfig, dtype_name
from .release import check_finite
from .transcoder import Transcoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "diffract-transcoder-release"
MAX_JSON_BYTES = 16 * 2**20  # a site's config (with its training record) and a manifest are a few KiB
_RECONVERT = "re-run `python -m diffract_core convert` on the original files (or download the site again)"
# Hidden folders a site write makes beside the site: `.{site}.{random}.staging` and `.{site}.replaced`.
_STAGING = "staging"
_REPLACED = "replaced"
_DEBRIS = re.compile(r"^\.((?:transcoder|sae)_(?:img|txt)_\d+)\.(.+)$")


def site_folder_name(kind: str, stream: str, layer: int) -> str:
    return f"{kind}_{stream}_{layer}"


def site_folders(root: Path) -> list[Path]:
    """The site folders directly under a release folder. Hidden folders (staging folders of an
    interrupted write, the Hub download cache) are never sites; a site folder, or a file in it, that
    links out of the release is refused (a shared release could otherwise point anywhere)."""
    folders = sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file())
    inside = root.resolve()
    for folder in folders:
        own = folder.resolve()
        for path, home in ((folder, inside), (folder / CONFIG_FILE, own), (folder / WEIGHTS_FILE, own)):
            resolved = path.resolve()
            if resolved.parent != home:
                raise CorruptFileError(
                    f"{path} links to {resolved}, outside the release {root}: copy the site into the release "
                    "(cp -rL) instead of linking to it"
                )
    return folders


def expected_shapes(config: TranscoderConfig) -> dict[str, tuple[int, ...]]:
    d_model, d_features = config.d_model, config.d_features
    embed, width = config.time_embedding.dim, config.time_embedding.mlp_width
    return {
        "time_mlp.0.weight": (width, embed),
        "time_mlp.0.bias": (width,),
        "time_mlp.2.weight": (width, width),
        "time_mlp.2.bias": (width,),
        "mod_linear.weight": (2 * d_model, width),
        "mod_linear.bias": (2 * d_model,),
        "W_enc": (d_features, d_model),
        "b_enc": (d_features,),
        "W_dec": (d_features, d_model),
        "b_dec": (d_model,),
    }


def file_sha256(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def save_site(root: Path, config: TranscoderConfig, tensors: Mapping[str, torch.Tensor],
              overwrite: bool = False) -> Path:
    """Write one site folder: staged in a hidden folder, then swapped in (see the module's docstring)."""
    prepare_destination(root, "the release folder")
    target = root / site_folder_name(config.kind, config.site.stream, config.site.layer)
    recover_interrupted_writes(root, target.name)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    config = config.with_dtype(_single_dtype(tensors))
    _check_against_config(config, {key: (tuple(t.shape), t.dtype) for key, t in tensors.items()}, str(target))
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=f".{_STAGING}", dir=root))
        try:
            save_file(dict(tensors), str(staging / WEIGHTS_FILE))
            checksum = file_sha256(staging / WEIGHTS_FILE)
            config = replace(config, provenance={**config.provenance, "weights_sha256": checksum})
            (staging / CONFIG_FILE).write_text(config.to_json())
            give_usual_permissions(staging)
            _swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except PermissionError as exc:  # the folder looked writable (ACLs, NFS root_squash, immutable files)
        raise DestinationError(f"{target} cannot be written ({exc.strerror}: {exc.filename}); choose a folder this "
                               "user can write, or change its permissions") from exc
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Old site aside, new site in, old site deleted: at every moment one complete site exists,
    under its own name or aside, where `recover_interrupted_writes` finds it."""
    aside = target.with_name(f".{target.name}.{_REPLACED}")
    if target.exists():
        os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        if aside.exists():
            os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def recover_interrupted_writes(root: Path, name: str | None = None) -> None:
    """Resolve what a killed site write left in `root` (only site `name`'s, if given): a site renamed
    aside whose replacement never arrived goes back in place; staging folders, and old sites whose
    replacement did arrive, are deleted."""
    if not root.is_dir():
        return
    for debris in root.iterdir():
        match = _DEBRIS.match(debris.name)
        if match is None or (name is not None and match[1] != name) or not debris.is_dir() or debris.is_symlink():
            continue
        site = root / match[1]
        if match[2] == _REPLACED and not site.exists():
            os.replace(debris, site)
        else:
            shutil.rmtree(debris, ignore_errors=True)


def _single_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    dtypes = {tensor.dtype for tensor in tensors.values()}
    if len(dtypes) != 1:
        raise ConfigMismatchError(f"all transcoder tensors must share one dtype, got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def read_site_config(folder: Path) -> TranscoderConfig:
    path = folder / CONFIG_FILE
    try:
        data = read_regular_file(path, max_bytes=MAX_JSON_BYTES, fix=_RECONVERT)
    except FileNotFoundError as exc:
        raise CorruptFileError(
            f"{folder} has no {CONFIG_FILE}; a native transcoder site folder holds {CONFIG_FILE} and {WEIGHTS_FILE}: "
            "re-run `python -m diffract_core convert` on the original files"
        ) from exc
    return TranscoderConfig.from_json(data, source=str(path))


def _check_against_config(
    config: TranscoderConfig, found: Mapping[str, tuple[tuple[int, ...], torch.dtype]], where: str
) -> None:
    expected = expected_shapes(config)
    if set(found) != set(expected):
        raise ConfigMismatchError(
            f"{where}: tensors {sorted(found)} do not match the transcoder layout {sorted(expected)}; "
            "the weights file does not belong to this config: re-convert the site"
        )
    for key, shape in expected.items():
        found_shape, found_dtype = found[key]
        if found_shape != shape:
            raise ConfigMismatchError(
                f"{where}: {key} has shape {found_shape}, but {CONFIG_FILE} (d_model={config.d_model}, "
                f"d_features={config.d_features}) implies {shape}; the config contradicts its tensors: "
                "re-convert the site rather than editing the config"
            )
        if dtype_name(found_dtype) != config.dtype:
            raise ConfigMismatchError(
                f"{where}: {key} is stored as {dtype_name(found_dtype)} but {CONFIG_FILE} says dtype "
                f"{config.dtype!r}; re-convert the site"
            )


def load_site(
    folder: Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    check_weights: bool = True,
    fp8_weights: bool = False,
) -> Transcoder:
    """Build a site's transcoder over its memory-mapped weights (copied only to change dtype/device).
    `fp8_weights`: hold W_enc and W_dec as float8 e4m3 codes with per-feature scales, quantised
    from the mapped file a chunk at a time; `dtype` then applies to the biases and time path."""
    config = read_site_config(folder)
    weights = folder / WEIGHTS_FILE
    try:
        check_readable_file(weights, _RECONVERT)
        with safe_open(str(weights), framework="pt") as handle:
            found = {key: (tuple(handle.get_slice(key).get_shape()), _slice_dtype(handle.get_slice(key)))
                     for key in handle.keys()}  # noqa: SIM118 - a safe_open handle has keys() but no `in` or iteration
            _check_against_config(config, found, str(folder))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle has keys() but no `in` or iteration
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise CorruptFileError(
            f"{weights} cannot be read ({exc}); it is missing, truncated or damaged: re-run "
            "`python -m diffract_core convert` (or download the site again)"
        ) from exc
    if check_weights:
        for key, tensor in tensors.items():
            check_finite(tensor, f"{folder.name}: {key}")
    transcoder = Transcoder(config, device="meta")
    transcoder.load_state_dict(tensors, assign=True)
    if fp8_weights:
        transcoder.quantise_fp8()
    if dtype is not None:
        transcoder.cast_parameters(dtype)
    if device is not None:
        transcoder.to(device)
    return transcoder.requires_grad_(False)




def _slice_dtype(tensor_slice: object) -> torch.dtype:
    name = tensor_slice.get_dtype()  # type: ignore[attr-defined]
    if SAFETENSORS_DTYPES.get(name) not in DTYPES.values():
        raise ConfigMismatchError(f"weights stored as {name}; transcoder weights must be F32, BF16 or F16")
    return SAFETENSORS_DTYPES[name]


def write_manifest(root: Path, release: Mapping[str, object] | None = None) -> Path:
    """List every site folder under `root` (rewritten after each converted site)."""
    sites = []
    for folder in site_folders(root):
        config = read_site_config(folder)
        sites.append(
            {
                "folder": folder.name,
                "kind": config.kind,
                "stream": config.site.stream,
                "layer": config.site.layer,
                "d_model": config.d_model,
                "d_features": config.d_features,
                "dtype": config.dtype,
            }
        )
    path = root / MANIFEST_FILE
    previous = read_manifest(root)["release"] if path.exists() else {}
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "release": dict(release or previous), "sites": sites}
    return write_text_atomically(path, json.dumps(manifest, indent=2) + "\n")


def read_manifest(root: Path) -> dict[str, object]:
    """The manifest, checked: a format this version reads, `release` an object, `sites` a list."""
    path = root / MANIFEST_FILE
    fix = f"delete {path} and re-run convert (it is rebuilt from the site folders)"
    data = parse_json(read_regular_file(path, max_bytes=MAX_JSON_BYTES, fix=fix), str(path), fix)
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise CorruptFileError(f"{path} is not a {MANIFEST_FORMAT} manifest; {fix}")
    data.setdefault("release", {})
    data.setdefault("sites", [])
    if not isinstance(data["release"], dict):
        raise CorruptFileError(
            f'{path}: "release" must be an object of facts about the release, not {data["release"]!r:.80}; {fix}'
        )
    if not isinstance(data["sites"], list):
        raise CorruptFileError(f'{path}: "sites" must be a list of site folders; {fix}')
    return data
