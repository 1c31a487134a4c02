"""The reference FLUX.1 model: BFL/ComfyUI key names, shapes, input checks and the MLP swap contract."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from diffract_core.errors import InputShapeError, ShapeMismatchError
from diffract_core.flux import Flux, FluxConfig, init_random_, make_img_ids, patchify
from diffract_core.flux.layers import ModulationOut

BATCH, LATENT_H, LATENT_W, TXT_LEN = 2, 8, 6, 5


def _model(**overrides: object) -> Flux:
    return init_random_(Flux(FluxConfig.tiny(**overrides)), seed=0, std=0.1).eval()


def _inputs(cfg: FluxConfig, seed: int = 1) -> dict[str, Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(BATCH, cfg.latent_channels, LATENT_H, LATENT_W, generator=gen),
        "timestep": torch.rand(BATCH, generator=gen),
        "context": torch.randn(BATCH, TXT_LEN, cfg.context_in_dim, generator=gen),
        "y": torch.randn(BATCH, cfg.vec_in_dim, generator=gen),
        "guidance": torch.tensor([3.5, 1.0]) if cfg.guidance_embed else None,
    }


def test_state_dict_keys_follow_bfl_comfyui_names() -> None:
    keys = set(Flux(FluxConfig.tiny()).state_dict())
    expected = {
        "img_in.weight",
        "txt_in.bias",
        "time_in.in_layer.weight",
        "time_in.out_layer.bias",
        "vector_in.in_layer.weight",
        "double_blocks.0.img_mod.lin.weight",
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.0.img_attn.qkv.bias",
        "double_blocks.0.img_attn.norm.query_norm.scale",
        "double_blocks.0.img_attn.norm.key_norm.scale",
        "double_blocks.0.img_attn.proj.weight",
        "double_blocks.0.img_mlp.0.weight",
        "double_blocks.0.img_mlp.2.bias",
        "double_blocks.1.txt_mod.lin.bias",
        "double_blocks.1.txt_attn.norm.key_norm.scale",
        "double_blocks.1.txt_mlp.0.bias",
        "double_blocks.1.txt_mlp.2.weight",
        "single_blocks.0.linear1.weight",
        "single_blocks.0.norm.query_norm.scale",
        "single_blocks.0.modulation.lin.weight",
        "single_blocks.1.linear2.bias",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.adaLN_modulation.1.bias",
    }
    assert expected <= keys
    assert not any(k.startswith("guidance_in.") for k in keys)
    assert not any(k.startswith(("double_blocks.2.", "single_blocks.2.")) for k in keys)

    dev_keys = set(Flux(FluxConfig.tiny(guidance_embed=True)).state_dict())
    assert dev_keys - keys == {
        "guidance_in.in_layer.weight",
        "guidance_in.in_layer.bias",
        "guidance_in.out_layer.weight",
        "guidance_in.out_layer.bias",
    }


def test_parameter_shapes() -> None:
    cfg = FluxConfig.tiny()
    sd = Flux(cfg).state_dict()
    hidden, mlp = cfg.hidden_size, cfg.mlp_hidden_dim
    assert sd["img_in.weight"].shape == (hidden, cfg.in_channels)
    assert sd["double_blocks.0.img_mod.lin.weight"].shape == (6 * hidden, hidden)
    assert sd["single_blocks.0.linear1.weight"].shape == (3 * hidden + mlp, hidden)
    assert sd["single_blocks.0.linear2.weight"].shape == (hidden, hidden + mlp)
    assert sd["single_blocks.0.norm.key_norm.scale"].shape == (cfg.head_dim,)
    assert sd["final_layer.linear.weight"].shape == (cfg.patch_size**2 * cfg.out_channels, hidden)


@pytest.mark.parametrize("guidance_embed", [False, True])
def test_forward_shape_and_matches_forward_orig(guidance_embed: bool) -> None:
    model = _model(guidance_embed=guidance_embed)
    cfg = model.config
    inp = _inputs(cfg)
    with torch.no_grad():
        out = model(**inp)
        tokens = model.forward_orig(
            patchify(inp["x"], cfg.patch_size),
            make_img_ids(BATCH, LATENT_H // 2, LATENT_W // 2),
            inp["context"],
            torch.zeros(BATCH, TXT_LEN, 3),
            inp["timestep"],
            inp["y"],
            inp["guidance"],
        )
    assert out.shape == (BATCH, cfg.out_channels, LATENT_H, LATENT_W)
    assert tokens.shape == (BATCH, (LATENT_H // 2) * (LATENT_W // 2), cfg.out_channels * cfg.patch_size**2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(patchify(out, cfg.patch_size), tokens, rtol=0, atol=0)


def test_output_depends_on_every_conditioning_input() -> None:
    model = _model(guidance_embed=True)
    inp = _inputs(model.config)
    with torch.no_grad():
        base = model(**inp)
        for name in ("timestep", "context", "y", "guidance"):
            changed = dict(inp, **{name: inp[name] + 0.5})
            assert not torch.allclose(model(**changed), base), name


def test_make_img_ids_is_row_major_grid() -> None:
    ids = make_img_ids(2, 2, 3)
    assert ids.shape == (2, 6, 3)
    assert ids[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]


class _Recorder(nn.Module):
    """Stands in for an MLP: records its input, returns the wrapped MLP's output."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x)
        return self.mlp(x)


