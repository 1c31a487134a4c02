"""A circuit kept as its own graph (dropped features folded into rest nodes, still exact), and
simplify_circuit end to end: preservation and supernodes in the metadata, through a circuit file."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution import (
    CircuitIntervention,
    SearchSettings,
    SimplifySettings,
    TargetSpec,
    TraceSettings,
    keep_features,
    simplify_circuit,
    trace_circuit,
)
from diffract_core.attribution.metadata import CircuitMetadata
from diffract_core.attribution.serialize import graph_from_dict, graph_to_dict
from diffract_core.errors import DiffractError, SettingsError


@pytest.fixture(scope="module")
def graph(model, transcoders, call):
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 40), step=1,
                         settings=TraceSettings(max_feature_nodes=40))


def test_kept_features_stay_exact_and_dropped_ones_join_their_sites_rest_node(graph) -> None:
    features = graph.indices("feature")
    keep = features[::3]
    smaller = keep_features(graph, keep)
    assert [n.id for n in smaller.features()] == [graph.nodes[i].id for i in keep]
    assert smaller.target.value == graph.target.value
    assert float(smaller.conservation().max()) < 1e-5
    dropped = [graph.nodes[i] for i in features if i not in keep]
    rests = {(n.stream, n.layer): n for n in smaller.nodes if n.kind == "rest"}
    assert {(n.stream, n.layer) for n in dropped} <= set(rests)
    target = smaller.target_index
    for index, node in enumerate(smaller.nodes):
        if node.kind == "rest":  # a source node's value is its direct effect on the target
            direct = smaller.edge_weights[(smaller.edge_sources == index) & (smaller.edge_targets == target)].sum()
            assert node.value == pytest.approx(float(direct))
    # what the dropped features sent to the target now comes from the rest nodes
    into_target = float(graph.edge_weights[graph.edge_targets == graph.target_index].sum())
    assert float(smaller.edge_weights[smaller.edge_targets == target].sum()) == pytest.approx(into_target)
    with pytest.raises(DiffractError, match="are not feature nodes"):
        keep_features(graph, [graph.target_index])


def test_simplify_keeps_a_small_circuit_its_preservation_and_its_supernodes(model, transcoders, call, graph) -> None:
    intervention = CircuitIntervention.for_call(model.double_blocks, transcoders, call, graph)
    settings = SimplifySettings(max_features=10, search=SearchSettings(steps=150, rounds=1))
    simplified = simplify_circuit(intervention, settings)
    metadata = simplified.metadata
    kept = len(simplified.features())
    assert metadata.preservation.features == kept <= 10 and metadata.preservation.traced_features == len(
        graph.features())
    measured = intervention.preservation([graph.nodes.index(n) for n in simplified.features()])
    assert metadata.preservation.score == pytest.approx(measured)
    assert metadata.preservation.circuit_value == pytest.approx(intervention.value(
        [graph.nodes.index(n) for n in simplified.features()]), rel=1e-6)
    assert (kept, pytest.approx(measured)) in metadata.preservation.curve
    assert metadata.pruning.node_threshold == 1.0 and metadata.supernodes
    ids = {node.id for node in simplified.nodes}
    assert all(set(s.members) <= ids for s in metadata.supernodes)
    again = graph_from_dict(graph_to_dict(simplified))
    assert again.metadata == metadata
    assert torch.equal(again.edge_weights, simplified.edge_weights)

    influence = simplify_circuit(intervention, SimplifySettings(max_features=4, method="influence"))
    assert influence.metadata.preservation.method == "influence"
    assert [size for size, _ in influence.metadata.preservation.curve] == [1, 2, 3, 4]


def test_bad_simplify_settings_are_refused() -> None:
    with pytest.raises(SettingsError, match="max_features must be at least 1"):
        SimplifySettings(max_features=0)
    with pytest.raises(SettingsError, match="method 'greedy' is not one of search, influence"):
        SimplifySettings(method="greedy")  # type: ignore[arg-type]


def test_malformed_preservation_or_supernodes_in_a_file_are_refused_by_name() -> None:
    base = {"step": 1, "sigma": 0.5, "text_tokens": ["a"], "image_tokens": 4}
    with pytest.raises(SettingsError, match="metadata.supernodes must be a list"):
        CircuitMetadata.from_dict({**base, "supernodes": {"id": "s0"}})
    with pytest.raises(SettingsError, match=r"\[supernodes\[0\]\] needs the key\(s\) \['members'\]"):
        CircuitMetadata.from_dict({**base, "supernodes": [{"id": "s0", "name": "x", "level": 1, "parent": None}]})
    with pytest.raises(SettingsError, match="preservation.score = 'high' is not a number"):
        CircuitMetadata.from_dict({**base, "preservation": {
            "method": "search", "score": "high", "features": 1, "traced_features": 2, "tolerance": 0.1,
            "circuit_value": 1.0, "full_value": 1.0, "empty_value": 0.0, "clean_value": 1.0}})
