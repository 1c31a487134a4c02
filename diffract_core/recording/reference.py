"""Patch the library's reference FLUX model for one `with` block: the standalone counterpart of
what the ComfyUI nodes do with object patches and wrappers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from ..flux.model import Flux
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .lifecycle import end_call, flux_call, install, keep_inputs_hook, publish_call
from .patched_mlp import CallContext, MlpMode
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
    originals: dict[str, nn.Module] = {}

    def publish(_model: Flux, args: tuple, kwargs: dict) -> None:
        publish_call(context, *flux_call(args, kwargs), model.config.patch_size, chunks=chunks)

    def put(path: str, module: nn.Module) -> None:
        parent, name = path.rsplit(".", 1)
        originals.setdefault(path, model.get_submodule(path))
        setattr(model.get_submodule(parent), name, module)

    hooks = [model.register_forward_pre_hook(publish, with_kwargs=True)]
    try:
        kept = keep_inputs_hook(model.double_blocks[0], context, [recording] if recording is not None else [])
        hooks += [kept] if kept is not None else []
        install(model.get_submodule, put, transcoders, sites if sites is not None else transcoders, context,
                mode=mode, recording=recording, steering=steering)
        yield context
    finally:
        for hook in hooks:
            hook.remove()
        for path, mlp in originals.items():
            parent, name = path.rsplit(".", 1)
            setattr(model.get_submodule(parent), name, mlp)
        end_call(context)
