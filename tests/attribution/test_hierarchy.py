"""Supernode hierarchies: every level partitions the nodes, coarser levels merge finer groups, no level
closes a cycle (a hand-built graph where the closest pair would), labels pull features together,
the metadata form is a tree; and the networkx export."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from diffract_core.attribution import (
    HierarchySettings,
    TargetSpec,
    TraceSettings,
    build_hierarchy,
    supernode_graph,
    trace_circuit,
)
from diffract_core.attribution import hierarchy as hierarchy_module
from diffract_core.attribution.graph import CircuitGraph, CircuitNode, edge_list
from diffract_core.attribution.hierarchy import supernodes
from diffract_core.errors import DiffractError, SettingsError


@pytest.fixture(scope="module")
def graph(model, transcoders, call) -> CircuitGraph:
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                         settings=TraceSettings(max_feature_nodes=60))


def test_levels_partition_the_nodes_merge_finer_groups_and_stay_acyclic(graph) -> None:
    hierarchy = build_hierarchy(graph)
    features = set(graph.indices("feature"))
    assert len(hierarchy.levels) == 4
    assert hierarchy.levels[0].count == len(graph.nodes)
    previous = None
    for level, share in zip(hierarchy.levels, (1.0, 0.5, 0.25, 0.125)):
        groups = level.groups
        assert groups.shape == (len(graph.nodes),) and sorted(set(groups.tolist())) == list(range(level.count))
        feature_groups = {int(groups[i]) for i in features}
        assert len(feature_groups) == math.ceil(share * len(features))
        assert all(int((groups == groups[i]).sum()) == 1 for i in range(len(graph.nodes)) if i not in features)
        assert nx.is_directed_acyclic_graph(supernode_graph(graph, groups))
        if previous is not None:  # nested: nodes together below stay together
            for group in torch.unique(previous).tolist():
                assert len(set(groups[previous == group].tolist())) == 1
        assert -0.5 <= level.modularity <= 1
        previous = groups


def _diamond() -> CircuitGraph:
    """a (L0) -> b (L1) -> c (L2) -> target, a -> target, input -> a, input -> c: a and c have the most
    alike profiles, but a group {a, c} would lie on both ends of the path through b."""
    nodes = [CircuitNode("feature", 0, "img", 0, 1, value=1.0), CircuitNode("feature", 0, "img", 1, 2, value=1.0),
             CircuitNode("feature", 0, "img", 2, 3, value=2.0), CircuitNode("input", 0, "img"),
             CircuitNode("target", 0, "img", 3, 4, value=2.0)]
    edges = [(3, 0, 1.0), (0, 1, 1.0), (1, 2, 1.0), (3, 2, 1.0), (2, 4, 1.0), (0, 4, 1.0)]
    return CircuitGraph(nodes, *edge_list(edges))


def test_a_merge_that_would_close_a_cycle_is_refused() -> None:
    graph = _diamond()
    alike = HierarchySettings(levels=(0.6, 0.3), layer_weight=0.0)
    level = build_hierarchy(graph, alike).levels[1]
    assert level.groups[0] != level.groups[2], "a and c are closest, but b lies between them"
    assert level.count == 4 and nx.is_directed_acyclic_graph(supernode_graph(graph, level.groups))
    assert build_hierarchy(graph, alike).levels[2].groups[:3].unique().numel() == 1  # all three together: no cycle


def test_labels_pull_features_together_and_name_the_supernodes(graph) -> None:
    features = graph.indices("feature")[:4]
    labels = {graph.nodes[i].feature_spec: "red" for i in features}
    hierarchy = build_hierarchy(graph, HierarchySettings(label_weight=5.0), labels)
    assert len(set(hierarchy.levels[1].groups[features].tolist())) == 1
    named = supernodes(graph, hierarchy, labels)
    assert any(node.name.startswith("red (") for node in named)


def test_the_metadata_form_is_a_tree_coarsest_first(graph) -> None:
    hierarchy = build_hierarchy(graph)
    found = supernodes(graph, hierarchy)
    by_id = {node.id: node for node in found}
    assert len(by_id) == len(found) and found and found[0].parent is None
    ids = {node.id for node in graph.nodes}
    for node in found:
        assert len(node.members) >= 2 and set(node.members) <= ids
        if node.parent is not None:
            parent = by_id[node.parent]
            assert parent.level > node.level and set(node.members) < set(parent.members)
            assert found.index(parent) < found.index(node)


def test_bad_settings_and_oversized_circuits_are_refused(graph, monkeypatch) -> None:
    with pytest.raises(SettingsError, match="shares of the features between 0 and 1"):
        HierarchySettings(levels=(0.5, 1.5))
    with pytest.raises(SettingsError, match="from fine to coarse"):
        HierarchySettings(levels=(0.25, 0.5))
    monkeypatch.setattr(hierarchy_module, "MAX_FEATURES", 10)
    with pytest.raises(DiffractError, match="more than the 10 a hierarchy is built over: simplify or prune"):
        build_hierarchy(graph)


def test_the_networkx_export_sums_duplicate_edges_and_keeps_the_fields() -> None:
    graph = _diamond()
    graph.edge_sources = torch.cat([graph.edge_sources, torch.tensor([0])])
    graph.edge_targets = torch.cat([graph.edge_targets, torch.tensor([1])])
    graph.edge_weights = torch.cat([graph.edge_weights, torch.tensor([0.5], dtype=torch.float64)])
    exported = graph.to_networkx()
    assert exported.number_of_nodes() == 5 and exported.number_of_edges() == 6
    a, b = graph.nodes[0].id, graph.nodes[1].id
    assert exported.edges[a, b]["weight"] == 1.5
    assert exported.nodes[a] == {"kind": "feature", "step": 0, "stream": "img", "layer": 0, "feature": 1, "value": 1.0,
                                 "label": ""}
    assert nx.has_path(exported, a, graph.target.id)
