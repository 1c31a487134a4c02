"""The local replacement model: exact replay, exact conservation, edges equal interventions, and the
batched transpose equals one autograd pass per row."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution.replacement import ReplacementModel
from diffract_core.errors import DiffractError

from .conftest import model_inputs


@pytest.fixture(scope="module")
def lrm(model, transcoders, call) -> ReplacementModel:
    return ReplacementModel(model.double_blocks, transcoders, call, last_layer=3, keep_inputs_of=range(4),
                            dtype=torch.float64)


def _rows(lrm: ReplacementModel):
    generator = torch.Generator().manual_seed(5)
    picks = [("img", 3, 7), ("txt", 2, 5), ("img", 1, 9), ("txt", 3, 2), ("img", 2, 40), ("img", 0, 4)]
    return [lrm.feature_row(s, l, f, torch.rand(lrm.tokens(s), generator=generator, dtype=torch.float64))
            for s, l, f in picks]


def test_the_replay_reproduces_the_models_own_mlp_inputs(model, lrm) -> None:
    seen = {}
    hooks = [
        getattr(model.double_blocks[layer], f"{stream}_mlp").register_forward_hook(
            lambda _m, args, _o, key=(stream, layer): seen.__setitem__(key, args[0])
        )
        for stream in ("img", "txt")
        for layer in range(4)
    ]
    try:
        with torch.no_grad():
            model(**model_inputs(model))
    finally:
        for hook in hooks:
            hook.remove()
    for site, x in lrm.mlp_inputs.items():
        torch.testing.assert_close(x.float(), seen[site], rtol=0, atol=2e-6)
    # the linearised model, fed the call's own sources, is the same function at this point
    replay = lrm.linear_forward(lrm.inputs, lrm.source_outputs())
    for site, x in lrm.mlp_inputs.items():
        torch.testing.assert_close(replay[site], x, rtol=0, atol=1e-10)


def test_target_equals_its_edges_plus_bias(lrm) -> None:
    for row in _rows(lrm):
        (edges,) = lrm.attribute([row])
        value = float(lrm.value(row)[0])
        assert abs(edges.total() + edges.bias - value) <= 1e-10 * max(1.0, abs(value))
        # the backward pass's constants are the value with every source at zero
        assert edges.bias == pytest.approx(lrm.bias(row), rel=1e-10, abs=1e-12)


def test_every_edge_equals_the_effect_of_removing_its_source(lrm) -> None:
    row = _rows(lrm)[0]
    (edges,) = lrm.attribute([row])
    outputs = lrm.source_outputs()
    clean = float(lrm.value(row)[0])
    checked = 0
    for site in [("img", 2), ("txt", 1), ("img", 0)]:
        sources = lrm.sites[site]
        decoder = sources.transcoder.decoder_vectors(torch.arange(96), dtype=torch.float64)
        for feature in torch.unique(sources.indices[:, :3]).tolist()[:4]:
            hits = (sources.indices == feature).double() * sources.values
            removed = dict(outputs)
            removed[site] = outputs[site] - (hits.sum(-1)[:, None] * decoder[feature])[None]
            changed = float(lrm.value(row, lrm.linear_forward(lrm.inputs, removed))[0])
            edge = float(edges.features[site][sources.features == feature].sum())
            assert clean - changed == pytest.approx(edge, rel=1e-8, abs=1e-10)
            checked += 1
        without_error = dict(outputs)
        without_error[site] = outputs[site] - sources.error[None]
        changed = float(lrm.value(row, lrm.linear_forward(lrm.inputs, without_error))[0])
        assert clean - changed == pytest.approx(float(edges.errors[site].sum()), rel=1e-8, abs=1e-10)
    scaled_input = {"img": lrm.inputs["img"] * 1.5, "txt": lrm.inputs["txt"]}
    changed = float(lrm.value(row, lrm.linear_forward(scaled_input, outputs))[0])
    assert changed - clean == pytest.approx(0.5 * float(edges.inputs["img"].sum()), rel=1e-8)
    assert checked == 12


def test_batched_rows_equal_one_row_per_pass_and_autograd(lrm) -> None:
    rows = _rows(lrm)
    batched = lrm.attribute(rows)
    for row, together in zip(rows, batched):
        (alone,) = lrm.attribute([row])
        by_autograd = lrm.attribute_autograd(row)
        for other in (alone, by_autograd):
            assert together.features.keys() == other.features.keys()
            for site in together.features:
                torch.testing.assert_close(together.features[site], other.features[site], rtol=0, atol=1e-12)
                torch.testing.assert_close(together.errors[site], other.errors[site], rtol=0, atol=1e-12)
            for stream in together.inputs:
                torch.testing.assert_close(together.inputs[stream], other.inputs[stream], rtol=0, atol=1e-12)


def test_fp32_batched_and_single_rows_agree_to_1e_6(model, transcoders, call) -> None:
    lrm32 = ReplacementModel(model.double_blocks, transcoders, call, last_layer=3)
    rows = [lrm32.feature_row("img", 3, f, torch.ones(lrm32.tokens("img"))) for f in (1, 7, 30, 55)]
    for row, together in zip(rows, lrm32.attribute(rows)):
        (alone,) = lrm32.attribute([row])
        assert abs(together.total() - alone.total()) <= 1e-6 * max(1.0, abs(alone.total()))
        for site in together.features:
            torch.testing.assert_close(together.features[site], alone.features[site], rtol=0, atol=1e-6)


def test_bad_requests_are_refused(model, transcoders, call, lrm) -> None:
    with pytest.raises(DiffractError, match="past this model's 4 double blocks"):
        ReplacementModel(model.double_blocks, transcoders, call, last_layer=4)
    with pytest.raises(DiffractError, match="one image at a time"):
        two = type(call)(*(torch.cat([t, t]) for t in (call.img, call.txt, call.vec)), call.pe, call.sigma, call.chunk,
                         call.image_grid)
        ReplacementModel(model.double_blocks, transcoders, two, last_layer=1)
    with pytest.raises(DiffractError, match="do not fit the 24 img tokens"):
        lrm.attribute([lrm.feature_row("img", 2, 0, torch.ones(5))])


def test_kept_weights_are_value_and_proj_copied_only_when_read_as_copies(model, transcoders, call) -> None:
    """A replay that reads the model's own weights keeps views of them (no memory); one whose reader
    hands back copies (ComfyUI's cast, dequantisation) keeps copies of only the value rows of the
    fused qkv, not the whole matrix."""
    hidden = model.config.hidden_size
    attn = model.double_blocks[0].img_attn
    same = ReplacementModel(model.double_blocks, transcoders, call, last_layer=1)
    storage = lambda tensor: tensor.untyped_storage().data_ptr()
    assert storage(same.layers[0].value["img"].weight) == storage(attn.qkv.weight)
    assert same.layers[0].proj["img"].weight.data_ptr() == attn.proj.weight.data_ptr()

    def copying_reader(module, dtype, device):
        return module.weight.detach().to(device, dtype, copy=True), module.bias.detach().to(device, dtype, copy=True)

    copied = ReplacementModel(model.double_blocks, transcoders, call, last_layer=1, read_linear=copying_reader)
    value = copied.layers[0].value["img"].weight
    assert value.untyped_storage().nbytes() == hidden * hidden * 4  # the value rows alone
    torch.testing.assert_close(value, attn.qkv.weight[2 * hidden :], rtol=0, atol=0)
    assert copied.layers[0].value["img"].bias.untyped_storage().nbytes() == hidden * 4
