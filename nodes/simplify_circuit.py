"""Simplify Circuit: the smallest set of a traced circuit's features that keeps its target in the real
model (behaviour preservation, measured by intervention), grouped into a hierarchy of supernodes
that the circuit widget draws folded and unfolds on click.

The circuit does not hold its call's inputs: the node takes the recording of Record Features (with
the circuit's step kept) and the batch index, and checks that the rebuilt target reads the value the
circuit recorded.

ComfyUI surface used: as Trace Circuit (`ModelPatcher.load_device`,
`comfy.model_management.load_models_gpu`, `comfy.ops.cast_bias_weight` through read_comfy_linear).
"""

from __future__ import annotations

from typing import Any

import comfy.model_management
import torch
from comfy_api.latest import io

from ..diffract_core.atlas import feature_labels
from ..diffract_core.attribution import (
    SIMPLIFY_HELP,
    SIMPLIFY_METHODS,
    CircuitGraph,
    CircuitIntervention,
    SimplifySettings,
    simplify_circuit,
)
from ..diffract_core.errors import DiffractError
from ..diffract_core.recording import FeatureRecording
from ..diffract_core.render import render_circuit
from ..diffract_core.transcoders import TranscoderSet
from ..diffract_core.viewer import circuit_refs
from . import circuit_store
from .circuit_nodes import read_comfy_linear
from .inspect_nodes import preview_ref
from .model_patching import check_flux
from .node_types import CATEGORY, CHUNKS, Circuit, Recording, Transcoders
from .transcoder_memory import site_patchers


class SimplifyCircuit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractSimplifyCircuit",
            display_name="Simplify Circuit",
            category=CATEGORY,
            description="Keep the fewest features of a circuit that preserve its target in the real model (every other "
            "feature removed, error terms kept), and group them into supernodes. The preservation is measured, not "
            "predicted: 1 means the target moves as with all the traced features, 0 as with none.",
            inputs=[
                io.Model.Input("model", tooltip="the MODEL output of Record Features"),
                Recording.Input("recording", tooltip="the recording the circuit was traced from (its step kept)"),
                Transcoders.Input("transcoders"),
                Circuit.Input("circuit", tooltip="from Trace Circuit or Load Circuit"),
                io.Int.Input("batch_index", default=0, min=0, max=4096,
                             tooltip="the image the circuit was traced on (Trace Circuit's batch_index)"),
                io.Int.Input("max_features", default=30, min=1, max=10_000,
                             tooltip="the most features the simplified circuit keeps"),
                io.Combo.Input("method", options=list(SIMPLIFY_METHODS), default="search", tooltip=SIMPLIFY_HELP),
                io.Float.Input("tolerance", default=0.1, min=0.0, max=10.0, step=0.01,
                               tooltip="the smallest circuit whose preservation is within this of 1 is kept (else "
                               "the closest to 1)"),
                io.Image.Input("image", optional=True,
                               tooltip="the decoded image: the graph widget draws heatmaps and regions on it"),
            ],
            outputs=[Circuit.Output(display_name="CIRCUIT"), io.Image.Output(display_name="graph"),
                     io.Float.Output(display_name="preservation")],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        recording: FeatureRecording,
        transcoders: TranscoderSet,
        circuit: CircuitGraph,
        batch_index: int,
        max_features: int,
        method: str,
        tolerance: float,
        image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        metadata = circuit.require_metadata()
        chunk = metadata.chunk or "cond"
        if chunk not in CHUNKS:
            raise DiffractError(f"the circuit names the chunk {chunk!r}, not one of {', '.join(CHUNKS)}")
        call = recording.call_inputs(metadata.step, CHUNKS[chunk])
        if not 0 <= batch_index < call.batch:
            raise DiffractError(f"batch_index {batch_index} is out of range: step {metadata.step} holds {call.batch} "
                                "image(s)")
        target = circuit.target
        check_flux(model, transcoders, [(target.stream, target.layer)])
        traced_sites = [site for site in transcoders.sites if site[1] <= target.layer]
        comfy.model_management.load_models_gpu([model, *site_patchers(transcoders, traced_sites)])
        blocks = model.get_model_object("diffusion_model").double_blocks
        intervention = CircuitIntervention.for_call(blocks, transcoders, call.row(batch_index), circuit,
                                                    read_linear=read_comfy_linear, device=model.load_device)
        atlas = transcoders.atlas
        settings = SimplifySettings(max_features=max_features, tolerance=tolerance, method=method)  # type: ignore[arg-type]
        simplified = simplify_circuit(intervention, settings, feature_labels(atlas, circuit_refs(circuit)))
        preservation = simplified.require_metadata().preservation
        assert preservation is not None
        payload = circuit_store.summary(simplified, circuit_store.publish(simplified, atlas), atlas=atlas)
        payload["preservation"] = {"score": preservation.score, "features": preservation.features,
                                   "traced_features": preservation.traced_features, "method": preservation.method}
        payload["image"] = preview_ref(image, batch_index, cls)
        return io.NodeOutput(simplified, render_circuit(simplified), preservation.score,
                             ui={"diffract_circuit": [payload]})
