"""Which attention heads of the embedded toy carry colour from the text to the image, and does
zeroing them cause binding errors?

1. Profile: two-object training prompts in their usual colours ("a red circle and a blue square")
   and the held-out swaps are sampled once each (seeds 0..N-1) with every step's block-0 inputs
   kept; each step is replayed and every double-block head measured (diffract_core/heads). Colour
   focus = the share of image queries' attention on the prompt's two colour words, per layer, head
   and step, with 95 % bootstrap intervals over the prompts.
2. The heads with the most colour focus (averaged over steps, training set) are the colour heads.
3. Ablation, on fresh prompts and seeds (usual colours, where the toy binds correctly): each image
   sampled clean, with the colour heads zeroed at every step, with every other set of as many heads
   zeroed (all of them, or --random-sets drawn at random), and with each head alone zeroed. Binding
   errors and all-objects-right rates with Wilson intervals; colour heads against clean and against
   the mean over the random sets by paired sign-flip tests on the same images; the colour set's
   rank among all sets.
4. Entropy and text focus per head, training set against held-out swaps: permutation tests per head
   with Benjamini-Hochberg adjustment. Roles: heads clustered on their profiles.

    python benchmarks/toy_attention_heads.py --json heads.json --image heads.png
    python benchmarks/toy_attention_heads.py --prompts 8 --eval-prompts 8 --random-sets 3 --steps 4   # a quick look

One thread by default: on a shared 2-core machine torch's thread pool made sampling 6x slower.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffract_core.heads import (
    HeadAblation,
    HeadProfile,
    ablate_reference_heads,
    bootstrap_interval,
    classify_heads,
    fdr_adjust,
    head_profile,
    paired_sign_flip_test,
    permutation_test,
)
from diffract_core.recording import FeatureRecording
from diffract_core.render.head_table import render_head_table
from diffract_core.toy import COLOURS, SHAPES, BindingScore, ToyModel, load_toy, score_binding
from diffract_core.toy.binding import MOSTLY
from diffract_core.toy.embedded import open_toy_transcoders
from diffract_core.toy.generate import STEPS, generate, toy_noise
from diffract_core.toy.quality import wilson
from diffract_core.toy.scenes import held_out_prompts, training_prompts
from diffract_core.transcoders import TranscoderSet

Head = tuple[int, int]
EVAL_SEED = 1000  # evaluation seeds start here, apart from the profiling seeds 0..N-1
BOOTSTRAP = 2000
PERMUTATIONS = 5000


def word_positions(prompts: list[str], words: Any, tokens: int) -> torch.Tensor:
    """bool [prompts, tokens]: where the prompt's words are among `words` (the toy has one token per word)."""
    positions = torch.zeros(len(prompts), tokens, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        for index, word in enumerate(prompt.lower().split()):
            positions[row, index] = word in words
    return positions


def sample_profiled(toy: ToyModel, site: TranscoderSet, prompts: list[str], seeds: list[int],
                    steps: int) -> HeadProfile:
    """Sample with every step's inputs kept (through one cheap recorded site), then profile every head."""
    recording = FeatureRecording(sites=tuple(site.sites), k=1, keep_input_steps=frozenset(range(steps)))
    generate(toy, prompts, toy_noise(seeds), steps=steps, transcoders=site, recording=recording)
    return head_profile(toy.flux.double_blocks, [(step, recording.call_inputs(step)) for step in range(steps)])


def _colour_wrong(score: BindingScore) -> bool:
    return any(o.found.shape == o.expected[1] and o.found.share(o.expected[0]) < MOSTLY for o in score.objects)


MEASURES: dict[str, Callable[[BindingScore], bool]] = {
    "binding_error": lambda score: score.binding_error,  # an object mostly (or half) in the other's colour
    "all_right": lambda score: score.correct == len(score.objects),
    "colour_wrong": _colour_wrong,  # an object in its own shape but not mostly its own colour
    "shape_lost": lambda score: any(o.found.shape != o.expected[1] for o in score.objects),
}
HIGHER_IS_WORSE = {"binding_error": True, "all_right": False, "colour_wrong": True, "shape_lost": True}


def outcomes(toy: ToyModel, prompts: list[str], seeds: list[int], steps: int,
             heads: frozenset[Head] = frozenset()) -> dict[str, torch.Tensor]:
    """Per image 0/1 for each of MEASURES, with `heads` zeroed at every step."""
    noise = toy_noise(seeds)
    if heads:
        with ablate_reference_heads(toy.flux, HeadAblation(heads)):
            images = generate(toy, prompts, noise, steps=steps)
    else:
        images = generate(toy, prompts, noise, steps=steps)
    scores = [score_binding(image, prompt) for image, prompt in zip(images, prompts)]
    return {name: torch.tensor([float(test(score)) for score in scores]) for name, test in MEASURES.items()}


def rate(values: torch.Tensor) -> dict[str, float]:
    low, high = wilson(float(values.sum()), len(values))
    return {"rate": float(values.mean()), "ci_low": low, "ci_high": high}


def paired(treated: torch.Tensor, control: torch.Tensor, seed: int) -> dict[str, float]:
    differences = (treated - control).double()
    mean, low, high = bootstrap_interval(differences, samples=BOOTSTRAP, seed=seed)
    _, p = paired_sign_flip_test(differences, permutations=PERMUTATIONS, seed=seed)
    return {"difference": float(mean), "ci_low": float(low), "ci_high": float(high), "p": float(p)}


def per_head(values: torch.Tensor, seed: int) -> list[list[dict[str, float]]]:
    """[images, layers, heads] -> mean and 95 % bootstrap interval per head."""
    mean, low, high = bootstrap_interval(values, samples=BOOTSTRAP, seed=seed)
    return [[{"mean": float(mean[layer, head]), "ci_low": float(low[layer, head]), "ci_high": float(high[layer, head])}
             for head in range(values.shape[2])] for layer in range(values.shape[1])]


def colour_focus(profile: HeadProfile, prompts: list[str]) -> dict[str, torch.Tensor]:
    tokens = profile.token_focus.shape[-1]
    colour = profile.focus_on(word_positions(prompts, COLOURS, tokens))
    shape = profile.focus_on(word_positions(prompts, SHAPES, tokens))
    text = profile.metric("text_focus")
    return {"colour": colour, "shape": shape, "colour_share_of_text": colour / text}


def ablation_arms(toy: ToyModel, prompts: list[str], seeds: list[int], steps: int, colour_heads: frozenset[Head],
                  all_heads: list[Head], random_sets: int, seed: int) -> dict[str, Any]:
    clean = outcomes(toy, prompts, seeds, steps)
    colour = outcomes(toy, prompts, seeds, steps, colour_heads)
    others = [frozenset(c) for c in itertools.combinations(all_heads, len(colour_heads)) if set(c) != colour_heads]
    if 0 < random_sets < len(others):
        others = random.Random(seed).sample(others, random_sets)
    random_runs = [outcomes(toy, prompts, seeds, steps, heads) for heads in others]
    single = {f"{layer}:{head}": outcomes(toy, prompts, seeds, steps, frozenset({(layer, head)}))
              for layer, head in all_heads}
    report: dict[str, Any] = {"colour_heads": sorted(f"{layer}:{head}" for layer, head in colour_heads),
                              "random_sets": [sorted(f"{layer}:{head}" for layer, head in heads) for heads in others]}
    for measure in MEASURES:
        random_mean = torch.stack([run[measure] for run in random_runs]).mean(0)
        set_rates = [float(run[measure].mean()) for run in random_runs]
        colour_rate = float(colour[measure].mean())
        more_extreme = sum(r >= colour_rate if HIGHER_IS_WORSE[measure] else r <= colour_rate for r in set_rates)
        report[measure] = {
            "clean": rate(clean[measure]),
            "colour_heads": rate(colour[measure]),
            "random_sets_mean": float(random_mean.mean()),
            "random_sets_range": [min(set_rates), float(np.median(set_rates)), max(set_rates)],
            "colour_vs_clean": paired(colour[measure], clean[measure], seed),
            "colour_vs_random": paired(colour[measure], random_mean, seed + 1),
            "colour_set_rank_p": (1 + more_extreme) / (1 + len(set_rates)),
            "single_heads": {name: rate(run[measure]) for name, run in single.items()},
        }
    return report


def set_comparison(first: HeadProfile, second: HeadProfile, seed: int) -> dict[str, Any]:
    """Per head, over images (averaged over steps): first - second, permutation p, BH-adjusted p."""
    out = {}
    for metric in ("entropy", "entropy_img_txt", "text_focus"):
        difference, p = permutation_test(first.metric(metric).mean(1), second.metric(metric).mean(1),
                                         permutations=PERMUTATIONS, seed=seed)
        adjusted = fdr_adjust(p)
        out[metric] = [[{"difference": float(difference[layer, head]), "p": float(p[layer, head]),
                         "p_bh": float(adjusted[layer, head])} for head in range(p.shape[1])]
                       for layer in range(p.shape[0])]
    return out


def print_report(result: dict[str, Any]) -> None:
    print(f"colour focus (share of image queries' attention on the 2 colour words), mean over steps, "
          f"{result['settings']['prompts']} training prompts (95% bootstrap CI):")
    for layer, row in enumerate(result["colour_focus"]["training"]):
        for head, cell in enumerate(row):
            share = result["colour_share_of_text"][layer][head]
            shape = result["shape_focus"][layer][head]
            held = result["colour_focus"]["held_out"][layer][head]
            print(f"  L{layer} h{head}: colour {cell['mean']:.3f} ({cell['ci_low']:.3f}-{cell['ci_high']:.3f})  "
                  f"shape {shape['mean']:.3f}  colour/text {share['mean']:.2f}  held-out colour {held['mean']:.3f}")
    ablation = result["ablation"]
    print(f"colour heads: {', '.join(ablation['colour_heads'])}; {len(ablation['random_sets'])} other sets of as many")
    for measure in MEASURES:
        m = ablation[measure]
        print(f"{measure}: clean {m['clean']['rate']:.3f} ({m['clean']['ci_low']:.3f}-{m['clean']['ci_high']:.3f}), "
              f"colour heads zeroed {m['colour_heads']['rate']:.3f} "
              f"({m['colour_heads']['ci_low']:.3f}-{m['colour_heads']['ci_high']:.3f}), "
              f"other sets mean {m['random_sets_mean']:.3f} (min/median/max {m['random_sets_range'][0]:.3f}/"
              f"{m['random_sets_range'][1]:.3f}/{m['random_sets_range'][2]:.3f})")
        for name in ("colour_vs_clean", "colour_vs_random"):
            d = m[name]
            print(f"  {name}: {d['difference']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f}), "
                  f"paired p {d['p']:.4f}")
        print(f"  colour set's rank among all sets of its size: p {m['colour_set_rank_p']:.3f}")
        alone = m["single_heads"].items()
        print("  each head alone: " + ", ".join(f"{name} {cell['rate']:.3f}" for name, cell in alone))
    for metric, rows in result["training_vs_held_out"].items():
        cells = ", ".join(f"L{layer}h{head} {c['difference']:+.3f} (p_bh {c['p_bh']:.3f})"
                          for layer, row in enumerate(rows) for head, c in enumerate(row))
        print(f"{metric}, training - held out: {cells}")
    roles = result["roles"]
    print("roles: " + "; ".join(f"{role['name']}: {', '.join(role['heads'])}" for role in roles["roles"])
          + "  (silhouettes " + ", ".join(f"k={k}: {v:.2f}" for k, v in roles["silhouettes"].items()) + ")")
    print(f"seconds: {result['seconds']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48, help="profiled prompts per set")
    parser.add_argument("--eval-prompts", type=int, default=80, help="prompts (and seeds) of the ablation runs")
    parser.add_argument("--colour-heads", type=int, default=2, help="how many heads to zero as the colour heads")
    parser.add_argument("--random-sets", type=int, default=0, help="other head sets to zero (0: every one)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--image", type=Path, help="save the colour-focus heat table (mean over prompts) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    toy = load_toy()
    transcoders = open_toy_transcoders()
    one_site = TranscoderSet.from_transcoders([transcoders["img", 0]])
    training = training_prompts(args.prompts, args.seed, usual=True)
    held_out = held_out_prompts(args.prompts, args.seed)
    seeds = list(range(args.prompts))
    profiles = {"training": sample_profiled(toy, one_site, training, seeds, args.steps),
                "held_out": sample_profiled(toy, one_site, held_out, seeds, args.steps)}
    seconds["profile"] = time.perf_counter() - began
    focus = {name: colour_focus(profile, training if name == "training" else held_out)
             for name, profile in profiles.items()}
    training_colour = focus["training"]["colour"].mean(1)  # [images, layers, heads], over steps
    ranked = sorted(((float(training_colour[:, layer, head].mean()), (layer, head))
                     for layer in range(training_colour.shape[1]) for head in range(training_colour.shape[2])),
                    reverse=True)
    colour_heads = frozenset(head for _, head in ranked[: args.colour_heads])
    all_heads = [head for _, head in sorted(ranked, key=lambda item: item[1])]
    mark = time.perf_counter()
    evaluation = training_prompts(args.eval_prompts, args.seed + 1, usual=True)
    ablation = ablation_arms(toy, evaluation, list(range(EVAL_SEED, EVAL_SEED + args.eval_prompts)), args.steps,
                             colour_heads, all_heads, args.random_sets, args.seed)
    seconds["ablation"] = time.perf_counter() - mark
    per_step = bootstrap_interval(focus["training"]["colour"], samples=BOOTSTRAP, seed=args.seed)
    result = {
        "settings": {"prompts": args.prompts, "eval_prompts": args.eval_prompts, "steps": args.steps,
                     "colour_heads": args.colour_heads, "seed": args.seed, "eval_seeds_from": EVAL_SEED},
        "colour_focus": {name: per_head(f["colour"].mean(1), args.seed) for name, f in focus.items()},
        "colour_focus_per_step": {"mean": per_step[0].tolist(), "ci_low": per_step[1].tolist(),
                                  "ci_high": per_step[2].tolist()},
        "shape_focus": per_head(focus["training"]["shape"].mean(1), args.seed),
        "colour_share_of_text": per_head(focus["training"]["colour_share_of_text"].mean(1), args.seed),
        "text_focus": per_head(profiles["training"].metric("text_focus").mean(1), args.seed),
        "ablation": ablation,
        "training_vs_held_out": set_comparison(profiles["training"], profiles["held_out"], args.seed),
        "roles": classify_heads(profiles["training"], seed=args.seed).to_dict(),
    }
    seconds["total"] = time.perf_counter() - began
    result["seconds"] = {name: round(value, 1) for name, value in seconds.items()}
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"figures: {args.json}")
    if args.image:
        table = render_head_table(per_step[0], [f"step {s}" for s in range(args.steps)],
                                  "colour focus: share of image queries' attention on the colour words")
        Image.fromarray((table[0].numpy() * 255).round().astype(np.uint8)).save(args.image)
        print(f"heat table: {args.image}")


if __name__ == "__main__":
    main()
