"""Structural similarity of two circuits, against counts made by hand."""

from __future__ import annotations

import pytest

from diffract_core.attribution import CircuitSimilarity, by_label, by_site, circuit_similarity
from diffract_core.attribution.graph import CircuitGraph, CircuitNode, edge_list


def _circuit(first: int, second: int, layer_of_second: int = 1) -> CircuitGraph:
    """input -> feature `first` (img L0) -> feature `second` (img L`layer_of_second`) -> target;
    error -> target. Both features hold half the influence on the target's incoming side."""
    nodes = [CircuitNode("feature", 0, "img", 0, first, value=1.0),
             CircuitNode("feature", 0, "img", layer_of_second, second, value=1.0),
             CircuitNode("error", 0, "img", 0), CircuitNode("input", 0, "img"),
             CircuitNode("target", 0, "img", 3, 9, value=2.0)]
    return CircuitGraph(nodes, *edge_list([(3, 0, 1.0), (0, 1, 1.0), (1, 4, 1.0), (2, 4, 1.0)]))


def test_the_same_circuit_is_alike_in_every_respect() -> None:
    circuit = _circuit(5, 6)
    assert circuit_similarity(circuit, circuit) == CircuitSimilarity(1.0, 1.0, 1.0, 1.0)


def test_features_and_supernode_edges_compare_by_hand() -> None:
    one, other = _circuit(5, 6), _circuit(5, 7)
    similarity = circuit_similarity(one, other)
    assert similarity.features == pytest.approx(1 / 3)  # {5, 6} and {5, 7}
    # influence: feature 5 reaches the target through 6 (or 7): 0.5, and 6 (or 7) 0.5 of it directly
    assert similarity.weighted_features == pytest.approx(0.5 / 1.5)
    assert similarity.supernode_edges == 1.0  # the same sites wired the same way
    moved = circuit_similarity(one, _circuit(5, 6, layer_of_second=2))
    # edges by site: input->img:0, img:0->img:1|2, img:1|2->target, error->target: two of six pairs differ
    assert moved.features == pytest.approx(1 / 3) and moved.supernode_edges == pytest.approx(2 / 6)
    assert moved.weighted_supernode_edges == pytest.approx(0.5 / 1.5)


def test_labels_make_different_features_one_supernode() -> None:
    one, other = _circuit(5, 6, layer_of_second=1), _circuit(5, 6, layer_of_second=2)
    labels = {"img:1:6": "red", "img:2:6": "red"}
    assert circuit_similarity(one, other, by_label(labels)).supernode_edges == 1.0
    assert circuit_similarity(one, other, by_site).supernode_edges < 1.0
