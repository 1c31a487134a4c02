"""Build Feature Atlas and Explain Feature: a release's feature atlas (statistics, top examples and
auto-labels per feature, saved beside the release) built from a prompt list, and one feature's
dashboard from it.

ComfyUI surface used (beyond flux_models and progress): a CLIP's `tokenize(text)` and
`encode_from_tokens(tokens, return_pooled=True)`, a VAE's `decode(latent)` (-> [B, H, W, 3]) and the
model's `process_latent_out` (the sampler's latent space -> the VAE's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from comfy_api.latest import io, ui

from ..diffract_core.atlas import (
    EXAMPLES,
    Atlas,
    AtlasSettings,
    ImageDecoder,
    atlas_folder,
    build_atlas,
    describe_feature,
    feature_cards,
    render_dashboard,
)
from ..diffract_core.errors import DiffractError, FeatureSpecError
from ..diffract_core.features import SPEC_HELP, parse_features
from ..diffract_core.toy import ToyTextEncoder, codec
from ..diffract_core.training import HarvestSettings, PromptEncoder
from ..diffract_core.transcoders import TranscoderSet
from .flux_models import reference_flux
from .node_types import CATEGORY, FeatureAtlas, Transcoders
from .progress import NodeProgress
from .toy_nodes import ToyTextEncoderType

PROMPTS_HELP = "one prompt per line; blank lines are skipped and repeated prompts count once"


class ClipPromptEncoder:
    """Prompts through a ComfyUI CLIP, one at a time: (T5 token features, pooled CLIP vector)."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = [self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True) for prompt in prompts]
        lengths = {int(context.shape[1]) for context, _ in encoded}
        if len(lengths) > 1:
            raise DiffractError(f"these prompts encode to different numbers of text tokens ({sorted(lengths)}), which "
                                "one batch cannot hold: shorten the longest prompts, or set prompts_per_batch to 1")
        return torch.cat([context for context, _ in encoded]), torch.cat([pooled for _, pooled in encoded])


def vae_decoder(vae: Any, model: Any) -> ImageDecoder:
    """Final latents of the reference sampler -> images [B, 3, H, W] in [0, 1], through ComfyUI's VAE."""
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(model.model.process_latent_out(latents)).movedim(-1, 1)

    return decode


def prompt_lines(text: str) -> list[str]:
    prompts = [" ".join(line.split()) for line in text.splitlines()]
    prompts = [prompt for prompt in prompts if prompt]
    if not prompts:
        raise DiffractError(f"the prompt list is empty: write {PROMPTS_HELP}")
    return prompts


