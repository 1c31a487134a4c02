"""Model sizes shared by the benchmark scripts: FLUX.1's true dimensions, or a smaller reference
FLUX with the same block math for CPU runs."""

from __future__ import annotations

from diffract_core.flux import FluxConfig

FLUX1 = {"hidden": 3072, "heads": 24, "depth": 19, "single": 38, "features": 49152, "pixels": 1024, "text_tokens": 256}


def flux_config(hidden: int, heads: int, depth: int, single: int) -> FluxConfig:
    """A FLUX.1-shaped config (FLUX.1's input widths) of the given size; RoPE axes sum to the head dim."""
    head_dim = hidden // heads
    third = head_dim // 8 * 3
    axes = (16, 56, 56) if head_dim == 128 else (head_dim - 2 * third, third, third)
    return FluxConfig(
        in_channels=64, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=hidden,
        num_heads=heads, depth=depth, depth_single_blocks=single, axes_dim=axes,
    )
