"""Attention Heads: what every double-block head attended to at the recorded steps, and what zeroing
each head does to a chosen feature, as a heat table (layers x heads per step) and JSON data.

It reads a FEATURE_RECORDING with kept inputs, as Trace Circuit does, rather than sampling again:
the user's own sampler, scheduler and CFG produced those calls, the replay of a kept step is exact,
and nothing is sampled twice. A head's ablation is replayed inside the kept call (its effect on the
feature at that step, not through the later steps).

ComfyUI surface used (beyond model_patching and progress): `comfy.model_management.load_models_gpu`,
`ModelPatcher.load_device`, and Trace Circuit's weight reader for ComfyUI's layers.
"""

from __future__ import annotations

import json
from typing import Any

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..diffract_core.errors import DiffractError
from ..diffract_core.features import SPEC_HELP, FeatureRef, parse_features
from ..diffract_core.heads import (
    METRIC_HELP,
    METRICS,
    FeatureEffects,
    classify_heads,
    feature_ablation_effects,
    head_profile,
    heads_payload,
)
from ..diffract_core.recording import CHUNK_NAMES, CallInputs, FeatureRecording
from ..diffract_core.render import render_head_table
from ..diffract_core.sites import parse_steps
from ..diffract_core.transcoders import TranscoderSet
from .circuit_nodes import read_comfy_linear
from .inspect_nodes import _finished, token_labels
from .model_patching import check_flux
from .node_types import AFTER_SAMPLING, CATEGORY, CHUNKS, Recording, Transcoders
from .progress import NodeProgress
from .transcoder_memory import site_patchers

FEATURE_EFFECT = "feature_effect"
METRIC_CHOICES = (*METRICS, FEATURE_EFFECT)
METRIC_TOOLTIP = "; ".join(f"{name}: {help_}" for name, help_ in METRIC_HELP.items()) + (
    f"; {FEATURE_EFFECT}: change of the feature's summed activation when the head is zeroed")


def kept_steps(recording: FeatureRecording, chunk: int) -> list[int]:
    steps = sorted({recording.step_of(sigma) for sigma, kept in recording.calls if kept == chunk})
    if not steps:
        raise DiffractError(
            f"the recording kept no model inputs of the {CHUNK_NAMES.get(chunk, chunk)} chunk: set "
            "keep_inputs_at_steps on Record Features (e.g. 0, 2) and sample again"
        )
    return steps


def _feature(text: str, metric: str, transcoders: TranscoderSet | None) -> FeatureRef | None:
    if not text.strip():
        if metric == FEATURE_EFFECT:
            raise DiffractError(f"metric {FEATURE_EFFECT} needs a feature: write one as {SPEC_HELP}")
        return None
    refs = parse_features(text)
    if len(refs) != 1:
        raise DiffractError(f"give one feature, not {len(refs)}: {', '.join(map(str, refs))}")
    if transcoders is None:
        raise DiffractError(f"feature {refs[0]} needs its transcoders: connect Load Transcoders to transcoders")
    return refs[0]


