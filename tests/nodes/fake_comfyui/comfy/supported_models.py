"""Fake of comfy.supported_models.FluxSchnell: the config -> model path the toy loader uses.

As in ComfyUI v0.8, `FluxSchnell(unet_config)` takes ComfyUI's FLUX unet_config (latent channels
before patchifying), `set_inference_dtype(dtype, manual_cast)` sets the weights' dtype and
`get_model({})` returns a model whose `diffusion_model` holds FLUX's modules under BFL names (here
the library's reference Flux); `load_model_weights(sd, prefix)` loads the keys under `prefix`."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from fake_runtime import ModelSamplingDiscreteFlow


class _FluxModel:
    def __init__(self, unet_config: dict, dtype: torch.dtype) -> None:
        from diffract_pack.diffract_core.flux import Flux, FluxConfig

        patch = unet_config["patch_size"]
        config = FluxConfig(
            in_channels=unet_config["in_channels"] * patch**2, out_channels=unet_config["out_channels"],
            vec_in_dim=unet_config["vec_in_dim"], context_in_dim=unet_config["context_in_dim"],
            hidden_size=unet_config["hidden_size"], mlp_ratio=unet_config["mlp_ratio"],
            num_heads=unet_config["num_heads"], depth=unet_config["depth"],
            depth_single_blocks=unet_config["depth_single_blocks"], axes_dim=tuple(unet_config["axes_dim"]),
            theta=unet_config["theta"], qkv_bias=unet_config["qkv_bias"],
            guidance_embed=unet_config["guidance_embed"], patch_size=patch,
        )
        self.diffusion_model = Flux(config).to(dtype).eval()
        self.model_sampling = ModelSamplingDiscreteFlow()
        self.model_config = SimpleNamespace(unet_config=unet_config)

    def load_model_weights(self, sd: dict, unet_prefix: str = "") -> None:
        state = {k[len(unet_prefix):]: v for k, v in sd.items() if k.startswith(unet_prefix)}
        self.diffusion_model.load_state_dict(state)


class FluxSchnell:
    def __init__(self, unet_config: dict) -> None:
        self.unet_config = dict(unet_config)
        self.dtype = torch.float32

    def set_inference_dtype(self, dtype: torch.dtype, manual_cast_dtype: torch.dtype | None) -> None:
        self.dtype = dtype

    def get_model(self, state_dict: dict, prefix: str = "", device: torch.device | None = None) -> _FluxModel:
        return _FluxModel(self.unet_config, self.dtype)
