"""Feature Connections: a feature's strongest input-invariant connections (virtual weights) to the
transcoder features of earlier and later layers of its stream, at one sigma.

ComfyUI surface used (beyond model_patching and circuit_nodes' weight reader): a MODEL's
`get_model_object("diffusion_model")` and `load_device`, `comfy.model_management.load_models_gpu`,
and a CONDITIONING's `pooled_output` and `guidance` entries.
"""

from __future__ import annotations

from typing import Any

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..diffract_core.atlas import feature_labels
from ..diffract_core.attribution import DEFAULT_GUIDANCE, ResidualModulation, VirtualWeights, conditioning_vector
from ..diffract_core.errors import FeatureSpecError
from ..diffract_core.features import SPEC_HELP, FeatureRef, check_features, parse_features
from ..diffract_core.render import format_connections, render_connections
from ..diffract_core.transcoders import TranscoderSet
from .circuit_nodes import read_comfy_linear
from .model_patching import check_flux
from .node_types import CATEGORY, Transcoders

CONDITIONING_HELP = (
    "the prompt's conditioning: its pooled text vector (and FluxGuidance's guidance) enter FLUX's vec, which sets "
    f"the gates and scales the residual path passes; without it, a zero pooled vector (and guidance {DEFAULT_GUIDANCE} "
    "for FLUX.1 dev). The first entry counts"
)


def _one_feature(text: str) -> FeatureRef:
    refs = parse_features(text)
    if len(refs) != 1:
        raise FeatureSpecError(f"give one feature, not {len(refs)} ({', '.join(map(str, refs))}): {SPEC_HELP}")
    return refs[0]


def _pooled_and_guidance(conditioning: list[Any] | None) -> tuple[torch.Tensor | None, float | None]:
    if not conditioning:
        return None, None
    extras = conditioning[0][1]
    guidance = extras.get("guidance")
    return extras.get("pooled_output"), None if guidance is None else float(guidance)


class FeatureConnections(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractFeatureConnections",
            display_name="Feature Connections",
            category=CATEGORY,
            description="A feature's strongest connections through the residual stream alone, from the weights: "
            "the features of earlier layers that write into it and those of later layers it writes into "
            "(virtual weights at one sigma; the same for every image, unlike a circuit's edges).",
            inputs=[
                Transcoders.Input("transcoders"),
                io.Model.Input("model", tooltip="FLUX: its blocks' modulation scales the residual path"),
                io.String.Input("feature", default="img:3:0", tooltip="one feature: " + SPEC_HELP),
                io.Float.Input("sigma", default=0.75, min=0.0, max=1.0, step=0.01,
                               tooltip="the noise level: the transcoders' FiLM and FLUX's modulation depend on it"),
                io.Int.Input("top_k", default=10, min=1, max=500, tooltip="connections listed on each side"),
                io.Conditioning.Input("conditioning", optional=True, tooltip=CONDITIONING_HELP),
            ],
            outputs=[io.String.Output(display_name="table"), io.Image.Output(display_name="chart")],
            is_output_node=True,  # shows its table and chart in the node even with nothing connected
        )

    @classmethod
    def execute(
        cls,
        transcoders: TranscoderSet,
        model: Any,
        feature: str,
        sigma: float,
        top_k: int,
        conditioning: list[Any] | None = None,
    ) -> io.NodeOutput:
        ref = _one_feature(feature)
        check_features([ref], transcoders)
        check_flux(model, transcoders, [])
        comfy.model_management.load_models_gpu([model])
        device = model.load_device
        diffusion_model = model.get_model_object("diffusion_model")
        pooled, guidance = _pooled_and_guidance(conditioning)
        vec = conditioning_vector(diffusion_model, sigma, pooled, guidance, read_linear=read_comfy_linear,
                                  device=device)
        layers = [layer for stream, layer in transcoders.sites if stream == ref.stream]
        modulation = ResidualModulation.from_blocks(diffusion_model.double_blocks, vec, layers=layers,
                                                    streams=[ref.stream], read_linear=read_comfy_linear,
                                                    device=device)
        connections = VirtualWeights(transcoders, modulation, sigma, device=device).strongest(ref, top_k)
        atlas = transcoders.atlas
        others = [c.source for c in connections.upstream] + [c.target for c in connections.downstream]
        labels = None if atlas is None else feature_labels(atlas, [ref, *others])
        table = format_connections(connections, labels)
        chart = render_connections(connections, labels)[None]
        return io.NodeOutput(table, chart, ui={**ui.PreviewImage(chart, cls=cls).as_dict(), "text": [table]})
