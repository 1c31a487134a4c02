"""Where the embedded toy's trained files live in the package, and how to open them.

`assets/toy_flux.safetensors` is the toy FLUX and its text encoder (`python -m diffract_core
toy-train`); `assets/diffract-toy/` is a native release for all of its double-block MLPs holding
transcoders and, as the SAE baseline, SAEs at the same sites, trained by the library's trainer from
`assets/diffract-toy.toml` and `assets/diffract-toy-sae.toml`, with their metrics in
`assets/evaluation.json` and `assets/evaluation-sae.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DiffractError
from ..transcoders.transcoder_set import TranscoderSet
from .model import ToyModel

ASSETS = Path(__file__).resolve().parent / "assets"
TOY_WEIGHTS = ASSETS / "toy_flux.safetensors"
TOY_RELEASE_NAME = "diffract-toy"
TOY_TRANSCODERS = ASSETS / TOY_RELEASE_NAME
TOY_TRANSCODER_CONFIG = ASSETS / f"{TOY_RELEASE_NAME}.toml"
TOY_SAE_CONFIG = ASSETS / f"{TOY_RELEASE_NAME}-sae.toml"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DiffractError(
            f"the embedded toy's {what} is missing ({path}): reinstall the package from a full checkout "
            "(the files under diffract_core/toy/assets/ ship with it)"
        )
    return path


def load_toy(path: Path | None = None) -> ToyModel:
    """The trained toy (or the toy file at `path`), in eval mode and without gradients."""
    model = ToyModel.load(_require(Path(path) if path else TOY_WEIGHTS, "model file"))
    model.flux.requires_grad_(False)
    model.text_encoder.requires_grad_(False)
    return model


def open_toy_transcoders() -> TranscoderSet:
    """The toy's transcoders, stored in fp16 and computed in fp32."""
    return TranscoderSet.open(_require(TOY_TRANSCODERS, "transcoder release")).to(dtype=torch.float32)


def open_toy_saes() -> TranscoderSet:
    """The SAE baseline at the same sites (the same release folder, kind "sae"), in fp32."""
    return TranscoderSet.open(_require(TOY_TRANSCODERS, "transcoder release"), kind="sae").to(dtype=torch.float32)
