"""Behaviour preservation: how much of its target a circuit keeps when every other feature is removed
from the real model.

A circuit is a set of a graph's feature nodes. Its target value is measured in the real blocks of
the traced call (live attention, LayerNorm, MLPs and transcoders) with every feature of every traced
site removed in delta form except the circuit's: at each MLP below the target's layer,
y' = y - W_dec (z(x') * dropped), z(x') the transcoder's codes of the MLP input of the edited run.
The error term y - y_hat stays, live; the circuit's features are kept at every token.

    preservation(S) = (t(S) - t(empty)) / (t(full) - t(empty))

t(full): the graph's features kept (every feature the trace did not expand removed); t(empty): no
feature kept (each MLP reduced to its decoder bias and its error term). The full graph scores 1 and
the empty circuit 0 by definition; t(clean), the unedited target, says how far the graph's features
alone already are from the model as it ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DiffractError
from ..recording.call_inputs import CallInputs
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .blocks import LinearReader, read_plain_linear
from .circuit import replay_model, target_row
from .graph import CircuitGraph
from .replacement import MlpEdit, ReplacementModel, TargetRow


@dataclass(frozen=True)
class TargetValues:
    """The target in the real model: unedited, with the graph's features only, with none."""

    clean: float
    full: float
    empty: float


class CircuitIntervention:
    """The real blocks of one traced call, measuring the target with chosen feature nodes kept and
    every other feature of the traced sites removed (see the module's docstring)."""

    def __init__(self, model: ReplacementModel, graph: CircuitGraph, root: TargetRow | None = None) -> None:
        if model.last_layer != graph.target.layer:
            raise DiffractError(f"the replacement model runs up to layer {model.last_layer}, the circuit's target "
                                f"is at layer {graph.target.layer}")
        self.model = model
        self.graph = graph
        self.root = root if root is not None else target_row(model, graph)
        self.feature_nodes = graph.indices("feature")
        self.sites: list[SiteKey] = [site for site, sources in model.sites.items() if sources.transcoder is not None]
        self.values = TargetValues(float(model.value(self.root)[0]), self.value(self.feature_nodes), self.value(()))
        if not abs(self.values.full - self.values.empty) > 1e-9 * max(abs(self.values.full), 1.0):
            raise DiffractError(
                "the circuit's features do not move its target in the real model (the same value with all of them "
                "and with none): there is nothing for a smaller circuit to preserve"
            )

    @classmethod
    def for_call(
        cls,
        blocks: Sequence[nn.Module],
        transcoders: TranscoderSet,
        call: CallInputs,
        graph: CircuitGraph,
        *,
        read_linear: LinearReader = read_plain_linear,
        device: torch.device | str | None = None,
    ) -> CircuitIntervention:
        """The intervention on `call`, the model call `graph` was traced from (one image, one chunk)."""
        return cls(replay_model(graph, blocks, transcoders, call, read_linear=read_linear, device=device), graph)

    def value(self, keep: Iterable[int]) -> float:
        """The target with the feature nodes `keep` (graph node indices) kept, every other feature removed."""
        xs = self.model.real_forward(self._removal(self._dropped(keep)))
        return float(self.model.value(self.root, xs)[0])

    def preservation(self, keep: Iterable[int]) -> float:
        """(t(keep) - t(empty)) / (t(full) - t(empty)): 1 for the graph's features, 0 for none."""
        return (self.value(keep) - self.values.empty) / (self.values.full - self.values.empty)

    def curve(self, ranking: Sequence[int], sizes: Iterable[int]) -> list[tuple[int, float]]:
        """(size, preservation) of the first `size` nodes of `ranking`, for each size."""
        return [(size, self.preservation(ranking[:size])) for size in sizes]

    def _dropped(self, keep: Iterable[int]) -> dict[SiteKey, torch.Tensor]:
        """Per traced site, 1 for every feature to remove and 0 for the kept ones ([F] in the model's dtype)."""
        dropped = {site: torch.ones(self.model.transcoder_at(site).d_features, dtype=self.model.dtype,
                                    device=self.model.device) for site in self.sites}
        for index in keep:
            node = self.graph.nodes[index]
            if node.kind != "feature":
                raise DiffractError(f"node {index} ({node.describe()}) is not a feature node: a circuit keeps features")
            site = (node.stream, node.layer)
            if site not in dropped:
                raise DiffractError(f"feature {node.feature_spec} is not at a traced site of this call")
            dropped[site][node.feature] = 0.0
        return dropped

    def _removal(self, dropped: dict[SiteKey, torch.Tensor]) -> MlpEdit:
        sigma = self.model.sigma

        def remove(_layer: int, site: SiteKey, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if site not in dropped:
                return y
            transcoder = self.model.transcoder_at(site)
            z, _ = transcoder.encode(x.to(transcoder.dtype), sigma)
            removed = transcoder.decode(z * dropped[site].to(z)) - transcoder.b_dec.to(z)
            return y - removed.to(y.dtype)

        return remove
