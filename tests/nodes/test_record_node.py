"""Record Features through the fake ComfyUI surface."""

from __future__ import annotations

import pytest
import torch


def test_records_the_chosen_sites_and_keeps_inputs_of_chosen_steps(pack, patcher, transcoders, sampler) -> None:
    import fake_runtime

    baseline = sampler(patcher)
    model, recording = fake_runtime.run_node(
        pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders, sites="img", top_k=5,
        keep_inputs_at_steps="1"
    ).args
    assert recording.sites == (("img", 0), ("img", 1)) and recording.k == 5
    assert torch.equal(sampler(model), baseline)
    assert recording.complete and recording.steps == [0, 1, 2, 3]
    assert list(recording.calls) == [(0.75, 0)]
    kept = recording.call_inputs(1)
    assert kept.img.shape == (1, 24, 64) and kept.vec.shape == (1, 64) and kept.image_grid == (4, 6)
    assert not model.get_model_object("diffusion_model").double_blocks[0]._forward_pre_hooks
    assert recording.codes(("img", 1), 3).indices.shape == (1, 24, 5)


def test_a_rerun_starts_a_fresh_recording(pack, patcher, transcoders, sampler) -> None:
    import fake_runtime

    model, recording = fake_runtime.run_node(pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders).args
    sampler(model)
    sampler(model, sigmas=torch.tensor([1.0, 0.5, 0.0]))
    assert recording.runs == 2 and recording.steps == [0, 1] and recording.schedule == (1.0, 0.5, 0.0)


def test_bad_settings_are_refused_with_the_fix(pack, core, patcher, transcoders) -> None:
    import fake_runtime

    node = pack.nodes.RecordFeatures
    errors = core.errors
    with pytest.raises(errors.SiteNotLoadedError, match="'txt:7' asks for \\[txt: 7\\]"):
        fake_runtime.run_node(node, model=patcher, transcoders=transcoders, sites="txt:7")
    with pytest.raises(errors.DiffractError, match="top_k 200 is more than the 96 features"):
        fake_runtime.run_node(node, model=patcher, transcoders=transcoders, top_k=200)
    with pytest.raises(errors.FeatureSpecError, match="name the steps to trace"):
        fake_runtime.run_node(node, model=patcher, transcoders=transcoders, keep_inputs_at_steps="all")
    with pytest.raises(fake_runtime.NodeInputError, match="value not in list"):
        fake_runtime.run_node(node, model=patcher, transcoders=transcoders, mode="splice")
    assert patcher.object_patches == {}
