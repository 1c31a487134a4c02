"""The inputs of FLUX's first double block in one model call, kept so that Trace Circuit can
replay that call's double blocks exactly (one sigma, one cond/uncond chunk)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BatchIndexError, UnsupportedModelError
from ..spatial import Grid
from .patched_mlp import CallContext
from .recording import FeatureRecording


@dataclass(frozen=True)
class CallInputs:
    """Residual streams entering `double_blocks.0`, the conditioning vector and RoPE rotations.

    `img` [B, S_img, D], `txt` [B, S_txt, D], `vec` [B, D], `pe` [B or 1, 1, S_txt + S_img, d/2, 2, 2];
    all rows belong to one chunk of one call, stored on the CPU in the model's dtype."""

    img: torch.Tensor
    txt: torch.Tensor
    vec: torch.Tensor
    pe: torch.Tensor
    sigma: float
    chunk: int
    image_grid: Grid | None

    @property
    def batch(self) -> int:
        return self.img.shape[0]

    def row(self, index: int) -> CallInputs:
        """One image of the batch (tracing explains one image at a time)."""
        if not 0 <= index < self.batch:
            raise BatchIndexError(f"batch index {index} is out of range: this call holds {self.batch} image(s) "
                                  f"(0..{self.batch - 1})")
        pe = self.pe if self.pe.shape[0] == 1 else self.pe[index : index + 1]
        pick = slice(index, index + 1)
        return CallInputs(
            self.img[pick], self.txt[pick], self.vec[pick], pe, self.sigma, self.chunk, self.image_grid
        )

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.img, self.txt, self.vec, self.pe))


def keep_call_inputs(
    recording: FeatureRecording,
    context: CallContext,
    img: torch.Tensor,
    txt: torch.Tensor,
    vec: object,
    pe: torch.Tensor | None,
    attn_mask: torch.Tensor | None = None,
) -> None:
    """Store the first double block's inputs for every recorded chunk of this call whose step is
    one of `recording.keep_input_steps`."""
    if not recording.keep_input_steps or not recording.schedule:
        return
    if not isinstance(vec, torch.Tensor) or pe is None:
        raise UnsupportedModelError(
            "this model's double blocks take no plain conditioning vector or no RoPE (a Chroma/Flux 2 style "
            "model): Trace Circuit supports FLUX.1; leave keep_inputs_at_steps empty"
        )
    if attn_mask is not None:
        raise UnsupportedModelError(
            "this model call uses an attention mask, which Trace Circuit does not replay; "
            "leave keep_inputs_at_steps empty for masked-attention workflows"
        )
    for chunk, rows in context.rows(img.shape[0]):
        sigma = float(context.sigmas[rows][0])
        if chunk not in recording.chunks or recording.step_of(sigma) not in recording.keep_input_steps:
            continue
        pe_rows = pe if pe.shape[0] == 1 else pe[rows]
        # copies: ComfyUI's blocks add to their inputs in place
        recording.calls[(sigma, chunk)] = CallInputs(
            img[rows].detach().to("cpu", copy=True),
            txt[rows].detach().to("cpu", copy=True),
            vec[rows].detach().to("cpu", copy=True),
            pe_rows.detach().to("cpu", copy=True),
            sigma,
            chunk,
            context.image_grid,
        )
