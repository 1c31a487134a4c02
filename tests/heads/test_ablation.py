"""Head ablation: in the reference FLUX while sampling, and replayed on a kept call."""

from __future__ import annotations

import copy

import pytest
import torch

from diffract_core.errors import FeatureIndexError, FeatureSpecError, SettingsError
from diffract_core.features import FeatureRef
from diffract_core.flux import Flux
from diffract_core.flux.sampling import euler_sample
from diffract_core.heads import (
    HeadAblation,
    ablate_reference_heads,
    feature_ablation_effects,
    final_latent_effects,
    parse_heads,
    zero_heads,
)
from diffract_core.recording import FeatureRecording, patch_reference_model

from .conftest import SIGMAS


def sample(model: Flux, run_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return euler_sample(model, run_inputs["noise"], run_inputs["context"], run_inputs["pooled"], SIGMAS)


@pytest.fixture(scope="module")
def silent_head_model(model: Flux) -> Flux:
    """The model with head 1 of layer 1 silenced: its value rows are zero in both streams."""
    silent = copy.deepcopy(model)
    width = model.config.hidden_size // model.config.num_heads
    rows = slice(2 * model.config.hidden_size + width, 2 * model.config.hidden_size + 2 * width)
    with torch.no_grad():
        for attn in (silent.double_blocks[1].img_attn, silent.double_blocks[1].txt_attn):
            attn.qkv.weight[rows] = 0
            attn.qkv.bias[rows] = 0
    return silent


def test_zero_heads_zeroes_only_the_chosen_slices() -> None:
    attended = torch.arange(1.0, 2 * 3 * 8 + 1).view(2, 3, 8)  # 4 heads of width 2
    assert zero_heads(attended, [], 4) is attended
    out = zero_heads(attended, [1, 3], 4)
    assert torch.equal(out.view(2, 3, 4, 2)[:, :, [1, 3]], torch.zeros(2, 3, 2, 2))
    assert torch.equal(out.view(2, 3, 4, 2)[:, :, [0, 2]], attended.view(2, 3, 4, 2)[:, :, [0, 2]])
    only_second = zero_heads(attended, [0], 4, rows=torch.tensor([False, True]))
    assert torch.equal(only_second[0], attended[0]) and torch.equal(only_second[1, :, :2], torch.zeros(3, 2))
    assert zero_heads(attended, [0], 4, rows=torch.tensor([False, False])) is attended
    with pytest.raises(SettingsError, match=r"heads \[4\] are not all among this layer's 4"):
        zero_heads(attended, [4], 4)


def test_ablating_a_head_whose_output_is_zero_changes_nothing(silent_head_model, run_inputs) -> None:
    clean = sample(silent_head_model, run_inputs)
    with ablate_reference_heads(silent_head_model, HeadAblation(frozenset({(1, 1)}))):
        ablated = sample(silent_head_model, run_inputs)
    assert torch.equal(ablated, clean)


def test_ablating_a_real_head_changes_the_latent_only_inside_its_window(model, run_inputs) -> None:
    clean = sample(model, run_inputs)
    head = frozenset({(1, 0)})
    with ablate_reference_heads(model, HeadAblation(head)):
        everywhere = sample(model, run_inputs)
    with ablate_reference_heads(model, HeadAblation(head, sigma_start=1.0, sigma_end=0.9)):
        first_step = sample(model, run_inputs)
    with ablate_reference_heads(model, HeadAblation(head, sigma_start=0.1, sigma_end=0.05)):
        no_step = sample(model, run_inputs)
    assert float((everywhere - clean).abs().max()) > 1e-3
    assert float((first_step - clean).abs().max()) > 1e-4 and not torch.equal(first_step, everywhere)
    assert torch.equal(no_step, clean)
    assert torch.equal(sample(model, run_inputs), clean), "the hooks are gone after the block"


def test_final_latent_effects_are_zero_for_a_silent_head_only(silent_head_model, run_inputs) -> None:
    effects = final_latent_effects(silent_head_model, run_inputs["noise"], run_inputs["context"],
                                   run_inputs["pooled"], SIGMAS,
                                   [HeadAblation(frozenset({(1, 1)})), HeadAblation(frozenset({(1, 0)}))])
    assert effects.shape == (2, 2)
    assert torch.equal(effects[0], torch.zeros(2, dtype=torch.float64))
    assert bool((effects[1] > 1e-4).all())


def test_replayed_ablation_equals_the_model_run_with_the_head_ablated(model, transcoders) -> None:
    generator = torch.Generator().manual_seed(5)
    cfg = model.config
    inputs = {"x": torch.randn(1, cfg.latent_channels, 8, 12, generator=generator), "timestep": torch.full((1,), 0.5),
              "context": torch.randn(1, 5, cfg.context_in_dim, generator=generator),
              "y": torch.randn(1, cfg.vec_in_dim, generator=generator)}
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=5, keep_input_steps=frozenset({2}))
    recording.start_run(SIGMAS)
    with torch.no_grad(), patch_reference_model(model, transcoders, recording=recording):
        model(**inputs)
    call = recording.call_inputs(2)
    site = ("img", 2)
    transcoder = transcoders[site]
    mlp_inputs: list[torch.Tensor] = []
    hook = model.double_blocks[2].img_mlp.register_forward_pre_hook(lambda _m, args: mlp_inputs.append(args[0]))
    try:
        with torch.no_grad():
            model(**inputs)
            with ablate_reference_heads(model, HeadAblation(frozenset({(0, 1)}))):
                model(**inputs)
    finally:
        hook.remove()
    clean_codes = transcoder.encode(mlp_inputs[0], 0.5)[0][0]
    feature = FeatureRef("img", 2, int(clean_codes.sum(0).argmax()))
    effects = feature_ablation_effects(model.double_blocks, transcoders, call, feature)

    def total(x: torch.Tensor) -> float:
        return float(transcoder.feature_activation(x, 0.5, [feature.index]).detach().double().sum())

    assert effects.clean == pytest.approx(total(mlp_inputs[0]), rel=1e-4)
    assert float(effects.ablated[0, 1]) == pytest.approx(total(mlp_inputs[1]), rel=1e-4)
    assert effects.ablated.shape == (3, 2) and bool(effects.ablated[:2].isfinite().all())
    assert float(effects.effect[:2].abs().max()) > 1e-3
    with pytest.raises(FeatureIndexError, match="feature img:2:96 is out of range"):
        feature_ablation_effects(model.double_blocks, transcoders, call, FeatureRef("img", 2, 96))


def test_bad_ablations_are_refused_clearly(model) -> None:
    assert parse_heads("2:1, 0:0 2:1") == frozenset({(2, 1), (0, 0)})
    with pytest.raises(FeatureSpecError, match=r"'2-1' is not a head; write heads as layer:head"):
        parse_heads("2-1")
    with pytest.raises(FeatureSpecError, match="no head given"):
        parse_heads(" ")
    with pytest.raises(SettingsError, match="sigma window is empty"):
        HeadAblation(frozenset({(0, 0)}), sigma_start=0.2, sigma_end=0.5)
    with pytest.raises(SettingsError, match="head indices start at 0"):
        HeadAblation(frozenset({(0, -1)}))
    outside = r"heads \[\(3, 0\)\] are outside this model's 3 double blocks of 2 heads"
    with pytest.raises(SettingsError, match=outside), ablate_reference_heads(model, HeadAblation(frozenset({(3, 0)}))):
        pass
