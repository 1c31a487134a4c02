"""The embedded toy in ComfyUI: a real ComfyUI FLUX model built from the toy's weights, its text
encoder (CONDITIONING), and its exact latent decoder (LATENT -> IMAGE). With Load Transcoders'
`diffract-toy` release, every DifFRACT node runs on it on a CPU in seconds.

ComfyUI surface used: `comfy.supported_models.FluxSchnell(unet_config)`, its `set_inference_dtype`
and `get_model({})`, the model's `load_model_weights(state_dict, "")`,
`comfy.model_patcher.ModelPatcher(model, load_device, offload_device)`,
`comfy.model_management.get_torch_device` / `unet_offload_device`.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch
from comfy_api.latest import io

from ..diffract_core.toy import VOCABULARY, ToyModel, ToyTextEncoder, codec, load_toy
from .flux_models import comfy_unet_config
from .node_types import CATEGORY

ToyTextEncoderType = io.Custom("DIFFRACT_TOY_TEXT_ENCODER")  # diffract_core ToyTextEncoder (a small nn.Module)
EMBEDDED = "diffract-toy (embedded)"
LATENT_HINT = "an empty latent of 128 x 128 (Empty Latent Image) is the toy's 16 x 16 latent, a 32 px image"


def comfy_flux_model(toy: ToyModel) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI FLUX.1 [schnell]-type model (ComfyUI's own Flux class and sampling) holding the toy's weights."""
    model_config = comfy.supported_models.FluxSchnell(comfy_unet_config(toy.flux.config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    model.load_model_weights(toy.flux.state_dict(), "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class ToyModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractToyModelLoader",
            display_name="Load Toy FLUX",
            category=CATEGORY,
            description="The embedded toy FLUX (3 M parameters, 4 double blocks) that draws coloured circles, squares "
            "and triangles, as a real ComfyUI FLUX model, with its own text encoder. Sample 12 euler steps "
            f"(simple scheduler, cfg 1) on a 16 x 16 latent: {LATENT_HINT}. Its transcoders are the "
            "`diffract-toy` release of Load Transcoders.",
            inputs=[io.Combo.Input("toy", options=[EMBEDDED], default=EMBEDDED)],
            outputs=[io.Model.Output(display_name="MODEL"), ToyTextEncoderType.Output(display_name="TOY_TEXT_ENCODER")],
        )

    @classmethod
    def execute(cls, toy: str) -> io.NodeOutput:
        model = load_toy()
        return io.NodeOutput(comfy_flux_model(model), model.text_encoder)


class ToyTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        words = ", ".join(VOCABULARY[1:])
        return io.Schema(
            node_id="DiffractToyTextEncode",
            display_name="Toy Text Encode",
            category=CATEGORY,
            description=f"A prompt for the toy FLUX, e.g. 'a yellow circle and a blue square'. Words: {words}.",
            inputs=[
                ToyTextEncoderType.Input("text_encoder"),
                io.String.Input("text", default="a yellow circle and a blue square", multiline=True),
            ],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING")],
        )

    @classmethod
    def execute(cls, text_encoder: ToyTextEncoder, text: str) -> io.NodeOutput:
        with torch.no_grad():
            context, pooled = text_encoder([" ".join(text.split())])
        return io.NodeOutput([[context, {"pooled_output": pooled}]])


class ToyDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractToyDecode",
            display_name="Toy Decode",
            category=CATEGORY,
            description="The toy's exact latent-to-image map (its 'VAE'): a 16 x 16 latent becomes a 32 px image.",
            inputs=[io.Latent.Input("samples")],
            outputs=[io.Image.Output(display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, samples: dict) -> io.NodeOutput:
        images = codec.decode(samples["samples"].float().cpu(), raw=True)
        return io.NodeOutput(images.permute(0, 2, 3, 1).contiguous())
