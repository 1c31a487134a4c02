import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from diffract_core.errors import FeatureIndexError, InputShapeError
from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import SiteSpec, TimeEmbeddingSpec, Transcoder, TranscoderConfig, sinusoidal_embedding


def _hand_forward(transcoder: Transcoder, x: list[float], t: float) -> tuple[list[float], list[float]]:
    """The DESIGN §4 formula in plain Python floats (float64), element by element."""
    p = {k: v.double().tolist() for k, v in transcoder.state_dict().items()}
    half = transcoder.config.time_embedding.dim // 2
    freqs = [math.exp(-math.log(10000) * k / (half - 1)) for k in range(half)]
    e = [math.sin(t * w) for w in freqs] + [math.cos(t * w) for w in freqs]

    def linear(w: list[list[float]], b: list[float], v: list[float]) -> list[float]:
        return [sum(wi * vi for wi, vi in zip(row, v)) + bi for row, bi in zip(w, b)]

    def silu(v: list[float]) -> list[float]:
        return [a / (1 + math.exp(-a)) for a in v]

    f = silu(linear(p["time_mlp.2.weight"], p["time_mlp.2.bias"],
                    silu(linear(p["time_mlp.0.weight"], p["time_mlp.0.bias"], e))))
    m = linear(p["mod_linear.weight"], p["mod_linear.bias"], f)
    d = len(x)
    scale, shift = m[:d], m[d:]
    x_mod = [xi * (1 + s) + b for xi, s, b in zip(x, scale, shift)]
    pre = linear(p["W_enc"], p["b_enc"], x_mod)
    z = [max(0.0, a) for a in pre]
    y = [sum(z[i] * p["W_dec"][i][j] for i in range(len(z))) + p["b_dec"][j] for j in range(d)]
    return pre, y


def test_formula_matches_hand_computation() -> None:
    transcoder = random_transcoder("img", 0, d_model=3, d_features=5, time_dim=4, seed=3)
    x = [0.7, -1.3, 0.4]
    for t in (1.0, 0.75, 0.25):
        pre_hand, y_hand = _hand_forward(transcoder, x, t)
        z, pre = transcoder.encode(torch.tensor([x]), t)
        assert torch.allclose(pre[0].double(), torch.tensor(pre_hand, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(transcoder(torch.tensor([x]), t)[0].double(), torch.tensor(y_hand, dtype=torch.float64),
                              atol=1e-6)
        assert (z >= 0).all() and (z[0] == pre[0].clamp(min=0)).all()


def test_time_embedding_is_diffusers_bit_for_bit() -> None:
    spec = TimeEmbeddingSpec()
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 0.123456])
    ours = sinusoidal_embedding(sigmas, spec)
    theirs = get_timestep_embedding(sigmas, 256)  # flip_sin_to_cos=False, downscale_freq_shift=1
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
    assert torch.equal(ours[:, :128],
                       torch.sin(sigmas[:, None] * torch.exp(-math.log(10000) * torch.arange(128) / 127)))


def test_encode_decode_forward_agree(small_transcoder: Transcoder, activations: torch.Tensor) -> None:
    z, pre = small_transcoder.encode(activations, 0.5)
    assert z.shape == (2, 7, 96) and torch.equal(z, torch.relu(pre))
    assert torch.equal(small_transcoder(activations, 0.5), small_transcoder.decode(z))
    manual = activations @ torch.zeros(16, 16)  # decode(0) is the decoder bias alone
    assert torch.equal(small_transcoder.decode(torch.zeros(2, 7, 96)), manual + small_transcoder.b_dec)


def test_one_sigma_per_row_equals_per_call(small_transcoder: Transcoder, activations: torch.Tensor) -> None:
    sigmas = torch.tensor([1.0, 0.25])
    per_row = small_transcoder.preactivations(activations, sigmas)
    for row, sigma in enumerate(sigmas.tolist()):
        assert torch.allclose(per_row[row], small_transcoder.preactivations(activations[row], sigma), atol=1e-6)
    per_token = sigmas[:, None].expand(2, 7)
    assert torch.allclose(small_transcoder.preactivations(activations, per_token), per_row, atol=1e-6)
    with pytest.raises(InputShapeError, match="timestep shape"):
        small_transcoder.encode(activations, torch.tensor([1.0, 0.5, 0.25]))


def test_feature_preactivation_is_a_differentiable_slice(small_transcoder: Transcoder,
                                                         activations: torch.Tensor) -> None:
    _, pre = small_transcoder.encode(activations, 0.75)
    x = activations.clone().requires_grad_(True)
    one = small_transcoder.feature_preactivation(x, 0.75, 11)
    assert one.shape == (2, 7) and torch.allclose(one, pre[..., 11], atol=1e-6)
    several = small_transcoder.feature_preactivation(activations, 0.75, [3, 11, 95])
    assert torch.allclose(several, pre[..., [3, 11, 95]], atol=1e-6)
    one.sum().backward()
    # d pre_i / dx = W_enc[i] * (1 + scale): the FiLM scale multiplies the encoder row.
    scale, _ = small_transcoder.film(torch.tensor([0.75]))
    expected = (small_transcoder.W_enc[11] * (1 + scale[0])).expand(2, 7, 16)
    assert torch.allclose(x.grad, expected, atol=1e-6)
    with pytest.raises(FeatureIndexError, match="out of range.*96 features"):
        small_transcoder.feature_preactivation(activations, 0.75, 96)


