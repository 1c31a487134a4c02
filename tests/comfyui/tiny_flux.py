"""A tiny random FLUX built by real ComfyUI, for snippets run through `comfy_run` (this folder is on
the subprocess's sys.path, so `import tiny_flux` works there after harness_boot has booted ComfyUI).

It skips checkpoint detection (which hard-codes 24 heads, see shared/notes/comfyui.md §5): the
config goes straight to `comfy.supported_models.FluxSchnell` (or `Flux` with guidance_embed=True),
`get_model({})` builds `model_base.Flux`, weights are filled with seeded noise.

    import tiny_flux
    patcher = tiny_flux.build(hidden_size=256, num_heads=2, depth=2, depth_single_blocks=2)
    out = tiny_flux.sample(patcher, steps=3)          # (1, 16, 16, 16) latent

Do not import this module under pytest's python: it imports comfy lazily, inside the functions.
"""

from __future__ import annotations


def default_axes_dim(head_dim: int) -> list[int]:
    """Rotary axes (t, h, w) summing to head_dim, each even; FLUX.1's [16, 56, 56] for 128."""
    if head_dim == 128:
        return [16, 56, 56]
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim {head_dim} must be even and >= 6")
    a0 = max(2, (head_dim // 8) // 2 * 2)
    a1 = ((head_dim - a0) // 2) // 2 * 2
    return [a0, a1, head_dim - a0 - a1]


def unet_config(hidden_size: int = 256, num_heads: int = 2, depth: int = 2, depth_single_blocks: int = 2,
                in_channels: int = 16, vec_in_dim: int = 32, context_in_dim: int = 64, mlp_ratio: float = 4.0,
                axes_dim: list[int] | None = None, guidance_embed: bool = False) -> dict:
    """The unet_config ComfyUI's FLUX classes take (keys as in comfy/model_detection.py)."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
    axes = list(axes_dim) if axes_dim is not None else default_axes_dim(hidden_size // num_heads)
    return {"image_model": "flux", "in_channels": in_channels, "out_channels": in_channels, "vec_in_dim": vec_in_dim,
            "context_in_dim": context_in_dim, "hidden_size": hidden_size, "mlp_ratio": mlp_ratio,
            "num_heads": num_heads, "depth": depth, "depth_single_blocks": depth_single_blocks, "axes_dim": axes,
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": guidance_embed, "txt_ids_dims": []}


def build(seed: int = 0, std: float = 0.02, **config):
    """A ModelPatcher around a random model_base.Flux (fp32, CPU). `config`: see unet_config()."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    cfg = unet_config(**config)
    cls = comfy.supported_models.Flux if cfg["guidance_embed"] else comfy.supported_models.FluxSchnell
    model_config = cls(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})  # weights are torch.empty() until loaded
    gen = torch.Generator().manual_seed(seed)
    sd = {k: (torch.ones_like(v) if k.endswith(".scale") else torch.randn(v.shape, generator=gen) * std)
          for k, v in model.diffusion_model.state_dict().items()}
    model.load_model_weights(sd, "")  # note: pops the keys out of sd
    device = mm.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())


def conditioning(patcher, tokens: int = 8, batch: int = 1, seed: int = 1, zero: bool = False,
                 guidance: float | None = None):
    """Hand-made CONDITIONING matching the model's context_in_dim / vec_in_dim:
    [[cond (B, tokens, context_in_dim), {"pooled_output": (B, vec_in_dim)[, "guidance"]}]]."""
    import torch

    cfg = patcher.model.model_config.unet_config
    gen = torch.Generator().manual_seed(seed)
    make = (lambda *s: torch.zeros(*s)) if zero else (lambda *s: torch.randn(*s, generator=gen))
    extra = {"pooled_output": make(batch, cfg["vec_in_dim"])}
    if guidance is not None:
        extra["guidance"] = guidance
    return [[make(batch, tokens, cfg["context_in_dim"]), extra]]


def sample(patcher, steps: int = 3, latent=None, seed: int = 0, positive=None, negative=None, cfg: float = 1.0,
           sampler_name: str = "euler", scheduler: str = "simple"):
    """comfy.sample.sample on a zero latent (default 1x16x16x16: 128x128 px, 64 image tokens)."""
    import comfy.sample
    import torch

    if latent is None:
        latent = torch.zeros(1, patcher.model.model_config.unet_config["in_channels"], 16, 16)
    positive = positive if positive is not None else conditioning(patcher, batch=latent.shape[0])
    negative = negative if negative is not None else conditioning(patcher, batch=latent.shape[0], zero=True)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               seed=seed, disable_pbar=True)


def transcoders(pack, patcher, d_features: int = 256, seed: int = 0):
    """Random transcoders (the pack's own TranscoderSet) for every double-block MLP of `patcher`'s model."""
    import importlib

    quickstart = importlib.import_module(pack.__name__ + ".diffract_core.quickstart")
    core = pack.diffract_core
    cfg = patcher.model.model_config.unet_config
    made = [quickstart.random_transcoder(stream, layer, d_model=cfg["hidden_size"], d_features=d_features,
                                              seed=seed + 2 * layer + (stream == "txt"))
            for layer in range(cfg["depth"]) for stream in ("img", "txt")]
    return core.transcoders.TranscoderSet.from_transcoders(made)
