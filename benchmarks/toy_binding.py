"""Binding on the embedded toy's held-out prompt set, and what steering does to its binding errors.

Every held-out prompt is sampled once per seed with all double-block MLPs recorded. For each image
where a shape came out in another colour, the wrong colour's feature is traced over the object's
region (diffract_core/toy/repair.py), and the image is re-sampled from the same noise four times:
  circuit:          the circuit's top --top features (text and image) scaled by --strength where they fired;
  circuit in object: its top --top image features, the same strength, inside the object only;
  single feature:   the traced feature alone, the same strength, inside the object;
  random features:  --top features drawn at random among those active in the object, the same way
                    (the control: what any strong edit of the object does).
All at every step (or --traced-step-only). Other images are left as they were. The table gives the
prompt set's binding score with each (as a ratio to no steering), the errors each fixed, and how
much each changed the image inside and outside the target object (precision: the inside share of
the per-pixel change).

    python benchmarks/toy_binding.py                 # 240 images
    python benchmarks/toy_binding.py --images 24
"""

from __future__ import annotations

import argparse
import time

import torch

from diffract_core.recording import FeatureRecording
from diffract_core.toy.binding import score_binding
from diffract_core.toy.embedded import load_toy, open_toy_transcoders
from diffract_core.toy.generate import generate, toy_noise
from diffract_core.toy.repair import RepairSettings, binding_errors, colour_selectivity, repair
from diffract_core.toy.scenes import held_out_prompts

CONDITIONS = ("none", "circuit", "circuit in object", "single feature", "random features")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240, help="held-out prompts sampled (one seed each)")
    parser.add_argument("--batch", type=int, default=48, help="images sampled and recorded together")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--layer", type=int, default=RepairSettings.layer)
    parser.add_argument("--step", type=int, default=RepairSettings.step)
    parser.add_argument("--top", type=int, default=RepairSettings.top)
    parser.add_argument("--strength", type=float, default=RepairSettings.strength)
    parser.add_argument("--budget", type=int, default=RepairSettings.budget)
    parser.add_argument("--traced-step-only", action="store_true", help="steer at the traced step only")
    args = parser.parse_args()
    settings = RepairSettings(layer=args.layer, step=args.step, budget=args.budget, top=args.top, strength=args.strength,
                              steps="traced step" if args.traced_step_only else "all steps")

    model, transcoders = load_toy(), open_toy_transcoders()
    control = torch.Generator().manual_seed(args.seed)
    prompts = held_out_prompts(args.images, seed=args.seed)
    seeds = [args.seed * 100_000 + i for i in range(len(prompts))]
    scores: dict[str, list[float]] = {name: [] for name in CONDITIONS}
    fixed = {name: 0 for name in CONDITIONS[1:]}
    inside: dict[str, list[float]] = {name: [] for name in CONDITIONS[1:]}
    outside: dict[str, list[float]] = {name: [] for name in CONDITIONS[1:]}
    errors_seen = 0
    seconds = {"sample and record": 0.0, "trace and steer": 0.0}
    for start in range(0, len(prompts), args.batch):
        batch_prompts = prompts[start : start + args.batch]
        noise = toy_noise(seeds[start : start + args.batch])
        began = time.perf_counter()
        recording = FeatureRecording(sites=tuple(transcoders.sites), k=16, keep_input_steps=frozenset({settings.step}))
        images = generate(model, batch_prompts, noise, transcoders=transcoders, recording=recording)
        per_image = [score_binding(image, prompt) for prompt, image in zip(batch_prompts, images)]
        seconds["sample and record"] += time.perf_counter() - began
        began = time.perf_counter()
        batch_scores = {name: [s.score for s in per_image] for name in CONDITIONS}
        errors = binding_errors(per_image)
        errors_seen += len(errors)
        selectivity = colour_selectivity(recording, per_image, settings.layer, settings.step) if errors else None
        for error in errors:
            result = repair(model, transcoders, recording, error, selectivity, noise[error.index : error.index + 1],
                            images[error.index], settings, control=control)
            for name, outcome in result.outcomes.items():
                batch_scores[name][error.index] = outcome.score_after
                fixed[name] += outcome.fixed
                inside[name].append(outcome.change_inside)
                outside[name].append(outcome.change_outside)
        seconds["trace and steer"] += time.perf_counter() - began
        for name in CONDITIONS:
            scores[name] += batch_scores[name]
        print(f"[{min(start + args.batch, len(prompts))}/{len(prompts)}] binding errors so far: {errors_seen}", flush=True)

    n = len(prompts)
    where = "at the traced step" if args.traced_step_only else "at every step"
    print(f"\nheld-out prompt set: {n} images, {errors_seen} binding errors (a shape in another colour); steered: "
          f"top {args.top} circuit features (where they fired / image ones in the object) / the traced feature / "
          f"{args.top} random active features, scale "
          f"{args.strength:g} {where}; traced: img:{args.layer} at step {args.step}")
    print(f"{'steering':<18}{'binding score':>14}{'vs none':>9}{'errors fixed':>14}{'change in':>11}{'change out':>12}"
          f"{'precision':>11}")
    base = sum(scores["none"]) / n
    for name in CONDITIONS:
        score = sum(scores[name]) / n
        row = f"{name:<18}{score:>14.4f}{score / base if base else float('nan'):>8.3f}x"
        if name == "none":
            print(row)
            continue
        mean_in = sum(inside[name]) / max(len(inside[name]), 1)
        mean_out = sum(outside[name]) / max(len(outside[name]), 1)
        precision = mean_in / (mean_in + mean_out) if mean_in + mean_out > 0 else float("nan")
        print(f"{row}{f'{fixed[name]}/{errors_seen}':>14}{mean_in:>11.4f}{mean_out:>12.4f}{precision:>11.3f}")
    total = sum(seconds.values())
    print("time: " + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
