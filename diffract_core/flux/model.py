"""The FLUX.1 transformer, with Black Forest Labs / ComfyUI state-dict keys."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from ..errors import InputShapeError
from .config import FluxConfig
from .layers import (
    DoubleStreamBlock,
    EmbedND,
    LastLayer,
    MLPEmbedder,
    RMSNorm,
    SingleStreamBlock,
    timestep_embedding,
)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Latents ``(B, C, H, W)`` to tokens ``(B, H/p * W/p, C*p*p)``, row-major over patches."""
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=patch_size, pw=patch_size)


def unpatchify(tokens: Tensor, height: int, width: int, patch_size: int) -> Tensor:
    """Inverse of :func:`patchify` for a latent of ``height`` x ``width``."""
    return rearrange(
        tokens,
        "b (h w) (c ph pw) -> b c (h ph) (w pw)",
        h=height // patch_size,
        w=width // patch_size,
        ph=patch_size,
        pw=patch_size,
    )


def make_img_ids(batch: int, rows: int, cols: int, device: torch.device | None = None) -> Tensor:
    """Position ids ``(B, rows*cols, 3)`` = (0, row, col) for a grid of patches, row-major."""
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(1, rows * cols, 3).expand(batch, -1, -1)


def _check_shape(name: str, tensor: Tensor, expected: tuple[int | None, ...], fix: str) -> None:
    """Raise :class:`InputShapeError` unless ``tensor`` has ``expected`` shape (``None`` = any size)."""
    fits = tensor.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, tensor.shape))
    if not fits:
        wanted = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise InputShapeError(f"{name} must have shape {wanted}, got {tuple(tensor.shape)}. {fix}")


class Flux(nn.Module):
    """FLUX.1 MM-DiT: ``depth`` double-stream blocks, then ``depth_single_blocks`` single-stream blocks."""

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.pe_embedder = EmbedND(dim=config.head_dim, theta=config.theta, axes_dim=config.axes_dim)
        self.img_in = nn.Linear(config.in_channels, hidden, bias=True)
        self.time_in = MLPEmbedder(in_dim=256, hidden_dim=hidden)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
        self.guidance_in = MLPEmbedder(in_dim=256, hidden_dim=hidden) if config.guidance_embed else None
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden, config.num_heads, config.mlp_ratio, config.qkv_bias) for _ in range(config.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth_single_blocks)
        )
        self.final_layer = LastLayer(hidden, 1, config.patch_size * config.patch_size * config.out_channels)

    def forward_orig(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """BFL's forward on token sequences; returns ``(B, N_img, out_channels * patch_size**2)``.

        ``timesteps`` and ``guidance`` are ``(B,)``; timesteps are sigmas in [0, 1] (scaled by 1000 inside).
        """
        self._check_tokens(img, img_ids, txt, txt_ids, timesteps, y, guidance)
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        if self.guidance_in is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)

        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)

        joint = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            joint = block(joint, vec=vec, pe=pe)
        return self.final_layer(joint[:, txt.shape[1] :, ...], vec)

    def forward(
        self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor, guidance: Tensor | None = None
    ) -> Tensor:
        """Denoiser output ``(B, out_channels, H, W)`` for latents ``x`` ``(B, latent_channels, H, W)``.

        ``context`` is ``(B, L, context_in_dim)`` (T5 tokens), ``y`` is ``(B, vec_in_dim)`` (pooled CLIP),
        ``timestep`` is ``(B,)`` sigmas in [0, 1], ``guidance`` is ``(B,)`` for guidance-distilled configs.
        """
        self._check_latents(x)
        _check_shape("context", context, (x.shape[0], None, self.config.context_in_dim), "Pass T5 token features.")
        batch, _, height, width = x.shape
        p = self.config.patch_size
        img_ids = make_img_ids(batch, height // p, width // p, device=x.device)
        txt_ids = torch.zeros(batch, context.shape[1], 3, device=x.device)
        out = self.forward_orig(patchify(x, p), img_ids, context, txt_ids, timestep, y, guidance)
        return unpatchify(out, height, width, p)

    def _check_latents(self, x: Tensor) -> None:
        cfg = self.config
        _check_shape(
            "x",
            x,
            (None, cfg.latent_channels, None, None),
            f"Pass latents (B, C, H, W) with C = in_channels / patch_size**2 = "
            f"{cfg.in_channels} / {cfg.patch_size}**2 = {cfg.latent_channels}.",
        )
        height, width = x.shape[-2:]
        if height % cfg.patch_size or width % cfg.patch_size:
            raise InputShapeError(
                f"latent height and width must be multiples of patch_size={cfg.patch_size}, got {height}x{width}; "
                f"crop or pad the latent (or the image to a multiple of {8 * cfg.patch_size} pixels)."
            )

    def _check_tokens(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Tensor | None,
    ) -> None:
        cfg = self.config
        batch = img.shape[0] if img.ndim == 3 else None
        n_img = img.shape[1] if img.ndim == 3 else None
        n_axes = len(cfg.axes_dim)
        _check_shape("img", img, (None, None, cfg.in_channels), "Pass patchified latent tokens (B, N, in_channels).")
        _check_shape("img_ids", img_ids, (batch, n_img, n_axes), "Pass one position id per image token.")
        _check_shape("txt", txt, (batch, None, cfg.context_in_dim), "Pass T5 token features.")
        _check_shape("txt_ids", txt_ids, (batch, txt.shape[1], n_axes), "Pass one position id per text token.")
        _check_shape("timesteps", timesteps, (batch,), "Pass one sigma per sample, e.g. torch.full((B,), sigma).")
        _check_shape("y", y, (batch, cfg.vec_in_dim), "Pass the pooled CLIP embedding, one row per sample.")
        if cfg.guidance_embed and guidance is None:
            raise InputShapeError(
                "this config has guidance_embed=True (FLUX.1 dev): pass guidance, a (B,) tensor of guidance "
                "scales such as torch.full((B,), 3.5)."
            )
        if not cfg.guidance_embed and guidance is not None:
            raise InputShapeError(
                "guidance was given but this config has guidance_embed=False (FLUX.1 schnell); pass guidance=None."
            )
        if guidance is not None:
            _check_shape("guidance", guidance, (batch,), "Pass one guidance scale per sample.")


@torch.no_grad()
def init_random_(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Fill every weight and bias with seeded N(0, std) noise, RMSNorm scales with 1; returns ``model``.

    The noise is drawn on the CPU in parameter-name order, so it does not depend on the model's device.
    """
    generator = torch.Generator().manual_seed(seed)
    rms_scales = {id(m.scale) for m in model.modules() if isinstance(m, RMSNorm)}
    for _, param in sorted(model.named_parameters()):
        if id(param) in rms_scales:
            param.fill_(1.0)
        else:
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model
