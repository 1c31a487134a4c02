"""One FLUX call, whoever drives it: the call is published (its sigmas, chunks and token layout go
into the shared CallContext), the site MLPs record, replace or steer through their patches, and the
first double block's inputs are kept for tracing; when the call ends the context is cleared.

The hosts are thin adapters over these functions: `reference.py` (torch hooks and setattr on the
library's model), the pack's `nodes/model_patching.py` (ComfyUI's wrappers and object patches) and
`training/harvest.py` (forward hooks that read each MLP's input and output).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..transcoders.config import Site
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .call_inputs import keep_call_inputs
from .patched_mlp import CallContext, MlpMode, PatchedMLP
from .recording import COND, FeatureRecording
from .steering import Steering

CONTROLNET_SKIP = "a ControlNet adds to the residual stream between blocks, which tracing cannot replay"


def flux_call(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, timestep, text context) of a FLUX call `model(x, timestep, context, ...)`, given
    positionally or by name (the library's model says `timestep`, ComfyUI's `forward` `timesteps`)."""

    def argument(index: int, *names: str) -> torch.Tensor:
        for name in names:
            if name in kwargs:
                return kwargs[name]
        return args[index]

    return argument(0, "x"), argument(1, "timestep", "timesteps"), argument(2, "context")


def publish_call(
    context: CallContext,
    x: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    patch_size: int,
    *,
    chunks: Sequence[int] = (COND,),
    sigmas: torch.Tensor | None = None,
) -> None:
    """Tell the patches what this call is: one sigma per batch row (from `sigmas`, one per latent,
    when the host has them; FLUX's timestep equals sigma), the chunk of each equal part of the
    batch (0 cond, 1 uncond), and the image-token grid and text length."""
    context.chunks = tuple(int(chunk) for chunk in chunks)
    context.sigmas = row_sigmas(sigmas, timestep, len(context.chunks))
    context.image_grid = (-(-x.shape[-2] // patch_size), -(-x.shape[-1] // patch_size))  # FLUX pads to whole patches
    context.text_tokens = int(text.shape[1])


@contextmanager
def sampling_run(context: CallContext, recordings: Iterable[FeatureRecording], sigmas: torch.Tensor) -> Iterator[None]:
    """One sampling run over `sigmas`: the recordings start empty and are complete only when the run
    ends normally; the call context is cleared however it ends."""
    recordings = tuple(recordings)
    for recording in recordings:
        recording.start_run(sigmas.detach().cpu())
    try:
        yield
    finally:
        end_call(context)
    for recording in recordings:
        recording.finish_run()


@contextmanager
def one_call(
    context: CallContext,
    recordings: Iterable[FeatureRecording],
    call: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    patch_size: int,
    first_block: nn.Module,
    *,
    chunks: Sequence[int] = (COND,),
    sigmas: torch.Tensor | None = None,
    control: object = None,
) -> Iterator[None]:
    """One FLUX call (`call` as `flux_call` returns it): published to the patches, the first block's
    inputs kept for the recordings that keep them, and everything undone when the call ends."""
    publish_call(context, *call, patch_size, chunks=chunks, sigmas=sigmas)
    hook = keep_inputs_hook(first_block, context, recordings, control)
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        end_call(context)


def end_call(context: CallContext) -> None:
    context.sigmas = None
    context.chunks = (COND,)
    context.image_grid = context.text_tokens = None


def row_sigmas(sigmas: torch.Tensor | None, timestep: torch.Tensor, chunks: int) -> torch.Tensor:
    """One sigma per batch row. A host's sigmas hold one per latent (not repeated per chunk);
    FLUX's timestep argument equals sigma and covers every row."""
    timestep = timestep.detach().reshape(-1)
    if sigmas is None:
        return timestep
    sigmas = sigmas.detach().reshape(-1).to(timestep.device)
    if sigmas.numel() * chunks == timestep.numel():
        return sigmas.repeat(chunks)
    return sigmas if sigmas.numel() == timestep.numel() else timestep


def site_patch(
    current: nn.Module,
    transcoder: Any,
    context: CallContext,
    *,
    mode: MlpMode | None = None,
    recording: FeatureRecording | None = None,
    steering: Iterable[Steering] = (),
) -> PatchedMLP:
    """What a site's MLP becomes. `current` is FLUX's MLP or a patch put there before (an upstream
    node's): steering adds to the steering already there; a recording or a mode replaces the
    upstream one's (None keeps it)."""
    steering = tuple(steering)
    if not isinstance(current, PatchedMLP):
        return PatchedMLP(current, transcoder, context, mode=mode or "observe", recording=recording, steering=steering)
    if mode is None and recording is None:
        patch = current
        for spec in steering:
            patch = patch.with_steering(spec)
        return patch
    return PatchedMLP(current.mlp, transcoder, context, mode=mode or "observe", recording=recording,
                      steering=(*current.steering, *steering))


def install(
    get_module: Callable[[str], nn.Module],
    put_module: Callable[[str, nn.Module], None],
    transcoders: TranscoderSet,
    sites: Iterable[SiteKey],
    context: CallContext,
    **patch: Any,
) -> None:
    """Patch each site's MLP through the host's module accessors (paths as `Site.module_path`);
    `patch` is site_patch's mode, recording and steering."""
    for key in sites:
        site = Site(*key)
        put_module(site.module_path, site_patch(get_module(site.module_path), transcoders[site], context, **patch))


def keep_inputs_hook(
    first_block: nn.Module, context: CallContext, recordings: Iterable[FeatureRecording], control: object = None
) -> torch.utils.hooks.RemovableHandle | None:
    """For the recordings that keep call inputs: a pre-hook on the first double block that copies its
    inputs for Trace Circuit (the host removes it when the call ends). A ControlNet call is marked
    skipped instead."""
    keeping = [recording for recording in recordings if recording.keep_input_steps]
    if not keeping:
        return None
    if control is not None:
        for recording in keeping:
            recording.skipped = CONTROLNET_SKIP
        return None

    def keep(_block: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
        for recording in keeping:
            keep_call_inputs(recording, context, kwargs["img"], kwargs["txt"], kwargs["vec"], kwargs["pe"],
                             kwargs.get("attn_mask"))

    return first_block.register_forward_pre_hook(keep, with_kwargs=True)
