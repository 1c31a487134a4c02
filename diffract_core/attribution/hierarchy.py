"""A hierarchy of supernodes over a circuit: its feature nodes grouped agglomeratively at several
resolutions, every other node (target, inputs, bias, error and rest nodes) alone at every level.

Two features are close when their edge profiles point the same way (cosine of their normalised
signed outgoing weights, and of their incoming ones), and when they share a layer, a stream, a step
and a label; groups merge by average linkage. A merge that would close a cycle among the supernodes
(a path from one group to the other through a third) is refused, so every level is a DAG, its
supernodes ordered from the inputs to the target as the features were. networkx answers those path
queries and scores each level's community structure (modularity of |weights|); the distances and
the linkage stay in torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import DiffractError, SettingsError
from .graph import CircuitGraph
from .metadata import Supernode
from .serialize import Labels, node_label

if TYPE_CHECKING:
    import networkx as nx

MAX_FEATURES = 2000  # the linkage holds a features x features matrix and scans it once per merge


@dataclass(frozen=True)
class HierarchySettings:
    levels: tuple[float, ...] = (0.5, 0.25, 0.125)  # feature supernodes per level, as shares of the features
    layer_weight: float = 0.5  # added distance per layer apart, over the circuit's span of layers
    stream_weight: float = 0.25  # for image against text features
    step_weight: float = 1.0  # per step apart
    label_weight: float = 0.5  # taken off for the same label, added for different ones (both labelled)

    def __post_init__(self) -> None:
        if not self.levels or any(not 0 < share < 1 for share in self.levels):
            raise SettingsError(f"hierarchy levels are shares of the features between 0 and 1, got {self.levels}")
        if list(self.levels) != sorted(self.levels, reverse=True):
            raise SettingsError(f"hierarchy levels go from fine to coarse (shares falling), got {self.levels}")
        for name in ("layer_weight", "stream_weight", "step_weight", "label_weight"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be 0 or more, got {getattr(self, name)}")


@dataclass(frozen=True)
class HierarchyLevel:
    groups: torch.Tensor  # [N] long: every node's supernode, numbered 0..count-1
    count: int
    modularity: float  # of the partition, on the graph's |weights| (networkx)


@dataclass(frozen=True)
class Hierarchy:
    levels: tuple[HierarchyLevel, ...]  # level 0: every node alone, then coarser


def build_hierarchy(graph: CircuitGraph, settings: HierarchySettings | None = None,
                    labels: Labels | None = None) -> Hierarchy:
    """The hierarchy: level 0 and one level per share of `settings.levels` (fewer groups can be out
    of reach where every remaining merge would close a cycle; that level then holds more)."""
    settings = settings or HierarchySettings()
    features = graph.indices("feature")
    if len(features) > MAX_FEATURES:
        raise DiffractError(f"the circuit has {len(features)} features, more than the {MAX_FEATURES} a hierarchy is "
                            "built over: simplify or prune it first")
    distances = _distances(graph, features, settings, labels or {})
    linkage = _Linkage(graph, features, distances)
    levels = [linkage.level()]
    for share in settings.levels:
        linkage.merge_down_to(max(1, math.ceil(share * len(features))))
        levels.append(linkage.level())
    return Hierarchy(tuple(levels))


def _distances(graph: CircuitGraph, features: list[int], settings: HierarchySettings, labels: Labels
               ) -> torch.Tensor:
    """[F, F] float64: profile dissimilarity (1 - cosine) / 2 plus the layer, stream, step and label terms."""
    count = len(graph.nodes)
    row = torch.full((count,), -1, dtype=torch.long)
    row[features] = torch.arange(len(features))
    adjacency = graph.sparse_adjacency()
    cosine = torch.zeros(len(features), len(features), dtype=torch.float64)
    for owner, other in ((adjacency.sources, adjacency.targets), (adjacency.targets, adjacency.sources)):
        mine = row[owner] >= 0
        profile = torch.zeros(len(features), count, dtype=torch.float64)
        profile.index_put_((row[owner[mine]], other[mine]), adjacency.weights[mine], accumulate=True)
        profile /= profile.norm(dim=1, keepdim=True).clamp(min=1e-30)
        cosine += profile @ profile.T / 2
    nodes = [graph.nodes[i] for i in features]
    layer = torch.tensor([node.layer for node in nodes], dtype=torch.float64)
    step = torch.tensor([node.step for node in nodes], dtype=torch.float64)
    image = torch.tensor([node.stream == "img" for node in nodes], dtype=torch.float64)
    span = max(1.0, float(layer.max() - layer.min())) if nodes else 1.0
    distance = ((1 - cosine) / 2 + settings.layer_weight * (layer[:, None] - layer[None]).abs() / span
                + settings.step_weight * (step[:, None] - step[None]).abs()
                + settings.stream_weight * (image[:, None] != image[None]).double())
    names = [node_label(node, labels) for node in nodes]
    number = {name: i for i, name in enumerate(dict.fromkeys(filter(None, names)))}
    label = torch.tensor([number.get(name, -1) for name in names])
    both = (label[:, None] >= 0) & (label[None] >= 0)
    same = (label[:, None] == label[None]).double() * 2 - 1
    return distance + settings.label_weight * both.double() * -same


class _Linkage:
    """Average-linkage agglomeration of the feature nodes under the no-cycle constraint."""

    def __init__(self, graph: CircuitGraph, features: list[int], distances: torch.Tensor) -> None:
        import networkx as nx

        self.graph = graph
        self.features = features
        self.linkage = distances.clone()  # average distances between the current groups (row = group's first member)
        self.linkage.fill_diagonal_(math.inf)
        self.searchable = self.linkage.clone()  # the same, inf where a merge is refused or a group is gone
        self.sizes = torch.ones(len(features), dtype=torch.float64)
        self.owner = list(range(len(features)))  # each feature's group (the row standing for it)
        self.quotient = nx.DiGraph()  # the groups and the feature-to-feature edges between them
        self.quotient.add_nodes_from(range(len(features)))
        row = {node: i for i, node in enumerate(features)}
        self.quotient.add_edges_from((row[s], row[t]) for s, t in zip(graph.edge_sources.tolist(),
                                                                         graph.edge_targets.tolist())
                                     if s in row and t in row)
        self.count = len(features)

    def merge_down_to(self, count: int) -> None:
        while self.count > count:
            flat = int(torch.argmin(self.searchable))
            a, b = divmod(flat, len(self.features))
            if not math.isfinite(float(self.searchable[a, b])):
                return  # every remaining merge would close a cycle
            if self._closes_cycle(a, b):
                self.searchable[a, b] = self.searchable[b, a] = math.inf
                continue
            self._merge(min(a, b), max(a, b))

    def _closes_cycle(self, a: int, b: int) -> bool:
        """Whether a path leads from one group to the other through a third (merging them would close it)."""
        import networkx as nx

        view = nx.restricted_view(self.quotient, [], [(a, b), (b, a)])
        return nx.has_path(view, a, b) or nx.has_path(view, b, a)

    def _merge(self, keep: int, gone: int) -> None:
        import networkx as nx

        merged = (self.sizes[keep] * self.linkage[keep] + self.sizes[gone] * self.linkage[gone]) / (
            self.sizes[keep] + self.sizes[gone])
        self.sizes[keep] += self.sizes[gone]
        self.linkage[keep] = self.linkage[:, keep] = merged
        self.linkage[gone] = self.linkage[:, gone] = math.inf
        self.linkage[keep, keep] = math.inf
        self.searchable[keep] = self.searchable[:, keep] = self.linkage[keep]
        self.searchable[gone] = self.searchable[:, gone] = math.inf
        self.owner = [keep if owner == gone else owner for owner in self.owner]
        nx.contracted_nodes(self.quotient, keep, gone, self_loops=False, copy=False)
        self.count -= 1

    def level(self) -> HierarchyLevel:
        """The current partition of every node (features by group, the others alone)."""
        import networkx as nx

        groups = torch.full((len(self.graph.nodes),), -1, dtype=torch.long)
        number = {owner: i for i, owner in enumerate(dict.fromkeys(self.owner))}
        for feature, owner in zip(self.features, self.owner):
            groups[feature] = number[owner]
        alone = torch.nonzero(groups < 0).flatten()
        groups[alone] = torch.arange(len(number), len(number) + len(alone))
        count = len(number) + len(alone)
        weighted = nx.DiGraph()
        weighted.add_nodes_from(range(len(self.graph.nodes)))
        weighted.add_weighted_edges_from(zip(self.graph.edge_sources.tolist(), self.graph.edge_targets.tolist(),
                                             self.graph.edge_weights.abs().tolist()))
        communities = [set() for _ in range(count)]
        for node, group in enumerate(groups.tolist()):
            communities[group].add(node)
        modularity = nx.community.modularity(weighted, communities) if weighted.number_of_edges() else 0.0
        return HierarchyLevel(groups, count, float(modularity))


def supernode_graph(graph: CircuitGraph, groups: torch.Tensor) -> nx.DiGraph:
    """The supernodes of one level (`HierarchyLevel.groups`) as a networkx DiGraph: node g holds the
    ids of its members, an edge the summed weight of the edges between two different supernodes."""
    import networkx as nx

    merged = nx.DiGraph()
    for group in torch.unique(groups).tolist():
        merged.add_node(group, members=[graph.nodes[i].id for i in torch.nonzero(groups == group).flatten().tolist()])
    sources, targets = groups[graph.edge_sources], groups[graph.edge_targets]
    for source, target, weight in zip(sources.tolist(), targets.tolist(), graph.edge_weights.tolist()):
        if source != target:
            previous = merged.get_edge_data(source, target, {"weight": 0.0})["weight"]
            merged.add_edge(source, target, weight=previous + weight)
    return merged


def supernodes(graph: CircuitGraph, hierarchy: Hierarchy, labels: Labels | None = None) -> tuple[Supernode, ...]:
    """The hierarchy as the metadata keeps it: one supernode per group of two or more nodes at levels
    1 and up (a group equal to the one holding it one level up is that one), coarsest first."""
    found: list[Supernode] = []
    above: dict[int, tuple[str, frozenset[int]]] = {}  # node -> (supernode id, members) at the level above
    for level in range(len(hierarchy.levels) - 1, 0, -1):
        groups = hierarchy.levels[level].groups
        here: dict[int, tuple[str, frozenset[int]]] = {}
        for group in torch.unique(groups).tolist():
            members = frozenset(torch.nonzero(groups == group).flatten().tolist())
            if len(members) < 2:
                continue
            parent = above.get(next(iter(members)))
            if parent is not None and parent[1] == members:
                entry = parent
            else:
                entry = (f"s{len(found)}", members)
                found.append(Supernode(entry[0], _name(graph, sorted(members), labels or {}), level,
                                       parent[0] if parent is not None else None,
                                       tuple(graph.nodes[i].id for i in sorted(members))))
            for member in members:
                here[member] = entry
        above = here
    return tuple(found)


def _name(graph: CircuitGraph, members: list[int], labels: Labels) -> str:
    """The label most members share (half of them or more), else the streams and layers it spans."""
    nodes = [graph.nodes[i] for i in members]
    named = Counter(label for label in (node_label(node, labels) for node in nodes) if label)
    if named:
        label, times = named.most_common(1)[0]
        if 2 * times >= len(nodes):
            return f"{label} ({len(nodes)})"
    streams = "+".join(sorted({str(node.stream) for node in nodes}, reverse=True))
    layers = sorted({node.layer for node in nodes if node.layer is not None})
    span = f"L{layers[0]}" if layers[0] == layers[-1] else f"L{layers[0]}–{layers[-1]}"
    return f"{streams} {span} ({len(nodes)})"
