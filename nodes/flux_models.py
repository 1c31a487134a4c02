"""ComfyUI's FLUX models and the library's reference FLUX (`diffract_core.flux.Flux`): the two
configs, and a MODEL's diffusion model as a reference Flux that shares its weights (for code that
samples with the reference model, such as the atlas builder).

ComfyUI surface used: `comfy.model_management.load_models_gpu`, `ModelPatcher.get_model_object`,
`ModelPatcher.model.model_config.unet_config`, and that ComfyUI's FLUX modules carry the Black
Forest Labs parameter names (as the reference Flux does).
"""

from __future__ import annotations

from typing import Any

import comfy.model_management
import torch

from ..diffract_core.errors import UnsupportedModelError
from ..diffract_core.flux import Flux, FluxConfig

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def comfy_unet_config(config: FluxConfig) -> dict:
    """ComfyUI's FLUX unet_config for a FluxConfig (ComfyUI counts latent channels before patchifying)."""
    return {"image_model": "flux", "in_channels": config.in_channels // config.patch_size**2,
            "out_channels": config.out_channels, "vec_in_dim": config.vec_in_dim,
            "context_in_dim": config.context_in_dim, "hidden_size": config.hidden_size, "mlp_ratio": config.mlp_ratio,
            "num_heads": config.num_heads, "depth": config.depth, "depth_single_blocks": config.depth_single_blocks,
            "axes_dim": list(config.axes_dim), "theta": config.theta, "patch_size": config.patch_size,
            "qkv_bias": config.qkv_bias, "guidance_embed": config.guidance_embed, "txt_ids_dims": []}


def flux_config_of(unet_config: dict) -> FluxConfig:
    """The FluxConfig of a ComfyUI FLUX unet_config (the inverse of `comfy_unet_config`)."""
    patch = int(unet_config.get("patch_size", 2))
    return FluxConfig(
        in_channels=unet_config["in_channels"] * patch**2, out_channels=unet_config["out_channels"],
        vec_in_dim=unet_config["vec_in_dim"], context_in_dim=unet_config["context_in_dim"],
        hidden_size=unet_config["hidden_size"], mlp_ratio=unet_config["mlp_ratio"], num_heads=unet_config["num_heads"],
        depth=unet_config["depth"], depth_single_blocks=unet_config["depth_single_blocks"],
        axes_dim=tuple(unet_config["axes_dim"]), theta=unet_config["theta"], qkv_bias=unet_config["qkv_bias"],
        guidance_embed=unet_config["guidance_embed"], patch_size=patch,
    )


def reference_flux(model: Any) -> Flux:
    """The MODEL's diffusion model (loaded, with its LoRAs applied) as a reference Flux holding the very
    same weight tensors: nothing is copied."""
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    if unet_config.get("image_model") != "flux":
        raise UnsupportedModelError(f"this MODEL is not a FLUX model (ComfyUI calls it "
                                    f"{unet_config.get('image_model')!r}): connect a FLUX.1 model")
    comfy.model_management.load_models_gpu([model])
    state = model.get_model_object("diffusion_model").state_dict()
    odd = sorted({str(tensor.dtype) for tensor in state.values() if tensor.dtype not in COMPUTE_DTYPES})
    if odd:
        raise UnsupportedModelError(f"this FLUX model holds {', '.join(odd)} weights, which the atlas builder cannot "
                                    "compute with: load it in bf16 or fp16 (weight_dtype default)")
    with torch.device("meta"):
        flux = Flux(flux_config_of(unet_config))
    try:
        flux.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise UnsupportedModelError(f"this FLUX model's weights do not match FLUX.1's layout ({str(exc)[:300]}): "
                                    "connect a plain FLUX.1 [schnell] or [dev] model") from exc
    return flux.eval().requires_grad_(False)
