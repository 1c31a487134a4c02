"""Feature Heatmaps and Top Features: what a recording saw, as images and as a ranked table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from comfy_api.latest import io, ui

from ..diffract_core.atlas import Atlas, feature_labels
from ..diffract_core.errors import DiffractError
from ..diffract_core.features import SPEC_HELP, parse_features
from ..diffract_core.recording import FeatureRecording
from ..diffract_core.render import NORMALIZE_MODES, FeatureStat, format_table, render_feature_heatmaps, top_features
from ..diffract_core.sites import LAYERS_HELP, parse_layers, parse_steps
from ..diffract_core.spatial import mask_to_token_weights
from ..diffract_core.transcoders import TranscoderSet
from ..diffract_core.viewer import heatmap_payload, token_strip_payload
from .node_types import AFTER_SAMPLING, CATEGORY, CHUNKS, STREAM_CHOICES, Recording, Transcoders, streams_of

STEPS_HELP = "steps like 0, 2-3, or all"
ATLAS_HELP = "the recorded transcoders: their feature atlas labels the features"


def atlas_of(transcoders: TranscoderSet | None) -> Atlas | None:
    return transcoders.atlas if transcoders is not None else None


def _finished(recording: FeatureRecording) -> FeatureRecording:
    if not recording.complete:
        state = "was interrupted" if recording.runs else "has not run yet"
        raise DiffractError(
            f"the recording {state}: run the sampler with the MODEL from Record Features to the end, and connect "
            "this node after it (its image or latent), so it runs after sampling"
        )
    return recording


def _steps(text: str) -> list[int] | None:
    return None if text.strip().lower() in ("", "all", "*") else sorted(parse_steps(text))


class FeatureHeatmaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractFeatureHeatmaps",
            display_name="Feature Heatmaps",
            category=CATEGORY,
            description="Overlay where image-stream features fired on the generated image: one image per "
            "feature and step, plus the heatmaps as a MASK batch.",
            inputs=[
                Recording.Input("recording"),
                io.Image.Input("image", tooltip="the decoded image of the recorded run"),
                io.String.Input("features", default="img:0:0", tooltip=SPEC_HELP),
                io.String.Input("steps", default="all", tooltip=STEPS_HELP),
                io.Float.Input("opacity", default=0.6, min=0.0, max=1.0, step=0.01),
                io.Combo.Input("normalize", options=list(NORMALIZE_MODES), default="per_feature"),
                io.Combo.Input("chunk", options=list(CHUNKS), default="cond"),
                io.Int.Input("batch_index", default=0, min=0, max=4096),
                Transcoders.Input("transcoders", optional=True, tooltip=ATLAS_HELP),
            ],
            outputs=[io.Image.Output(display_name="IMAGE"), io.Mask.Output(display_name="MASK")],
            is_output_node=True,  # shows its overlays in the node even with nothing connected
        )

    @classmethod
    def execute(
        cls,
        recording: FeatureRecording,
        image: torch.Tensor,
        features: str,
        steps: str,
        opacity: float,
        normalize: str,
        chunk: str,
        batch_index: int,
        transcoders: TranscoderSet | None = None,
    ) -> io.NodeOutput:
        _finished(recording)
        refs = parse_features(features)
        chosen_steps = _steps(steps) or recording.steps
        overlay_batch, mask_batch = render_feature_heatmaps(
            recording, image, refs, chosen_steps, CHUNKS[chunk], batch_index, opacity, normalize  # type: ignore[arg-type]
        )
        payload = {
            "features": [str(ref) for ref in refs],
            "steps": chosen_steps,
            "sigmas": [recording.schedule[step] for step in chosen_steps],
            "order": "feature-major",
            "viewer": heatmap_payload(recording, refs, chosen_steps, image=None, chunk=CHUNKS[chunk],
                                      batch_index=batch_index, normalize=normalize, opacity=opacity,  # type: ignore[arg-type]
                                      atlas=atlas_of(transcoders)),
            "image": preview_ref(image, batch_index, cls),
        }
        # No in-node previews (the viewer shows every map, and thumbnails would grow the node after the run):
        # the overlays are the IMAGE output, for Preview Image or Save Image.
        return io.NodeOutput(overlay_batch, mask_batch, ui={"diffract_heatmaps": [payload]})


class TopFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractTopFeatures",
            display_name="Top Features",
            category=CATEGORY,
            description="Rank the recorded features: image features by activation inside a region against "
            "outside it (or by peak activation without a region), text features per prompt token.",
            inputs=[
                Recording.Input("recording"),
                io.Latent.Input("samples", tooltip=AFTER_SAMPLING),
                io.Combo.Input("streams", options=list(STREAM_CHOICES), default="img+txt"),
                io.String.Input("layers", default="all", tooltip=LAYERS_HELP),
                io.String.Input("steps", default="all", tooltip=STEPS_HELP),
                io.Int.Input("rows", default=20, min=1, max=1000),
                io.Combo.Input("chunk", options=list(CHUNKS), default="cond"),
                io.Int.Input("batch_index", default=0, min=0, max=4096),
                io.Mask.Input("mask", optional=True, tooltip="an image region, drawn on the generated image"),
                io.Clip.Input("clip", optional=True, tooltip="with the prompt: label text rows with their tokens"),
                io.String.Input("prompt", optional=True, multiline=True, default="",
                                tooltip="the prompt the text was encoded from"),
                io.Image.Input("image", optional=True,
                               tooltip="the decoded image, under the heatmaps of the node's viewer"),
                Transcoders.Input("transcoders", optional=True, tooltip=ATLAS_HELP + " (a label column)"),
            ],
            outputs=[io.String.Output(display_name="table")],
            is_output_node=True,  # shows its table in the node even with nothing connected
        )

    @classmethod
    def execute(
        cls,
        recording: FeatureRecording,
        samples: dict[str, Any],
        streams: str,
        layers: str,
        steps: str,
        rows: int,
        chunk: str,
        batch_index: int,
        mask: torch.Tensor | None = None,
        clip: Any = None,
        prompt: str = "",
        image: torch.Tensor | None = None,
        transcoders: TranscoderSet | None = None,
    ) -> io.NodeOutput:
        _finished(recording)
        chosen_streams = streams_of(streams)
        region = None
        if mask is not None and "img" in chosen_streams:
            if recording.image_grid is None:
                raise DiffractError("this recording saw no image tokens, so a region cannot apply: drop the mask")
            region = mask_to_token_weights(mask, recording.image_grid)
        labels = token_labels(clip, prompt) if clip is not None and prompt.strip() else None
        stats = top_features(
            recording,
            region=region,
            streams=chosen_streams,  # type: ignore[arg-type]
            layers=parse_layers(layers),
            steps=_steps(steps),
            chunk=CHUNKS[chunk],
            batch_index=batch_index,
            n=rows,
            token_labels=labels,
        )
        atlas = atlas_of(transcoders)
        atlas_labels = None if atlas is None else feature_labels(atlas, [stat.feature for stat in stats])
        table = format_table(stats, atlas_labels)
        payload = {"rows": [_row(stat, recording, atlas_labels) for stat in stats], "region": mask is not None}
        text_rows = [(stat.feature, stat.step) for stat in stats if stat.feature.stream == "txt"]
        if text_rows:
            payload["text"] = token_strip_payload(recording, text_rows, chunk=CHUNKS[chunk], batch_index=batch_index,
                                                  token_labels=labels)
        image_features = list(dict.fromkeys(stat.feature for stat in stats if stat.feature.stream == "img"))
        if image_features and recording.image_grid is not None:
            payload["viewer"] = heatmap_payload(recording, image_features, recording.steps, image=None,
                                                chunk=CHUNKS[chunk], batch_index=batch_index, atlas=atlas)
            payload["image"] = preview_ref(image, batch_index, cls)
        return io.NodeOutput(table, ui={"text": [table], "diffract_top_features": [payload]})


def preview_ref(image: torch.Tensor | None, batch_index: int, cls: type[io.ComfyNode]) -> dict[str, Any] | None:
    """The image of `batch_index` (or the only one) saved as a temp preview: {filename, subfolder, type}."""
    if image is None:
        return None
    pick = batch_index if batch_index < image.shape[0] else 0
    return ui.PreviewImage(image[pick : pick + 1], cls=cls).as_dict()["images"][0]


def _row(stat: FeatureStat, recording: FeatureRecording, labels: dict[str, str] | None) -> dict[str, Any]:
    return {
        "feature": str(stat.feature),
        "label": (labels or {}).get(str(stat.feature)),
        "step": stat.step,
        "sigma": recording.schedule[stat.step],
        "token": stat.token,
        "token_label": stat.token_label,
        "mean_inside": stat.mean_inside,
        "max_inside": stat.max_inside,
        "mean_outside": stat.mean_outside,
        "max_outside": stat.max_outside,
        "score": stat.score,
    }


TEXT_STREAM_TOKENIZERS = ("t5xxl",)  # FLUX.1's text stream is the T5 context


def token_labels(clip: Any, prompt: str) -> Sequence[str]:
    """The text stream's token strings, position by position, from the CLIP's own tokenizer
    (ComfyUI: `clip.tokenize(text)` -> {name: [[(id, weight), ...], ...]}, `clip.tokenizer.<name>.inv_vocab`)."""
    tokens = clip.tokenize(prompt)
    for name in TEXT_STREAM_TOKENIZERS:
        vocab = getattr(getattr(clip.tokenizer, name, None), "inv_vocab", None)
        if name in tokens and vocab is not None:
            return [str(vocab.get(int(pair[0]), pair[0])) for batch in tokens[name] for pair in batch]
    raise DiffractError(
        f"this CLIP has no {' or '.join(TEXT_STREAM_TOKENIZERS)} tokenizer to label FLUX's text tokens "
        f"(it has {', '.join(sorted(tokens))}): connect FLUX's DualCLIPLoader output, or leave clip unconnected"
    )
