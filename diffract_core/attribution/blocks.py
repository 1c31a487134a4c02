"""Reading FLUX double-stream blocks by their Black Forest Labs parameter names.

The same names hold in ComfyUI's `comfy.ldm.flux.layers.DoubleStreamBlock` and in the library's
reference model, so the replacement model reads weights from either. Weights pass through a
`LinearReader`: the default casts `module.weight` / `module.bias`; ComfyUI supplies one that goes
through `comfy.ops.cast_bias_weight`, which applies LoRA weight functions and dequantises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..transcoders.config import STREAMS, Stream

LinearReader = Callable[[nn.Module, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor | None]]


def read_plain_linear(module: nn.Module, dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = module.weight.detach().to(device=device, dtype=dtype)
    bias = None if module.bias is None else module.bias.detach().to(device=device, dtype=dtype)
    return weight, bias


@dataclass(frozen=True)
class Affine:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Weights kept narrower than `x` (a bf16 FLUX's, in a float32 trace) are cast at use."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


@dataclass(frozen=True)
class StreamWeights:
    """One stream's half of a double block, in the compute dtype."""

    modulation: Affine  # img_mod.lin: vec -> 6 * D (shift1, scale1, gate1, shift2, scale2, gate2)
    qkv: Affine
    query_scale: torch.Tensor
    key_scale: torch.Tensor
    proj: Affine
    mlp_in: Affine
    mlp_out: Affine
    norm1_eps: float
    norm2_eps: float

    def value(self, hidden: int) -> Affine:
        """The value rows of the fused qkv projection."""
        bias = None if self.qkv.bias is None else self.qkv.bias[2 * hidden :]
        return Affine(self.qkv.weight[2 * hidden :], bias)


def check_double_block(block: nn.Module, index: int) -> None:
    """Refuse double blocks whose math is not FLUX.1's (Chroma's external modulation, Flux 2's
    SiLU-gated MLPs, image-first joint attention)."""
    where = f"double_blocks.{index}"
    if getattr(block, "flipped_img_txt", False):
        raise UnsupportedModelError(
            f"{where} puts image tokens first in attention; tracing supports FLUX.1 (text first)"
        )
    if getattr(block, "modulation", True) is not True or not hasattr(block, "img_mod"):
        raise UnsupportedModelError(
            f"{where} takes its modulation from outside the block (a Chroma/Flux 2 style model); "
            "tracing supports FLUX.1"
        )
    for stream in STREAMS:
        mlp = getattr(block, f"{stream}_mlp")
        try:
            activation = mlp[1]
        except (TypeError, IndexError):
            activation = None
        if not (isinstance(activation, nn.GELU) and activation.approximate == "tanh"):
            raise UnsupportedModelError(
                f"{where}.{stream}_mlp is not FLUX.1's Linear -> GELU(tanh) -> Linear MLP; tracing supports FLUX.1"
            )


def read_stream(
    block: nn.Module, stream: Stream, dtype: torch.dtype, device: torch.device, read_linear: LinearReader
) -> StreamWeights:
    def affine(module: nn.Module) -> Affine:
        return Affine(*read_linear(module, dtype, device))

    attn = getattr(block, f"{stream}_attn")
    mlp = getattr(block, f"{stream}_mlp")
    return StreamWeights(
        modulation=affine(getattr(block, f"{stream}_mod").lin),
        qkv=affine(attn.qkv),
        query_scale=attn.norm.query_norm.scale.detach().to(device=device, dtype=dtype),
        key_scale=attn.norm.key_norm.scale.detach().to(device=device, dtype=dtype),
        proj=affine(attn.proj),
        mlp_in=affine(mlp[0]),
        mlp_out=affine(mlp[2]),
        norm1_eps=float(getattr(getattr(block, f"{stream}_norm1"), "eps", 1e-6)),
        norm2_eps=float(getattr(getattr(block, f"{stream}_norm2"), "eps", 1e-6)),
    )
