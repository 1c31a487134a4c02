"""The value gradient of frozen attention (P^T grad, `ReplacementModel._attend_transposed`) at FLUX's
head layout: the library's folded form (rows in the matmul's columns, one pass over the probabilities)
against the former broadcast form (the probabilities broadcast over the rows in chunks that shrink
as the rows grow), on the same inputs in one process, repeats interleaved; with the largest
difference between the two.

    python benchmarks/attention_transpose.py                 # 512 px, 8 and 64 rows, CPU
    python benchmarks/attention_transpose.py --device cuda --pixels 1024
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from diffract_core.attribution import ReplacementModel


def broadcast_transpose(model: SimpleNamespace, query: torch.Tensor, key: torch.Tensor,
                        grad: torch.Tensor) -> torch.Tensor:
    """The former code, kept here as the baseline."""
    out = torch.zeros_like(grad)
    for rows, probs in ReplacementModel._probabilities(model, query, key, grad.shape[0]):  # type: ignore[arg-type]
        out += torch.matmul(probs.transpose(-1, -2), grad[:, :, rows])
    return out


def folded_transpose(model: SimpleNamespace, layer: SimpleNamespace, grad: torch.Tensor) -> torch.Tensor:
    """The library's form, with the rows folded in and out again so both arms map [R, H, S, d] to the same."""
    rows, heads, length, dim = grad.shape
    folded = grad.permute(1, 2, 0, 3).reshape(heads, length, rows * dim)
    out = ReplacementModel._attend_transposed(model, layer, folded)  # type: ignore[arg-type]
    return out.reshape(heads, length, rows, dim).permute(2, 0, 1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    length = (args.pixels // 16) ** 2 + args.text_tokens
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, args.heads, length, args.head_dim, generator=generator).to(device)
    key = torch.randn(1, args.heads, length, args.head_dim, generator=generator).to(device)
    model = SimpleNamespace(dtype=torch.float32)
    model._probabilities = lambda q, k, r: ReplacementModel._probabilities(model, q, k, r)  # type: ignore[arg-type]
    layer = SimpleNamespace(query=query, key=key)
    print(f"device={device} threads={torch.get_num_threads()} heads={args.heads} head_dim={args.head_dim} "
          f"tokens={length} ({args.pixels} px + {args.text_tokens} text)")
    print(f"{'rows':>5} {'broadcast s':>12} {'folded s':>9} {'speed-up':>9} {'max |diff| / max':>17}")
    for rows in args.rows:
        grad = torch.randn(rows, args.heads, length, args.head_dim, generator=generator).to(device)
        arms = {"broadcast": lambda g=grad: broadcast_transpose(model, query, key, g),
                "folded": lambda g=grad: folded_transpose(model, layer, g)}
        outputs = {name: arm() for name, arm in arms.items()}  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                arm()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        old, new = (statistics.median(times[name]) for name in ("broadcast", "folded"))
        diff = float((outputs["broadcast"] - outputs["folded"]).abs().max() / outputs["broadcast"].abs().max())
        print(f"{rows:5d} {old:12.3f} {new:9.3f} {old / new:8.2f}x {diff:17.1e}", flush=True)


if __name__ == "__main__":
    main()