def test_img_mlp_swap_sees_modulated_input_and_changes_nothing() -> None:
    model = _model()
    inp = _inputs(model.config)
    block = model.double_blocks[1]
    captured: dict[str, Tensor] = {}

    def keep_block_inputs(_: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["img"], captured["vec"] = kwargs["img"], kwargs["vec"]

    def keep_proj_output(_: nn.Module, args: tuple, output: Tensor) -> None:
        captured["proj"] = output

    with torch.no_grad():
        reference = model(**inp)
        block.img_mlp = _Recorder(block.img_mlp)
        handles = [
            block.register_forward_pre_hook(keep_block_inputs, with_kwargs=True),
            block.img_attn.proj.register_forward_hook(keep_proj_output),
        ]
        swapped = model(**inp)
        for handle in handles:
            handle.remove()

        mod1, mod2 = block.img_mod(captured["vec"])
        h = captured["img"] + mod1.gate * captured["proj"]
        ln = nn.functional.layer_norm(h, (h.shape[-1],), eps=1e-6)
        expected = (1 + mod2.scale) * ln + mod2.shift

    torch.testing.assert_close(swapped, reference, rtol=0, atol=0)
    assert len(block.img_mlp.inputs) == 1
    torch.testing.assert_close(block.img_mlp.inputs[0], expected, rtol=1e-6, atol=1e-6)


def test_modulation_order_is_shift_scale_gate() -> None:
    model = _model()
    mod = model.double_blocks[0].img_mod
    vec = torch.randn(BATCH, model.config.hidden_size)
    with torch.no_grad():
        outs = mod(vec)
        raw = mod.lin(nn.functional.silu(vec))
    assert len(outs) == 2 and all(isinstance(o, ModulationOut) for o in outs)
    torch.testing.assert_close(outs[1].scale[:, 0], raw.chunk(6, dim=-1)[4])
    assert len(model.single_blocks[0].modulation(vec)) == 1


@pytest.mark.parametrize(
    ("name", "change", "overrides", "match"),
    [
        ("x", lambda t: t[..., :5], {}, "multiples of patch_size"),
        ("x", lambda t: t[:, :3], {}, "x must have shape"),
        ("context", lambda t: t[..., :40], {}, "context must have shape"),
        ("y", lambda t: t[..., :31], {}, "y must have shape"),
        ("timestep", lambda t: t[:1], {}, "timesteps must have shape"),
        ("guidance", lambda t: None, {"guidance_embed": True}, "pass guidance"),
        ("guidance", lambda t: torch.ones(BATCH), {}, "guidance=None"),
    ],
)
def test_bad_inputs_raise_input_shape_error(
    name: str, change: Callable[[Tensor], Tensor | None], overrides: dict, match: str
) -> None:
    model = _model(**overrides)
    inp = _inputs(model.config)
    inp[name] = change(inp[name])
    with pytest.raises(InputShapeError, match=match):
        model(**inp)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_heads": 3}, "not divisible by num_heads"),
        ({"axes_dim": (8, 12, 14)}, "sums to 34"),
        ({"axes_dim": (7, 13, 12)}, "even"),
        ({"axes_dim": (32,)}, "3 entries"),
        ({"depth": 0}, "depth must be a positive"),
        ({"depth_single_blocks": -1}, "depth_single_blocks must be a positive"),
        ({"in_channels": 18}, "patch_size"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_bad_configs_raise_shape_mismatch_error(overrides: dict, match: str) -> None:
    with pytest.raises(ShapeMismatchError, match=match):
        FluxConfig.tiny(**overrides)


def test_config_presets_and_json_round_trip() -> None:
    schnell, dev = FluxConfig.flux1_schnell(), FluxConfig.flux1_dev()
    assert (schnell.head_dim, schnell.mlp_hidden_dim, schnell.guidance_embed) == (128, 12288, False)
    assert dev.guidance_embed and dev.depth == 19 and dev.depth_single_blocks == 38
    cfg = FluxConfig.tiny(guidance_embed=True)
    assert FluxConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_init_random_is_seeded_and_keeps_rms_scales_at_one() -> None:
    a = init_random_(Flux(FluxConfig.tiny()), seed=3).state_dict()
    b = init_random_(Flux(FluxConfig.tiny()), seed=3).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert torch.equal(a["single_blocks.0.norm.query_norm.scale"], torch.ones(32))
    assert a["img_in.weight"].std().item() == pytest.approx(0.02, rel=0.2)
