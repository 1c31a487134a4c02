"""An atlas build's work folder: each rank's statistics after its last saved batch, and the final
images of every sampled batch (for the crops made at the end).

Every file is written beside its place and renamed into it (`file_writing.replace_atomically`), so
an interrupted build leaves the last consistent state and never a half-written file. A state is tied
to its build by a fingerprint of the settings, prompts, release and number of ranks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CorruptFileError, DiffractError
from ..file_writing import replace_atomically
from ..transcoders.transcoder_set import SiteKey
from .statistics import Dimensions, SiteStatistics

STATE_FORMAT = "diffract-atlas-build"


def work_folder(out: Path) -> Path:
    """Beside the atlas folder and hidden, so that a release folder never mistakes it for a site."""
    return out.parent / f".{out.name}.build"


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    replace_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def _state_path(work: Path, rank: int, world: int) -> Path:
    return work / f"state-{rank}-of-{world}.safetensors"


def save_state(work: Path, rank: int, world: int, fingerprint: str, sites: Mapping[SiteKey, SiteStatistics],
               batches: list[int]) -> None:
    tensors = {f"{stream}_{layer}/{name}": array for (stream, layer), stats in sites.items()
               for name, array in stats.arrays.items()}
    metadata = {"format": STATE_FORMAT, "fingerprint": fingerprint, "batches": json.dumps(sorted(batches))}
    _save_atomically(tensors, _state_path(work, rank, world), metadata)


def load_state(work: Path, rank: int, world: int, fingerprint: str,
               dimensions: Mapping[SiteKey, Dimensions]) -> tuple[dict[SiteKey, SiteStatistics], list[int]] | None:
    """A rank's saved statistics and the batches they hold, or None when it has saved none yet."""
    path = _state_path(work, rank, world)
    if not path.exists():
        others = sorted(p.name for p in work.glob("state-*-of-*.safetensors"))
        if others and not any(name.endswith(f"-of-{world}.safetensors") for name in others):
            raise DiffractError(
                f"{work} holds a build stopped with another number of processes ({', '.join(others)}): resume it "
                "with as many processes as it started with, or pass --no-resume to start over"
            )
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CorruptFileError(f"{path} cannot be read ({exc}): pass --no-resume to start the build over") from exc
    if metadata.get("format") != STATE_FORMAT or metadata.get("fingerprint") != fingerprint:
        raise DiffractError(
            f"{work} holds a stopped build of other prompts, settings or transcoders: build into another --out, "
            "or pass --no-resume to start over"
        )
    sites = {}
    for (stream, layer), dims in dimensions.items():
        arrays = {name: tensors[f"{stream}_{layer}/{name}"] for name in dims.layout(stream)}
        sites[(stream, layer)] = SiteStatistics(stream, dims, arrays)
    return sites, json.loads(metadata["batches"])


def _images_path(work: Path, batch: int) -> Path:
    return work / "images" / f"batch-{batch:06d}.safetensors"


def save_images(work: Path, batch: int, prompt_ids: list[int], images: torch.Tensor) -> None:
    path = _images_path(work, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically({"images": images.contiguous(), "prompt_ids": torch.tensor(prompt_ids, dtype=torch.int64)}, path)


def load_images(work: Path, batch: int) -> tuple[list[int], torch.Tensor]:
    path = _images_path(work, batch)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CorruptFileError(f"{path} cannot be read ({exc}): pass --no-resume to start the build over") from exc
    return tensors["prompt_ids"].tolist(), tensors["images"]


def remove_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
