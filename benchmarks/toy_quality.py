"""How well the embedded toy draws its world: each prompt set (one object / two objects; training /
held out) sampled once per prompt and scored, with 95 % Wilson intervals and, for two objects, the
shuffled-label control of binding errors; and a 4x contact sheet per set.

    python benchmarks/toy_quality.py --count 192 --sheets DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from diffract_core.toy.embedded import load_toy
from diffract_core.toy.quality import contact_sheet, measure_quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=192, help="prompts per set (a third of it for held-out singles)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheets", type=Path, help="write a 4x contact sheet of each set's first 32 images here")
    args = parser.parse_args()
    began = time.perf_counter()
    results = measure_quality(load_toy(), args.count, args.seed)
    seconds = time.perf_counter() - began
    print(f"{'prompt set':<40}{'images':>7}{'objects right':>15}{'all right (95% CI)':>26}"
          f"{'binding errors (95% CI)':>30}{'shuffled':>10}")
    for result in results:
        row = result.row()
        low, high = row["all_right_ci"]
        b_low, b_high = row["binding_errors_ci"]
        shuffled = "" if row["shuffled_binding_errors"] is None else f"{row['shuffled_binding_errors']:.3f}"
        binding = ("" if row["shuffled_binding_errors"] is None
                   else f"{row['binding_errors']:.3f} ({b_low:.3f}-{b_high:.3f})")
        right = f"{row['all_right']:.3f} ({low:.3f}-{high:.3f})"
        print(f"{row['set']:<40}{row['images']:>7}{row['objects_right']:>15.3f}{right:>26}{binding:>30}{shuffled:>10}")
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            name = row["set"].replace(",", "").replace("(", "").replace(")", "").replace(" ", "-")
            contact_sheet(result.images[:32], result.prompts[:32]).save(args.sheets / f"{name}.png")
    print(f"time: {seconds:.0f} s")


if __name__ == "__main__":
    main()
