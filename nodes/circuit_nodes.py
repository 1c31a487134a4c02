"""Trace Circuit and Steer Circuit: attribution graphs of a recorded FLUX call, and steering a
whole circuit back into the model.

ComfyUI surface used (beyond model_patching): `ModelPatcher.load_device`,
`comfy.model_management.load_models_gpu`, and `comfy.ops.cast_bias_weight` for layers built with
ComfyUI's ops (it applies LoRA weight functions and dequantises fp8 weights).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

import comfy.model_management
import torch
from comfy_api.latest import io

from ..diffract_core.attribution import (
    CIRCUIT_MODES,
    NODES_HELP,
    STEP_CHOICES,
    TARGET_HELP,
    TARGET_MODES,
    CircuitGraph,
    Pruning,
    TargetSpec,
    TraceSettings,
    circuit_steering,
    read_plain_linear,
    trace_circuit,
)
from ..diffract_core.errors import DiffractError, FeatureSpecError
from ..diffract_core.features import check_features
from ..diffract_core.recording import FeatureRecording
from ..diffract_core.render import render_circuit
from ..diffract_core.transcoders import TranscoderSet
from . import circuit_store
from .inspect_nodes import preview_ref, token_labels
from .model_patching import check_flux, steer_features
from .node_types import AFTER_SAMPLING, CATEGORY, CHUNK_CHOICES, CHUNKS, Circuit, Recording, Transcoders
from .progress import NodeProgress
from .transcoder_memory import site_patchers

_TARGET = re.compile(r"^(?P<stream>img|txt):(?P<layer>\d+)(?::(?P<index>\d+))?$")
TARGET_SPEC_HELP = "stream:layer:feature, e.g. img:12:40684; for strongest_in_region the site alone, e.g. img:12"

_log = logging.getLogger(__name__)


def parse_target(text: str, mode: str, position: int, region: torch.Tensor | None) -> TargetSpec:
    match = _TARGET.match(text.strip())
    if match is None:
        raise FeatureSpecError(f"{text!r} is not a target; write {TARGET_SPEC_HELP}")
    index = None if match["index"] is None else int(match["index"])
    if index is None and mode != "strongest_in_region":
        raise FeatureSpecError(f"{text!r} names a site but no feature; write {TARGET_SPEC_HELP}")
    return TargetSpec(match["stream"], int(match["layer"]), index, mode, position=position, region=region)  # type: ignore[arg-type]


def read_comfy_linear(module: torch.nn.Module, dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights as ComfyUI computes with them (LoRA weight functions, fp8 dequantised). Layers of op
    sets that dequantise in a `cast_bias_weight` method of their own (ComfyUI-GGUF's quantised
    layers) are read through it: comfy.ops' function would cast their packed blocks as numbers."""
    if hasattr(module, "weight_function") and hasattr(module, "comfy_cast_weights"):
        import comfy.ops

        own = getattr(type(module), "cast_bias_weight", None)
        if callable(own):
            return own(module, None, dtype=dtype, device=device, bias_dtype=dtype)
        return comfy.ops.cast_bias_weight(module, None, dtype=dtype, device=device, bias_dtype=dtype)
    return read_plain_linear(module, dtype, device)


