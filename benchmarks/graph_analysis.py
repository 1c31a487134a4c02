"""Influence, pruning, scores, predicted ablations and saving of a large attribution graph: the sparse
implementations against the dense computations they replaced (an N x N float64 adjacency with
circuit-tracer's power series, the former dense pruning, a dense solve of (I - M) X = I, the whole
file in one json.dumps), on the same graph in one process, rounds interleaved; seconds and peak
memory per call (after one warm-up), each result checked against its baseline.

The graph is shaped like a circuit of FLUX: inputs and bias at the bottom, per layer and stream an
error node, a rest node and features, the target on top; every edge runs from a lower layer to a
feature or the target above it, and some (source, target) pairs repeat.

    python benchmarks/graph_analysis.py
    python benchmarks/graph_analysis.py --nodes 2000 --edges 200000 --repeats 1
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import PeakMemory, timed

from diffract_core.attribution.faithfulness import predicted_ablation_effects
from diffract_core.attribution.graph import (
    TERMINAL,
    UNEXPLAINED,
    CircuitGraph,
    CircuitNode,
    Pruned,
    find_threshold,
)
from diffract_core.attribution.serialize import graph_to_dict, save_graph
from diffract_core.file_writing import write_text_atomically
from diffract_core.transcoders.config import Stream

CPU = torch.device("cpu")
MB = 10**6
IMAGE_TOKENS, TEXT_TOKENS = 4096, 512
GOAL_NODES = 7500
GOALS = {"influence": (1.0, 200 * MB), "prune": (1.0, 200 * MB)}  # seconds, bytes at GOAL_NODES
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@dataclass(frozen=True)
class Operation:
    name: str
    sparse: Callable[[], object]
    dense: Callable[[], object]
    agree: Callable[[object, object], bool]


# --- the graph -----------------------------------------------------------------------------------


def circuit_like_graph(size: int, edges: int, layers: int, positions: int, seed: int) -> CircuitGraph:
    """`size` nodes, `edges` edges, layer by layer (see the module's docstring)."""
    generator = torch.Generator().manual_seed(seed)
    nodes, ranks = _circuit_nodes(size, layers, positions, generator)
    expanded = torch.tensor([i for i, node in enumerate(nodes) if node.kind in ("feature", "target")])
    below = torch.searchsorted(ranks, ranks)  # nodes of a lower rank come first
    targets = expanded[torch.randint(len(expanded), (edges,), generator=generator)]
    sources = (torch.rand(edges, generator=generator, dtype=torch.float64) * below[targets]).long()
    activity = torch.tensor([abs(node.value) if node.kind == "feature" else 1.0 for node in nodes], dtype=torch.float64)
    weights = torch.randn(edges, generator=generator, dtype=torch.float64) * 0.05 * activity[sources]
    return CircuitGraph(nodes, sources, targets, weights)


def _circuit_nodes(size: int, layers: int, positions: int,
                   generator: torch.Generator) -> tuple[list[CircuitNode], torch.Tensor]:
    """The nodes in rank order (inputs and bias 0, layer L's sites L + 1, the target layers + 1) and their ranks."""
    sites = [(layer, stream) for layer in range(layers) for stream in ("img", "txt")]
    feature_count = size - 3 - 2 * len(sites) - 1
    if feature_count < len(sites):
        raise SystemExit(f"--nodes {size} leaves fewer features than sites ({len(sites)}): raise --nodes or lower "
                         "--layers")
    nodes = [CircuitNode("input", 0, "img"), CircuitNode("input", 0, "txt"), CircuitNode("bias", 0)]
    ranks = [0, 0, 0]
    per_site = torch.bincount(torch.arange(feature_count) * len(sites) // feature_count, minlength=len(sites))
    for (layer, stream), count in zip(sites, per_site.tolist()):
        nodes += [CircuitNode("error", 0, stream, layer), CircuitNode("rest", 0, stream, layer)]
        nodes += [_feature(stream, layer, feature, positions, generator) for feature in range(count)]
        ranks += [layer + 1] * (count + 2)
    nodes.append(CircuitNode("target", 0, "img", layers - 1, 0, value=1.0, label="target"))
    ranks.append(layers + 1)
    return nodes, torch.tensor(ranks)


def _feature(stream: Stream, layer: int, feature: int, positions: int, generator: torch.Generator) -> CircuitNode:
    tokens = IMAGE_TOKENS if stream == "img" else TEXT_TOKENS
    where = torch.randperm(tokens, generator=generator)[:positions].sort().values
    activations = torch.rand(len(where), generator=generator) * 4
    return CircuitNode("feature", 0, stream, layer, feature, value=float(activations.sum()), positions=where,
                       activations=activations)


# --- the dense computations the sparse ones replaced ---------------------------------------------


def _normalize_rows(matrix: torch.Tensor) -> torch.Tensor:
    normalized = matrix.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)


def _dense_path_sum(normalized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """weights @ (A + A^2 + ...), one vector-matrix product per path length, as circuit-tracer does."""
    current = weights @ normalized
    influence = current.clone()
    while current.any():
        current = current @ normalized
        influence += current
    return influence


def dense_influence(graph: CircuitGraph) -> torch.Tensor:
    return _dense_path_sum(_normalize_rows(graph.adjacency()), graph.target_weights())


def dense_prune(graph: CircuitGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    adjacency = graph.adjacency()
    weights = graph.target_weights()
    influence = _dense_path_sum(_normalize_rows(adjacency), weights)
    node_mask = influence >= find_threshold(influence, node_threshold)
    always = torch.tensor([node.kind in ("target", *TERMINAL) for node in graph.nodes])
    node_mask |= always
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normalized = _normalize_rows(pruned)
    edge_scores = normalized * (_dense_path_sum(normalized, weights) + weights)[:, None]
    keep = (edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)) & (pruned != 0)
    features = torch.tensor([node.kind == "feature" for node in graph.nodes])
    needs_out = torch.tensor([node.kind in ("feature", *UNEXPLAINED) for node in graph.nodes])
    while True:
        before = node_mask.clone()
        keep[~node_mask] = False
        keep[:, ~node_mask] = False
        node_mask &= ~needs_out | keep.any(0)
        node_mask &= ~features | keep.any(1)
        node_mask |= always
        if torch.equal(before, node_mask):
            break
    full = influence.clone()
    full[graph.target_index] = 1.0
    return Pruned(node_mask, keep[graph.edge_targets, graph.edge_sources], full)


def dense_scores(graph: CircuitGraph) -> tuple[float, float]:
    normalized = _normalize_rows(graph.adjacency())
    weights = graph.target_weights()
    influence = _dense_path_sum(normalized, weights)
    unexplained = graph.indices(*UNEXPLAINED)
    explained = float(influence[graph.indices(*TERMINAL)].sum())
    lost = float(influence[unexplained].sum())
    output_influence = influence + weights
    non_error = 1 - normalized[:, unexplained].sum(-1)
    return explained / (explained + lost), float((non_error * output_influence).sum() / output_influence.sum())


def dense_ablation_effects(graph: CircuitGraph) -> tuple[torch.Tensor, torch.Tensor]:
    adjacency = graph.adjacency()
    n = len(graph.nodes)
    values = torch.tensor([node.value for node in graph.nodes], dtype=torch.float64)
    features = torch.tensor([node.kind == "feature" for node in graph.nodes])
    scale = torch.where(features & (values.abs() > 0), 1.0 / values.abs().clamp(min=1e-30), torch.zeros_like(values))
    identity = torch.eye(n, dtype=torch.float64)
    total_map = torch.linalg.solve(identity - adjacency * scale[None, :] * features[None, :], identity)
    first_order = -adjacency * features[None, :]
    return (total_map @ first_order)[graph.target_index], first_order[graph.target_index]


def dense_save(graph: CircuitGraph, path: Path) -> Path:
    """The whole document as Python lists and one string, as save_graph wrote it before it streamed."""
    return write_text_atomically(path, json.dumps(graph_to_dict(graph), allow_nan=False, separators=(",", ":")))


# --- agreement -----------------------------------------------------------------------------------


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-7, atol=1e-9 * float(b.abs().max().clamp(min=1.0))))


