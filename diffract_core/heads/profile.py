"""Per-head attention statistics of kept model calls: each call's double blocks are replayed from
its kept block-0 inputs (the replacement model's clean pass keeps every layer's queries and keys),
so a recorded step's attention is read back without hooking the sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..attribution.blocks import LinearReader, read_plain_linear
from ..attribution.replacement import ReplacementModel
from ..errors import InputShapeError, SettingsError
from ..recording.call_inputs import CallInputs
from ..transcoders.transcoder_set import TranscoderSet
from .metrics import METRICS, LayerHeadStats, layer_head_stats

Progress = Callable[[int, int], None]  # (done, total); may raise to stop (a user's interrupt)


@dataclass(frozen=True)
class HeadProfile:
    """`values[metric]` is [images, steps, layers, heads] (float64); `token_focus` is [images, steps,
    layers, heads, text tokens]: the share of image queries' attention on each text token."""

    values: dict[str, torch.Tensor]
    token_focus: torch.Tensor
    steps: tuple[int, ...]
    sigmas: tuple[float, ...]

    @property
    def images(self) -> int:
        return self.token_focus.shape[0]

    @property
    def layers(self) -> int:
        return self.token_focus.shape[2]

    @property
    def heads(self) -> int:
        return self.token_focus.shape[3]

    def metric(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise SettingsError(f"no head metric {name!r}; choose one of {', '.join(METRICS)}")
        return self.values[name]

    def focus_on(self, positions: torch.Tensor) -> torch.Tensor:
        """[images, steps, layers, heads]: image queries' attention on the text tokens where
        `positions` (bool [images, text tokens]) is true, e.g. each prompt's colour words."""
        if positions.shape != (self.images, self.token_focus.shape[-1]):
            raise InputShapeError(f"token positions must be [{self.images}, {self.token_focus.shape[-1]}] "
                                  f"(images, text tokens), got {tuple(positions.shape)}")
        return (self.token_focus * positions[:, None, None, None, :].to(self.token_focus)).sum(-1)


def head_profile(
    blocks: Sequence[nn.Module],
    calls: Sequence[tuple[int, CallInputs]],
    *,
    read_linear: LinearReader = read_plain_linear,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> HeadProfile:
    """Statistics of every double-block head for `calls`, one (step, call inputs) per step, each
    call holding the same images in the same order (a recording's `call_inputs(step)`)."""
    if not calls:
        raise SettingsError("no kept model calls to profile: keep the inputs of at least one step")
    images = {call.batch for _, call in calls}
    if len(images) != 1:
        raise InputShapeError(f"the kept calls hold different numbers of images ({sorted(images)}): profile calls "
                              "of one sampling run")
    batch = images.pop()
    if any(call.image_grid is None for _, call in calls):
        raise InputShapeError("these call inputs do not say their image-token grid: keep them with a recording "
                              "patched through the DifFRACT nodes or patch_reference_model")
    total, done = len(calls) * batch * len(blocks), 0
    per_step: list[list[list[LayerHeadStats]]] = []  # [step][image][layer]
    for _, call in calls:
        per_image = []
        for row in range(batch):
            replay = ReplacementModel(blocks, TranscoderSet({}), call.row(row), last_layer=len(blocks) - 1,
                                      read_linear=read_linear, dtype=dtype, device=device)
            per_layer = []
            for layer in replay.layers:
                per_layer.append(layer_head_stats(layer.query, layer.key, call.txt.shape[1], call.image_grid))
                done += 1
                if progress is not None:
                    progress(done, total)
            per_image.append(per_layer)
        per_step.append(per_image)
    values = {name: _stacked(per_step, lambda stats, name=name: stats.values[name]) for name in METRICS}
    focus = _stacked(per_step, lambda stats: stats.token_focus)
    return HeadProfile(values, focus, tuple(step for step, _ in calls), tuple(call.sigma for _, call in calls))


def _stacked(per_step: list[list[list[LayerHeadStats]]],
             read: Callable[[LayerHeadStats], torch.Tensor]) -> torch.Tensor:
    """[images, steps, layers, heads, ...] on the CPU from [step][image][layer] statistics."""
    return torch.stack([torch.stack([torch.stack([read(stats) for stats in layers]) for layers in images])
                        for images in per_step], dim=1).cpu()