class TraceCircuit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractTraceCircuit",
            display_name="Trace Circuit",
            category=CATEGORY,
            description="Explain one feature of a recorded step: the attribution graph of which text and image "
            "features, through which layers, produced it. Exact (every node's inputs add up to it) and spatial.",
            inputs=[
                io.Model.Input("model", tooltip="the MODEL output of Record Features"),
                Recording.Input("recording", tooltip="from Record Features, with the step in keep_inputs_at_steps"),
                Transcoders.Input("transcoders"),
                io.Latent.Input("samples", tooltip=AFTER_SAMPLING),
                io.String.Input("target", default="img:12:0", tooltip=TARGET_SPEC_HELP),
                io.Combo.Input("target_mode", options=list(TARGET_MODES), default="argmax", tooltip=TARGET_HELP),
                io.Int.Input("position", default=0, min=0, max=1_000_000,
                             tooltip="token index for position targets (image tokens row by row)"),
                io.Int.Input("step", default=0, min=0, max=10_000),
                io.Combo.Input("chunk", options=list(CHUNKS), default="cond"),
                io.Int.Input("batch_index", default=0, min=0, max=4096),
                io.Int.Input("max_feature_nodes", default=1000, min=0, max=100_000,
                             tooltip="budget of expanded features"),
                io.Float.Input("node_threshold", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="share of influence the pruned graph keeps"),
                io.Float.Input("edge_threshold", default=0.98, min=0.0, max=1.0, step=0.001),
                io.Int.Input("batch_size", default=64, min=1, max=4096,
                             tooltip="the most target rows per backward pass; fewer where free memory is short "
                             "(the console says so; the graph is the same)"),
                io.Int.Input("max_active", default=128, min=1, max=65536,
                             tooltip="features per token kept as graph sources; the rest join the error node"),
                io.Int.Input("faithfulness_checks", default=10, min=0, max=1000,
                             tooltip="ablate this many top features in the real model and compare with the graph "
                             "(0: skip)"),
                io.Mask.Input("region", optional=True, tooltip="the image region for region targets"),
                io.Image.Input("image", optional=True,
                               tooltip="the decoded image: the graph widget draws heatmaps and regions on it"),
                io.Clip.Input("clip", optional=True, tooltip="FLUX's CLIP, to label text tokens"),
                io.String.Input("prompt", default="", optional=True, multiline=True,
                                tooltip="the prompt, to label text tokens"),
            ],
            outputs=[Circuit.Output(display_name="CIRCUIT"), io.Image.Output(display_name="graph")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        recording: FeatureRecording,
        transcoders: TranscoderSet,
        samples: dict[str, Any],
        target: str,
        target_mode: str,
        position: int,
        step: int,
        chunk: str,
        batch_index: int,
        max_feature_nodes: int,
        node_threshold: float,
        edge_threshold: float,
        batch_size: int,
        max_active: int,
        faithfulness_checks: int,
        region: torch.Tensor | None = None,
        clip: Any = None,
        prompt: str = "",
        image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        spec = parse_target(target, target_mode, position, region)
        call = recording.call_inputs(step, CHUNKS[chunk])
        if not 0 <= batch_index < call.batch:
            raise DiffractError(f"batch_index {batch_index} is out of range: step {step} holds {call.batch} image(s)")
        check_flux(model, transcoders, [(spec.stream, spec.layer)])
        labels = token_labels(clip, prompt) if clip is not None and prompt.strip() else None
        if labels is not None and len(labels) != call.txt.shape[1]:
            labels = None  # another prompt than the traced one: fall back to token numbers
        traced_sites = [site for site in transcoders.sites if site[1] <= spec.layer]
        comfy.model_management.load_models_gpu([model, *site_patchers(transcoders, traced_sites)])
        blocks = model.get_model_object("diffusion_model").double_blocks
        progress = NodeProgress(max(max_feature_nodes, 1), node_id=cls.hidden.unique_id)
        graph = trace_circuit(
            blocks,
            transcoders,
            call.row(batch_index),
            spec,
            step=step,
            settings=TraceSettings(max_feature_nodes=max_feature_nodes, batch_size=batch_size, max_active=max_active,
                                   faithfulness_checks=faithfulness_checks),
            read_linear=read_comfy_linear,
            device=model.load_device,
            text_tokens=labels,
            progress=lambda done, total: progress.update(done, total),
        )
        metadata = graph.require_metadata()
        if metadata.passes is not None and metadata.passes.rows_per_pass < batch_size:
            _log.warning("Trace Circuit: %d target row(s) per backward pass instead of batch_size %d, as the "
                         "free memory allows (more passes, same graph)", metadata.passes.rows_per_pass, batch_size)
        graph.metadata = replace(metadata, pruning=Pruning(node_threshold, edge_threshold))
        pruned = graph.subgraph(graph.prune(node_threshold, edge_threshold))
        picture = render_circuit(pruned)
        atlas = transcoders.atlas
        circuit_id = circuit_store.publish(graph, atlas)
        payload = circuit_store.summary(graph, circuit_id, atlas=atlas)
        payload["pruned"] = {"nodes": len(pruned.nodes), "edges": int(pruned.edge_weights.numel())}
        payload["image"] = preview_ref(image, batch_index, cls)
        # No in-node image preview: the circuit widget replaces it, and a preview would grow the node after
        # the run, over its neighbours. The picture is the `graph` output, for Preview Image or Save Image.
        return io.NodeOutput(graph, picture, ui={"diffract_circuit": [payload]})


class SteerCircuit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractSteerCircuit",
            display_name="Steer Circuit",
            category=CATEGORY,
            description="Scale or ablate a circuit's features at the step and token positions where the graph found "
            "them (delta form: scale 1 leaves the image bit-identical).",
            inputs=[
                io.Model.Input("model"),
                Transcoders.Input("transcoders"),
                Circuit.Input("circuit"),
                io.Combo.Input("mode", options=list(CIRCUIT_MODES), default="scale",
                               tooltip="scale: z * strength; ablate: z = 0"),
                io.Float.Input("strength", default=0.0, min=-100.0, max=100.0, step=0.01),
                io.String.Input("nodes", default="all", tooltip=NODES_HELP),
                io.Combo.Input("steps", options=list(STEP_CHOICES), default="traced step",
                               tooltip="at the traced step only, or every step at the same positions"),
                io.Combo.Input("apply_to", options=list(CHUNK_CHOICES), default="cond+uncond"),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        transcoders: TranscoderSet,
        circuit: CircuitGraph,
        mode: str,
        strength: float,
        nodes: str,
        steps: str,
        apply_to: str,
    ) -> io.NodeOutput:
        spec = circuit_steering(circuit, nodes, mode=mode, strength=strength, steps=steps,  # type: ignore[arg-type]
                                chunks=CHUNK_CHOICES[apply_to])
        check_features(list(spec.features), transcoders)
        return io.NodeOutput(steer_features(model, transcoders, spec))
