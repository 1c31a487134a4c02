"""Steering a whole circuit: scale or ablate a graph's features at the step and the token
positions where the graph found them, in delta form (scale 1 leaves the output bit-identical)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import DiffractError, InputShapeError, SettingsError
from ..features import FeatureRef
from ..recording.recording import COND, UNCOND
from ..spatial import Grid
from ..transcoders.transcoder import Transcoder
from .graph import CircuitGraph

CircuitMode = Literal["scale", "ablate"]
CIRCUIT_MODES: tuple[CircuitMode, ...] = ("scale", "ablate")
StepChoice = Literal["traced step", "all steps"]
STEP_CHOICES: tuple[StepChoice, ...] = ("traced step", "all steps")
NODES_HELP = "all: every feature of the graph; top 10: the 10 most influential; or a list such as img:3:12, txt:1:40"


@dataclass(frozen=True)
class CircuitSteering:
    """Per feature, the token positions to steer; applied at `sigma` only (None: at every step)."""

    features: tuple[FeatureRef, ...]
    positions: dict[FeatureRef, torch.Tensor]
    tokens: dict[str, int]  # tokens per stream in the traced call, to refuse a different layout
    mode: CircuitMode = "scale"
    strength: float = 0.0
    sigma: float | None = None
    chunks: frozenset[int] = frozenset({COND, UNCOND})
    _masks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in CIRCUIT_MODES:
            raise SettingsError(f"circuit steering mode {self.mode!r} is not one of {CIRCUIT_MODES}")

    @property
    def is_noop(self) -> bool:
        return self.mode == "scale" and self.strength == 1.0

    def active_at(self, sigma: float) -> bool:
        return self.sigma is None or abs(sigma - self.sigma) <= 1e-5 * max(1.0, abs(self.sigma))

    def delta(self, transcoder: Transcoder, x: torch.Tensor, sigma: float,
              grid: Grid | None = None) -> torch.Tensor | None:
        site = transcoder.config.site.key
        refs = [ref for ref in self.features if ref.site == site]
        if not refs or self.is_noop or not self.active_at(sigma):
            return None
        tokens = self.tokens[site[0]]
        if x.shape[-2] != tokens:
            raise InputShapeError(
                f"the circuit was traced with {tokens} {site[0]} tokens but this call has {x.shape[-2]}: "
                "steer a circuit at the resolution and prompt length it was traced at"
            )
        index = [ref.index for ref in refs]
        z = transcoder.feature_activation(x, sigma, index)  # [batch, tokens, n]
        change = (z * self.strength if self.mode == "scale" else torch.zeros_like(z)) - z
        change = change * self._mask(site, refs, tokens).to(change.device, change.dtype)[None]
        return torch.matmul(change, transcoder.decoder_vectors(index, dtype=change.dtype, device=change.device))

    def _mask(self, site: tuple, refs: list[FeatureRef], tokens: int) -> torch.Tensor:
        if site not in self._masks:
            mask = torch.zeros(tokens, len(refs))
            for column, ref in enumerate(refs):
                mask[self.positions[ref], column] = 1.0
            self._masks[site] = mask
        return self._masks[site]


def select_nodes(graph: CircuitGraph, which: str) -> list[int]:
    """Feature node indices for `all`, `top N` or a list of feature specs present in the graph."""
    features = graph.indices("feature")
    text = which.strip().lower()
    if text in ("", "all"):
        return features
    top = re.fullmatch(r"top\s*(\d+)", text)
    if top:
        influence = graph.influence()
        return sorted(features, key=lambda i: -float(influence[i]))[: int(top[1])]
    by_spec = {graph.nodes[i].feature_spec: i for i in features}
    chosen = []
    for token in filter(None, re.split(r"[\s,;]+", text)):
        if token not in by_spec:
            raise DiffractError(
                f"{token!r} is not a feature of this circuit; write {NODES_HELP} "
                f"(the circuit holds {len(features)} features)"
            )
        chosen.append(by_spec[token])
    return chosen


def circuit_steering(
    graph: CircuitGraph,
    which: str = "all",
    *,
    mode: CircuitMode = "scale",
    strength: float = 0.0,
    steps: StepChoice = "traced step",
    chunks: frozenset[int] = frozenset({COND, UNCOND}),
) -> CircuitSteering:
    """A steering spec for the chosen feature nodes of `graph`."""
    if steps not in STEP_CHOICES:
        raise DiffractError(f"steps {steps!r} is not one of {STEP_CHOICES}")
    chosen = select_nodes(graph, which)
    if not chosen:
        raise DiffractError("the circuit holds no feature to steer: trace with a larger budget or lower thresholds")
    refs, positions = [], {}
    for index in chosen:
        node = graph.nodes[index]
        refs.append(node.ref)
        positions[node.ref] = node.positions.long()
    metadata = graph.require_metadata()
    sigma = metadata.sigma if steps == "traced step" else None
    return CircuitSteering(tuple(refs), positions, metadata.tokens, mode, strength, sigma, chunks)
