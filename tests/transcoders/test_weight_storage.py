"""fp8 storage, weights cast per call, and decoding from the active rows: each gives the numbers of
the plain fp32 transcoder, exactly or to a stated bound, and never a full-size cast copy."""

from collections.abc import Iterator

import pytest
import torch

from diffract_core.errors import QuantisedWeightsError, SettingsError
from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import Transcoder, TranscoderSet
from diffract_core.transcoders import transcoder as transcoder_module


def _make(d_model: int = 256, d_features: int = 2048) -> Transcoder:
    return random_transcoder("img", 0, d_model=d_model, d_features=d_features, time_dim=16, seed=0)


def _relative_error(found: torch.Tensor, expected: torch.Tensor) -> float:
    found, expected = found.detach().float(), expected.detach()
    return float((found - expected).norm() / expected.norm())


def _state_bytes(transcoder: Transcoder) -> int:
    """What ComfyUI counts for a module (comfy.model_management.module_size)."""
    return sum(tensor.nbytes for tensor in transcoder.state_dict().values())


@pytest.fixture
def requested_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many rows each cast or dequantised block of W_enc / W_dec held."""
    sizes: list[int] = []
    original = Transcoder._rows

    def spy(self: Transcoder, name: str, rows: object, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        block = original(self, name, rows, device, dtype)
        sizes.append(block.shape[0])
        return block

    monkeypatch.setattr(Transcoder, "_rows", spy)
    yield sizes


def test_fp8_error_against_fp32_is_within_its_bound() -> None:
    reference, fp8 = _make(), _make().quantise_fp8()
    x = torch.randn(4, 64, 256, generator=torch.Generator().manual_seed(1))
    z, pre = reference.encode(x, 0.5)
    # measured: 2.5% on the pre-activations, 1.1% on the decoded output (bias left out), 1.6% end to end
    assert _relative_error(fp8.encode(x, 0.5)[1], pre) < 0.035
    assert _relative_error(fp8.decode(z) - fp8.b_dec, reference.decode(z) - reference.b_dec) < 0.015
    assert _relative_error(fp8(x, 0.5), reference(x, 0.5)) < 0.025
    assert fp8.W_enc_fp8.dtype == torch.float8_e4m3fn and fp8.W_dec_scale.shape == (2048,)

    features = torch.tensor([[0, 7, 2047], [5, 5, 100]])
    rows = reference.W_dec.detach()[features]
    scales = fp8.W_dec_scale[features][..., None]
    # e4m3 keeps 3 mantissa bits (half a step: 1/16 of the value); below 2^-6 its steps are 2^-9
    assert bool(((fp8.decoder_vectors(features) - rows).abs() <= rows.abs() / 16 + scales * 2**-10).all())


def test_fp8_halves_the_memory_of_bf16() -> None:
    bf16 = _make(512, 8192).cast_parameters(torch.bfloat16)
    fp8 = _make(512, 8192).quantise_fp8().cast_parameters(torch.bfloat16)
    matrices, rest = 2 * 8192 * 512, 53_312  # values in W_enc and W_dec; bytes of biases and time path in bf16
    assert _state_bytes(bf16) == 2 * matrices + rest == 16_830_528
    assert _state_bytes(fp8) == matrices + 2 * 8192 * 4 + rest == 8_507_456  # one byte a value, 4 per row's scale
    # at FLUX's size (d_model 3072, 49152 features) the same count gives 607,505,408 bytes in bf16
    # and 305,908,736 in fp8 (0.504)


def test_fp8_storage_survives_dtype_casts_and_names_its_accessors() -> None:
    fp8 = _make(16, 96).quantise_fp8()
    assert fp8.quantise_fp8() is fp8
    fp8.cast_parameters(torch.bfloat16)
    assert fp8.dtype == torch.bfloat16 and fp8.config.dtype == "bfloat16"
    assert fp8.W_enc_fp8.dtype == torch.float8_e4m3fn and fp8.W_enc_scale.dtype == torch.float32
    assert fp8(torch.randn(3, 16), 0.5).dtype == torch.bfloat16
    with pytest.raises(QuantisedWeightsError, match=r"holds W_dec in fp8 .* decoder_vectors\(features"):
        fp8.W_dec  # noqa: B018 - the attribute read is what is tested
    with pytest.raises(QuantisedWeightsError, match="encoder_vectors"):
        fp8.W_enc  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'W_other'"):
        fp8.W_other  # noqa: B018


def test_fp8_is_refused_by_name_where_torch_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "float8_e4m3fn")
    with pytest.raises(SettingsError, match=r"float8_e4m3fn, which PyTorch .* lacks: upgrade PyTorch"):
        _make(16, 96).quantise_fp8()
    with pytest.raises(SettingsError, match="load the transcoders in bf16"):
        TranscoderSet({}, fp8_weights=True)


def test_accessors_gather_rows_in_the_dtype_and_place_asked(small_transcoder: Transcoder) -> None:
    features = torch.tensor([[3, 11], [95, 3]])
    for accessor, matrix in ((small_transcoder.decoder_vectors, small_transcoder.W_dec),
                             (small_transcoder.encoder_vectors, small_transcoder.W_enc)):
        rows = accessor(features, dtype=torch.float64, device="cpu")
        assert rows.shape == (2, 2, 16) and rows.dtype == torch.float64
        assert torch.equal(rows, matrix.detach()[features].double())
        assert torch.equal(accessor(11), matrix[11])


def test_decoding_gathers_only_the_active_rows(monkeypatch: pytest.MonkeyPatch, small_transcoder: Transcoder,
                                               requested_rows: list[int]) -> None:
    monkeypatch.setattr(transcoder_module, "ROWS_PER_CHUNK", 3)
    decoder, bias = small_transcoder.W_dec.detach(), small_transcoder.b_dec.detach()
    z = torch.zeros(2, 5, 96)
    z[..., [2, 40, 41, 77]] = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(3))
    z[0, 0, 60] = -0.5  # a steered code may be negative; it is active all the same
    torch.testing.assert_close(small_transcoder.decode(z), z @ decoder + bias)
    assert requested_rows == [3, 2], "five active features, in blocks of three"

    requested_rows.clear()
    dense = torch.rand(2, 5, 96)
    torch.testing.assert_close(small_transcoder.decode(dense), dense @ decoder + bias)
    assert requested_rows == [], "most features active: one product with the stored matrix"

    codes = z.clone().requires_grad_(True)
    small_transcoder.decode(codes).sum().backward()
    assert torch.allclose(codes.grad, decoder.sum(-1).expand(2, 5, 96)), "a gradient reaches inactive codes too"


def test_sparse_codes_decode_from_their_rows_in_blocks(monkeypatch: pytest.MonkeyPatch,
                                                       small_transcoder: Transcoder, activations: torch.Tensor,
                                                       requested_rows: list[int]) -> None:
    monkeypatch.setattr(transcoder_module, "ROWS_PER_CHUNK", 5)
    codes = small_transcoder.encode_topk(activations, 0.25, k=4)
    expected = codes.to_dense() @ small_transcoder.W_dec.detach() + small_transcoder.b_dec.detach()
    torch.testing.assert_close(small_transcoder.decode_sparse(codes), expected)
    assert sum(requested_rows) == codes.indices.unique().numel() and max(requested_rows) <= 5


def test_weights_cast_per_call_give_the_resident_results(monkeypatch: pytest.MonkeyPatch,
                                                         small_transcoder: Transcoder, activations: torch.Tensor,
                                                         requested_rows: list[int]) -> None:
    """Weights left on another device take the same path as this forced one: every product casts a
    block of rows at a time, and the module stays where it is."""
    pre = small_transcoder.preactivations(activations, 0.5)
    dense = torch.rand(2, 7, 96, generator=torch.Generator().manual_seed(4))
    decoded = small_transcoder.decode(dense)
    assert requested_rows == [], "weights in place and in the compute dtype are used as stored"
    monkeypatch.setattr(transcoder_module, "resident", lambda *_: False)
    monkeypatch.setattr(transcoder_module, "ROWS_PER_CHUNK", 40)
    torch.testing.assert_close(small_transcoder.preactivations(activations, 0.5), pre)
    assert requested_rows == [40, 40, 16]
    requested_rows.clear()
    torch.testing.assert_close(small_transcoder.decode(dense), decoded)
    assert requested_rows == [40, 40, 16] and small_transcoder.device.type == "cpu"


def test_fp8_paths_agree_with_each_other(monkeypatch: pytest.MonkeyPatch, activations: torch.Tensor) -> None:
    """Dense, active-row and sparse decoding of the same fp8 codes agree to float rounding."""
    fp8 = random_transcoder("img", 3, d_model=16, d_features=96, time_dim=16, seed=1).quantise_fp8()
    monkeypatch.setattr(transcoder_module, "ROWS_PER_CHUNK", 7)
    codes = fp8.encode_topk(activations, 0.5, k=3)
    dense = codes.to_dense()
    from_rows = fp8.decode(dense)
    monkeypatch.setattr(transcoder_module, "ACTIVE_ROWS_PAY", 0.0)
    torch.testing.assert_close(fp8.decode(dense), from_rows)
    torch.testing.assert_close(fp8.decode_sparse(codes), from_rows)
    torch.testing.assert_close(fp8.feature_preactivation(activations, 0.5, [4, 90]),
                               fp8.encode(activations, 0.5)[1][..., [4, 90]])
