"""The one module that knows ComfyUI's ModelPatcher: clones, object patches and wrappers.

Every DifFRACT node that changes a MODEL goes through `record_features` or `steer_features`:
- it works on `model.clone()` only, so the MODEL it was given (and a bypassed node) is untouched;
- the MLPs `diffusion_model.double_blocks.{L}.{img|txt}_mlp` are replaced with object patches
  (`PatchedMLP`), which ComfyUI applies while the clone is loaded and undoes afterwards;
- the patched sites' transcoders ride along as additional models (`transcoder_memory`), so ComfyUI
  loads, offloads and frees them with the MODEL;
- a holder in `model_options["transformer_options"]["diffract"]` carries the call context the
  patches read and the recordings to reset; it survives `clone()` without copying anything;
- one `OUTER_SAMPLE` wrapper resets the recordings for each sampling run and marks them complete
  only when the run ends normally, and one `DIFFUSION_MODEL` wrapper publishes each model call's
  sigmas, cond/uncond chunks and token layout. Both are added with `add_wrapper_with_key`, next to
  whatever other packs added;
- for recordings that keep call inputs (for Trace Circuit), the DIFFUSION_MODEL wrapper puts a
  forward pre-hook on `double_blocks[0]` for the duration of that one call and removes it after.

ComfyUI surface used: `ModelPatcher.clone`, `.model_options`, `.add_object_patch`,
`.get_model_object`, `.add_wrapper_with_key`, `.get_wrappers`, `.model` (its `model_config`);
`comfy.patcher_extension.WrappersMP.OUTER_SAMPLE` / `.DIFFUSION_MODEL` and the wrappers' calling
convention (`executor(*args, **kwargs)`, `executor.class_obj` = the guider, or the diffusion model
for DIFFUSION_MODEL); the keyword call `double_blocks[i](img=, txt=, vec=, pe=, attn_mask=)`; the model's
`model_sampling.percent_to_sigma`; `transformer_options["sigmas"]` and `["cond_or_uncond"]`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from comfy.patcher_extension import WrappersMP

from ..diffract_core.errors import SettingsError, UnsupportedModelError
from ..diffract_core.recording import (
    COND,
    CallContext,
    FeatureRecording,
    MlpMode,
    Steering,
    flux_call,
    install,
    one_call,
    sampling_run,
)
from ..diffract_core.transcoders import Site, SiteKey, TranscoderSet
from .transcoder_memory import attach_transcoders

KEY = "diffract"


class DiffractState:
    """What the wrappers of one patched-model lineage share. Immutable: a node that adds a
    recording stores a new state on its clone, so upstream models never see it."""

    def __init__(self, context: CallContext, recordings: tuple[FeatureRecording, ...] = ()) -> None:
        self.context = context
        self.recordings = recordings

    def with_recording(self, recording: FeatureRecording) -> DiffractState:
        return DiffractState(self.context, (*self.recordings, recording))

    def __deepcopy__(self, memo: dict[int, object]) -> DiffractState:
        return self  # ModelPatcher.clone deep-copies model_options; the patches hold this context

    def to(self, *args: Any, **kwargs: Any) -> DiffractState:
        return self  # nothing device-bound here: transcoders follow the activations' device


def mlp_path(site: SiteKey) -> str:
    return f"diffusion_model.{Site(*site).module_path}"


def check_flux(model: Any, transcoders: TranscoderSet, sites: Iterable[SiteKey]) -> None:
    """Refuse a MODEL whose FLUX double-block MLPs the transcoders cannot take over."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    image_model = getattr(config, "unet_config", {}).get("image_model") if config is not None else None
    if image_model is not None and image_model != "flux":
        raise UnsupportedModelError(
            f"the MODEL is a {image_model!r} model, not FLUX: the transcoders were trained on FLUX.1's "
            "double-stream MLPs; load a FLUX.1 [dev] or [schnell] model"
        )
    diffusion_model = model.get_model_object("diffusion_model")
    blocks = getattr(diffusion_model, "double_blocks", None)
    if blocks is None:
        raise UnsupportedModelError(
            f"the MODEL's diffusion model ({type(diffusion_model).__name__}) has no `double_blocks`: it is not "
            "FLUX, or a loader (GGUF, a fused/compiled wrapper) hides FLUX's blocks; load FLUX with the core "
            "Load Diffusion Model / Load Checkpoint nodes"
        )
    # ComfyUI's Flux keeps hidden_size on the module, the library's reference model in its config
    hidden = (getattr(diffusion_model, "hidden_size", None)
              or getattr(getattr(diffusion_model, "config", None), "hidden_size", None))
    transcoders.check_model(hidden if hidden is not None else transcoders.d_model, len(blocks))
    for site in sites:
        try:
            mlp = model.get_model_object(mlp_path(site))
        except AttributeError as exc:
            raise UnsupportedModelError(
                f"the MODEL has no module `{mlp_path(site)}` ({exc}): its double-stream block {site[1]} hides its "
                f"{site[0]} MLP (GGUF or fused loaders do this); load FLUX with the core loaders"
            ) from None
        if not isinstance(mlp, torch.nn.Module):
            raise UnsupportedModelError(
                f"`{mlp_path(site)}` is a {type(mlp).__name__}, not a module: another node replaced FLUX's MLP "
                "in a way DifFRACT cannot wrap; put the DifFRACT nodes before it"
            )


