"""Attention Heads through the fake ComfyUI surface: the node's data equal the library's profile
and ablation effects on the recorded calls, with a progress bar that honours interrupts."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture
def recorded(pack, patcher, transcoders, sampler):
    import fake_runtime

    model, recording = fake_runtime.run_node(
        pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders, keep_inputs_at_steps="1, 3"
    ).args
    return model, recording, {"samples": sampler(model)}


def run_heads(pack, recorded, **given):
    import fake_runtime

    model, recording, samples = recorded
    return fake_runtime.run_node(pack.nodes.AttentionHeads, model=model, recording=recording, samples=samples,
                                 **given)


def test_heads_data_equal_the_library_profile_of_the_kept_calls(pack, core, recorded) -> None:
    import comfy.model_management
    import comfy.utils

    comfy.utils.UPDATES.clear()
    output = run_heads(pack, recorded, metric="text_focus", batch_index=0)
    table, data = output.args
    payload = json.loads(data)
    model, recording, _ = recorded
    blocks = model.get_model_object("diffusion_model").double_blocks
    profile = core.heads.head_profile(blocks, [(step, recording.call_inputs(step)) for step in (1, 3)])
    assert payload["steps"] == [1, 3] and payload["sigmas"] == [0.75, 0.25]
    assert (payload["layers"], payload["heads"], payload["text_tokens"]) == (2, 2, 5)
    for name in core.heads.METRICS:
        torch.testing.assert_close(torch.tensor(payload["metrics"][name], dtype=torch.float64),
                                   profile.metric(name)[0], rtol=1e-5, atol=1e-8, msg=name)
    top = payload["top_text_tokens"][0][1][0]  # step 1, layer 1, head 0
    assert len(top) == 5 and top[0]["share"] >= top[-1]["share"] and top[0]["label"] is None
    assert {role["name"] for role in payload["roles"]["roles"]} and "silhouettes" in payload["roles"]
    assert payload["metric"] == "text_focus" and "feature_ablation" not in payload
    assert table.shape[0] == 1 and table.shape[-1] == 3 and output.ui.as_dict()["images"]
    assert comfy.utils.UPDATES[-1] == ("7", 4, 4)  # 2 steps x 2 layers
    assert comfy.model_management.loaded[-1] is model


def test_feature_effects_equal_the_library_replay(pack, core, recorded, transcoders) -> None:
    import comfy.model_management

    output = run_heads(pack, recorded, metric="feature_effect", feature="img:1:7", transcoders=transcoders,
                       steps="3")
    payload = json.loads(output.args[1])
    model, recording, _ = recorded
    effects = core.heads.feature_ablation_effects(model.get_model_object("diffusion_model").double_blocks,
                                                  transcoders, recording.call_inputs(3).row(0),
                                                  core.features.FeatureRef("img", 1, 7))
    ablation = payload["feature_ablation"]
    assert ablation["feature"] == "img:1:7" and [s["step"] for s in ablation["steps"]] == [3]
    torch.testing.assert_close(torch.tensor(ablation["steps"][0]["effect"], dtype=torch.float64), effects.effect,
                               rtol=1e-5, atol=1e-8)
    request = comfy.model_management.loaded[-2:]
    assert request[0] is model and request[1].model.transcoder.config.site.key == ("img", 1)


def test_an_interrupt_stops_the_node(pack, recorded) -> None:
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run_heads(pack, recorded)
    assert not comfy.model_management.interrupt_processing


def test_bad_requests_say_what_to_change(pack, core, recorded, patcher, transcoders) -> None:
    import fake_runtime

    error = core.errors.DiffractError
    with pytest.raises(error, match="metric feature_effect needs a feature"):
        run_heads(pack, recorded, metric="feature_effect")
    with pytest.raises(error, match="feature img:1:7 needs its transcoders"):
        run_heads(pack, recorded, feature="img:1:7")
    with pytest.raises(error, match="did not keep the model inputs of step 2"):
        run_heads(pack, recorded, steps="2")
    with pytest.raises(core.errors.BatchIndexError, match="batch index 1 is out of range"):
        run_heads(pack, recorded, batch_index=1)
    model, recording = fake_runtime.run_node(pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders).args
    with pytest.raises(error, match="has not run yet"):
        run_heads(pack, (model, recording, {}))
    recording.start_run((1.0, 0.5, 0.0))
    recording.finish_run()
    with pytest.raises(error, match="kept no model inputs of the cond chunk: set keep_inputs_at_steps"):
        run_heads(pack, (model, recording, {}))
