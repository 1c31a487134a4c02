"""The module that takes the place of a FLUX double-block MLP (`double_blocks.{L}.{img|txt}_mlp`).

It runs the original MLP, then, through the site's transcoder: records the top-k features of the
chosen chunks, optionally replaces the output (`replace`: transcoder output plus the per-token error
term, equal to the MLP output to float precision; `replace_without_error`: the transcoder alone),
and adds the steering deltas. The same class serves ComfyUI's Flux blocks and the library's
reference model; whoever calls the diffusion model publishes the call's sigmas and chunks in the
shared `CallContext`.

The patch adopts the original MLP's children and parameters under their own names, so the model's
state-dict keys do not change while it is in place: ComfyUI's weight patches (LoRA) and its loader
still find `double_blocks.{L}.img_mlp.0.weight`. The transcoder is not a child module, so a
model-wide `.to()` never casts it. Where it runs is `moves_transcoder`'s choice: one that nobody
manages moves to the activations' device on first use; one that ComfyUI manages stays where ComfyUI
put it (on the CPU under low VRAM), and its weights are cast to the activations' device per call, a
chunk of rows at a time, as comfy.ops does for offloaded layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import DiffractError, SettingsError
from ..spatial import Grid
from ..transcoders.transcoder import SparseCodes, Transcoder
from ..transcoders.transcoder_set import SiteKey
from .recording import COND, FeatureRecording, RecordKey
from .steering import Steering

MlpMode = Literal["observe", "replace", "replace_without_error"]
MLP_MODES: tuple[MlpMode, ...] = ("observe", "replace", "replace_without_error")


@dataclass
class CallContext:
    """What the current diffusion-model call is: one sigma per batch row, the chunk labels (0 cond,
    1 uncond) of the equal parts the batch is made of, in batch order, and the token layout."""

    sigmas: torch.Tensor | None = None
    chunks: tuple[int, ...] = (COND,)
    image_grid: Grid | None = None  # (rows, cols) of image tokens
    text_tokens: int | None = None

    def rows(self, batch: int) -> list[tuple[int, slice]]:
        if self.sigmas is None:
            raise DiffractError(
                "a DifFRACT MLP patch ran outside a published model call: the wrapper that publishes sigma "
                "is missing (was the patched model's wrapper removed?)"
            )
        if batch % len(self.chunks):
            raise DiffractError(f"batch of {batch} rows does not split into the call's chunks {self.chunks}")
        size = batch // len(self.chunks)
        return [(chunk, slice(i * size, (i + 1) * size)) for i, chunk in enumerate(self.chunks)]

    def __deepcopy__(self, memo: dict[int, object]) -> CallContext:
        return self


class PatchedMLP(nn.Module):
    def __init__(
        self,
        mlp: nn.Module,
        transcoder: Transcoder,
        context: CallContext,
        *,
        mode: MlpMode = "observe",
        recording: FeatureRecording | None = None,
        steering: tuple[Steering, ...] = (),
    ) -> None:
        super().__init__()
        if mode not in MLP_MODES:
            raise SettingsError(f"mode {mode!r} is not one of {MLP_MODES}")
        for name, child in mlp.named_children():
            self.add_module(name, child)
        for name, param in mlp.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in mlp.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        # Plain attributes, not submodules: see the module docstring.
        object.__setattr__(self, "mlp", mlp)
        object.__setattr__(self, "transcoder", transcoder)
        self.context = context
        self.mode = mode
        self.recording = recording
        self.steering = steering

    def __getitem__(self, index: int) -> nn.Module:
        """Index like the MLP it stands in for (FLUX's MLP is an nn.Sequential): code that reads
        `img_mlp[0].weight` keeps working while the patch is in place."""
        return self.mlp[index]

    @property
    def site(self) -> SiteKey:
        return self.transcoder.config.site.key

    def with_steering(self, spec: Steering) -> PatchedMLP:
        """A new patch that also applies `spec` (chained steering nodes compose this way)."""
        return PatchedMLP(
            self.mlp, self.transcoder, self.context, mode=self.mode, recording=self.recording,
            steering=(*self.steering, spec)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        recording = self.recording if self.recording is not None and self.site in self.recording.sites else None
        if self.mode == "observe" and recording is None and not self.steering:
            return y
        transcoder = self._transcoder_on(x.device)
        context = self.context
        out = y
        reads_output = transcoder.config.input_point == "mlp_out"  # an SAE encodes the MLP output
        for chunk, rows in context.rows(x.shape[0]):
            sigma = float(context.sigmas[rows][0])
            x_rows = y[rows] if reads_output else x[rows]
            z = None
            if self.mode != "observe":
                z, _ = transcoder.encode(x_rows, sigma)
                y_hat = transcoder.decode(z).to(y.dtype)
                replaced = y_hat + (y[rows] - y_hat) if self.mode == "replace" else y_hat
                out = _set_rows(out, rows, replaced)
            if recording is not None and chunk in recording.chunks:
                recording.note_layout(context.image_grid, context.text_tokens)
                key = RecordKey(self.site[0], self.site[1], sigma, chunk)
                recording.add(key, self._top_codes(transcoder, x_rows, sigma, recording.k, z))
            for spec in self.steering:
                if chunk in spec.chunks:
                    delta = spec.delta(transcoder, x_rows, sigma, context.image_grid)
                    if delta is not None:
                        out = _set_rows(out, rows, out[rows] + delta.to(out.dtype))
        return out

    def _transcoder_on(self, device: torch.device) -> Transcoder:
        if moves_transcoder(self.transcoder, device):
            self.transcoder.to(device)
        return self.transcoder

    @staticmethod
    def _top_codes(transcoder: Transcoder, x: torch.Tensor, sigma: float, k: int,
                   z: torch.Tensor | None) -> SparseCodes:
        """Top-k codes, from the dense codes when replace mode already computed them."""
        if z is None:
            return transcoder.encode_topk(x, sigma, k)
        top = torch.topk(z.detach(), k, dim=-1)
        return SparseCodes(indices=top.indices, values=top.values, d_features=transcoder.d_features)


def moves_transcoder(transcoder: Transcoder, device: torch.device) -> bool:
    """Whether the patch moves `transcoder` to the activations' `device` (once) rather than leave it
    where it is and compute with its weights cast per call: only a transcoder no model manager places."""
    return transcoder.device != device and not transcoder.placement_managed


def _set_rows(tensor: torch.Tensor, rows: slice, value: torch.Tensor) -> torch.Tensor:
    """Out of place: the residual stream may be referenced elsewhere."""
    if rows == slice(0, tensor.shape[0]):
        return value
    out = tensor.clone()
    out[rows] = value
    return out
