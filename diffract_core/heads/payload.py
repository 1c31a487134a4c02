"""One image's head profile (and, where measured, roles and a feature's ablation effects) as plain
JSON data: nested lists [step][layer][head], NaN as null."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import BatchIndexError
from .feature_effects import FeatureEffects
from .metrics import METRIC_HELP, METRICS
from .profile import HeadProfile
from .roles import HeadRoles


def _plain(values: torch.Tensor) -> Any:
    """Nested lists of floats rounded to 6 significant digits, None where not finite."""
    if values.ndim == 0:
        value = float(values)
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return [_plain(row) for row in values]


def _top_tokens(focus: torch.Tensor, labels: Sequence[str] | None, count: int) -> list[dict[str, Any]]:
    shares, tokens = focus.topk(min(count, focus.shape[-1]))
    return [{"token": int(t), "label": None if labels is None else labels[int(t)], "share": _plain(s)}
            for s, t in zip(shares, tokens)]


def heads_payload(
    profile: HeadProfile,
    *,
    image: int = 0,
    token_labels: Sequence[str] | None = None,
    top_tokens: int = 5,
    roles: HeadRoles | None = None,
    effects: Sequence[FeatureEffects] = (),
) -> dict[str, Any]:
    """`effects`: one FeatureEffects per profiled step, in step order (or none)."""
    if not 0 <= image < profile.images:
        raise BatchIndexError(f"image {image} is outside the profile's {profile.images} image(s)")
    focus = profile.token_focus[image]  # [steps, layers, heads, tokens]
    payload: dict[str, Any] = {
        "steps": list(profile.steps),
        "sigmas": list(profile.sigmas),
        "layers": profile.layers,
        "heads": profile.heads,
        "text_tokens": focus.shape[-1],
        "metrics": {name: _plain(profile.metric(name)[image]) for name in METRICS},
        "metric_help": dict(METRIC_HELP),
        "top_text_tokens": [[[_top_tokens(focus[s, layer, head], token_labels, top_tokens)
                              for head in range(profile.heads)] for layer in range(profile.layers)]
                            for s in range(len(profile.steps))],
    }
    if roles is not None:
        payload["roles"] = roles.to_dict()
    if effects:
        payload["feature_ablation"] = {
            "feature": str(effects[0].feature),
            "measure": "the feature's activation summed over its stream's tokens; effect = ablated - clean",
            "steps": [{"step": step, "clean": _plain(torch.tensor(e.clean)), "effect": _plain(e.effect)}
                      for step, e in zip(profile.steps, effects)],
        }
    return payload
