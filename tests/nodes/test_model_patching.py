"""nodes/model_patching.py: clones, object patches and wrappers, on the fake ModelPatcher."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy.model_management import InterruptProcessingException
from comfy.patcher_extension import WrappersMP


def _recording(core, sites, **kwargs):
    return core.recording.FeatureRecording(sites=tuple(sites), k=4, **kwargs)


def test_observe_is_bit_identical_and_the_input_model_stays_clean(pack, core, patcher, transcoders, sampler) -> None:
    mp = pack.nodes.model_patching
    baseline = sampler(patcher)
    recording = _recording(core, transcoders.sites)
    patched = mp.record_features(patcher, transcoders, transcoders.sites, recording)
    assert torch.equal(sampler(patched), baseline)
    assert patcher.object_patches == {} and mp.KEY not in patcher.model_options["transformer_options"]
    assert patcher.wrappers == {}
    assert recording.complete and recording.steps == [0, 1, 2, 3]
    assert sorted({key.sigma for key in recording.records}) == [0.25, 0.5, 0.75, 1.0]
    assert recording.image_grid == (4, 6) and recording.text_tokens == 5
    assert torch.equal(sampler(patcher), baseline), "the unpatched model, used after the patched clone"


def test_replace_is_exact_to_float_precision_and_without_error_is_not(
    pack, core, patcher, transcoders, sampler
) -> None:
    mp = pack.nodes.model_patching
    baseline = sampler(patcher)
    sites = transcoders.sites
    replaced = sampler(mp.record_features(patcher, transcoders, sites, _recording(core, sites), mode="replace"))
    spliced = sampler(mp.record_features(patcher, transcoders, sites, _recording(core, sites),
                                         mode="replace_without_error"))
    assert (replaced - baseline).abs().max() <= 1e-5 * baseline.abs().max()
    assert (spliced - baseline).abs().max() > 1e-3


def test_cfg_chunks_are_recorded_apart(pack, core, patcher, transcoders, sampler) -> None:
    mp = pack.nodes.model_patching
    cond_only = _recording(core, [("img", 0)])
    both = _recording(core, [("img", 0)], chunks=frozenset({0, 1}))
    sampler(mp.record_features(patcher, transcoders, [("img", 0)], cond_only), cfg_scale=2.0)
    sampler(mp.record_features(patcher, transcoders, [("img", 0)], both), cfg_scale=2.0)
    assert {key.chunk for key in cond_only.records} == {0}
    assert {key.chunk for key in both.records} == {0, 1}
    assert not torch.equal(both.codes(("img", 0), 0, chunk=0).values, both.codes(("img", 0), 0, chunk=1).values)
    assert torch.equal(both.codes(("img", 0), 2, chunk=0).indices, cond_only.codes(("img", 0), 2).indices)


def test_clones_share_patches_and_weights(pack, core, patcher, transcoders) -> None:
    mp = pack.nodes.model_patching
    patched = mp.record_features(patcher, transcoders, [("img", 1)], _recording(core, [("img", 1)]))
    again = patched.clone().clone()
    path = mp.mlp_path(("img", 1))
    assert again.get_model_object(path) is patched.get_model_object(path)
    state = again.model_options["transformer_options"][mp.KEY]
    assert state is patched.model_options["transformer_options"][mp.KEY]
    assert copy.deepcopy(transcoders) is transcoders and state.to("cpu") is state and state.to(torch.float16) is state
    assert again.get_wrappers(WrappersMP.OUTER_SAMPLE, mp.KEY) == [mp.outer_sample_wrapper]


def test_patch_keeps_the_models_parameter_names(pack, core, flux, patcher, transcoders) -> None:
    """ComfyUI applies LoRA weight patches and loads weights by these names while the patch is in place."""
    mp = pack.nodes.model_patching
    names = set(flux.state_dict())
    patched = mp.record_features(patcher, transcoders, transcoders.sites, _recording(core, transcoders.sites))
    mlp = patched.get_model_object(mp.mlp_path(("txt", 0)))
    flux.double_blocks[0].txt_mlp = mlp
    try:
        assert set(flux.state_dict()) == names
        assert getattr(mlp, "0").weight is mlp.mlp[0].weight
        mlp.to(torch.float64)  # a model-wide cast reaches the MLP's weights, never the transcoder's
        assert mlp.mlp[0].weight.dtype == torch.float64 and mlp.transcoder.dtype == torch.float32
    finally:
        mlp.to(torch.float32)
        flux.double_blocks[0].txt_mlp = mlp.mlp


def test_other_packs_wrappers_still_run(pack, core, patcher, transcoders, sampler) -> None:
    mp = pack.nodes.model_patching
    calls = []

    def other(executor, *args, **kwargs):
        calls.append(len(args))
        return executor(*args, **kwargs)

    patcher.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "other_pack", other)
    patched = mp.record_features(patcher, transcoders, [("img", 0)], _recording(core, [("img", 0)]))
    sampler(patched)
    assert len(calls) == 4 and patched.get_wrappers(WrappersMP.DIFFUSION_MODEL, "other_pack") == [other]


def test_interrupt_leaves_the_recording_incomplete_and_the_model_unpatched(
    pack, core, flux, patcher, transcoders, sampler
) -> None:
    mp = pack.nodes.model_patching
    baseline = sampler(patcher)
    recording = _recording(core, transcoders.sites)
    patched = mp.record_features(patcher, transcoders, transcoders.sites, recording)

    def interrupt_at_step_2(step, _x):
        if step == 1:
            raise InterruptProcessingException()

    with pytest.raises(InterruptProcessingException):
        sampler(patched, callback=interrupt_at_step_2)
    assert not recording.complete and recording.steps == [0, 1]
    assert not isinstance(flux.double_blocks[0].img_mlp, core.recording.PatchedMLP)
    state = patched.model_options["transformer_options"][mp.KEY]
    assert state.context.sigmas is None
    assert torch.equal(sampler(patcher), baseline)
    sampler(patched)
    assert recording.complete and recording.steps == [0, 1, 2, 3]


def test_sigma_window_uses_the_models_sampling(pack, patcher) -> None:
    mp = pack.nodes.model_patching
    assert mp.sigma_window(patcher, 0.0, 1.0) == (float("inf"), 0.0)
    assert mp.sigma_window(patcher, 0.25, 0.5) == (0.75, 0.5)
    with pytest.raises(ValueError, match="start <= end"):
        mp.sigma_window(patcher, 0.6, 0.5)


def test_models_the_transcoders_cannot_read_are_refused(pack, core, flux, patcher, transcoders) -> None:
    import fake_runtime

    mp = pack.nodes.model_patching
    errors = core.errors
    sdxl = fake_runtime.ModelPatcher(torch.nn.Linear(2, 2), image_model="sdxl")
    with pytest.raises(errors.UnsupportedModelError, match="'sdxl' model, not FLUX"):
        mp.record_features(sdxl, transcoders, transcoders.sites, _recording(core, transcoders.sites))
    hidden = fake_runtime.ModelPatcher(torch.nn.Linear(2, 2))
    with pytest.raises(errors.UnsupportedModelError, match="has no `double_blocks`.*GGUF"):
        mp.record_features(hidden, transcoders, transcoders.sites, _recording(core, transcoders.sites))
    wide = core.transcoders.TranscoderSet.from_transcoders(
        [core.quickstart.random_transcoder("img", 0, d_model=32, d_features=8, time_dim=16)]
    )
    with pytest.raises(errors.DimensionMismatchError, match="d_model=32 .* hidden size is 64"):
        mp.record_features(patcher, wide, wide.sites, _recording(core, wide.sites))
    deep = core.transcoders.TranscoderSet.from_transcoders(
        [core.quickstart.random_transcoder("img", 5, d_model=64, d_features=8, time_dim=16)]
    )
    with pytest.raises(errors.DimensionMismatchError, match="past the model's last double-stream block"):
        mp.record_features(patcher, deep, deep.sites, _recording(core, deep.sites))
    assert patcher.object_patches == {} and patcher.wrappers == {}


def test_kept_inputs_are_refused_with_the_reason_under_a_controlnet(pack, core, flux, patcher, transcoders) -> None:
    import fake_runtime

    model, recording = fake_runtime.run_node(
        pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders, keep_inputs_at_steps="0"
    ).args
    state = model.model_options["transformer_options"][pack.nodes.model_patching.KEY]
    recording.start_run(torch.tensor([1.0, 0.5, 0.0]))
    calls = []
    run = fake_runtime.WrapperExecutor(lambda *args, **kwargs: calls.append(args), flux,
                                       [pack.nodes.model_patching.publish_call_wrapper])
    x, context = torch.zeros(1, 4, 8, 12), torch.zeros(1, 5, 48)
    options = {pack.nodes.model_patching.KEY: state, "cond_or_uncond": [0], "sigmas": torch.tensor([1.0])}
    # Flux._forward(x, timestep, context, y, guidance, ref_latents, control, transformer_options)
    run(x, torch.tensor([1.0]), context, None, None, None, {"input": []}, transformer_options=options)
    assert calls and not flux.double_blocks[0]._forward_pre_hooks
    with pytest.raises(core.errors.DiffractError,
                       match="could not keep the model inputs: a ControlNet adds to the residual"):
        recording.call_inputs(0)
