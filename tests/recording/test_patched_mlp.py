"""Recording and steering on the library's reference FLUX model (tiny, random)."""

import pytest
import torch

from diffract_core.errors import DiffractError, InputShapeError
from diffract_core.features import FeatureRef
from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import (
    COND,
    UNCOND,
    FeatureRecording,
    PatchedMLP,
    PerImageSteering,
    SteeringSpec,
    patch_reference_model,
)
from diffract_core.recording.patched_mlp import CallContext
from diffract_core.transcoders import TranscoderSet

SCHEDULE = (1.0, 0.75, 0.5, 0.25, 0.0)


@pytest.fixture(scope="module")
def model() -> Flux:
    return init_random_(Flux(FluxConfig.tiny()), seed=0, std=0.05).eval()


@pytest.fixture(scope="module")
def transcoders(model: Flux) -> TranscoderSet:
    hidden = model.config.hidden_size
    return TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=hidden, d_features=96, time_dim=16,
                          seed=10 * layer + (stream == "txt"))
        for stream in ("img", "txt")
        for layer in range(model.config.depth)
    )


def _inputs(model: Flux, batch: int = 1, sigma: float = 0.75) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    cfg = model.config
    return {
        "x": torch.randn(batch, cfg.latent_channels, 8, 12, generator=generator),
        "timestep": torch.full((batch,), sigma),
        "context": torch.randn(batch, 5, cfg.context_in_dim, generator=generator),
        "y": torch.randn(batch, cfg.vec_in_dim, generator=generator),
    }


