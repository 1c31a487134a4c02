"""Short labels for features, from their atlas statistics alone, by one rule for every feature.

A candidate attribute is something a share of a feature's activation can fall on: a colour term of
the image tokens it fires on, a region of the image, a word of the prompts it fires in, or the
string of the text token it fires on. Each has a base rate: its share over all tokens (or prompts)
of the prompt set. An attribute stands out when it holds at least `min_share` of the feature's
activation and closes at least `min_gain` of the gap between its base rate and 1:

    gain = (share - base) / (1 - base)

The label names the (at most `max_attributes`) standing-out attributes of different kinds with the
highest gain, then the stream and the steps where the feature fires most; its confidence is the
first attribute's gain. A feature that fired in enough prompts but on nothing that stands out is
"broad", leaning towards its highest-gain attribute if any gains at all (confidence 0: it says
where and when the feature fires, not what it is about). Too few prompts to judge: "unclear".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..transcoders.transcoder_set import _ranges
from .colours import COLOUR_NAMES
from .prompts import OTHER, PAD
from .statistics import sigma_bucket

UNCLEAR = "unclear"
NEVER_FIRED = "never fired"
BROAD = "broad"
KINDS = ("colour", "token", "word", "region")  # ties in gain go to the earlier kind


@dataclass(frozen=True)
class LabelRule:
    min_share: float = 0.5  # an attribute holds at least this share of the feature's activation
    min_gain: float = 0.5  # ... and closes at least this fraction of the gap from its base rate to 1
    min_prompts: int = 3  # a feature that fired in fewer prompts is "unclear"
    min_word_z: float = 1.96  # a prompt word must also be significantly associated (log-odds z-score)
    max_attributes: int = 2  # attributes named per label
    active_rate: float = 0.5  # steps named: those whose firing rate is at least this fraction of its highest


@dataclass(frozen=True)
class Attribute:
    kind: str  # one of KINDS
    value: str  # a colour term, region, word or token string
    share: float
    gain: float

    def describe(self) -> str:
        if self.kind == "word":
            return f"'{self.value}' in prompt"
        if self.kind == "token":
            return "padding token" if self.value == PAD else f"'{self.value}' token"
        return self.value


@dataclass(frozen=True)
class FeatureLabel:
    text: str
    confidence: float  # the first attribute's gain; 0 when unclear or broad
    attributes: tuple[Attribute, ...] = ()

    @property
    def describes(self) -> bool:
        """Whether the label says more than a bare index: anything but "unclear" and "never fired"."""
        return self.text not in (UNCLEAR, NEVER_FIRED)

    def to_json(self) -> list[Any]:
        return [self.text, self.confidence, [[a.kind, a.value, a.share, a.gain] for a in self.attributes]]

    @classmethod
    def from_json(cls, data: list[Any]) -> FeatureLabel:
        text, confidence, attributes = data
        return cls(text, float(confidence), tuple(Attribute(kind, value, share, gain)
                                                  for kind, value, share, gain in attributes))


def regions(cells: int) -> dict[str, torch.Tensor]:
    """Named image regions as bool masks over the cells x cells pooling (row-major)."""
    centre = torch.arange(cells, dtype=torch.float64) + 0.5 - cells / 2
    row, col = centre.repeat_interleave(cells), centre.repeat(cells)
    top, bottom, left, right = row < 0, row > 0, col < 0, col > 0
    middle = (row.abs() < cells / 4) & (col.abs() < cells / 4)
    return {"left half": left, "right half": right, "top half": top, "bottom half": bottom, "top-left": top & left,
            "top-right": top & right, "bottom-left": bottom & left, "bottom-right": bottom & right, "centre": middle}


@dataclass(frozen=True)
class _Candidates:
    kind: str
    share: torch.Tensor  # [features, K]
    base: torch.Tensor  # [features, K]
    value: Callable[[int, int], str]  # (feature row, column) -> the attribute's value
    eligible: torch.Tensor | None = None  # [features, K]: columns that may stand out at all (None: every one)


def _candidates(stream: str, arrays: Mapping[str, torch.Tensor], vocabulary: Sequence[str], cells: int,
                rule: LabelRule) -> list[_Candidates]:
    rows = arrays["features"].shape[0]
    words = arrays["word_ids"].long()
    word_base = torch.cat([arrays["word_base"].double(), torch.ones(1, dtype=torch.float64)])  # -1 ids: base 1, no gain
    found = [_Candidates("word", arrays["word_share"].double(), word_base[words],
                         lambda r, c: vocabulary[int(words[r, c])], arrays["word_z"].double() >= rule.min_word_z)]
    if stream == "txt":
        strings = (*vocabulary, OTHER, PAD)
        ids = arrays["token_ids"].long()
        token_base = torch.cat([arrays["token_base"].double(), torch.ones(1, dtype=torch.float64)])
        base = torch.where(ids == len(strings) - 2, 1.0, token_base[ids])  # OTHER names nothing
        found.append(_Candidates("token", arrays["token_share"].double(), base, lambda r, c: strings[int(ids[r, c])]))
        return found
    named = regions(cells)
    masks = torch.stack(list(named.values())).double()
    names = list(named)
    found.append(_Candidates("region", arrays["cell_share"].double() @ masks.T,
                             (arrays["cell_base"].double() @ masks.T).expand(rows, -1), lambda r, c: names[c]))
    if float(arrays["colour_base"].sum()) > 0:
        found.append(_Candidates("colour", arrays["colour_share"].double(),
                                 arrays["colour_base"].double().expand(rows, -1), lambda r, c: COLOUR_NAMES[c]))
    return found


def _steps_text(active_buckets: Sequence[bool], step_buckets: Sequence[int]) -> str:
    chosen = [step for step, bucket in enumerate(step_buckets) if active_buckets[bucket]]
    if len(chosen) == len(step_buckets):
        return "all steps"
    return f"step{'s' if len(chosen) > 1 else ''} {_ranges(chosen)}"


def label_site(stream: str, arrays: Mapping[str, torch.Tensor], *, vocabulary: Sequence[str],
               schedule: Sequence[float], cells: int, rule: LabelRule = LabelRule()) -> list[FeatureLabel]:
    """One label per live feature of a site (rows of `arrays`, an atlas site's stored arrays)."""
    rows = arrays["features"].shape[0]
    found: list[list[tuple[float, int, int, _Candidates, float]]] = [[] for _ in range(rows)]
    leaning: list[tuple[float, int, _Candidates, float] | None] = [None] * rows  # the best gain, standing out or not
    for group in _candidates(stream, arrays, vocabulary, cells, rule):
        gain = torch.where(group.base < 1, (group.share - group.base) / (1 - group.base).clamp(min=1e-12), 0.0)
        allowed = torch.ones_like(gain, dtype=torch.bool) if group.eligible is None else group.eligible
        ok = (group.share >= rule.min_share) & (gain >= rule.min_gain) & allowed
        hits = zip(torch.nonzero(ok).tolist(), gain[ok].tolist(), group.share[ok].tolist())
        for (row, column), gain_at, share in hits:
            found[row].append((gain_at, KINDS.index(group.kind), column, group, share))
        if gain.shape[1]:
            best_gain, best_column = torch.where(allowed, gain, -1.0).max(1)
            for row, (g, c) in enumerate(zip(best_gain.tolist(), best_column.tolist())):
                if g > 0 and (leaning[row] is None or g > leaning[row][0]):  # type: ignore[index]
                    leaning[row] = (g, c, group, float(group.share[row, c]))
    rate = arrays["fired"].double() / arrays["tokens"].double().clamp(min=1)
    active = (rate >= rule.active_rate * rate.max(1, keepdim=True).values).tolist()
    prompts_fired = arrays["prompts_fired"].tolist()
    step_buckets = [sigma_bucket(sigma, rate.shape[1]) for sigma in schedule[:-1]]
    stream_word = "image" if stream == "img" else "text"
    labels = []
    for row in range(rows):
        if prompts_fired[row] < rule.min_prompts:
            labels.append(FeatureLabel(UNCLEAR, 0.0))
            continue
        steps = _steps_text(active[row], step_buckets)
        if not found[row]:
            labels.append(_broad(leaning[row], row, f"{stream_word}, {steps}"))
            continue
        chosen: list[Attribute] = []
        for gain, _order, column, group, share in sorted(found[row], key=lambda item: (-item[0], item[1], item[2])):
            value = group.value(row, column)
            if any(a.kind == group.kind or a.value == value for a in chosen):
                continue
            chosen.append(Attribute(group.kind, value, round(share, 4), round(gain, 4)))
            if len(chosen) == rule.max_attributes:
                break
        text = f"{', '.join(a.describe() for a in chosen)} ({stream_word}, {steps})"
        labels.append(FeatureLabel(text, chosen[0].gain, tuple(chosen)))
    return labels


def _broad(leaning: tuple[float, int, _Candidates, float] | None, row: int, where: str) -> FeatureLabel:
    if leaning is None:
        return FeatureLabel(f"{BROAD} ({where})", 0.0)
    gain, column, group, share = leaning
    attribute = Attribute(group.kind, group.value(row, column), round(share, 4), round(gain, 4))
    return FeatureLabel(f"{BROAD}, leaning {attribute.describe()} ({where})", 0.0, (attribute,))