def _same_vector(a: object, b: object) -> bool:
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return _close(a, b)


def _same_pruning(a: object, b: object) -> bool:
    assert isinstance(a, Pruned) and isinstance(b, Pruned)
    same_masks = torch.equal(a.node_mask, b.node_mask) and torch.equal(a.edge_mask, b.edge_mask)
    return same_masks and _close(a.influence, b.influence)


def _same_pairs(a: object, b: object) -> bool:
    assert isinstance(a, tuple) and isinstance(b, tuple)
    return all(_close(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))


def _same_file(a: object, b: object) -> bool:
    assert isinstance(a, Path) and isinstance(b, Path)
    return a.read_bytes() == b.read_bytes()


def operations(graph: CircuitGraph, folder: Path) -> list[Operation]:
    return [
        Operation("influence", graph.influence, lambda: dense_influence(graph), _same_vector),
        Operation("prune", graph.prune, lambda: dense_prune(graph), _same_pruning),
        Operation("scores", graph.scores, lambda: dense_scores(graph), _same_pairs),
        Operation("predicted ablations", lambda: predicted_ablation_effects(graph),
                  lambda: dense_ablation_effects(graph), _same_pairs),
        Operation("save JSON", lambda: save_graph(graph, folder / "streamed.json"),
                  lambda: dense_save(graph, folder / "whole.json"), _same_file),
    ]


# --- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    wall: float  # seconds
    cpu: float  # seconds of this process's CPU time: what the call costs on a machine shared with others
    peak: int  # bytes above the start


def measured(fn: Callable[[], object]) -> tuple[Measurement, object]:
    """One call after a warm-up call (timing.timed), and its result."""
    results: list[object] = []
    cpu: list[float] = []

    def call() -> None:
        started = time.process_time()
        results.append(fn())
        cpu.append(time.process_time() - started)

    with PeakMemory(CPU) as memory:
        wall = timed(call, repeats=1, device=CPU)
    return Measurement(wall, cpu[-1], memory.peak), results[-1]


