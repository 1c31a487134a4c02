"""Graph time over its floor: a whole trace (ranking, edge bookkeeping, building the graph) against
the work no tracer can skip, the replay's forward pass and the same batched backward passes over
the same rows, on one model, call and target; repeats interleaved, medians reported.

With `--baseline DIR`, the diffract_core of another checkout (a git worktree of an earlier commit)
is imported under another name and runs the same trace and floor in the same process, interleaved
with this checkout's, so both tracers are measured under the same machine load.

    python benchmarks/tracer_overhead.py
    git worktree add /tmp/before <commit> && python benchmarks/tracer_overhead.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from flux_sizes import TRACED_STEP, flux_config, random_flux, random_inputs, random_transcoders, record_call


@dataclass
class Arm:
    name: str
    attribution: ModuleType  # the diffract_core.attribution of one checkout
    trace_seconds: list[float]
    floor_seconds: list[float]
    nodes: int = 0
    edges: int = 0


def import_checkout(root: Path) -> ModuleType:
    """The attribution package of another checkout's diffract_core, imported as `diffract_core_baseline`
    (its imports are relative)."""
    init = root / "diffract_core" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--baseline {root}: no diffract_core/__init__.py there; pass a checkout's root folder")
    spec = importlib.util.spec_from_file_location("diffract_core_baseline", init,
                                                  submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return importlib.import_module("diffract_core_baseline.attribution")


def trace(attribution: ModuleType, blocks, transcoders, call, args: argparse.Namespace, nodes: int):
    settings = attribution.TraceSettings(max_feature_nodes=nodes, batch_size=args.batch_size,
                                         max_active=args.max_active)
    target = attribution.TargetSpec("img", args.depth - 1, None, "strongest_in_region",
                                    region=torch.ones(args.pixels, args.pixels))
    return attribution.trace_circuit(blocks, transcoders, call, target, step=TRACED_STEP, settings=settings)


def floor(attribution: ModuleType, blocks, transcoders, call, args: argparse.Namespace, graph) -> None:
    """The replay and the backward passes of `graph`'s rows, in the batches the trace ran them in."""
    model = attribution.ReplacementModel(blocks, transcoders, call, last_layer=args.depth - 1,
                                         max_active=args.max_active)
    target = graph.target
    model.attribute([model.feature_row(target.stream, target.layer, target.feature,
                                       _weights(model, target, target.activations))])
    rows = [model.feature_row(node.stream, node.layer, node.feature, _weights(model, node, torch.ones(1)))
            for node in graph.features()]
    for start in range(0, len(rows), args.batch_size):
        model.attribute(rows[start : start + args.batch_size])


def _weights(model, node, values: torch.Tensor) -> torch.Tensor:
    """The row's weight per token: `values` at the node's positions."""
    weights = torch.zeros(model.tokens(node.stream))
    weights[node.positions] = values
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[200, 1000, 3000])
    parser.add_argument("--baseline", type=Path, help="root of another checkout to compare against")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=6, help="double blocks; the target reads the last")
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-active", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if min(args.nodes) < 1 or args.repeats < 1 or args.depth < 2:
        parser.error("--nodes and --repeats must be positive and --depth at least 2")
    device = torch.device("cpu")
    config = flux_config(args.hidden, args.heads, args.depth, 1)
    flux = random_flux(config, device)
    transcoders = random_transcoders(range(args.depth), args.hidden, args.features, device)
    call = record_call(flux, transcoders, random_inputs(config, args.pixels, args.text_tokens, device),
                       args.max_active).call_inputs(TRACED_STEP)
    libraries = [("this checkout", importlib.import_module("diffract_core.attribution"))]
    if args.baseline is not None:
        libraries.insert(0, (f"baseline {args.baseline}", import_checkout(args.baseline)))
    print(f"threads={torch.get_num_threads()} hidden={args.hidden} heads={args.heads} depth={args.depth} "
          f"features={args.features} tokens={(args.pixels // 16) ** 2}+{args.text_tokens} batch={args.batch_size}")
    for _, attribution in libraries:  # warm-up: first calls pay for allocation and kernel selection
        floor(attribution, flux.double_blocks, transcoders, call, args,
              trace(attribution, flux.double_blocks, transcoders, call, args, args.batch_size))
    print(f"{'nodes':>6} {'tracer':<42} {'trace s':>8} {'floor s':>8} {'trace/floor':>12} {'graph':>16}")
    for nodes in args.nodes:
        arms = [Arm(name, attribution, [], []) for name, attribution in libraries]
        for _ in range(args.repeats):
            for arm in arms:
                started = time.perf_counter()
                graph = trace(arm.attribution, flux.double_blocks, transcoders, call, args, nodes)
                arm.trace_seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                floor(arm.attribution, flux.double_blocks, transcoders, call, args, graph)
                arm.floor_seconds.append(time.perf_counter() - started)
                arm.nodes, arm.edges = len(graph.features()), int(graph.edge_weights.numel())
        for arm in arms:
            traced, floored = statistics.median(arm.trace_seconds), statistics.median(arm.floor_seconds)
            print(f"{nodes:6d} {arm.name[:42]:<42} {traced:8.2f} {floored:8.2f} {traced / floored:11.2f}x "
                  f"{arm.nodes:6d} f {arm.edges:8d} e", flush=True)


if __name__ == "__main__":
    main()
