"""Fake of comfy.model_patcher.ModelPatcher(model, load_device, offload_device): the fake runtime's
patcher over a model built by comfy.supported_models, or over any module (as ComfyUI wraps CLIP
vision, upscalers or a pack's own weights)."""

from __future__ import annotations

from typing import Any

import torch
from fake_runtime import ModelPatcher as _RuntimePatcher


class ModelPatcher(_RuntimePatcher):
    def __init__(self, model: Any, load_device: torch.device, offload_device: torch.device, size: int = 0,
                 weight_inplace_update: bool = False) -> None:
        super().__init__(getattr(model, "diffusion_model", model))
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
