"""How much of a binding-error circuit runs along the residual stream alone, and how much through
attention, on the embedded toy; and a colour feature's strongest virtual-weight connections.

Samples held-out prompts (the toy's colour swaps), takes the first binding errors, traces each
wrong colour's circuit as the binding benchmark does (the most colour-selective img:3 feature,
summed over the wrongly coloured object, at step 2, 100 features), and splits every edge into its
direct residual share (activation x virtual weight x LayerNorm factor, from the replacement model's
transpose without attention) and the rest, through attention. For edges from features it reports,
per source stream -> target stream and layer gap, the share of |weight| that is direct,
sum |direct| / (sum |direct| + sum |attention|) per graph, as the mean over graphs with a 95 %
bootstrap interval (and the share of all feature-edge |weight| each group carries); then the same
by source kind. Last, the first error's target feature's top connections by virtual weight, with the
atlas's labels, at that call's sigma and vec, and how selective each is for the drawn colour.

    python benchmarks/toy_connections.py                  # 48 images, the first 24 errors (~3 min)
    python benchmarks/toy_connections.py --errors 8       # a quick look
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from diffract_core.atlas import feature_labels
from diffract_core.attribution.circuit import replay_model
from diffract_core.attribution.connections import VirtualWeights
from diffract_core.attribution.edge_paths import EdgePaths, split_edges
from diffract_core.attribution.graph import CircuitGraph
from diffract_core.attribution.modulation import ResidualModulation
from diffract_core.heads.statistics import bootstrap_interval
from diffract_core.render.connections import format_connections
from diffract_core.toy.binding_benchmark import BenchmarkSettings, collect_cases, grid_seeds, prepare_cases
from diffract_core.toy.embedded import load_toy, open_toy_transcoders
from diffract_core.toy.repair import COLOUR_NAMES
from diffract_core.toy.scenes import held_out_prompts

Group = tuple[str, ...]


def feature_edge_groups(graph: CircuitGraph) -> dict[Group, torch.Tensor]:
    """Edges from feature nodes, by (source stream -> target stream, layer gap), as edge-index masks."""
    groups: dict[Group, list[int]] = defaultdict(list)
    for edge, (source, target) in enumerate(zip(graph.edge_sources.tolist(), graph.edge_targets.tolist())):
        a, b = graph.nodes[source], graph.nodes[target]
        if a.kind == "feature":
            groups[(f"{a.stream}->{b.stream}", f"gap {b.layer - a.layer}")].append(edge)  # type: ignore[operator]
    return {group: torch.tensor(edges) for group, edges in groups.items()}


def kind_groups(graph: CircuitGraph) -> dict[Group, torch.Tensor]:
    """Every edge, by source kind and (where the source has one) source stream -> target stream."""
    keys = []
    for source, target in zip(graph.edge_sources.tolist(), graph.edge_targets.tolist()):
        a, b = graph.nodes[source], graph.nodes[target]
        keys.append((a.kind,) if a.stream is None else (a.kind, f"{a.stream}->{b.stream}"))
    return {key: torch.tensor([key == k for k in keys]) for key in dict.fromkeys(keys)}


def shares(paths: EdgePaths, groups: dict[Group, torch.Tensor]) -> dict[Group, tuple[float, float]]:
    """(direct share, |weight|) per group."""
    return {group: (paths.direct_share(mask), float((paths.direct[mask].abs() + paths.through_attention[mask].abs()
                                                     ).sum())) for group, mask in groups.items()}


def report(title: str, per_graph: list[dict[Group, tuple[float, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'group':<26}{'graphs':>7}{'direct share':>14}{'95% CI':>18}{'of |weight|':>13}")
    totals: dict[Group, float] = defaultdict(float)
    for figures in per_graph:
        for group, (_, weight) in figures.items():
            totals[group] += weight
    everything = sum(totals.values())
    for group in sorted(totals):
        values = torch.tensor([figures[group][0] for figures in per_graph if group in figures], dtype=torch.float64)
        interval = "n/a"
        if len(values) > 1:
            _, low, high = bootstrap_interval(values, samples=2000, seed=0)
            interval = f"[{float(low):.3f}, {float(high):.3f}]"
        print(f"{' '.join(group):<26}{len(values):>7}{float(values.mean()):>14.3f}{interval:>18}"
              f"{totals[group] / everything:>13.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="held-out prompts sampled, one noise seed each")
    parser.add_argument("--errors", type=int, default=24, help="binding errors traced (the first this many)")
    parser.add_argument("--budget", type=int, default=100, help="features each trace expands")
    parser.add_argument("--top", type=int, default=8, help="connections shown on each side in the example")
    args = parser.parse_args()
    began = time.perf_counter()
    model, transcoders = load_toy(), open_toy_transcoders()
    settings = BenchmarkSettings(images=args.images, max_errors=args.errors, batch=args.images, budget=args.budget)
    prompts = held_out_prompts(settings.images, seed=settings.seed)
    grid = collect_cases(model, {"transcoders": transcoders}, prompts, grid_seeds(len(prompts), settings.seed),
                         settings, log=lambda line: None, keep_steps=frozenset({settings.step}))
    if not grid.cases:
        parser.exit(1, f"no binding error among the {settings.images} images: sample more (--images)\n")
    calls = [case.calls[settings.step] for case in grid.cases]  # prepare_cases lets go of them
    prepare_cases(model, transcoders, grid.cases, grid.stats, settings, graphs=("wrong",))
    sampled = time.perf_counter() - began
    by_group, by_kind = [], []
    for case, call in zip(grid.cases, calls):
        graph = case.graphs["wrong"]
        paths = split_edges(graph, replay_model(graph, model.flux.double_blocks, transcoders, call))
        by_group.append(shares(paths, feature_edge_groups(graph)))
        by_kind.append(shares(paths, kind_groups(graph)))
    print(f"{len(grid.cases)} binding-error circuits (img:{settings.layer} wrong colour over the object, step "
          f"{settings.step}, {settings.budget} features) from {settings.images} held-out images; sampled and traced "
          f"in {sampled:.0f} s, split in {time.perf_counter() - began - sampled:.0f} s")
    report("edges from features: direct share of |weight| per graph (mean over graphs)", by_group)
    report("every edge, by source kind (and streams)", by_kind)
    first, call = grid.cases[0], calls[0]
    target = first.graphs["wrong"].target.ref
    modulation = ResidualModulation.from_blocks(model.flux.double_blocks, call.vec)
    connections = VirtualWeights(transcoders, modulation, call.sigma).strongest(target, args.top)
    atlas = transcoders.atlas
    refs = [target, *(c.source for c in connections.upstream), *(c.target for c in connections.downstream)]
    print(f"\nexample: the first error's target ({first.error.prompt!r}: the {first.error.shape} drawn "
          f"{first.error.drawn}, not {first.error.intended})")
    print(f"{target}: {feature_labels(atlas, [target]).get(str(target), '(no label)')}")
    print(format_connections(connections, feature_labels(atlas, refs) if atlas is not None else None))
    colour = COLOUR_NAMES.index(first.error.drawn)
    print(f"\nselectivity for {first.error.drawn} (mean on {first.error.drawn} objects minus on others; rank among "
          "the site's features):")
    for ref in refs:
        selectivity = grid.stats[("transcoders", ref.layer)].selectivity()[colour]
        rank = int((selectivity > selectivity[ref.index]).sum()) + 1
        print(f"  {ref!s:<11}{float(selectivity[ref.index]):+.4f}  rank {rank} of {len(selectivity)}")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
