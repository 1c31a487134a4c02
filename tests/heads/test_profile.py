"""Head profiles of a recording's kept calls equal the statistics of the attention the model ran."""

from __future__ import annotations

import pytest
import torch

from diffract_core.errors import InputShapeError, SettingsError
from diffract_core.flux import layers
from diffract_core.flux.sampling import euler_sample
from diffract_core.heads import METRICS, head_profile, layer_head_stats

from .conftest import SIGMAS


def test_profile_equals_the_statistics_of_the_attention_that_ran(model, recording, run_inputs,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[torch.Tensor, torch.Tensor]] = []
    attention = layers.attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        ran.append(layers.apply_rope(q, k, pe))
        return attention(q, k, v, pe)

    monkeypatch.setattr(layers, "attention", spy)
    with torch.no_grad():
        euler_sample(model, run_inputs["noise"], run_inputs["context"], run_inputs["pooled"], SIGMAS)
    monkeypatch.undo()
    profile = head_profile(model.double_blocks, [(step, recording.call_inputs(step)) for step in (1, 3)])
    assert profile.values["entropy"].shape == (2, 2, 3, 2) and profile.token_focus.shape == (2, 2, 3, 2, 5)
    assert profile.steps == (1, 3) and profile.sigmas == (0.75, 0.25)
    blocks_per_call = model.config.depth + model.config.depth_single_blocks
    for s, step in enumerate((1, 3)):
        for layer in range(model.config.depth):
            query, key = ran[step * blocks_per_call + layer]
            for image in range(2):
                expected = layer_head_stats(query[image : image + 1], key[image : image + 1], 5, (4, 6))
                for name in METRICS:
                    torch.testing.assert_close(profile.values[name][image, s, layer], expected.values[name],
                                               rtol=1e-4, atol=1e-5, msg=name)
                torch.testing.assert_close(profile.token_focus[image, s, layer], expected.token_focus,
                                           rtol=1e-4, atol=1e-6)


def test_focus_on_sums_the_chosen_text_tokens(model, recording) -> None:
    profile = head_profile(model.double_blocks, [(0, recording.call_inputs(0))])
    positions = torch.tensor([[True, False, False, True, False], [False] * 5])
    focus = profile.focus_on(positions)
    torch.testing.assert_close(focus[0], profile.token_focus[0, ..., 0] + profile.token_focus[0, ..., 3])
    assert float(focus[1].abs().max()) == 0.0
    with pytest.raises(InputShapeError, match=r"token positions must be \[2, 5\]"):
        profile.focus_on(positions[:1])


def test_bad_requests_are_refused_clearly(model, recording) -> None:
    with pytest.raises(SettingsError, match="no kept model calls"):
        head_profile(model.double_blocks, [])
    with pytest.raises(InputShapeError, match="different numbers of images"):
        head_profile(model.double_blocks, [(0, recording.call_inputs(0)), (1, recording.call_inputs(1).row(0))])
    profile = head_profile(model.double_blocks, [(0, recording.call_inputs(0).row(1))])
    with pytest.raises(SettingsError, match="no head metric 'sharpness'; choose one of entropy, "):
        profile.metric("sharpness")