@dataclass(frozen=True)
class Comparison:
    sparse: Measurement  # medians over the rounds
    dense: Measurement
    agree: bool  # in every round


def run_rounds(measured_operations: list[Operation], repeats: int) -> dict[str, Comparison]:
    """Every round measures every operation, sparse then dense, and checks that their results agree."""
    sparse: dict[str, list[Measurement]] = {op.name: [] for op in measured_operations}
    dense: dict[str, list[Measurement]] = {op.name: [] for op in measured_operations}
    agree = dict.fromkeys(sparse, True)
    for _ in range(repeats):
        for op in measured_operations:
            sparse_measurement, sparse_result = measured(op.sparse)
            dense_measurement, dense_result = measured(op.dense)
            sparse[op.name].append(sparse_measurement)
            dense[op.name].append(dense_measurement)
            agree[op.name] &= op.agree(sparse_result, dense_result)
    return {name: Comparison(_medians(sparse[name]), _medians(dense[name]), agree[name]) for name in sparse}


def _medians(measurements: list[Measurement]) -> Measurement:
    return Measurement(statistics.median(m.wall for m in measurements), statistics.median(m.cpu for m in measurements),
                       int(statistics.median(m.peak for m in measurements)))


def keep_large_frees_visible() -> None:
    """A fixed mmap threshold: glibc would otherwise raise it after the dense baselines free their
    N x N matrices, keep later large tensors in its heap after they are freed, and RSS (what
    PeakMemory samples on the CPU) would miss the next call's allocations."""
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)


# --- report --------------------------------------------------------------------------------------


def print_table(rows: dict[str, Comparison]) -> None:
    print(f"{'operation':20} {'sparse s':>9} {'dense s':>9} {'speed-up':>9} {'sparse cpu':>10} {'dense cpu':>10} "
          f"{'cpu ratio':>10} {'sparse MB':>10} {'dense MB':>10} {'memory ratio':>12} {'agree':>6}")
    for name, row in rows.items():
        sparse, dense = row.sparse, row.dense
        print(f"{name:20} {sparse.wall:9.3f} {dense.wall:9.3f} {dense.wall / max(sparse.wall, 1e-9):8.1f}x "
              f"{sparse.cpu:10.3f} {dense.cpu:10.3f} {dense.cpu / max(sparse.cpu, 1e-9):9.1f}x "
              f"{sparse.peak / MB:10.1f} {dense.peak / MB:10.1f} {_memory_ratio(sparse.peak, dense.peak):>12} "
              f"{'yes' if row.agree else 'NO':>6}")


def _memory_ratio(sparse: int, dense: int) -> str:
    """Peaks under 1 MB are below what sampling RSS resolves: such a ratio is a bound, or unknown."""
    if sparse >= MB:
        return f"{dense / sparse:.1f}x"
    return f">{dense / MB:.0f}x" if dense >= MB else "-"


def print_goals(rows: dict[str, Comparison], nodes: int) -> None:
    for name, (seconds_goal, bytes_goal) in GOALS.items():
        sparse = rows[name].sparse
        verdict = f"not judged below {GOAL_NODES} nodes"
        if nodes >= GOAL_NODES:
            met = {clock: seconds <= seconds_goal and sparse.peak <= bytes_goal
                   for clock, seconds in (("wall", sparse.wall), ("cpu", sparse.cpu))}
            verdict = ", ".join(f"{clock} {'met' if ok else 'MISSED'}" for clock, ok in met.items())
        print(f"goal {name}: <= {seconds_goal:g} s and <= {bytes_goal / MB:g} MB at {GOAL_NODES} nodes: wall "
              f"{sparse.wall:.3f} s, cpu {sparse.cpu:.3f} s, {sparse.peak / MB:.1f} MB at {nodes} nodes: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=7500)
    parser.add_argument("--edges", type=int, default=2_000_000)
    parser.add_argument("--layers", type=int, default=19, help="double blocks; sites per layer: img and txt")
    parser.add_argument("--positions", type=int, default=8, help="positions kept per feature")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_large_frees_visible()
    graph = circuit_like_graph(args.nodes, args.edges, args.layers, args.positions, args.seed)
    adjacency = graph.sparse_adjacency()
    print(f"nodes={len(graph.nodes)} edges={graph.edge_weights.numel()} distinct pairs={len(adjacency.weights)} "
          f"waves={len(adjacency.waves)} threads={torch.get_num_threads()} load average={os.getloadavg()[0]:.1f} "
          f"rounds={args.repeats} (seconds: median; cpu: process CPU seconds; MB = 10^6 bytes above the call's start)")
    with tempfile.TemporaryDirectory() as folder:
        rows = run_rounds(operations(graph, Path(folder)), args.repeats)
    print_table(rows)
    print_goals(rows, len(graph.nodes))


if __name__ == "__main__":
    main()
