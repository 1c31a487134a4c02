"""Ablate attention heads of the library's reference FLUX while sampling, for one `with` block:
the counterpart, for attention, of `recording.patch_reference_model`. Each double block's
`img_attn.proj` and `txt_attn.proj` get a pre-hook that zeroes the ablated heads' slices of their
input (the stream's rows of the joint attention output); a pre-hook on the model reads each call's
timesteps (= sigmas), so the ablation's sigma window holds per row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import DiffractError
from ..flux.model import Flux
from ..recording.lifecycle import flux_call
from .ablation import HeadAblation


@contextmanager
def ablate_reference_heads(model: Flux, ablation: HeadAblation) -> Iterator[None]:
    """Calls `model(x, timestep, context, ...)` inside the block run with `ablation`'s heads zeroed."""
    ablation.check(model.config.depth, model.config.num_heads)
    call_sigmas: list[torch.Tensor] = []

    def publish(_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        call_sigmas[:] = [flux_call(args, kwargs)[1].detach().reshape(-1)]

    def zeroing(layer: int) -> Any:
        def hook(_proj: nn.Module, args: tuple) -> tuple | None:
            if not call_sigmas:
                raise DiffractError("a head ablation ran outside a model call: call the model as "
                                    "model(x, timestep, context, y), not its forward_orig")
            attended = ablation.apply(layer, args[0], model.config.num_heads, call_sigmas[0])
            return None if attended is args[0] else (attended, *args[1:])

        return hook

    def end_call(_model: nn.Module, _args: tuple, _output: Any) -> None:
        call_sigmas.clear()

    hooks = [model.register_forward_pre_hook(publish, with_kwargs=True), model.register_forward_hook(end_call)]
    try:
        for layer, block in enumerate(model.double_blocks):
            if ablation.heads_at(layer):
                hooks += [block.img_attn.proj.register_forward_pre_hook(zeroing(layer)),
                          block.txt_attn.proj.register_forward_pre_hook(zeroing(layer))]
        yield
    finally:
        for hook in hooks:
            hook.remove()