def _clone_with_state(model: Any) -> tuple[Any, DiffractState]:
    clone = model.clone()
    options = clone.model_options.setdefault("transformer_options", {})
    state = options.get(KEY)
    if not isinstance(state, DiffractState):
        state = DiffractState(CallContext())
        options[KEY] = state
    if not clone.get_wrappers(WrappersMP.OUTER_SAMPLE, KEY):
        clone.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, outer_sample_wrapper)
    if not clone.get_wrappers(WrappersMP.DIFFUSION_MODEL, KEY):
        clone.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, KEY, publish_call_wrapper)
    return clone, state


def _install(model: Any, transcoders: TranscoderSet, sites: Iterable[SiteKey],
             **patch: Any) -> tuple[Any, DiffractState]:
    """A clone of `model` with the sites patched as object patches (library paths under `diffusion_model.`)."""
    sites = tuple(sites)
    check_flux(model, transcoders, sites)
    clone, state = _clone_with_state(model)
    install(lambda path: clone.get_model_object(f"diffusion_model.{path}"),
            lambda path, module: clone.add_object_patch(f"diffusion_model.{path}", module),
            transcoders, sites, state.context, **patch)
    attach_transcoders(clone, transcoders, sites)
    return clone, state


def record_features(
    model: Any,
    transcoders: TranscoderSet,
    sites: Iterable[SiteKey],
    recording: FeatureRecording,
    mode: MlpMode = "observe",
) -> Any:
    """A clone of `model` whose chosen MLPs record into `recording` (and run in `mode`).

    Steering already on those MLPs (from nodes upstream) is kept; a recording upstream is replaced
    for these sites."""
    clone, state = _install(model, transcoders, sites, mode=mode, recording=recording)
    clone.model_options["transformer_options"][KEY] = state.with_recording(recording)
    return clone


def steer_features(model: Any, transcoders: TranscoderSet, spec: Steering) -> Any:
    """A clone of `model` that also applies `spec` (a SteeringSpec or CircuitSteering); steering
    specs chain and compose."""
    return _install(model, transcoders, sorted({feature.site for feature in spec.features}), steering=(spec,))[0]


def sigma_window(model: Any, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(sigma_start, sigma_end) of a window in sampling percent, by the model's own model_sampling;
    the window's open ends reach past the schedule so the first and last steps are always in."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise SettingsError(
            f"steering window {start_percent}..{end_percent} is not inside 0..1 with start <= end: "
            "0 is the first step, 1 the end of sampling"
        )
    sampling = model.get_model_object("model_sampling")
    start = math.inf if start_percent <= 0.0 else float(sampling.percent_to_sigma(start_percent))
    end = 0.0 if end_percent >= 1.0 else float(sampling.percent_to_sigma(end_percent))
    return start, end


def outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Around CFGGuider.outer_sample(noise, latent_image, sampler, sigmas, ...): one sampling run."""
    state = executor.class_obj.model_options.get("transformer_options", {}).get(KEY)
    if not isinstance(state, DiffractState):
        return executor(*args, **kwargs)
    with sampling_run(state.context, state.recordings, kwargs["sigmas"] if "sigmas" in kwargs else args[3]):
        return executor(*args, **kwargs)


def publish_call_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Around Flux._forward(x, timestep, context, y, guidance, ref_latents, control, transformer_options)."""
    options = kwargs.get("transformer_options")
    if not isinstance(options, dict):
        options = args[-1]
    state = options.get(KEY)
    if not isinstance(state, DiffractState):
        return executor(*args, **kwargs)
    flux = executor.class_obj
    with one_call(state.context, state.recordings, flux_call(args, kwargs), int(getattr(flux, "patch_size", 2)),
                  flux.double_blocks[0], chunks=options.get("cond_or_uncond") or (COND,), sigmas=options.get("sigmas"),
                  control=kwargs.get("control", args[6] if len(args) > 6 else None)):
        return executor(*args, **kwargs)