class BuildFeatureAtlas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractBuildFeatureAtlas",
            display_name="Build Feature Atlas",
            category=CATEGORY,
            description="Sample a prompt list with every transcoder site recorded and keep, per feature: firing "
            "rate and activations by sigma, its top prompts with image crops, its associated prompt words and an "
            "automatic label. Saved beside the release (atlas/), where Load Transcoders and every DifFRACT node "
            "find it. Resumable: an interrupted build continues where it stopped.",
            inputs=[
                io.Model.Input("model", tooltip="FLUX (bf16/fp16), or Load Toy FLUX's MODEL"),
                Transcoders.Input("transcoders", tooltip="from Load Transcoders: the atlas covers its loaded sites"),
                io.String.Input("prompts", multiline=True, default="", tooltip=PROMPTS_HELP),
                io.Clip.Input("clip", optional=True, tooltip="FLUX's CLIP, to encode the prompts"),
                ToyTextEncoderType.Input("toy_text_encoder", optional=True,
                                         tooltip="the toy's text encoder, instead of a CLIP (the toy's decoder "
                                         "then cuts the crops)"),
                io.Vae.Input("vae", optional=True,
                             tooltip="FLUX's VAE: image crops and colour statistics (none without it)"),
                io.Int.Input("steps", default=4, min=1, max=1000),
                io.Int.Input("width", default=1024, min=16, max=8192, step=16),
                io.Int.Input("height", default=1024, min=16, max=8192, step=16),
                io.Float.Input("shift", default=1.0, min=0.01, max=100.0, step=0.01,
                               tooltip="sigma-schedule shift: 1 for schnell"),
                io.Float.Input("guidance", default=3.5, min=0.0, max=100.0, step=0.1,
                               tooltip="distilled guidance, read only by models that embed it (dev)"),
                io.Int.Input("prompts_per_batch", default=4, min=1, max=4096),
                io.Int.Input("top_examples", default=8, min=1, max=64,
                             tooltip="top activating prompts kept per feature"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="the noise of each prompt"),
                io.Float.Input("memory_cap_mb", default=1024.0, min=16.0, max=1_000_000.0,
                               tooltip="the build's own memory (statistics and one batch); refused before it starts "
                               "if it would not fit"),
            ],
            outputs=[FeatureAtlas.Output(display_name="ATLAS")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        transcoders: TranscoderSet,
        prompts: str,
        steps: int,
        width: int,
        height: int,
        shift: float,
        guidance: float,
        prompts_per_batch: int,
        top_examples: int,
        seed: int,
        memory_cap_mb: float,
        clip: Any = None,
        toy_text_encoder: ToyTextEncoder | None = None,
        vae: Any = None,
    ) -> io.NodeOutput:
        if transcoders.root is None:
            raise DiffractError("these transcoders were not opened from a release folder, so the atlas has nowhere to "
                                "go: load them with Load Transcoders")
        if (clip is None) == (toy_text_encoder is None):
            raise DiffractError("connect exactly one text encoder: FLUX's CLIP, or the toy's text encoder")
        encoder: PromptEncoder = toy_text_encoder if toy_text_encoder is not None else ClipPromptEncoder(clip)
        flux = reference_flux(model)
        decode = vae_decoder(vae, model) if vae is not None else codec.decode if toy_text_encoder is not None else None
        lines = prompt_lines(prompts)
        sampling = HarvestSettings(steps=steps, shift=shift, latent_size=(height // 8, width // 8),
                                   prompts_per_call=prompts_per_batch,
                                   guidance=guidance if flux.config.guidance_embed else None, seed=seed)
        settings = AtlasSettings(sampling=sampling, top_n=top_examples, crops_per_feature=min(2, top_examples),
                                 cap_mb=memory_cap_mb)
        kind = transcoders.config(transcoders.sites[0]).kind
        progress = NodeProgress(len(lines), node_id=cls.hidden.unique_id)
        build = build_atlas(flux, encoder, transcoders, lines, atlas_folder(transcoders.root, kind), settings,
                            decode=decode, progress=progress.update, model_info={"flux": asdict(flux.config)})
        atlas = transcoders.atlas
        assert atlas is not None
        note = (f"atlas of {build.prompts} prompts in {build.out} ({build.resumed_batches} of {build.batches} "
                f"batches resumed, {build.seconds:.1f} s)")
        return io.NodeOutput(atlas, ui={"text": [note]})


class ExplainFeature(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractExplainFeature",
            display_name="Explain Feature",
            category=CATEGORY,
            description="One feature's dashboard from the feature atlas: its label, how often it fires at each "
            "sigma, the prompt words tied to it and its top examples (image crops or text in context).",
            inputs=[
                io.String.Input("feature", default="img:0:0", tooltip="stream:layer:feature, e.g. img:12:40684"),
                Transcoders.Input("transcoders", optional=True, tooltip="their release's atlas is used"),
                FeatureAtlas.Input("atlas", optional=True,
                                   tooltip="from Build Feature Atlas (wins over the transcoders')"),
                io.Int.Input("examples", default=EXAMPLES, min=0, max=64),
            ],
            outputs=[io.Image.Output(display_name="IMAGE")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, feature: str, examples: int, transcoders: TranscoderSet | None = None,
                atlas: Atlas | None = None) -> io.NodeOutput:
        refs = parse_features(feature)
        if len(refs) != 1:
            raise FeatureSpecError(f"{feature!r} names {len(refs)} features; Explain Feature takes one: {SPEC_HELP}")
        chosen = atlas if atlas is not None else transcoders.atlas if transcoders is not None else None
        if chosen is None:
            where = f" beside {transcoders.root}" if transcoders is not None and transcoders.root is not None else ""
            raise DiffractError(f"no feature atlas{where} to explain {refs[0]} from: build one with Build Feature "
                                "Atlas (or python -m diffract_core atlas), or connect its ATLAS output")
        dashboard = render_dashboard(chosen, refs[0], examples).unsqueeze(0)
        text = describe_feature(chosen, refs[0], examples)
        card = feature_cards(chosen, refs, examples)[str(refs[0])]
        preview = ui.PreviewImage(dashboard, cls=cls).as_dict()
        return io.NodeOutput(dashboard, ui={**preview, "text": [text],
                                            "diffract_feature": [{"feature": str(refs[0]), **card}]})
