"""Patch the library's reference FLUX model for one `with` block: the standalone counterpart of
what the ComfyUI nodes do with object patches and wrappers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ..flux.model import Flux
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .call_inputs import keep_call_inputs
from .patched_mlp import CallContext, MlpMode, PatchedMLP
from .recording import COND, FeatureRecording
from .steering import Steering


@contextmanager
def patch_reference_model(
    model: Flux,
    transcoders: TranscoderSet,
    *,
    sites: Iterable[SiteKey] | None = None,
    mode: MlpMode = "observe",
    recording: FeatureRecording | None = None,
    steering: Iterable[Steering] = (),
    chunks: tuple[int, ...] = (COND,),
) -> Iterator[CallContext]:
    """Replace the chosen sites' MLPs (default: every site the transcoders hold) while the block
    runs; `model(x, timestep, ...)` publishes its timesteps (= sigmas) to the patches, and the first
    double block's inputs are kept for the recording's `keep_input_steps`. `chunks`
    labels the equal parts of each batch (0 cond, 1 uncond), as ComfyUI's cond_or_uncond does."""
    transcoders.check_model(model.config.hidden_size, model.config.depth)
    context = CallContext(chunks=chunks)
    steering = tuple(steering)
    originals: dict[SiteKey, object] = {}

    def publish(_module: Flux, args: tuple, kwargs: dict) -> None:
        x = kwargs["x"] if "x" in kwargs else args[0]
        text = kwargs["context"] if "context" in kwargs else args[2]
        context.sigmas = (kwargs["timestep"] if "timestep" in kwargs else args[1]).detach()
        patch = model.config.patch_size
        context.image_grid = (-(-x.shape[-2] // patch), -(-x.shape[-1] // patch))  # ComfyUI pads to whole patches
        context.text_tokens = text.shape[1]

    def keep_inputs(_block: object, args: tuple, kwargs: dict) -> None:
        if recording is not None:
            keep_call_inputs(recording, context, kwargs["img"], kwargs["txt"], kwargs["vec"], kwargs["pe"])

    hooks = [
        model.register_forward_pre_hook(publish, with_kwargs=True),
        model.double_blocks[0].register_forward_pre_hook(keep_inputs, with_kwargs=True),
    ]
    try:
        for stream, layer in sites if sites is not None else transcoders:
            block = model.double_blocks[layer]
            originals[(stream, layer)] = getattr(block, f"{stream}_mlp")
            patch = PatchedMLP(
                originals[(stream, layer)],
                transcoders[(stream, layer)],
                context,
                mode=mode,
                recording=recording,
                steering=steering,
            )
            setattr(block, f"{stream}_mlp", patch)
        yield context
    finally:
        for hook in hooks:
            hook.remove()
        for (stream, layer), mlp in originals.items():
            setattr(model.double_blocks[layer], f"{stream}_mlp", mlp)
        context.sigmas = None
        context.image_grid = context.text_tokens = None
