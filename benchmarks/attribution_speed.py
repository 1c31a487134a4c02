"""Time per attribution graph: the batched transpose (many target rows per backward pass) against
the reference method (one forward and one autograd backward per expanded node), on the same model,
call and target, in one process; with passes counted, the graph's size and peak memory.

The model is the library's reference FLUX with random weights and random transcoders on every
double-block MLP. Defaults fit a CPU; `--flux` uses FLUX.1's dimensions (hidden 3072, 19 double
blocks, F = 49152, a 1024 px image, 256 text tokens), which wants a GPU.

    python benchmarks/attribution_speed.py
    python benchmarks/attribution_speed.py --flux --nodes 1000
"""

from __future__ import annotations

import argparse
import time

import torch
from flux_sizes import FLUX1, TRACED_STEP, flux_config, random_flux, random_inputs, random_transcoders, record_call
from timing import PeakMemory

from diffract_core.attribution import TargetSpec, TraceSettings, trace_circuit

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flux", action="store_true", help="FLUX.1 dimensions (overrides the size options)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--pixels", type=int, default=256, help="image side: pixels // 16 tokens per side")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=200, help="expanded feature budget")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-active", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.flux:
        vars(args).update({k: v for k, v in FLUX1.items() if k != "single"})
    device = torch.device(args.device)
    config = flux_config(args.hidden, args.heads, args.depth, single=1)
    model = random_flux(config, device)
    transcoders = random_transcoders(range(args.depth), args.hidden, args.features, device)
    inputs = random_inputs(config, args.pixels, args.text_tokens, device)
    call = record_call(model, transcoders, inputs, k=8).call_inputs(TRACED_STEP)
    target = TargetSpec("img", args.depth - 1, 0, "argmax")
    print(
        f"device={args.device} threads={torch.get_num_threads()} fp32 hidden={args.hidden} double blocks={args.depth} "
        f"F={args.features} image tokens={(args.pixels // 16) ** 2} text tokens={args.text_tokens} "
        f"target={target.stream}:{target.layer}:{target.feature} budget={args.nodes} max_active={args.max_active}"
    )
    print(f"{'algorithm':34} {'seconds':>9} {'time/batched':>12} {'fwd':>5} {'bwd':>5} {'nodes':>6} {'edges':>8} "
          f"{'peak MiB':>9} {'max resid':>10}")
    results = {}
    for name, settings in (
        ("batched transpose", TraceSettings(max_feature_nodes=args.nodes, batch_size=args.batch_size,
                                            max_active=args.max_active)),
        ("one target per pass (autograd)", TraceSettings(max_feature_nodes=args.nodes, per_row=True,
                                                         max_active=args.max_active)),
    ):
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            graph = trace_circuit(model.double_blocks, transcoders, call, target, step=TRACED_STEP, settings=settings,
                                  device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        results[name] = (seconds, graph)
        base = results["batched transpose"][0]
        meta = graph.require_metadata()
        assert meta.passes is not None and meta.conservation is not None
        print(
            f"{name:34} {seconds:9.2f} {seconds / base:11.2f}x {meta.passes.forward:5d} {meta.passes.backward:5d} "
            f"{len(graph.nodes):6d} {graph.edge_weights.numel():8d} {memory.peak / MIB:9.1f} "
            f"{meta.conservation.max_relative_residual:10.1e}",
            flush=True,
        )
    batched, single = results["batched transpose"][1], results["one target per pass (autograd)"][1]
    same = [n.id for n in batched.nodes] == [n.id for n in single.nodes]
    pruned = batched.subgraph(batched.prune())
    print(f"same nodes in both graphs: {same}; pruned graph: {len(pruned.nodes)} nodes, "
          f"{pruned.edge_weights.numel()} edges")


if __name__ == "__main__":
    main()
