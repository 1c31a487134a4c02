"""How right the toy atlas's labels are: the shipped `diffract-toy` atlas scored against the toy
world's ground truth (every pixel's colour, shape and slot; every prompt position's word). Prints,
per stream, the features that fired, the monosemantic share (one attribute holds >= --precision of
a feature's activation), how many carry a label (not "unclear"), the labelled features' mean
precision for what their label names, the share of monosemantic features that got a label, and how
many of those labels name their attribute.

    python benchmarks/toy_atlas_truth.py [--precision 0.9] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from diffract_core.atlas.toy_truth import evaluate_toy_atlas
from diffract_core.toy.embedded import load_toy, open_toy_transcoders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", type=float, default=0.9)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    transcoders = open_toy_transcoders()
    atlas = transcoders.atlas
    if atlas is None:
        raise SystemExit("the toy release has no atlas: python -m diffract_core atlas --release "
                         "diffract_core/toy/assets/diffract-toy "
                         "--prompts diffract_core/toy/assets/diffract-toy-prompts.txt")
    began = time.perf_counter()
    evaluation = evaluate_toy_atlas(atlas, load_toy(), transcoders, precision=args.precision)
    figures = evaluation.to_dict()
    print(f"{'stream':<8}{'fired':>7}{'monosemantic':>14}{'labelled':>10}{'label precision':>17}"
          f"{'mono. labelled':>16}{'their label right':>19}")
    for name, score in [*figures["streams"].items(), ("all", figures["total"])]:
        print(f"{name:<8}{score['features']:>7}{score['monosemantic_share']:>14.3f}{score['labelled']:>10}"
              f"{score['label_precision']:>17.3f}{score['coverage']:>16.3f}{score['label_accuracy']:>19.3f}")
    print(f"monosemantic features per kind of attribute: {figures['by_attribute']}")
    print(f"time: {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
