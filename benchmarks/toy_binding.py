"""The binding benchmark on the embedded toy: circuit-guided steering against standard SAE steering,
transcoder features chosen without a circuit, random features, re-sampling and nothing, at matched
dose (diffract_core/toy/binding_benchmark.py says how).

    python benchmarks/toy_binding.py --json binding.json            # 1,600 held-out images
    python benchmarks/toy_binding.py --images 200 --bootstrap 200   # a quick look

Prints the toy's binding-error rate (with the shuffled-label control), one row per arm (fix rate at
the matched change inside the object with its 95 % interval, change outside, object right), the
fix rate of every arm at several levels, the paired tests, and the wall time of each phase.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import fields
from pathlib import Path

from diffract_core.toy.binding_benchmark import ARMS, BenchmarkReport, BenchmarkSettings, run_benchmark
from diffract_core.toy.embedded import load_toy, open_toy_saes, open_toy_transcoders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchmarkSettings()
    for f in fields(BenchmarkSettings):
        value = getattr(defaults, f.name)
        if isinstance(value, tuple):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.name == "doses" else int, nargs="+",
                                default=list(value))
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--arms", nargs="+", default=[arm.name for arm in ARMS], metavar="NAME",
                        help="arms to run (default: all): " + "; ".join(arm.name for arm in ARMS))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    unknown = sorted(set(args.arms) - {arm.name for arm in ARMS})
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {[arm.name for arm in ARMS]}")
    settings = BenchmarkSettings(**{f.name: tuple(getattr(args, f.name)) if isinstance(getattr(defaults, f.name), tuple)
                                    else getattr(args, f.name) for f in fields(BenchmarkSettings)})
    began = time.perf_counter()
    report = run_benchmark(load_toy(), {"transcoders": open_toy_transcoders(), "saes": open_toy_saes()}, settings,
                           arms=[arm for arm in ARMS if arm.name in args.arms])
    report.seconds["total"] = time.perf_counter() - began
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
        print(f"figures: {args.json}")


def _pct(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{100 * value:5.1f}%"


def print_report(report: BenchmarkReport) -> None:
    s = report.settings
    print(f"\n{report.images} held-out images: binding errors {report.binding_error_rate:.3f} "
          f"(shuffled labels {report.shuffled_binding_error_rate:.3f}); {len(report.cases)} errors steered, "
          f"img:{s.layer} features chosen at step {s.step}, k = {s.k}, doses {list(s.doses)}")
    print(f"matched dose: mean change inside the object = {report.level:.3f} (0..1 per channel)")
    print(f"{'arm':<28}{'fixed':>8}{'95% CI':>17}{'change out':>12}{'object right':>14}")
    for name, row in report.table.items():
        ci = f"{_pct(row['ci_low'])}..{_pct(row['ci_high'])}"
        note = "" if row["matched"] else f"   (as is: change inside {row['change_inside']:.3f})"
        print(f"{name:<28}{_pct(row['fixed']):>8}{ci:>17}{row['change_outside']:>12.4f}{_pct(row['object_right']):>14}{note}")
    print("\nfixed at other matched levels of change inside the object:")
    print(f"{'arm':<28}" + "".join(f"{level:>9}" for level in report.levels))
    for name, row in report.table.items():
        if row["matched"]:
            print(f"{name:<28}" + "".join(f"{_pct(row['fixed_at_levels'][str(level)]):>9}" for level in report.levels))
    print("\npaired tests (difference of fix rates at the matched dose, bootstrap over errors):")
    for name, test in report.tests.items():
        print(f"  {name:<52} {100 * test['difference']:+6.1f} points  "
              f"[{100 * test['ci_low']:+.1f}, {100 * test['ci_high']:+.1f}]  p = {test['p']:.3f}")
    total = report.seconds.get("total", sum(report.seconds.values()))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()) + f" (total {total / 60:.1f} min)")


if __name__ == "__main__":
    main()
