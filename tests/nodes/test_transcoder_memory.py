"""nodes/transcoder_memory.py: the transcoders ride along with the patched MODEL as ComfyUI-managed models."""

from __future__ import annotations

import comfy.model_management
import torch


def _sites_of(model, pack) -> list[tuple[str, int]]:
    patchers = model.get_additional_models_with_key(pack.nodes.transcoder_memory.KEY)
    return [patcher.model.transcoder.config.site.key for patcher in patchers]


def test_patched_models_carry_one_patcher_per_site_shared_along_the_chain(pack, core, patcher, transcoders,
                                                                           sampler) -> None:
    mp = pack.nodes.model_patching
    recording = core.recording.FeatureRecording(sites=(("img", 0), ("img", 1)), k=4)
    recorded = mp.record_features(patcher, transcoders, [("img", 0), ("img", 1)], recording)
    spec = core.recording.SteeringSpec((core.features.FeatureRef("img", 1, 3), core.features.FeatureRef("txt", 0, 2)),
                                       mode="ablate")
    steered = mp.steer_features(recorded, transcoders, spec)
    assert _sites_of(patcher, pack) == [], "the input MODEL stays as it was"
    assert _sites_of(recorded, pack) == [("img", 0), ("img", 1)]
    assert _sites_of(steered, pack) == [("img", 0), ("img", 1), ("txt", 0)], "img:1 once, though both patch it"
    for model in (recorded, steered):
        for site_patcher in model.get_additional_models_with_key(pack.nodes.transcoder_memory.KEY):
            site = site_patcher.model.transcoder.config.site.key
            assert site_patcher.model.transcoder is transcoders[site], "ComfyUI moves the weights, not a copy"
            assert transcoders[site].placement_managed, "so the MLP patch leaves it where ComfyUI puts it"
            assert site_patcher.is_clone(pack.nodes.transcoder_memory.site_patcher(transcoders[site]))
    comfy.model_management.loaded.clear()
    sampler(steered)
    requested = comfy.model_management.loaded
    assert requested[0] is steered and [p.model.transcoder.config.site.key for p in requested[1:]] == [
        ("img", 0), ("img", 1), ("txt", 0)]
    assert all(isinstance(p.model, torch.nn.Module) for p in requested[1:])
