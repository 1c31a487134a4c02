"""Transcoder encode throughput at FLUX dimensions, as a ratio to the dense FLUX MLP it replaces.

Both run in this process on the same tokens, so the ratio is meaningful on a noisy machine even
when the absolute numbers are not. Weights are random (speed does not depend on their values).

    python benchmarks/transcoder_throughput.py                 # D=3072, F=49152, 4096 tokens, fp32 and bf16
    python benchmarks/transcoder_throughput.py --tokens 1024 --dtypes bf16
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
from timing import timed
from torch import nn

from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import dtype_from_name


def flux_mlp(d_model: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d_model))


def run(args: argparse.Namespace) -> Iterator[tuple[str, str, float, float]]:
    """(dtype, what, tokens per second, time relative to the dense MLP), one case at a time."""
    device = torch.device(args.device)
    for dtype_label in args.dtypes:
        yield from run_dtype(args, dtype_label, device)


def run_dtype(args: argparse.Namespace, dtype_label: str,
              device: torch.device) -> Iterator[tuple[str, str, float, float]]:
    """run() for one dtype; its weights and tokens are freed when it finishes, before the next dtype's."""
    dtype = dtype_from_name(dtype_label)
    torch.manual_seed(0)
    mlp = flux_mlp(args.d_model, args.mlp_hidden).to(device=device, dtype=dtype).requires_grad_(False)
    transcoder = random_transcoder("img", 0, d_model=args.d_model, d_features=args.features)
    transcoder = transcoder.to(device=device, dtype=dtype).requires_grad_(False)
    x = torch.randn(args.tokens, args.d_model, device=device, dtype=dtype)
    cases = {
        "encode (z and pre-activations)": lambda: transcoder.encode(x, 0.5),
        f"encode_topk (k={args.k})": lambda: transcoder.encode_topk(x, 0.5, args.k),
        "forward (encode + decode)": lambda: transcoder(x, 0.5),
    }
    with torch.inference_mode():
        baseline = timed(lambda: mlp(x), args.repeats, device)
        yield dtype_label, "dense MLP (baseline)", args.tokens / baseline, 1.0
        for name, fn in cases.items():
            seconds = timed(fn, args.repeats, device)
            yield dtype_label, name, args.tokens / seconds, seconds / baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=3072)
    parser.add_argument("--features", type=int, default=49152)
    parser.add_argument("--mlp-hidden", type=int, default=12288)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"D={args.d_model} F={args.features} MLP hidden={args.mlp_hidden} tokens={args.tokens}"
    )
    print(f"{'dtype':6} {'what':34} {'tokens/s':>12} {'time / dense MLP':>17}", flush=True)
    for dtype_label, name, throughput, ratio in run(args):
        print(f"{dtype_label:6} {name:34} {throughput:12.0f} {ratio:16.2f}x", flush=True)


if __name__ == "__main__":
    main()
