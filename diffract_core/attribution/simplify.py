"""Simplify a traced circuit: the smallest set of its features found to preserve its target in the
real model (by the differentiable search or, as the baseline, by influence), kept as a graph of its
own with the other features folded into rest nodes, and grouped into a hierarchy of supernodes. The
preservation and the supernodes go into the circuit's metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import SettingsError
from .circuit_search import SearchSettings, best_prefix, find_circuit, top_influence
from .graph import CircuitGraph
from .hierarchy import HierarchySettings, build_hierarchy, supernodes
from .metadata import Preservation, Pruning, Scores
from .preservation import CircuitIntervention
from .serialize import Labels
from .subcircuit import keep_features

SimplifyMethod = Literal["search", "influence"]
SIMPLIFY_METHODS: tuple[SimplifyMethod, ...] = ("search", "influence")
SIMPLIFY_HELP = ("search: a mask over the features optimised through the graph's edges, each candidate measured in "
                 "the real model; influence: the most influential features, every count up to max_features measured")


@dataclass(frozen=True)
class SimplifySettings:
    max_features: int = 30
    tolerance: float = 0.1  # the smallest circuit within this of preservation 1 wins
    method: SimplifyMethod = "search"
    search: SearchSettings = field(default_factory=SearchSettings)
    hierarchy: HierarchySettings = field(default_factory=HierarchySettings)

    def __post_init__(self) -> None:
        if self.max_features < 1:
            raise SettingsError(f"max_features must be at least 1, got {self.max_features}")
        if not self.tolerance >= 0:
            raise SettingsError(f"tolerance must be 0 or more, got {self.tolerance}")
        if self.method not in SIMPLIFY_METHODS:
            raise SettingsError(f"method {self.method!r} is not one of {', '.join(SIMPLIFY_METHODS)}")


def simplify_circuit(intervention: CircuitIntervention, settings: SimplifySettings | None = None,
                     labels: Labels | None = None) -> CircuitGraph:
    """The simplified circuit of `intervention.graph`, shown whole (pruning thresholds 1); `labels`
    (feature spec -> label, e.g. an atlas's) name the supernodes."""
    settings = settings or SimplifySettings()
    graph = intervention.graph
    if settings.method == "search":
        found = find_circuit(intervention, settings.max_features, tolerance=settings.tolerance,
                             settings=settings.search)
    else:
        found = best_prefix(intervention, top_influence(graph), settings.max_features, tolerance=settings.tolerance)
    simplified = keep_features(graph, found.features)
    values = intervention.values
    preservation = Preservation(
        method=settings.method,
        score=found.preservation,
        features=len(found.features),
        traced_features=len(intervention.feature_nodes),
        tolerance=settings.tolerance,
        circuit_value=values.empty + found.preservation * (values.full - values.empty),
        full_value=values.full,
        empty_value=values.empty,
        clean_value=values.clean,
        curve=tuple(sorted(found.candidates)),
    )
    simplified.metadata = replace(
        graph.require_metadata(),
        scores=Scores(*simplified.scores()),
        pruning=Pruning(1.0, 1.0),
        preservation=preservation,
        supernodes=supernodes(simplified, build_hierarchy(simplified, settings.hierarchy, labels), labels),
    )
    return simplified
