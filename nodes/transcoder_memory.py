"""Transcoders under ComfyUI's model management.

Each transcoder site gets one ModelPatcher of its own (made once, kept on the site's module), and
a patched MODEL carries the patchers of its sites as additional models. So ComfyUI loads them
together with FLUX before sampling and counts them in its memory estimates, lists them among its
loaded models, offloads them when another model needs the room, and releases them on `/free` and
"unload models"; the next run loads them again. One patcher per site means chained nodes that
patch the same site share its patcher (ComfyUI treats clones of one patcher as one model), and
ComfyUI can offload sites one at a time. Where ComfyUI leaves a site's weights on the offload device
(low VRAM: a partial load moves only leaf modules, so the encoder and decoder stay behind), the MLP
patch leaves them there and casts them to the activations' device per call, a block of rows at a time.

ComfyUI surface used: `comfy.model_patcher.ModelPatcher(module, load_device, offload_device)`,
`ModelPatcher.set_additional_models` / `.get_additional_models_with_key` (loaded by the sampler with
the model, cloned with it), `comfy.model_management.get_torch_device` / `unet_offload_device`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import comfy.model_management
import comfy.model_patcher
import torch

from ..diffract_core.transcoders import SiteKey, Transcoder, TranscoderSet

KEY = "diffract_transcoders"


class TranscoderSite(torch.nn.Module):
    """What ComfyUI loads and offloads: one site's transcoder (its parameters, not a copy)."""

    def __init__(self, transcoder: Transcoder) -> None:
        super().__init__()
        self.transcoder = transcoder
        self.device = transcoder.device


def site_patcher(transcoder: Transcoder) -> Any:
    """The site's ModelPatcher, made on first use."""
    patcher = transcoder.__dict__.get("comfy_patcher")
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(
            TranscoderSite(transcoder),
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        transcoder.__dict__["comfy_patcher"] = patcher
        transcoder.placement_managed = True  # the MLP patch now leaves it where ComfyUI puts it
    return patcher


def site_patchers(transcoders: TranscoderSet, sites: Iterable[SiteKey]) -> list[Any]:
    return [site_patcher(transcoders[site]) for site in dict.fromkeys(sites)]


def attach_transcoders(clone: Any, transcoders: TranscoderSet, sites: Iterable[SiteKey]) -> None:
    """Make `clone` (a patched MODEL) carry its sites' patchers, besides those an upstream node attached."""
    attached = clone.get_additional_models_with_key(KEY)
    models = {id(patcher.model): patcher for patcher in attached}
    for patcher in site_patchers(transcoders, sites):
        models.setdefault(id(patcher.model), patcher)
    clone.set_additional_models(KEY, list(models.values()))