def test_topk_codes_decode_like_dense(small_transcoder: Transcoder, activations: torch.Tensor) -> None:
    z, _ = small_transcoder.encode(activations, 0.25)
    codes = small_transcoder.encode_topk(activations, 0.25, k=96, chunk_rows=3)
    assert torch.allclose(codes.to_dense(), z, atol=1e-6)
    assert torch.allclose(small_transcoder.decode_sparse(codes), small_transcoder(activations, 0.25), atol=1e-5)
    top4 = small_transcoder.encode_topk(activations, torch.tensor([1.0, 0.25]), k=4)
    assert top4.indices.shape == (2, 7, 4)
    dense = small_transcoder.encode(activations, torch.tensor([1.0, 0.25]))[0]
    assert torch.allclose(top4.values, dense.topk(4, dim=-1).values, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_with_chosen_compute_dtype(
    small_transcoder: Transcoder, activations: torch.Tensor, dtype: torch.dtype
) -> None:
    reference = small_transcoder(activations, 0.5)
    low = random_transcoder("img", 3, d_model=16, d_features=96, time_dim=16, seed=1).to(dtype)
    native = low(activations, 0.5)
    assert native.dtype == dtype
    upcast = low.set_compute_dtype(torch.float32)(activations, 0.5)
    assert upcast.dtype == torch.float32
    tolerance = 0.05 * reference.abs().max()
    assert (native.float() - reference).abs().max() < tolerance
    assert (upcast - reference).abs().max() < tolerance


def test_wrong_width_is_a_clear_error(small_transcoder: Transcoder) -> None:
    with pytest.raises(InputShapeError, match=r"d_model=16.*\(4, 12\).*double_blocks\.3\.img_mlp"):
        small_transcoder.encode(torch.zeros(4, 12), 0.5)
    with pytest.raises(InputShapeError, match="d_features=96"):
        small_transcoder.decode(torch.zeros(4, 95))


def test_sae_config_reads_the_mlp_output() -> None:
    config = TranscoderConfig(d_model=8, d_features=16, site=SiteSpec("txt", 6), kind="sae")
    assert config.input_point == "mlp_out" and config.site.hook_point == "double_blocks.6.txt_mlp"
    assert Transcoder(config).reset_parameters().config.kind == "sae"


def _topk_copy(transcoder: Transcoder, k: int) -> Transcoder:
    from dataclasses import replace

    topk = Transcoder(replace(transcoder.config, activation="topk", topk=k))
    topk.load_state_dict(transcoder.state_dict())
    return topk


def test_topk_keeps_the_k_largest_relu_codes_and_feature_activation_agrees() -> None:
    relu = random_transcoder("img", 0, d_model=16, d_features=64, time_dim=16, seed=4)
    topk = _topk_copy(relu, 5)
    x = torch.randn(3, 7, 16)
    z_relu, pre = relu.encode(x, 0.5)
    z_topk, pre_topk = topk.encode(x, 0.5)
    assert torch.equal(pre, pre_topk)
    assert int((z_topk > 0).sum(-1).max()) <= 5
    kept = z_topk > 0
    assert torch.equal(z_topk[kept], z_relu[kept])
    assert bool((z_relu.masked_fill(kept, float("inf")).amin(-1) >= 0).all())
    fifth = torch.topk(z_relu, 5, dim=-1).values[..., -1:]
    assert bool(((z_relu * ~kept) <= fifth).all())  # nothing dropped beats a kept code
    for transcoder, z in ((relu, z_relu), (topk, z_topk)):
        torch.testing.assert_close(transcoder.feature_activation(x, 0.5, [3, 9, 40]), z[..., [3, 9, 40]])
        torch.testing.assert_close(transcoder.feature_activation(x, 0.5, 9), z[..., 9])
    assert "topk" in topk.config.to_dict()["layout"]["formula"]
    assert TranscoderConfig.from_json(topk.config.to_json()) == topk.config


def test_topk_config_is_checked() -> None:
    from diffract_core.errors import CorruptFileError

    site = SiteSpec(stream="img", layer=0)
    with pytest.raises(CorruptFileError, match="topk in 1..d_features"):
        TranscoderConfig(d_model=4, d_features=8, site=site, activation="topk", topk=9)
    with pytest.raises(CorruptFileError, match="needs activation 'topk'"):
        TranscoderConfig(d_model=4, d_features=8, site=site, topk=2)
