"""The reference FLUX.1 model computes what diffusers' ``FluxTransformer2DModel`` computes on the same weights.

diffusers' own BFL converter (``convert_flux_transformer_checkpoint_to_diffusers``) hard-codes the FLUX.1
hidden size (3072) when splitting ``single_blocks.*.linear1``, so this module carries a size-agnostic one.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel
from torch import Tensor, nn

from diffract_core.flux import Flux, FluxConfig, init_random_, make_img_ids, patchify

BATCH, LATENT_H, LATENT_W, TXT_LEN = 2, 8, 12, 7
TOLERANCE = 1e-5


def _linear(out: dict[str, Tensor], sd: dict[str, Tensor], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = sd.pop(f"{src}.weight")
    out[f"{dst}.bias"] = sd.pop(f"{src}.bias")


def _split_linear(out: dict[str, Tensor], sd: dict[str, Tensor], src: str, dsts: list[str], sizes: list[int]) -> None:
    for suffix in ("weight", "bias"):
        for dst, part in zip(dsts, torch.split(sd.pop(f"{src}.{suffix}"), sizes, dim=0)):
            out[f"{dst}.{suffix}"] = part


def _swap_halves(t: Tensor) -> Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _convert_double(out: dict[str, Tensor], sd: dict[str, Tensor], i: int, hidden: int) -> None:
    src, dst = f"double_blocks.{i}", f"transformer_blocks.{i}"
    # stream: (adaLN linear, q/k/v projection, q/k norm, attention output, MLP) in diffusers' names
    streams = {
        "img": ("norm1", "attn.to_{}", "attn.norm_{}", "attn.to_out.0", "ff"),
        "txt": ("norm1_context", "attn.add_{}_proj", "attn.norm_added_{}", "attn.to_add_out", "ff_context"),
    }
    for stream, (norm, proj, qk_norm, out_proj, ff) in streams.items():
        _linear(out, sd, f"{src}.{stream}_mod.lin", f"{dst}.{norm}.linear")
        qkv_names = [f"{dst}.{proj.format(n)}" for n in "qkv"]
        _split_linear(out, sd, f"{src}.{stream}_attn.qkv", qkv_names, [hidden] * 3)
        out[f"{dst}.{qk_norm.format('q')}.weight"] = sd.pop(f"{src}.{stream}_attn.norm.query_norm.scale")
        out[f"{dst}.{qk_norm.format('k')}.weight"] = sd.pop(f"{src}.{stream}_attn.norm.key_norm.scale")
        _linear(out, sd, f"{src}.{stream}_attn.proj", f"{dst}.{out_proj}")
        _linear(out, sd, f"{src}.{stream}_mlp.0", f"{dst}.{ff}.net.0.proj")
        _linear(out, sd, f"{src}.{stream}_mlp.2", f"{dst}.{ff}.net.2")


def _convert_single(out: dict[str, Tensor], sd: dict[str, Tensor], i: int, hidden: int, mlp: int) -> None:
    src, dst = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
    _linear(out, sd, f"{src}.modulation.lin", f"{dst}.norm.linear")
    names = [f"{dst}.attn.to_q", f"{dst}.attn.to_k", f"{dst}.attn.to_v", f"{dst}.proj_mlp"]
    _split_linear(out, sd, f"{src}.linear1", names, [hidden, hidden, hidden, mlp])
    out[f"{dst}.attn.norm_q.weight"] = sd.pop(f"{src}.norm.query_norm.scale")
    out[f"{dst}.attn.norm_k.weight"] = sd.pop(f"{src}.norm.key_norm.scale")
    _linear(out, sd, f"{src}.linear2", f"{dst}.proj_out")


def bfl_to_diffusers(state_dict: dict[str, Tensor], cfg: FluxConfig) -> dict[str, Tensor]:
    """BFL/ComfyUI FLUX.1 keys to diffusers keys, any size; fails if a source key is left unconverted."""
    sd, out = dict(state_dict), {}
    embed = "time_text_embed"
    _linear(out, sd, "time_in.in_layer", f"{embed}.timestep_embedder.linear_1")
    _linear(out, sd, "time_in.out_layer", f"{embed}.timestep_embedder.linear_2")
    _linear(out, sd, "vector_in.in_layer", f"{embed}.text_embedder.linear_1")
    _linear(out, sd, "vector_in.out_layer", f"{embed}.text_embedder.linear_2")
    if cfg.guidance_embed:
        _linear(out, sd, "guidance_in.in_layer", f"{embed}.guidance_embedder.linear_1")
        _linear(out, sd, "guidance_in.out_layer", f"{embed}.guidance_embedder.linear_2")
    _linear(out, sd, "txt_in", "context_embedder")
    _linear(out, sd, "img_in", "x_embedder")
    for i in range(cfg.depth):
        _convert_double(out, sd, i, cfg.hidden_size)
    for i in range(cfg.depth_single_blocks):
        _convert_single(out, sd, i, cfg.hidden_size, cfg.mlp_hidden_dim)
    _linear(out, sd, "final_layer.linear", "proj_out")
    # BFL's adaLN_modulation emits (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift).
    out["norm_out.linear.weight"] = _swap_halves(sd.pop("final_layer.adaLN_modulation.1.weight"))
    out["norm_out.linear.bias"] = _swap_halves(sd.pop("final_layer.adaLN_modulation.1.bias"))
    assert not sd, f"unconverted keys: {sorted(sd)}"
    return out


def _diffusers_twin(model: Flux) -> FluxTransformer2DModel:
    cfg = model.config
    twin = FluxTransformer2DModel(
        patch_size=1,  # diffusers takes tokens that are already patchified
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels * cfg.patch_size**2,
        num_layers=cfg.depth,
        num_single_layers=cfg.depth_single_blocks,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.context_in_dim,
        pooled_projection_dim=cfg.vec_in_dim,
        guidance_embeds=cfg.guidance_embed,
        axes_dims_rope=cfg.axes_dim,
    )
    twin.load_state_dict(bfl_to_diffusers(model.state_dict(), cfg), strict=True)
    return twin.eval()


def _random_model(guidance_embed: bool) -> Flux:
    model = init_random_(Flux(FluxConfig.tiny(guidance_embed=guidance_embed)), seed=7, std=0.1)
    # Scales that differ from 1 so that a query/key or img/txt norm mix-up shows.
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
    return model.eval()


def _inputs(cfg: FluxConfig) -> dict[str, Tensor | None]:
    gen = torch.Generator().manual_seed(11)
    return {
        "x": torch.randn(BATCH, cfg.latent_channels, LATENT_H, LATENT_W, generator=gen),
        "timestep": torch.tensor([0.9, 0.25]),
        "context": torch.randn(BATCH, TXT_LEN, cfg.context_in_dim, generator=gen),
        "y": torch.randn(BATCH, cfg.vec_in_dim, generator=gen),
        "guidance": torch.tensor([3.5, 1.5]) if cfg.guidance_embed else None,
    }


def _run_diffusers(twin: FluxTransformer2DModel, cfg: FluxConfig, inp: dict[str, Tensor | None]) -> Tensor:
    rows, cols = LATENT_H // cfg.patch_size, LATENT_W // cfg.patch_size
    return twin(
        hidden_states=patchify(inp["x"], cfg.patch_size),
        encoder_hidden_states=inp["context"],
        pooled_projections=inp["y"],
        timestep=inp["timestep"],  # a sigma: diffusers multiplies by 1000, as timestep_embedding does
        img_ids=make_img_ids(1, rows, cols)[0],
        txt_ids=torch.zeros(TXT_LEN, 3),
        guidance=inp["guidance"],
        return_dict=False,
    )[0]


@pytest.mark.parametrize("guidance_embed", [False, True], ids=["schnell", "dev"])
def test_matches_diffusers_flux_transformer(guidance_embed: bool) -> None:
    model = _random_model(guidance_embed)
    cfg = model.config
    twin = _diffusers_twin(model)
    inp = _inputs(cfg)
    with torch.no_grad():
        ours = patchify(model(**inp), cfg.patch_size)
        theirs = _run_diffusers(twin, cfg, inp)
    assert ours.shape == theirs.shape
    assert ours.abs().max() > 0.1, "degenerate test: output too small to compare"
    max_diff = (ours - theirs).abs().max().item()
    assert max_diff < TOLERANCE, f"max |ours - diffusers| = {max_diff:.3g}"


def _record_output(module: nn.Module, store: list[Tensor]) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda _m, _a, output: store.append(output))


def test_double_block_mlp_streams_match_diffusers() -> None:
    model = _random_model(guidance_embed=True)
    cfg = model.config
    twin = _diffusers_twin(model)
    inp = _inputs(cfg)
    pairs = [
        (model.double_blocks[1].img_mlp, twin.transformer_blocks[1].ff),
        (model.double_blocks[1].txt_mlp, twin.transformer_blocks[1].ff_context),
    ]
    for ours_module, theirs_module in pairs:
        ours, theirs = [], []
        handles = [_record_output(ours_module, ours), _record_output(theirs_module, theirs)]
        with torch.no_grad():
            model(**inp)
            _run_diffusers(twin, cfg, inp)
        for handle in handles:
            handle.remove()
        assert (ours[0] - theirs[0]).abs().max().item() < TOLERANCE
