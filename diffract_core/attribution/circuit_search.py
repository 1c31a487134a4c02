"""Differentiable circuit search: a sigmoid mask over a graph's feature nodes, optimised so the
target keeps its full-graph value with few features, then verified in the real model.

The mask acts through the graph's own edges (`MaskedGraph`), not through the linearised model: a
step costs a few sparse products over the edges and no pass through FLUX, so hundreds of steps for
several budgets at once take seconds on any graph the tracer makes, and what is optimised is what
the graph claims about the model. The linearised model would not predict better: it freezes the same
LayerNorm denominators and attention patterns, and on the toy it misses the target with every feature
removed exactly as the edges do (the real model's LayerNorm and attention respond, so small circuits
often overshoot what the edges predict).

Per budget k: masks m = sigmoid(theta / T), theta from 0, the temperature T falling geometrically so
masks end near 0 or 1; loss (goal - P(m))^2 + (size_penalty + lambda) * sum(m) / K, P the predicted
preservation (full graph 1, no feature 0; overshooting counts as much as falling short), lambda
raised while sum(m) > k and lowered (not below 0) under it. The circuit: the features with theta > 0,
at most k of them, largest first. All budgets run as one batch.

`find_circuit` verifies each budget's circuit by real intervention and, since the edges miss the
overshoot, searches again with each budget's goal divided by the preservation measured (a secant
step, assuming real preservation proportional to the predicted one near the goal); it returns the
smallest verified circuit within `tolerance` of 1 (else the closest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import DiffractError, SettingsError
from .graph import CircuitGraph
from .masked_graph import MaskedGraph
from .preservation import CircuitIntervention

GOAL_RANGE = (0.1, 4.0)  # goals a recalibration may set (a preservation measured near 0 says nothing of scale)


@dataclass(frozen=True)
class SearchSettings:
    steps: int = 300
    learning_rate: float = 0.1
    start_temperature: float = 1.0
    end_temperature: float = 0.05
    size_penalty: float = 1e-3  # per unit of sum(m) / K, whatever the budget
    penalty_rate: float = 0.05  # how fast lambda follows the gap between sum(m) and the budget
    rounds: int = 3  # recalibrated searches after the first (find_circuit)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.rounds < 0:
            raise SettingsError(f"steps must be at least 1 and rounds 0 or more, got {self.steps} and {self.rounds}")
        for name in ("learning_rate", "start_temperature", "end_temperature", "penalty_rate"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.size_penalty < 0:
            raise SettingsError(f"size_penalty must be 0 or more, got {self.size_penalty}")


@dataclass(frozen=True)
class SearchResult:
    circuits: dict[int, list[int]]  # budget -> the chosen feature node indices, ascending
    predicted: dict[int, float]  # budget -> the chosen circuit's preservation as the graph's edges predict it


@dataclass(frozen=True)
class VerifiedCircuit:
    features: list[int]  # feature node indices, ascending
    preservation: float  # measured by real intervention
    candidates: list[tuple[int, float]]  # every circuit measured: (features, preservation), in the order tried


def search_circuits(graph: CircuitGraph, budgets: Sequence[int], settings: SearchSettings | None = None,
                    goals: Sequence[float] | None = None) -> SearchResult:
    """The circuit the masks find for each budget (at most that many features), aiming the predicted
    preservation at `goals` (one per budget; default 1)."""
    settings = settings or SearchSettings()
    features = graph.indices("feature")
    if not features:
        raise DiffractError("the circuit has no feature node to search over: trace with a larger budget")
    if not budgets or min(budgets) < 1:
        raise SettingsError(f"budgets must be 1 or more features each, got {list(budgets)}")
    if goals is not None and len(goals) != len(budgets):
        raise SettingsError(f"one goal per budget: {len(goals)} goals for {len(budgets)} budgets")
    # Hosts run nodes under inference mode (ComfyUI) or no_grad: the search needs its own autograd,
    # on tensors made here rather than on the host's inference tensors.
    with torch.inference_mode(False), torch.enable_grad():
        return _search(graph, features, budgets, settings, goals)


def _search(graph: CircuitGraph, features: list[int], budgets: Sequence[int], settings: SearchSettings,
            goals: Sequence[float] | None) -> SearchResult:
    masked = MaskedGraph(graph)
    full, empty = masked.target(torch.stack([torch.ones(len(features)), torch.zeros(len(features))])).tolist()
    if not abs(full - empty) > 1e-12 * max(abs(full), 1.0):
        raise DiffractError("the graph predicts the same target with all its features and with none: "
                            "there is nothing for a circuit to preserve")
    count = len(features)
    budget = torch.tensor([min(b, count) for b in budgets], dtype=torch.float64)
    goal = torch.tensor([1.0] * len(budgets) if goals is None else list(goals), dtype=torch.float64)
    theta = torch.zeros(len(budgets), count, dtype=torch.float64, requires_grad=True)
    penalty = torch.zeros(len(budgets), dtype=torch.float64)
    optimiser = torch.optim.Adam([theta], lr=settings.learning_rate)
    decay = math.log(settings.end_temperature / settings.start_temperature) / max(1, settings.steps - 1)
    for step in range(settings.steps):
        masks = torch.sigmoid(theta / (settings.start_temperature * math.exp(decay * step)))
        preservation = (masked.target(masks) - empty) / (full - empty)
        size = masks.sum(1)
        loss = ((goal - preservation) ** 2 + (settings.size_penalty + penalty) * size / count).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        penalty = (penalty + settings.penalty_rate * (size.detach() - budget) / count).clamp(min=0)
    theta = theta.detach()
    ranked = torch.argsort(theta, dim=1, descending=True, stable=True)
    hard = torch.zeros(len(budgets), count, dtype=torch.float64)
    for row, limit in enumerate(budget.long().tolist()):
        hard[row, ranked[row, : max(1, min(limit, int((theta[row] > 0).sum())))]] = 1.0
    predicted = ((masked.target(hard) - empty) / (full - empty)).tolist()
    circuits = {int(b): [features[i] for i in torch.nonzero(hard[row]).flatten().tolist()]
                for row, b in enumerate(budgets)}
    return SearchResult(circuits, {int(b): predicted[row] for row, b in enumerate(budgets)})


def budgets_up_to(max_features: int) -> list[int]:
    """max_features, its half, its quarter, ... down to 1."""
    if max_features < 1:
        raise SettingsError(f"max_features must be at least 1, got {max_features}")
    budgets = [max_features]
    while budgets[-1] > 1:
        budgets.append((budgets[-1] + 1) // 2)
    return budgets


def find_circuit(intervention: CircuitIntervention, max_features: int, *, tolerance: float = 0.1,
                 settings: SearchSettings | None = None) -> VerifiedCircuit:
    """The smallest circuit of at most `max_features` features the search finds with a preservation,
    measured by real intervention, within `tolerance` of 1 (else the one closest to 1)."""
    settings = settings or SearchSettings()
    budgets = budgets_up_to(max_features)
    goals = [1.0] * len(budgets)
    measured: dict[tuple[int, ...], float] = {}
    for _ in range(settings.rounds + 1):
        found = search_circuits(intervention.graph, budgets, settings, goals)
        for row, budget in enumerate(budgets):
            circuit = tuple(found.circuits[budget])
            if circuit not in measured:
                measured[circuit] = intervention.preservation(circuit)
            real = measured[circuit]
            if real > GOAL_RANGE[0] / GOAL_RANGE[1]:
                goals[row] = min(max(goals[row] / real, GOAL_RANGE[0]), GOAL_RANGE[1])
    return choose(measured, tolerance)


def top_influence(graph: CircuitGraph) -> list[int]:
    """The baseline's ranking: feature nodes by influence on the target, largest first."""
    influence = graph.influence()
    return sorted(graph.indices("feature"), key=lambda i: -float(influence[i]))


def best_prefix(intervention: CircuitIntervention, ranking: Sequence[int], max_features: int, *,
                tolerance: float = 0.1) -> VerifiedCircuit:
    """The smallest prefix of `ranking` (at most `max_features` long) within `tolerance` of 1, measured
    by real intervention for every length (else the closest)."""
    if max_features < 1:
        raise SettingsError(f"max_features must be at least 1, got {max_features}")
    return choose({tuple(sorted(ranking[:size])): p for size, p in
                   intervention.curve(ranking, range(1, min(max_features, len(ranking)) + 1))}, tolerance)


def choose(measured: dict[tuple[int, ...], float], tolerance: float) -> VerifiedCircuit:
    """Of measured circuits, the smallest within `tolerance` of preservation 1, else the closest to 1."""
    if not measured:
        raise DiffractError("no circuit was measured to choose from")
    within = [c for c, p in measured.items() if abs(1 - p) <= tolerance]
    best = (min(within, key=lambda c: (len(c), abs(1 - measured[c]))) if within
            else min(measured, key=lambda c: abs(1 - measured[c])))
    return VerifiedCircuit(list(best), measured[best], [(len(c), p) for c, p in measured.items()])
