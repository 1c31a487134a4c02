"""Behaviour preservation of simplified circuits on the embedded toy, measured by real intervention.

For each of the first --errors binding errors of held-out prompts, the circuit of the wrong colour's
most selective active feature summed over the wrong object (as the binding benchmark traces it: layer
3, step 2, --budget expanded features) is simplified four ways, each circuit measured in the real
model with every other feature of the traced sites removed (error terms kept):
- search: the differentiable mask search (find_circuit), the smallest circuit within --tolerance of
  preservation 1 it finds, at most --max-features features;
- top-k: the most influential features, as many as the search kept;
- best prefix: the smallest prefix of the influence ranking within --tolerance of 1 (every length up
  to --max-features measured, so this baseline is also chosen by real intervention);
- random: as many random circuits as the search measured, of the same sizes, the best chosen the same
  way: what measuring that many circuits finds by chance.
Preservation = (t(circuit) - t(empty)) / (t(full graph) - t(empty)). Also: the influence ranking's
preservation-size curve, each target's conditioning (|t(full) - t(empty)| against the feature edges'
total |weight| into the target), and the structural similarity of the search's circuits: the same
error traced at steps 2 and --second-step, and pairs of errors of the same kind (the same shape came
out in the same wrong colour, in two prompts) against pairs of different kinds. Means with 95 %
bootstrap intervals over the errors, paired sign-flip tests.

    python benchmarks/toy_circuit_preservation.py [--errors 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from diffract_core.attribution import CircuitIntervention, SearchSettings, circuit_similarity, find_circuit
from diffract_core.attribution.circuit_search import best_prefix, choose, top_influence
from diffract_core.attribution.graph import CircuitGraph
from diffract_core.attribution.subcircuit import keep_features
from diffract_core.errors import DiffractError
from diffract_core.heads.statistics import bootstrap_interval, paired_sign_flip_test
from diffract_core.toy.binding_benchmark import BenchmarkSettings, ErrorCase, collect_cases, grid_seeds
from diffract_core.toy.embedded import load_toy, open_toy_transcoders
from diffract_core.toy.model import ToyModel
from diffract_core.toy.repair import trace_wrong_colour
from diffract_core.toy.scenes import held_out_prompts
from diffract_core.transcoders import TranscoderSet

CURVE_SIZES = (1, 2, 3, 5, 10, 20, 30, 50)
METHODS = ("search", "top_k", "prefix", "random")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--errors", type=int, default=20, help="binding errors to trace and simplify")
    parser.add_argument("--images", type=int, default=0, help="held-out prompts sampled (default: errors + 8)")
    parser.add_argument("--budget", type=int, default=100, help="features each trace expands")
    parser.add_argument("--max-features", type=int, default=30)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps per search")
    parser.add_argument("--rounds", type=int, default=3, help="recalibrated searches after the first")
    parser.add_argument("--second-step", type=int, default=4, help="the other step the similarity traces")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on shared cores)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args()


def target_feature(case: ErrorCase, grid_stats: dict, settings: BenchmarkSettings) -> int:
    """The wrong colour's most selective feature active in the object (the binding benchmark's target)."""
    stats = grid_stats[("transcoders", settings.layer)]
    wrong = stats.selective(case.error.drawn, case.activity["transcoders"], settings.k)
    return wrong[0] if wrong else int(case.activity["transcoders"].argmax())


def simplify_case(model: ToyModel, transcoders: TranscoderSet, case: ErrorCase, feature: int, step: int,
                  args: argparse.Namespace, search: SearchSettings, generator: torch.Generator) -> dict[str, Any]:
    graph = trace_wrong_colour(model, transcoders, case.calls[step], case.error, feature, layer=3, step=step,
                               budget=args.budget)
    intervention = CircuitIntervention.for_call(model.flux.double_blocks, transcoders, case.calls[step], graph)
    values = intervention.values
    found = find_circuit(intervention, args.max_features, tolerance=args.tolerance, settings=search)
    ranking = top_influence(graph)
    prefix = best_prefix(intervention, ranking, args.max_features, tolerance=args.tolerance)
    features = torch.tensor(intervention.feature_nodes)
    draws = [tuple(sorted(features[torch.randperm(len(features), generator=generator)[:size]].tolist()))
             for size, _ in found.candidates]
    chance = choose({draw: intervention.preservation(draw) for draw in draws}, args.tolerance)
    into_target = graph.edge_targets == graph.target_index
    from_features = torch.tensor([node.kind == "feature" for node in graph.nodes])[graph.edge_sources]
    return {
        "graph": graph,
        "circuit": keep_features(graph, found.features),
        "figures": {
            "features_traced": len(intervention.feature_nodes),
            "clean": values.clean, "full": values.full, "empty": values.empty,
            "conditioning": abs(values.full - values.empty) / float(
                graph.edge_weights[into_target & from_features].abs().sum()),
            "search_size": len(found.features), "search": found.preservation,
            "search_candidates": len(found.candidates),
            "top_k": intervention.preservation(ranking[: len(found.features)]),
            "prefix_size": len(prefix.features), "prefix": prefix.preservation,
            "random_size": len(chance.features), "random": chance.preservation,
            "influence_curve": {size: p for size, p in intervention.curve(
                ranking, [s for s in CURVE_SIZES if s <= len(ranking)])},
        },
    }


def summary(values: list[float], tolerance: float) -> dict[str, float]:
    data = torch.tensor(values, dtype=torch.float64)
    mean, low, high = bootstrap_interval(data)
    return {"mean": float(mean), "std": float(data.std()), "ci_low": float(low),
            "ci_high": float(high), "median": float(data.median()),
            "within_tolerance": float(((data - 1).abs() <= tolerance).double().mean()),
            "at_least_0.9": float((data >= 0.9).double().mean())}


def curve_summary(rows: list[dict[str, Any]], tolerance: float) -> dict[int, dict[str, float]]:
    """The influence ranking's preservation at each size that at least two errors' graphs reach."""
    curve = {}
    for size in CURVE_SIZES:
        values = [row["influence_curve"][size] for row in rows if size in row["influence_curve"]]
        if len(values) > 1:
            curve[size] = summary(values, tolerance)
    return curve


def similarity_pairs(pairs: list[tuple[CircuitGraph, CircuitGraph]]) -> dict[str, float]:
    rows = [circuit_similarity(a, b) for a, b in pairs]
    if not rows:
        return {"pairs": 0}
    return {"pairs": len(rows), **{name: sum(getattr(r, name) for r in rows) / len(rows)
                                   for name in ("features", "weighted_features", "supernode_edges",
                                                "weighted_supernode_edges")}}


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    model, transcoders = load_toy(), open_toy_transcoders()
    images = args.images or args.errors + 8
    settings = BenchmarkSettings(images=images, max_errors=args.errors, batch=min(64, images), seed=args.seed,
                                 budget=args.budget)
    grid = collect_cases(model, {"transcoders": transcoders}, held_out_prompts(images, seed=args.seed),
                         grid_seeds(images, args.seed), settings, log=lambda _: None,
                         keep_steps=frozenset({settings.step, args.second_step}))
    sampled = time.perf_counter() - began
    search = SearchSettings(steps=args.steps, rounds=args.rounds)
    generator = torch.Generator().manual_seed(args.seed)
    rows, kinds, circuits, other_step, skipped = [], [], [], [], []
    for number, case in enumerate(grid.cases):
        feature = target_feature(case, grid.stats, settings)
        try:
            result = simplify_case(model, transcoders, case, feature, settings.step, args, search, generator)
        except DiffractError as error:
            skipped.append({"error": case.error.describe(), "why": str(error)})
            print(f"[{number + 1}/{len(grid.cases)}] skipped: {error}", flush=True)
            continue
        figures = result["figures"]
        rows.append({"error": case.error.describe(), "feature": f"img:{settings.layer}:{feature}", **figures})
        kinds.append((case.error.shape, case.error.drawn))
        circuits.append(result["circuit"])
        try:
            later = simplify_case(model, transcoders, case, feature, args.second_step, args, search,
                                  generator)["circuit"]
            other_step.append((result["circuit"], later))
        except DiffractError as error:
            print(f"    step {args.second_step} not compared: {error}", flush=True)
        print(f"[{number + 1}/{len(grid.cases)}] search {figures['search_size']:>2} features "
              f"{figures['search']:7.3f} | top-k same size {figures['top_k']:7.3f} | best prefix "
              f"{figures['prefix_size']:>2} {figures['prefix']:7.3f} | random {figures['random']:7.3f} | "
              f"conditioning {figures['conditioning']:.3f}",
              flush=True)
    if len(rows) < 2:
        raise SystemExit(f"{len(rows)} binding error(s) simplified: the statistics need two or more")
    closeness = {name: torch.tensor([abs(1 - row[name]) for row in rows], dtype=torch.float64)
                 for name in METHODS}
    tests = {}
    for baseline in METHODS[1:]:
        difference, p = paired_sign_flip_test(closeness["search"] - closeness[baseline])
        tests[f"search vs {baseline}"] = {
            "mean |1 - P| difference (negative: search closer)": float(difference), "p": float(p),
            "search closer": int((closeness["search"] < closeness[baseline]).sum()),
            "baseline closer": int((closeness["search"] > closeness[baseline]).sum())}
    same_kind = [(circuits[a], circuits[b]) for a, b in itertools.combinations(range(len(rows)), 2)
                 if kinds[a] == kinds[b]]
    other_kind = [(circuits[a], circuits[b]) for a, b in itertools.combinations(range(len(rows)), 2)
                  if kinds[a] != kinds[b]]
    report = {
        "errors": len(rows), "skipped": skipped, "images": images,
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "preservation": {name: summary([row[name] for row in rows], args.tolerance)
                         for name in METHODS},
        "sizes": {name: summary([float(row[f"{name}_size"]) for row in rows], args.tolerance)
                  for name in ("search", "prefix", "random")},
        "mean_abs_deviation_from_1": {name: float(values.mean()) for name, values in closeness.items()},
        "tests": tests,
        "conditioning": summary([row["conditioning"] for row in rows], args.tolerance),
        "influence_curve": curve_summary(rows, args.tolerance),
        "similarity": {f"same error, steps {settings.step} and {args.second_step}": similarity_pairs(other_step),
                       "same kind of error, two prompts": similarity_pairs(same_kind),
                       "different kinds of error": similarity_pairs(other_kind)},
        "rows": rows,
        "seconds": {"sampling": sampled, "total": time.perf_counter() - began},
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['errors']} binding errors simplified ({len(report['skipped'])} skipped)")
    print(f"{'method':<12}{'mean P':>8}{'std':>8}{'95 % CI':>18}{'median':>8}{'|1-P|<=tol':>12}{'P>=0.9':>8}"
          f"{'features':>10}")
    sizes = report["sizes"]
    for name, row in report["preservation"].items():
        size = sizes.get(name, sizes["search"])["mean"]
        print(f"{name:<12}{row['mean']:>8.3f}{row['std']:>8.3f}{row['ci_low']:>9.3f}–{row['ci_high']:<8.3f}"
              f"{row['median']:>8.3f}{row['within_tolerance']:>12.2f}{row['at_least_0.9']:>8.2f}{size:>10.1f}")
    for name, test in report["tests"].items():
        print(f"{name}: {test}")
    print(f"conditioning |t(full) - t(empty)| / sum |feature edges into the target|: "
          f"mean {report['conditioning']['mean']:.3f}, median {report['conditioning']['median']:.3f}")
    print("influence ranking, preservation by size: " + ", ".join(
        f"{size}: {row['median']:.2f} (median)" for size, row in report["influence_curve"].items()))
    for name, row in report["similarity"].items():
        print(f"similarity, {name}: {row}")
    print(f"time: {report['seconds']['total']:.0f} s")


if __name__ == "__main__":
    main()
