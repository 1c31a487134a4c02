"""A circuit's target as the graph's own edges predict it when its feature nodes are masked: the
differentiable model `circuit_search` optimises, in time linear in the edges and without a pass
through the model.

Every node gets an activity ratio r, its value in the masked model over its traced value. Inputs, the
bias and error nodes keep r = 1 (the real intervention keeps the error terms); rest nodes get r = 0
(the features the trace left out are removed from every circuit, as `preservation` removes them). A
feature's pre-activation is the sum of its incoming edges, each scaled by its source's ratio (a
feature's outgoing edges are proportional to its activity), and its ratio is its mask times the ReLU
of that sum over its traced value. The target is the sum of its scaled incoming edges. With every
mask and every rest node at 1 this gives back each traced value (the edges add up to the values).
"""

from __future__ import annotations

import torch

from .graph import CircuitGraph

_KEPT = ("input", "bias", "error")  # sources the intervention leaves as they are


class MaskedGraph:
    def __init__(self, graph: CircuitGraph) -> None:
        adjacency = graph.sparse_adjacency()
        kinds = [node.kind for node in graph.nodes]
        values = torch.tensor([node.value for node in graph.nodes], dtype=torch.float64)
        self.size = len(graph.nodes)
        self.target_index = graph.target_index
        self.features = torch.tensor(graph.indices("feature"), dtype=torch.long)
        self.fixed = torch.tensor([kind in _KEPT for kind in kinds], dtype=torch.float64)
        is_feature = torch.tensor([kind == "feature" for kind in kinds])
        self.inverse_value = torch.where(is_feature & (values > 0), 1.0 / values.clamp(min=1e-30), 0.0)
        # From the inputs up: a node's incoming pairs all lie in one wave, after those of its sources.
        self.waves = []
        for wave in reversed(adjacency.waves):
            nodes, local = torch.unique(adjacency.targets[wave], return_inverse=True)
            self.waves.append((adjacency.sources[wave], adjacency.weights[wave], nodes, local,
                               self.inverse_value[nodes], nodes == self.target_index))

    def target(self, masks: torch.Tensor) -> torch.Tensor:
        """[B] the target's predicted value for each row of `masks` ([B, features], one value per
        feature node in graph order, 0 = removed, 1 = kept); differentiable in `masks`."""
        batch = masks.shape[0]
        node_masks = torch.zeros(batch, self.size, dtype=torch.float64).index_copy(1, self.features, masks.double())
        ratio = self.fixed.expand(batch, -1)
        value = torch.zeros(batch, dtype=torch.float64)
        for sources, weights, nodes, local, inverse_value, at_target in self.waves:
            incoming = torch.zeros(batch, len(nodes), dtype=torch.float64).index_add(
                1, local, ratio.index_select(1, sources) * weights)
            ratio = ratio.index_copy(1, nodes, node_masks.index_select(1, nodes) * incoming.relu() * inverse_value)
            if bool(at_target.any()):
                value = incoming[:, at_target].sum(1)
        return value