def _run(model: Flux, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def test_observe_is_bit_identical_and_records_topk(model: Flux, transcoders: TranscoderSet) -> None:
    inputs = _inputs(model)
    baseline = _run(model, inputs)
    captured = {}

    def capture(_module: torch.nn.Module, args: tuple, _output: torch.Tensor) -> None:
        captured.setdefault("x", args[0])

    hook = model.double_blocks[1].img_mlp.register_forward_hook(capture)
    recording = FeatureRecording(sites=(("img", 1), ("txt", 0)), k=5)
    recording.start_run(SCHEDULE)
    with patch_reference_model(model, transcoders, recording=recording):
        observed = _run(model, inputs)
    hook.remove()
    assert torch.equal(observed, baseline)
    assert isinstance(model.double_blocks[1].img_mlp, torch.nn.Sequential), "patches are removed on exit"
    assert recording.steps == [1]
    codes = recording.codes(("img", 1), step=1)
    expected = transcoders[("img", 1)].encode_topk(captured["x"], 0.75, 5)
    assert codes.indices.shape == (1, 24, 5)
    assert torch.equal(codes.indices.long(), expected.indices)
    assert torch.allclose(codes.values.float(), expected.values, rtol=1e-3, atol=1e-3)  # stored as fp16
    top = FeatureRef("img", 1, int(expected.indices[0, 7, 0]))
    assert recording.feature_map(top, step=1)[0, 7] > 0


def test_replace_modes(model: Flux, transcoders: TranscoderSet) -> None:
    inputs = _inputs(model)
    baseline = _run(model, inputs)
    observed, from_replace = (FeatureRecording(sites=(("img", 1),), k=4) for _ in range(2))
    for recording in (observed, from_replace):
        recording.start_run(SCHEDULE)
    with patch_reference_model(model, transcoders, recording=observed):
        _run(model, inputs)
    with patch_reference_model(model, transcoders, mode="replace", recording=from_replace):
        replaced = _run(model, inputs)
    assert torch.equal(from_replace.codes(("img", 1), 1).indices, observed.codes(("img", 1), 1).indices)
    with patch_reference_model(model, transcoders, mode="replace_without_error"):
        spliced = _run(model, inputs)
    assert (replaced - baseline).abs().max() <= 1e-5 * baseline.abs().max()
    assert (spliced - baseline).abs().max() > 1e-3, "random transcoders are unfaithful: splicing them in must show"


def test_steering_is_delta_form(model: Flux, transcoders: TranscoderSet) -> None:
    transcoder = transcoders[("img", 0)]
    x = torch.randn(2, 24, model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    mlp = model.double_blocks[0].img_mlp
    context = CallContext(sigmas=torch.tensor([0.5, 0.5]), chunks=(UNCOND, COND), image_grid=(4, 6))
    features = (FeatureRef("img", 0, 4), FeatureRef("img", 0, 17))
    with torch.no_grad():
        y = mlp(x)
        z = torch.relu(transcoder.feature_preactivation(x, 0.5, [4, 17]))
        for mode, strength, expected_codes in [("ablate", 0.0, 0 * z), ("scale", 3.0, 3 * z), ("set", 2.0, 0 * z + 2),
                                               ("add", -1.0, z - 1)]:
            spec = SteeringSpec(features, mode, strength, chunks=frozenset({COND}))
            out = PatchedMLP(mlp, transcoder, context, steering=(spec,))(x)
            delta = (expected_codes - z) @ transcoder.W_dec[[4, 17]]
            assert torch.equal(out[0], y[0]), "the uncond chunk is not steered"
            assert torch.allclose(out[1], y[1] + delta[1], atol=1e-6), mode

        noop = PatchedMLP(mlp, transcoder, context, steering=(SteeringSpec(features, "scale", 1.0),))
        assert torch.equal(noop(x), y)
        outside = PatchedMLP(mlp, transcoder, context, steering=(SteeringSpec(features, "ablate", sigma_start=0.4),))
        assert torch.equal(outside(x), y)
        token = int((z > 0).any(-1).all(0).nonzero()[0])  # a token where a steered feature fires in both rows
        mask = torch.zeros(4 * 16, 6 * 16)  # a picture of the image: 16 px per token
        mask[token // 6 * 16 : token // 6 * 16 + 16, token % 6 * 16 : token % 6 * 16 + 16] = 1.0
        masked = PatchedMLP(mlp, transcoder, context, steering=(SteeringSpec(features, "ablate", mask=mask),))(x)
        changed = (masked != y).any(-1)
        assert changed[:, token].all() and changed.sum() == 2

        a, b = SteeringSpec(features[:1], "scale", 2.0), SteeringSpec(features[1:], "ablate")
        chained = PatchedMLP(mlp, transcoder, context).with_steering(a).with_steering(b)(x)
        both = y + (a.delta(transcoder, x, 0.5) + b.delta(transcoder, x, 0.5))
        assert torch.allclose(chained, both, atol=1e-6)

        with pytest.raises(InputShapeError, match="a different aspect ratio"):
            PatchedMLP(mlp, transcoder, context,
                       steering=(SteeringSpec(features, "ablate", mask=torch.ones(64, 64)),))(x)
        with pytest.raises(InputShapeError, match="covers 24 image tokens .* but the MLP saw 30"):
            PatchedMLP(mlp, transcoder, context, steering=(SteeringSpec(features, "ablate", mask=mask),))(
                torch.randn(2, 30, model.config.hidden_size)
            )


def test_a_steering_mask_of_another_aspect_names_its_source_and_the_image_size() -> None:
    features = (FeatureRef("img", 0, 4),)
    spec = SteeringSpec(features, "ablate", mask=torch.ones(16, 64), mask_name="mask input of Steer Feature")
    with pytest.raises(InputShapeError, match=r"mask input of Steer Feature is 64x16 \(WxH\).*\(96x64 for this grid\)"):
        spec.token_weights((4, 6), 24)
    with pytest.raises(InputShapeError, match="the steering mask is 64x16"):
        SteeringSpec(features, "ablate", mask=torch.ones(16, 64)).token_weights((4, 6), 24)


def test_per_image_steering_steers_each_image_as_if_it_were_alone(model: Flux, transcoders: TranscoderSet) -> None:
    transcoder = transcoders[("img", 0)]
    x = torch.randn(3, 24, model.config.hidden_size, generator=torch.Generator().manual_seed(6))
    mlp = model.double_blocks[0].img_mlp
    context = CallContext(sigmas=torch.full((3,), 0.5), chunks=(COND,), image_grid=(4, 6))
    alone = CallContext(sigmas=torch.full((1,), 0.5), chunks=(COND,), image_grid=(4, 6))
    scale = SteeringSpec((FeatureRef("img", 0, 4),), "scale", -2.0)
    ablate = SteeringSpec((FeatureRef("img", 0, 17), FeatureRef("img", 0, 5)), "ablate")
    elsewhere = SteeringSpec((FeatureRef("img", 1, 4),), "ablate")
    batch = PerImageSteering(((ablate,), (elsewhere,), (scale, ablate)))
    assert set(batch.features) == {*scale.features, *ablate.features, *elsewhere.features}
    with torch.no_grad():
        y = mlp(x)
        out = PatchedMLP(mlp, transcoder, context, steering=(batch,))(x)
        assert torch.equal(out[1], y[1])  # its steering is at another site
        for row, specs in ((0, (ablate,)), (2, (scale, ablate))):
            expected = PatchedMLP(mlp, transcoder, alone, steering=specs)(x[row : row + 1])
            assert torch.allclose(out[row], expected[0], atol=1e-6) and not torch.equal(out[row], y[row])
        assert PerImageSteering(((elsewhere,),)).delta(transcoder, x, 0.5) is None
        with pytest.raises(InputShapeError, match="steerings for 4 images, but the batch holds 3"):
            PerImageSteering(((scale,),) * 4).delta(transcoder, x, 0.5)
    with pytest.raises(ValueError, match="acts on chunks \\[0\\] only"):
        PerImageSteering(((SteeringSpec(scale.features, "ablate", chunks=frozenset({COND})),),))


def test_records_are_keyed_by_sigma_and_chunk(model: Flux, transcoders: TranscoderSet) -> None:
    recording = FeatureRecording(sites=(("img", 0),), k=3, keep_input_steps=frozenset({2}))
    recording.start_run(SCHEDULE)
    with patch_reference_model(model, transcoders, recording=recording, chunks=(UNCOND, COND)):
        for sigma in SCHEDULE[:-1]:
            _run(model, _inputs(model, batch=2, sigma=sigma))
    assert recording.steps == [0, 1, 2, 3]
    assert {key.chunk for key in recording.records} == {COND}
    assert list(recording.calls) == [(0.5, COND)]
    kept = recording.call_inputs(2)
    assert kept.img.shape == (1, 24, model.config.hidden_size) and kept.txt.shape == (1, 5, model.config.hidden_size)
    assert kept.image_grid == (4, 6) and kept.sigma == 0.5
    with pytest.raises(DiffractError,
                       match="did not keep the model inputs of step 1: add 1 to its keep_inputs_at_steps"):
        recording.call_inputs(1)
    with pytest.raises(DiffractError, match="uncond chunk; recorded steps: 0, 1, 2, 3"):
        recording.codes(("img", 0), step=1, chunk=UNCOND)


def test_patch_outside_a_model_call_is_a_clear_error(model: Flux, transcoders: TranscoderSet) -> None:
    recording = FeatureRecording(sites=(("img", 0),), k=3)
    patch = PatchedMLP(model.double_blocks[0].img_mlp, transcoders[("img", 0)], CallContext(), recording=recording)
    with pytest.raises(DiffractError, match="outside a published model call"):
        patch(torch.randn(1, 4, model.config.hidden_size))


def test_kept_inputs_refuse_masked_attention(model: Flux) -> None:
    from diffract_core.errors import UnsupportedModelError
    from diffract_core.recording.call_inputs import keep_call_inputs

    recording = FeatureRecording(sites=(("img", 0),), k=3, keep_input_steps=frozenset({0}))
    recording.start_run(SCHEDULE)
    context = CallContext(sigmas=torch.tensor([1.0]))
    img, txt, vec = torch.zeros(1, 4, 64), torch.zeros(1, 2, 64), torch.zeros(1, 64)
    pe = torch.zeros(1, 1, 6, 16, 2, 2)
    with pytest.raises(UnsupportedModelError, match="attention mask"):
        keep_call_inputs(recording, context, img, txt, vec, pe, attn_mask=torch.ones(6, 6))
    with pytest.raises(UnsupportedModelError, match="no plain conditioning vector"):
        keep_call_inputs(recording, context, img, txt, (vec, vec), pe)
    keep_call_inputs(recording, context, img, txt, vec, pe)
    img += 1  # ComfyUI's blocks add to their inputs in place; the kept copy must not move
    assert float(recording.call_inputs(0).img.abs().max()) == 0.0


def test_only_an_unmanaged_transcoder_moves_to_the_activations() -> None:
    from types import SimpleNamespace

    from diffract_core.recording.patched_mlp import moves_transcoder

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert moves_transcoder(SimpleNamespace(device=cpu, placement_managed=False), cuda)
    assert not moves_transcoder(SimpleNamespace(device=cpu, placement_managed=True), cuda), "ComfyUI placed it"
    assert not moves_transcoder(SimpleNamespace(device=cuda, placement_managed=False), cuda)


def test_weights_cast_per_call_replace_and_steer_as_resident_ones(model: Flux, transcoders: TranscoderSet,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed transcoder whose weights are not where the activations are (forced here: a CPU has
    one device) is cast per call, a block of rows at a time, to the same results."""
    from diffract_core.transcoders import transcoder as transcoder_module

    transcoder = transcoders[("img", 0)]
    x = torch.randn(2, 24, model.config.hidden_size, generator=torch.Generator().manual_seed(8))
    mlp = model.double_blocks[0].img_mlp
    context = CallContext(sigmas=torch.full((2,), 0.5), chunks=(COND,), image_grid=(4, 6))
    spec = SteeringSpec((FeatureRef("img", 0, 4), FeatureRef("img", 0, 17)), "scale", 3.0)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return PatchedMLP(mlp, transcoder, context, mode="replace_without_error", steering=(spec,))(x)

    resident = run()
    monkeypatch.setattr(transcoder_module, "resident", lambda *_: False)
    monkeypatch.setattr(transcoder_module, "ROWS_PER_CHUNK", 40)
    monkeypatch.setattr(transcoder, "placement_managed", True)
    torch.testing.assert_close(run(), resident)


def test_fp8_transcoders_observe_bit_identically_and_replace_exactly(model: Flux) -> None:
    hidden = model.config.hidden_size
    fp8 = TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=hidden, d_features=96, time_dim=16).quantise_fp8()
        for stream in ("img", "txt") for layer in range(model.config.depth)
    )
    inputs = _inputs(model)
    baseline = _run(model, inputs)
    recording = FeatureRecording(sites=(("img", 1),), k=4)
    recording.start_run(SCHEDULE)
    with patch_reference_model(model, fp8, recording=recording):
        assert torch.equal(_run(model, inputs), baseline)
    with patch_reference_model(model, fp8, mode="replace"):
        replaced = _run(model, inputs)
    assert (replaced - baseline).abs().max() <= 1e-5 * baseline.abs().max()
    assert recording.codes(("img", 1), 1).indices.shape == (1, 24, 4)
