"""A small, self-made release in the DifFRACT `.pt` format, run through convert -> load -> check.

It is the main job until the toy model exists: everything the released weights go through, at
small dimensions, on a CPU, in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .file_writing import prepare_destination
from .transcoders.config import KINDS, STREAMS, Kind, SiteSpec, Stream, TimeEmbeddingSpec, TranscoderConfig
from .transcoders.convert import convert_release, format_reports, inspect_path
from .transcoders.release import release_state_dict
from .transcoders.transcoder import Transcoder
from .transcoders.transcoder_set import TranscoderSet


def random_transcoder(
    stream: Stream,
    layer: int,
    *,
    kind: Kind = "transcoder",
    d_model: int = 64,
    d_features: int = 512,
    time_dim: int = 256,
    seed: int = 0,
) -> Transcoder:
    """A transcoder with the reference initialisation plus random FiLM and biases, so every term
    of the formula matters."""
    generator = torch.Generator().manual_seed(seed)
    config = TranscoderConfig(
        d_model=d_model,
        d_features=d_features,
        site=SiteSpec(stream=stream, layer=layer),
        kind=kind,
        time_embedding=TimeEmbeddingSpec(dim=time_dim, mlp_width=time_dim),
    )
    transcoder = Transcoder(config).reset_parameters(generator)
    with torch.no_grad():
        for parameter in (transcoder.mod_linear.weight, transcoder.mod_linear.bias, transcoder.b_dec):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        transcoder.b_enc.copy_(torch.randn(d_features, generator=generator) * 0.05)
    return transcoder


def write_example_release(
    folder: Path,
    *,
    layers: Iterable[int] = (0, 1, 2),
    streams: Iterable[Stream] = STREAMS,
    kinds: Iterable[Kind] = KINDS,
    d_model: int = 64,
    d_features: int = 512,
    seed: int = 0,
) -> dict[Path, Transcoder]:
    """Write `{kind}_{stream}_{layer}.pt` files exactly as the reference's training saves them
    (`torch.save(module.state_dict())`, fp32, release key names)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, (kind, stream, layer) in enumerate((k, s, l) for k in kinds for s in streams for l in layers):
        transcoder = random_transcoder(stream, layer, kind=kind, d_model=d_model, d_features=d_features,
                                       seed=seed + index)
        path = folder / f"{kind}_{stream}_{layer}.pt"
        torch.save(release_state_dict(transcoder.state_dict()), path)
        written[path] = transcoder
    return written


@dataclass(frozen=True)
class QuickstartResult:
    reports: dict[str, str]
    relative_error: dict[str, dict[str, float]]  # dtype -> site -> max |converted - original| / max |original|


def run_quickstart(out: Path, seed: int = 0) -> QuickstartResult:
    """Write a small release, convert it to fp32 and to bf16, inspect both, and compare every
    converted site's outputs with the original module's on the same random activations and sigmas."""
    prepare_destination(out, "the quickstart folder")
    originals = write_example_release(out / "release", seed=seed)
    reports, errors = {}, {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        native = out / f"native-{label}"
        convert_release(out / "release", native, dtype=dtype, overwrite=True)
        reports[label] = format_reports(inspect_path(native))
        errors[label] = _compare(originals, native, seed)
    return QuickstartResult(reports=reports, relative_error=errors)


@torch.no_grad()
def _compare(originals: dict[Path, Transcoder], native: Path, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    sets = {kind: TranscoderSet.open(native, kind=kind) for kind in KINDS}
    errors = {}
    for path, original in originals.items():
        x = torch.randn(2, 16, original.d_model, generator=generator)
        sigmas = torch.tensor([1.0, 0.25])
        converted = sets[original.config.kind][original.config.site.key].set_compute_dtype(torch.float32)
        expected = original(x, sigmas)
        errors[path.stem] = float((converted(x, sigmas) - expected).abs().max() / expected.abs().max())
    return errors
