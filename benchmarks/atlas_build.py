"""Building a feature atlas, as a ratio to plain sampling of the same prompts, and its memory
against its cap.

Time: seconds per 100 prompts of `build_atlas` (every double-block MLP recorded, statistics, a
checkpoint after every batch, labels, crops, the atlas written) against plain sampling and decoding
of the same prompts in the same batches, in this process, the repeats interleaved. Memory: each
phase runs in a fresh child process; the figure is how far its peak resident memory rose above its
memory once the model was built. Plain sampling of the same prompts is the baseline; the build adds
its statistics and one batch's recording, which its cap bounds whatever the number of prompts (the
second pair of phases samples twice the prompts).
Weights are random (speed and memory do not depend on their values); the image decoder is a
stand-in that spreads the first three latent channels over 8 x 8 pixels, as FLUX's VAE upsamples.
`--toy` runs the embedded toy instead: its trained weights, transcoders, decoder and prompts.

    python benchmarks/atlas_build.py
    python benchmarks/atlas_build.py --toy --prompts 198 --batch 33
    python benchmarks/atlas_build.py --device cuda --hidden 3072 --heads 24 --depth 19 --features 49152 --pixels 1024
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flux_sizes import flux_config
from process_status import status_kib

from diffract_core.atlas import AtlasSettings, build_atlas
from diffract_core.atlas.sampling import ImageDecoder, batch_count, batch_prompt_ids
from diffract_core.flux import Flux, init_random_
from diffract_core.flux.sampling import euler_sample, flux_sigmas
from diffract_core.quickstart import random_transcoder
from diffract_core.training.harvest import HarvestSettings, prompt_noise
from diffract_core.training.prompts import HashingPromptEncoder, PromptEncoder
from diffract_core.transcoders import TranscoderSet

MIB = 2**20
WORDS = (("a", "two", "one", "the"), ("red", "blue", "green", "yellow", "purple", "orange"),
         ("circle", "square", "cat", "house", "tree", "car"), ("", "at night", "in the snow", "on a table"))


def grammar_prompts(count: int) -> list[str]:
    """`count` distinct prompts from a small grammar (a vocabulary for the word statistics)."""
    prompts = []
    for index in range(count):
        parts, rest = [], index
        for options in WORDS:
            parts.append(options[rest % len(options)])
            rest //= len(options)
        prompts.append(" ".join(p for p in parts if p) + (f" number {rest}" if rest else ""))
    return prompts


def stand_in_decode(latents: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(latents[:, :3].float()).repeat_interleave(8, -1).repeat_interleave(8, -2)


@dataclass(frozen=True)
class World:
    model: Flux
    encoder: PromptEncoder
    transcoders: TranscoderSet
    settings: AtlasSettings
    decode: ImageDecoder
    prompts: Callable[[int], list[str]]


def world(args: argparse.Namespace) -> World:
    torch.set_num_threads(args.threads)
    if args.toy:
        return toy_world(args)
    config = flux_config(args.hidden, args.heads, args.depth, args.single)
    device = torch.device(args.device)
    model = init_random_(Flux(config), seed=0).to(device).eval().requires_grad_(False)
    encoder = HashingPromptEncoder(config.context_in_dim, config.vec_in_dim, tokens=args.text_tokens)
    transcoders = TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=args.hidden, d_features=args.features, seed=layer)
        for layer in range(args.depth) for stream in ("img", "txt")
    ).to(device=device)
    size = args.pixels // 8
    settings = AtlasSettings(sampling=HarvestSettings(steps=args.steps, latent_size=(size, size),
                                                      prompts_per_call=args.batch), k=args.k, cap_mb=args.cap_mb)
    return World(model, encoder, transcoders, settings, stand_in_decode, grammar_prompts)


def toy_world(args: argparse.Namespace) -> World:
    """The embedded toy: its FLUX, text encoder, exact decoder, transcoders and the toy world's prompts."""
    from diffract_core.toy import codec
    from diffract_core.toy.embedded import load_toy, open_toy_transcoders
    from diffract_core.toy.generate import IMAGE_SIZE, STEPS
    from diffract_core.toy.scenes import all_prompts

    toy = load_toy()
    settings = AtlasSettings(sampling=HarvestSettings(steps=STEPS, latent_size=(IMAGE_SIZE // 2, IMAGE_SIZE // 2),
                                                      prompts_per_call=args.batch), k=args.k, cap_mb=args.cap_mb)
    world_prompts = all_prompts()

    def prompts(count: int) -> list[str]:
        # Past the world's 198 prompts, each comes again with a trailing "and": new conditioning, known words.
        return [world_prompts[i % len(world_prompts)] + " and" * (i // len(world_prompts)) for i in range(count)]

    return World(toy.flux, toy.text_encoder, open_toy_transcoders(), settings, codec.decode, prompts)


def plain_sampling(world: World, prompts: list[str]) -> None:
    """The same batches, noise and schedule as the build, without recording; decoded the same way."""
    model, sampling = world.model, world.settings.sampling
    parameters = next(model.parameters())
    for batch in range(batch_count(len(prompts), world.settings)):
        chunk = [prompts[i] for i in batch_prompt_ids(batch, len(prompts), world.settings)]
        noise = torch.stack([prompt_noise(p, sampling.seed, (model.config.latent_channels, *sampling.latent_size))
                             for p in chunk])
        context, pooled = world.encoder(chunk)
        latents = euler_sample(model, noise.to(parameters.device), context.to(parameters.device),
                               pooled.to(parameters.device), flux_sigmas(sampling.steps).to(parameters.device))
        world.decode(latents).cpu()


def build(world: World, prompts: list[str]) -> int:
    """Build into a throw-away folder; the bound of the build's own memory."""
    with tempfile.TemporaryDirectory() as folder:
        result = build_atlas(world.model, world.encoder, world.transcoders, prompts, Path(folder) / "atlas",
                             world.settings, decode=world.decode, resume=False)
    return result.budget.bound_bytes


def timing(args: argparse.Namespace) -> None:
    world_ = world(args)
    prompts = world_.prompts(args.prompts)
    plain, atlas = [], []
    with torch.inference_mode():
        plain_sampling(world_, prompts[: args.batch])  # warm-up
        for _ in range(args.repeats):
            started = time.perf_counter()
            plain_sampling(world_, prompts)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            build(world_, prompts)
            atlas.append(time.perf_counter() - started)
    per_100 = 100 / len(prompts)
    base, built = statistics.median(plain), statistics.median(atlas)
    sampling = world_.settings.sampling
    what = "the embedded toy" if args.toy else (f"hidden {args.hidden}, {args.depth} double blocks, F={args.features}, "
                                                f"{args.pixels} px")
    print(f"atlas build: {what}, {len(world_.transcoders)} sites, {len(prompts)} prompts x {sampling.steps} steps, "
          f"batch {args.batch}, k {args.k}, {args.device}")
    print(f"{'what':<34}{'s / 100 prompts':>16}{'time vs plain':>15}")
    print(f"{'plain sampling (baseline)':<34}{base * per_100:>16.2f}{1.0:>14.2f}x")
    print(f"{'atlas build':<34}{built * per_100:>16.2f}{built / base:>14.2f}x")


def _phase(args: argparse.Namespace, with_atlas: bool, prompt_count: int, queue: multiprocessing.Queue) -> None:
    world_ = world(args)
    prompts = world_.prompts(prompt_count)
    start = status_kib("VmRSS") * 1024  # the model is built; nothing has run yet
    with torch.inference_mode():
        bound = build(world_, prompts) if with_atlas else 0
        if not with_atlas:
            plain_sampling(world_, prompts)
    queue.put((status_kib("VmHWM") * 1024 - start, bound))


def memory(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    results = {}
    phases = (("sampling only (baseline)", False, args.prompts), ("atlas build", True, args.prompts),
              ("sampling only, twice the prompts", False, 2 * args.prompts),
              ("atlas build, twice the prompts", True, 2 * args.prompts))
    for label, with_atlas, prompt_count in phases:
        queue = context.Queue()
        child = context.Process(target=_phase, args=(args, with_atlas, prompt_count, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"the {label} phase failed (exit code {child.exitcode}); see its traceback above")
        results[label] = queue.get()
    bound = results["atlas build"][1]
    print(f"\nmemory: each phase in a fresh process; cap {args.cap_mb:.0f} MiB, "
          f"the build's bound {bound / MIB:.1f} MiB")
    print(f"{'phase':<34}{'peak rise MiB':>15}")
    for label, (rise, _) in results.items():
        print(f"{label:<34}{rise / MIB:>15.1f}")
    for label, baseline in (("atlas build", "sampling only (baseline)"),
                            ("atlas build, twice the prompts", "sampling only, twice the prompts")):
        rise = results[label][0] - results[baseline][0]
        print(f"{label}: rise over sampling the same prompts {rise / MIB:.1f} MiB = "
              f"{rise / (args.cap_mb * MIB):.2f} of the cap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true",
                        help="the embedded toy and its prompts (overrides the size options)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2, help="double blocks (each gives an img and a txt site)")
    parser.add_argument("--single", type=int, default=1)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--pixels", type=int, default=256, help="image side: pixels // 16 tokens per side")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--cap-mb", type=float, default=256.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=("time", "memory"), default=None, help="run one of the two parts")
    args = parser.parse_args()
    if args.only != "memory":
        timing(args)
    if args.only != "time":
        memory(args)


if __name__ == "__main__":
    main()
