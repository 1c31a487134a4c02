"""attribution/settings.py: every trace knob, checked when it is set and read back from a file."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution import TraceSettings
from diffract_core.errors import SettingsError


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"max_active": 0}, "max_active must be at least 1, got 0"),
        ({"max_feature_nodes": -1}, "max_feature_nodes must be 0 or more, got -1"),
        ({"faithfulness_checks": -2}, "faithfulness_checks must be 0 or more, got -2"),
        ({"dtype": "bfloat16"}, "dtype must be 'float32' or 'float64', got 'bfloat16'"),
    ],
)
def test_bad_knobs_are_refused_by_name(knobs: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        TraceSettings(**knobs)


def test_round_trip_and_dtype() -> None:
    settings = TraceSettings(max_feature_nodes=10, max_active=32, faithfulness_checks=3, dtype="float64")
    assert TraceSettings.from_dict(settings.to_dict()) == settings and settings.torch_dtype == torch.float64
    with pytest.raises(SettingsError, match=r"unknown key\(s\) \['budget'\]"):
        TraceSettings.from_dict({"budget": 5})
    with pytest.raises(SettingsError, match="settings.max_active = 'many' is not an integer"):
        TraceSettings.from_dict({"max_active": "many"})
