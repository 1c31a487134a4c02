"""Sampling with Record Features on every double-block MLP, as a ratio to plain sampling of the
same model in the same process, and the size of the recording.

The model is the library's reference FLUX (BFL block math, random weights) patched with the same
PatchedMLP the ComfyUI nodes install. Defaults fit a CPU; `--flux` runs FLUX.1's true dimensions
(hidden 3072, 19 + 38 blocks, F = 49152, a 1024 px image), which wants a GPU.

    python benchmarks/recording_overhead.py
    python benchmarks/recording_overhead.py --flux --dtype bf16
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from flux_sizes import FLUX1, flux_config
from timing import timed

from diffract_core.flux import Flux, init_random_
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import FeatureRecording, patch_reference_model
from diffract_core.transcoders import TranscoderSet, dtype_from_name

RELEASED_SITES = 34  # img and txt at layers 0-15 and 18
MIB = 2**20


def sampler(model: Flux, args: argparse.Namespace, device: torch.device,
            dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    cfg = model.config
    generator = torch.Generator().manual_seed(0)
    latent = args.pixels // 8
    noise = torch.randn(1, cfg.latent_channels, latent, latent, generator=generator).to(device, dtype)
    context = torch.randn(1, args.text_tokens, cfg.context_in_dim, generator=generator).to(device, dtype)
    pooled = torch.randn(1, cfg.vec_in_dim, generator=generator).to(device, dtype)
    sigmas = torch.linspace(1, 0, args.steps + 1)

    def run() -> torch.Tensor:
        x = noise
        for i in range(args.steps):
            velocity = model(x, sigmas[i : i + 1].to(device, dtype), context, pooled)
            x = x + (sigmas[i + 1] - sigmas[i]).item() * velocity
        return x

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flux", action="store_true", help="FLUX.1 dimensions (overrides the size options)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--features", type=int, default=8192)
    parser.add_argument("--pixels", type=int, default=512, help="image side: pixels // 16 tokens per side")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.flux:
        vars(args).update(FLUX1)
    device, dtype = torch.device(args.device), dtype_from_name(args.dtype)
    config = flux_config(args.hidden, args.heads, args.depth, args.single)
    model = init_random_(Flux(config), seed=0, std=0.02).to(device, dtype).eval().requires_grad_(False)
    transcoders = TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=args.hidden, d_features=args.features, seed=layer)
        for layer in range(args.depth)
        for stream in ("img", "txt")
    ).to(device=device, dtype=dtype)
    sample = sampler(model, args, device, dtype)
    tokens = (args.pixels // 16) ** 2
    print(
        f"device={args.device} threads={torch.get_num_threads()} dtype={args.dtype} hidden={args.hidden} "
        f"double={args.depth} single={args.single} F={args.features} image tokens={tokens} "
        f"text tokens={args.text_tokens} steps={args.steps} k={args.k} sites={len(transcoders)}"
    )
    print(f"{'what':34} {'seconds':>9} {'time / plain':>13}", flush=True)
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=args.k)
    with torch.inference_mode():
        plain = timed(sample, args.repeats, device)
        print(f"{'plain sampling (baseline)':34} {plain:9.3f} {1.0:12.2f}x", flush=True)
        for mode in ("observe", "replace"):
            with patch_reference_model(model, transcoders, mode=mode, recording=recording):

                def run() -> None:
                    recording.start_run(torch.linspace(1, 0, args.steps + 1))
                    sample()

                seconds = timed(run, args.repeats, device)
            print(f"{f'recording all sites ({mode})':34} {seconds:9.3f} {seconds / plain:12.2f}x", flush=True)
    per_site_step = recording.nbytes / (len(transcoders) * args.steps)
    print(f"recording size: {recording.nbytes / MIB:.1f} MiB for {len(transcoders)} sites x {args.steps} steps")
    full = (tokens + args.text_tokens) * args.k * 6 * RELEASED_SITES * args.steps  # int32 index + fp16 value
    print(
        f"per site and step: {per_site_step / MIB:.2f} MiB; all {RELEASED_SITES} released sites at these token "
        f"counts: {full / MIB:.1f} MiB"
    )


if __name__ == "__main__":
    main()