class AttentionHeads(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractAttentionHeads",
            display_name="Attention Heads",
            category=CATEGORY,
            description="Per head and layer of FLUX's double blocks, at each kept step: attention entropy (overall "
            "and per img/txt route), how far image queries look on the image grid, how much they read the text "
            "(and which tokens), heads grouped into roles, and, for a feature, what zeroing each head does to it.",
            inputs=[
                io.Model.Input("model", tooltip="the MODEL of Record Features (its double blocks are replayed)"),
                Recording.Input("recording", tooltip="from Record Features, with the steps in keep_inputs_at_steps"),
                io.Latent.Input("samples", tooltip=AFTER_SAMPLING),
                io.Combo.Input("metric", options=list(METRIC_CHOICES), default="entropy",
                               tooltip="what the heat table shows: " + METRIC_TOOLTIP),
                io.String.Input("steps", default="all", tooltip="kept steps like 0, 2, or all kept steps"),
                io.Combo.Input("chunk", options=list(CHUNKS), default="cond"),
                io.Int.Input("batch_index", default=0, min=0, max=4096),
                io.String.Input("feature", default="", optional=True,
                                tooltip="a transcoder feature (e.g. img:12:40684): each head's ablation effect on "
                                "it at every shown step; needs transcoders"),
                Transcoders.Input("transcoders", optional=True, tooltip="the transcoders of the feature"),
                io.Clip.Input("clip", optional=True, tooltip="FLUX's CLIP, with the prompt: label the text tokens"),
                io.String.Input("prompt", default="", optional=True, multiline=True,
                                tooltip="the prompt, to label the text tokens"),
            ],
            outputs=[io.Image.Output(display_name="heat_table"), io.String.Output(display_name="data")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        recording: FeatureRecording,
        samples: dict[str, Any],
        metric: str,
        steps: str,
        chunk: str,
        batch_index: int,
        feature: str = "",
        transcoders: TranscoderSet | None = None,
        clip: Any = None,
        prompt: str = "",
    ) -> io.NodeOutput:
        _finished(recording)
        ref = _feature(feature, metric, transcoders)
        chosen = kept_steps(recording, CHUNKS[chunk]) if steps.strip().lower() in ("", "all") else sorted(
            parse_steps(steps))
        calls = [(step, recording.call_inputs(step, CHUNKS[chunk]).row(batch_index)) for step in chosen]
        check_flux(model, transcoders if ref is not None else TranscoderSet({}), [ref.site] if ref else [])
        comfy.model_management.load_models_gpu(
            [model, *(site_patchers(transcoders, [ref.site]) if ref is not None and transcoders else [])])
        blocks = model.get_model_object("diffusion_model").double_blocks
        heads = int(blocks[0].num_heads)
        effect_units = 0 if ref is None else (ref.layer + 1) * heads
        total = len(calls) * (len(blocks) + effect_units)
        progress = NodeProgress(total, node_id=cls.hidden.unique_id)
        profile = head_profile(blocks, calls, read_linear=read_comfy_linear, device=model.load_device,
                               progress=lambda done, _total: progress.update(done, total))
        effects = [] if ref is None else cls._effects(blocks, transcoders, calls, ref, model.load_device,
                                                       progress, len(calls) * len(blocks), total)
        labels = token_labels(clip, prompt) if clip is not None and prompt.strip() else None
        if labels is not None and len(labels) != calls[0][1].txt.shape[1]:
            labels = None  # another prompt than the recorded one: fall back to token numbers
        payload = heads_payload(profile, token_labels=labels, roles=classify_heads(profile), effects=effects)
        payload |= {"metric": metric, "chunk": chunk, "batch_index": batch_index}
        if metric == FEATURE_EFFECT:
            values = torch.stack([effect.effect for effect in effects])
            title = f"{FEATURE_EFFECT} on {ref}: summed activation with the head zeroed, minus without"
        else:
            values = profile.metric(metric)[0]
            title = f"{metric}: {METRIC_HELP[metric]}"
        table = render_head_table(values, [f"step {step} (sigma {sigma:.3f})" for step, sigma in
                                           zip(profile.steps, profile.sigmas)], title,
                                  diverging=metric == FEATURE_EFFECT)
        return io.NodeOutput(table, json.dumps(payload), ui=ui.PreviewImage(table, cls=cls))

    @staticmethod
    def _effects(blocks: Any, transcoders: TranscoderSet, calls: list[tuple[int, CallInputs]], ref: FeatureRef,
                 device: torch.device, progress: NodeProgress, start: int, total: int) -> list[FeatureEffects]:
        effects = []
        for _, call in calls:
            effects.append(feature_ablation_effects(
                blocks, transcoders, call, ref, read_linear=read_comfy_linear, device=device,
                progress=lambda done, _total, offset=start: progress.update(offset + done, total)))
            start += (ref.layer + 1) * int(blocks[0].num_heads)
        return effects
