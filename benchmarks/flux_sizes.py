"""Model sizes shared by the benchmark scripts: FLUX.1's true dimensions, or a smaller reference
FLUX with the same block math for CPU runs; and the random model, transcoders and recorded call
that the attribution benchmarks trace."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import FeatureRecording, patch_reference_model
from diffract_core.transcoders import TranscoderSet

FLUX1 = {"hidden": 3072, "heads": 24, "depth": 19, "single": 38, "features": 49152, "pixels": 1024, "text_tokens": 256}
SCHEDULE = (1.0, 0.75, 0.5, 0.25, 0.0)
TRACED_STEP = 1  # sigma 0.75


def flux_config(hidden: int, heads: int, depth: int, single: int, mlp_ratio: float = 4.0) -> FluxConfig:
    """A FLUX.1-shaped config (FLUX.1's input widths) of the given size; RoPE axes sum to the head dim."""
    head_dim = hidden // heads
    third = head_dim // 8 * 3
    axes = (16, 56, 56) if head_dim == 128 else (head_dim - 2 * third, third, third)
    return FluxConfig(
        in_channels=64, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=hidden, mlp_ratio=mlp_ratio,
        num_heads=heads, depth=depth, depth_single_blocks=single, axes_dim=axes,
    )


def random_flux(config: FluxConfig, device: torch.device) -> Flux:
    return init_random_(Flux(config), seed=0, std=0.02).to(device).eval().requires_grad_(False)


def random_transcoders(layers: Iterable[int], hidden: int, features: int, device: torch.device) -> TranscoderSet:
    """Random img and txt transcoders at `layers`, each moved to `device` as soon as it is made (at FLUX
    size one site is 1.2 GB in fp32, so the host never holds them all)."""
    return TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=hidden, d_features=features, seed=layer)
        .to(device)
        .requires_grad_(False)
        for layer in layers
        for stream in ("img", "txt")
    )


def random_inputs(config: FluxConfig, pixels: int, text_tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Arguments of one model call at sigma SCHEDULE[TRACED_STEP]: a pixels x pixels image, random text."""
    generator = torch.Generator().manual_seed(0)
    latent = pixels // 8
    return {
        "x": torch.randn(1, config.latent_channels, latent, latent, generator=generator).to(device),
        "timestep": torch.full((1,), SCHEDULE[TRACED_STEP], device=device),
        "context": torch.randn(1, text_tokens, config.context_in_dim, generator=generator).to(device),
        "y": torch.randn(1, config.vec_in_dim, generator=generator).to(device),
    }


def record_call(model: Flux, transcoders: TranscoderSet, inputs: dict[str, torch.Tensor], k: int) -> FeatureRecording:
    """One model call recorded at every site of `transcoders`, its inputs kept for tracing TRACED_STEP."""
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=k, keep_input_steps=frozenset({TRACED_STEP}))
    recording.start_run(SCHEDULE)
    with torch.no_grad(), patch_reference_model(model, transcoders, recording=recording):
        model(**inputs)
    return recording
