"""A world an atlas builds in seconds: a tiny random FLUX, a release of random transcoders at all its
MLPs (written to disk, as releases are), a hashing prompt encoder, and a stand-in image decoder.
Shared by the tests and by the script the two-process test launches with torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffract_core.atlas import AtlasSettings
from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.quickstart import random_transcoder
from diffract_core.training.harvest import HarvestSettings
from diffract_core.training.prompts import HashingPromptEncoder
from diffract_core.transcoders.native import save_site, write_manifest

D_FEATURES = 96
TEXT_TOKENS = 6
PROMPTS = [f"a {colour} {shape}" for colour in ("red", "blue", "green") for shape in ("circle", "square", "star")] + [
    "two red circles", "a blue circle and a red star", "a green star on the left", "the sky", "a red square twice",
]
SETTINGS = AtlasSettings(sampling=HarvestSettings(steps=3, latent_size=(8, 12), prompts_per_call=4), k=D_FEATURES,
                         top_n=4, crops_per_feature=2, words_per_feature=3, cap_mb=64)


def tiny_model() -> Flux:
    return init_random_(Flux(FluxConfig.tiny()), seed=0, std=0.05).eval().requires_grad_(False)


def write_release(root: Path, model: Flux, seed: int = 0) -> Path:
    for layer in range(model.config.depth):
        for stream in ("img", "txt"):
            transcoder = random_transcoder(stream, layer, d_model=model.config.hidden_size, d_features=D_FEATURES,
                                           time_dim=16, seed=seed + 10 * layer + (stream == "txt"))
            tensors = {key: value.contiguous() for key, value in transcoder.state_dict().items()}
            save_site(root, transcoder.config, tensors)
    write_manifest(root)
    return root


def encoder(model: Flux) -> HashingPromptEncoder:
    return HashingPromptEncoder(model.config.context_in_dim, model.config.vec_in_dim, tokens=TEXT_TOKENS)


def decode(latents: torch.Tensor) -> torch.Tensor:
    """8 px per latent pixel (16 per image token, as FLUX), colours from the first three channels."""
    return torch.sigmoid(2 * latents[:, :3]).repeat_interleave(8, -1).repeat_interleave(8, -2)


def atlas_files(folder: Path) -> dict[str, bytes]:
    """Every file of an atlas, for comparing two builds (atlas.json without its build facts: time, ranks)."""
    files = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    info = json.loads(files.pop("atlas.json"))
    info.pop("build")
    files["atlas.json"] = json.dumps(info, sort_keys=True).encode()
    return files
