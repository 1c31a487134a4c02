"""The pack's native format: one folder per site holding `config.json` and `weights.safetensors`,
plus a release-level `manifest.json` listing the sites.

Loading memory-maps the safetensors file: tensors are views of the file's pages, so a 1.2 GB site
costs page cache, not a second private copy, unless the caller asks for another dtype or device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigMismatchError, CorruptFileError
from .config import TranscoderConfig, dtype_name
from .release import check_finite
from .transcoder import Transcoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "diffract-transcoder-release"


def site_folder_name(kind: str, stream: str, layer: int) -> str:
    return f"{kind}_{stream}_{layer}"


def site_folders(root: Path) -> list[Path]:
    """The site folders directly under a release folder. Hidden folders (staging folders of an
    interrupted write, the Hub download cache) are never sites."""
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file())


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


def save_site(root: Path, config: TranscoderConfig, tensors: Mapping[str, torch.Tensor], overwrite: bool = False) -> Path:
    """Write one site folder atomically: into a temporary folder first, then renamed into place,
    so an interrupted write never leaves a half-written site behind."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / site_folder_name(config.kind, config.site.stream, config.site.layer)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    config = config.with_dtype(_single_dtype(tensors))
    _check_against_config(config, {key: (tuple(t.shape), t.dtype) for key, t in tensors.items()}, str(target))
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        save_file(dict(tensors), str(staging / WEIGHTS_FILE))
        checksum = file_sha256(staging / WEIGHTS_FILE)
        config = replace(config, provenance={**config.provenance, "weights_sha256": checksum})
        (staging / CONFIG_FILE).write_text(config.to_json())
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _single_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    dtypes = {tensor.dtype for tensor in tensors.values()}
    if len(dtypes) != 1:
        raise ConfigMismatchError(f"all transcoder tensors must share one dtype, got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def read_site_config(folder: Path) -> TranscoderConfig:
    path = folder / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise CorruptFileError(
            f"{folder} has no {CONFIG_FILE}; a native transcoder site folder holds {CONFIG_FILE} and {WEIGHTS_FILE}: "
            "re-run `python -m diffract_core convert` on the original files"
        ) from exc
    return TranscoderConfig.from_json(text, source=str(path))


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
) -> Transcoder:
    """Build a site's transcoder over its memory-mapped weights (copied only to change dtype/device)."""
    config = read_site_config(folder)
    weights = folder / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as handle:
            found = {key: (tuple(handle.get_slice(key).get_shape()), _slice_dtype(handle.get_slice(key))) for key in handle.keys()}
            _check_against_config(config, found, str(folder))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise CorruptFileError(
            f"{weights} cannot be read ({exc}); it is missing, truncated or damaged: re-run "
            "`python -m diffract_core convert` (or download the site again)"
        ) from exc
    if check_weights:
        for key, tensor in tensors.items():
            check_finite(tensor, f"{folder.name}: {key}")
    if dtype is not None or device is not None:
        tensors = {key: tensor.to(device=device, dtype=dtype) for key, tensor in tensors.items()}
        if dtype is not None:
            config = config.with_dtype(dtype)
    transcoder = Transcoder(config, device="meta")
    transcoder.load_state_dict(tensors, assign=True)
    return transcoder.requires_grad_(False)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _slice_dtype(tensor_slice: object) -> torch.dtype:
    name = tensor_slice.get_dtype()  # type: ignore[attr-defined]
    if name not in _SAFETENSORS_DTYPES:
        raise ConfigMismatchError(f"weights stored as {name}; transcoder weights must be F32, BF16 or F16")
    return _SAFETENSORS_DTYPES[name]


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
    previous = read_manifest(root).get("release", {}) if path.exists() else {}
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "release": dict(release or previous), "sites": sites}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_manifest(root: Path) -> dict[str, object]:
    path = root / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); delete it and re-run convert") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise CorruptFileError(f"{path} is not a {MANIFEST_FORMAT} manifest; delete it and re-run convert")
    return data
