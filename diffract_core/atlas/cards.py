"""What the viewers, nodes and circuit files show of a feature from its atlas: its label, and a
card for the hover panel (label, confidence and a few top examples: image crops as PNG data URIs,
text features' words in context)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..features import FeatureRef
from ..render.images import png_data_uri
from .storage import Atlas, Example

CARD_EXAMPLES = 3  # examples per card: enough to see what a feature is about, small enough to ship per node


def covered(atlas: Atlas, refs: Iterable[FeatureRef]) -> list[FeatureRef]:
    """The distinct refs of the sites the atlas covers, in order."""
    sites = set(atlas.sites)
    return [ref for ref in dict.fromkeys(refs) if ref.site in sites]


def feature_labels(atlas: Atlas | None, refs: Iterable[FeatureRef]) -> dict[str, str]:
    """Feature spec -> label, for the refs whose label says more than their index (not "unclear" or
    "never fired")."""
    if atlas is None:
        return {}
    labels = {str(ref): atlas.label(ref) for ref in covered(atlas, refs)}
    return {spec: label.text for spec, label in labels.items() if label.describes}


def feature_cards(atlas: Atlas | None, refs: Iterable[FeatureRef],
                  examples: int = CARD_EXAMPLES) -> dict[str, dict[str, Any]]:
    """Feature spec -> {label, confidence, examples: [{prompt, step, activation, crop?, context?}]}."""
    if atlas is None:
        return {}
    cards = {}
    for ref in covered(atlas, refs):
        label = atlas.label(ref)
        cards[str(ref)] = {"label": label.text, "confidence": label.confidence, "describes": label.describes,
                           "examples": [_example(example) for example in atlas.examples(ref)[:examples]]}
    return cards


def _example(example: Example) -> dict[str, Any]:
    shown: dict[str, Any] = {"prompt": example.prompt, "step": example.step, "activation": round(example.activation, 4)}
    if example.crop is not None:
        shown["crop"] = png_data_uri(example.crop)
    if example.context is not None:
        shown["context"] = " ".join(example.context)
        shown["token"] = example.token_string
    return shown


