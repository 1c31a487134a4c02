"""Steer Feature: change chosen features' activations during part of sampling, optionally in a region."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..diffract_core.features import SPEC_HELP, check_features, parse_features
from ..diffract_core.recording import STEER_MODES, SteeringSpec
from ..diffract_core.spatial import check_mask_proportions
from ..diffract_core.transcoders import TranscoderSet
from .model_patching import sigma_window, steer_features
from .node_types import CATEGORY, CHUNK_CHOICES, Transcoders

STEER_HELP = (
    "scale: z * strength; set: z = strength; add: z + strength; ablate: z = 0. Applied in delta form, "
    "y + W_dec (z' - z), so scale 1 or add 0 leaves the image bit-identical"
)
MASK_NAME = "mask input of Steer Feature"


class SteerFeature(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractSteerFeature",
            display_name="Steer Feature",
            category=CATEGORY,
            description="Change transcoder features while FLUX samples. Several Steer Feature nodes chain on one "
            "MODEL and add up; they work with or without Record Features.",
            inputs=[
                io.Model.Input("model"),
                Transcoders.Input("transcoders"),
                io.String.Input("features", default="img:0:0", tooltip=SPEC_HELP),
                io.Combo.Input("mode", options=list(STEER_MODES), default="scale", tooltip=STEER_HELP),
                io.Float.Input("strength", default=1.0, min=-1000.0, max=1000.0, step=0.01),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
                io.Combo.Input("apply_to", options=list(CHUNK_CHOICES), default="cond+uncond"),
                io.Mask.Input("mask", optional=True, tooltip="steer image tokens inside this region only; a picture "
                              "of the generated image (its aspect ratio, any resolution)"),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        transcoders: TranscoderSet,
        features: str,
        mode: str,
        strength: float,
        start_percent: float,
        end_percent: float,
        apply_to: str,
        mask: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        refs = parse_features(features)
        check_features(refs, transcoders)
        if mask is not None:
            # The latent is unknown here: refuse now what fits no image; the aspect is checked per model call.
            check_mask_proportions(mask, MASK_NAME)
        sigma_start, sigma_end = sigma_window(model, start_percent, end_percent)
        spec = SteeringSpec(
            tuple(refs),
            mode,  # type: ignore[arg-type]
            strength,
            sigma_start=sigma_start,
            sigma_end=sigma_end,
            mask=None if mask is None else mask.detach().float().cpu(),
            chunks=CHUNK_CHOICES[apply_to],
            mask_name=MASK_NAME,
        )
        return io.NodeOutput(steer_features(model, transcoders, spec))
