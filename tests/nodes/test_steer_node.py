"""Steer Feature through the fake ComfyUI surface."""

from __future__ import annotations

import pytest
import torch


def _steer(pack, model, transcoders, **settings):
    import fake_runtime

    return fake_runtime.run_node(pack.nodes.SteerFeature, model=model, transcoders=transcoders, **settings).args[0]


def _trajectory(sampler, model, **kwargs) -> list[torch.Tensor]:
    latents: list[torch.Tensor] = []
    sampler(model, callback=lambda step, x: latents.append(x.clone()), **kwargs)
    return latents


FEATURES = "img:0:3 img:1:5 img:1:40"


def test_no_op_steering_is_bit_identical(pack, patcher, transcoders, sampler) -> None:
    baseline = sampler(patcher)
    for mode, strength in (("scale", 1.0), ("add", 0.0)):
        assert torch.equal(sampler(_steer(pack, patcher, transcoders, features=FEATURES, mode=mode, strength=strength)),
                           baseline)


def test_steering_acts_only_inside_its_sigma_window(pack, patcher, transcoders, sampler) -> None:
    baseline = _trajectory(sampler, patcher)
    steered = _steer(pack, patcher, transcoders, features=FEATURES, mode="scale", strength=8.0, start_percent=0.5)
    latents = _trajectory(sampler, steered)
    # sigmas 1.0 and 0.75 come before the window (sigma <= 0.5): their updates are untouched
    assert torch.equal(latents[0], baseline[0]) and torch.equal(latents[1], baseline[1])
    assert not torch.equal(latents[2], baseline[2])
    early = _steer(pack, patcher, transcoders, features=FEATURES, mode="scale", strength=8.0, end_percent=0.25)
    assert not torch.equal(_trajectory(sampler, early)[0], baseline[0])


def test_mask_limits_steering_to_its_region(pack, patcher, transcoders, sampler) -> None:
    baseline = sampler(patcher)
    settings = {"features": FEATURES, "mode": "ablate"}
    unmasked = sampler(_steer(pack, patcher, transcoders, **settings))
    assert not torch.equal(unmasked, baseline)
    assert torch.equal(sampler(_steer(pack, patcher, transcoders, mask=torch.zeros(1, 64, 96), **settings)), baseline)
    assert torch.equal(sampler(_steer(pack, patcher, transcoders, mask=torch.ones(1, 64, 96), **settings)), unmasked)
    with pytest.raises(pack.diffract_core.errors.InputShapeError, match="a region is one mask"):
        _steer(pack, patcher, transcoders, mask=torch.ones(2, 64, 96), **settings)


@pytest.mark.parametrize("shape", [(1, 1000, 1), (1, 1, 1000), (1, 16, 640)])
def test_a_mask_that_fits_no_image_is_refused_at_the_node(pack, patcher, transcoders, shape) -> None:
    errors = pack.diffract_core.errors
    with pytest.raises(errors.InputShapeError, match="the mask input of Steer Feature is .* too thin"):
        _steer(pack, patcher, transcoders, features=FEATURES, mode="ablate", mask=torch.ones(shape))
    assert patcher.object_patches == {}


def test_a_wrong_aspect_mask_fails_sampling_naming_the_input_and_size(pack, patcher, transcoders, sampler) -> None:
    steered = _steer(pack, patcher, transcoders, features=FEATURES, mode="ablate", mask=torch.ones(1, 16, 64))
    with pytest.raises(pack.diffract_core.errors.InputShapeError,
                       match=r"the mask input of Steer Feature is 64x16 \(WxH\).*\(96x64 for this grid\)"):
        sampler(steered)


def test_steer_nodes_chain_and_compose(pack, patcher, transcoders, sampler) -> None:
    first = _steer(pack, patcher, transcoders, features="img:0:3", mode="ablate")
    both = _steer(pack, first, transcoders, features="img:1:5 txt:1:7", mode="ablate")
    together = _steer(pack, patcher, transcoders, features="img:0:3 img:1:5 txt:1:7", mode="ablate")
    assert torch.allclose(sampler(both), sampler(together), atol=1e-6)
    assert not torch.equal(sampler(first), sampler(both))
    assert torch.equal(sampler(_steer(pack, first, transcoders, features="img:1:5", mode="scale", strength=1.0)),
                       sampler(first))


def test_cond_only_steering_leaves_the_uncond_chunk(pack, patcher, transcoders, sampler) -> None:
    settings = {"features": FEATURES, "mode": "scale", "strength": 5.0}
    cond_only = sampler(_steer(pack, patcher, transcoders, apply_to="cond", **settings), cfg_scale=3.0)
    both = sampler(_steer(pack, patcher, transcoders, apply_to="cond+uncond", **settings), cfg_scale=3.0)
    assert not torch.equal(cond_only, both)


def test_bad_features_are_refused_with_the_fix(pack, core, patcher, transcoders) -> None:
    errors = core.errors
    with pytest.raises(errors.FeatureIndexError, match="has 96 features"):
        _steer(pack, patcher, transcoders, features="img:0:96")
    with pytest.raises(errors.SiteNotLoadedError, match="no transcoder for site img:9"):
        _steer(pack, patcher, transcoders, features="img:9:1")
    with pytest.raises(errors.FeatureSpecError, match="stream:layer:feature"):
        _steer(pack, patcher, transcoders, features="img12")
    assert patcher.object_patches == {}
