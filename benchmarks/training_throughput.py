"""Transcoder training throughput for one site at FLUX dimensions, and the harvest's RAM peak
against its cap.

Training: token rows per second of full optimizer steps (forward, backward, AdamW, decoder
renormalisation, dead-feature tracking) for one site, as a ratio to a forward and backward pass of
the dense FLUX MLP on the same rows, in this process. Harvest: each phase runs in a fresh child
process; the figure is how far the process's peak resident memory rose above its memory once the
model was built. Sampling alone is the baseline; the harvest adds its buffers, which the cap
bounds whatever the amount of data (a second harvest samples twice the prompts). Weights are random
(speed and memory do not depend on their values).

    python benchmarks/training_throughput.py                    # D=3072, F=49152, batch 512 (CPU-sized)
    python benchmarks/training_throughput.py --device cuda --batch 4096
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from pathlib import Path

import torch
from flux_sizes import FLUX1, flux_config
from process_status import status_kib
from timing import timed
from torch import nn

from diffract_core.flux import Flux, init_random_
from diffract_core.flux.sampling import euler_sample, flux_sigmas
from diffract_core.training.distributed import SiteGroup
from diffract_core.training.harvest import HarvestSettings, harvest
from diffract_core.training.prompts import HashingPromptEncoder, PromptSplit
from diffract_core.training.settings import TrainSettings
from diffract_core.training.shards import Batch
from diffract_core.training.site_trainer import SiteTrainer


def training(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = args.batch
    batch = Batch(torch.randn(rows, args.d_model), torch.randn(rows, args.d_model), torch.rand(rows))
    mlp = nn.Sequential(nn.Linear(args.d_model, 4 * args.d_model), nn.GELU(approximate="tanh"),
                        nn.Linear(4 * args.d_model, args.d_model)).to(device)
    x = batch.x.to(device)

    def mlp_step() -> None:
        mlp(x).square().mean().backward()

    settings = TrainSettings(d_features=args.features, batch_size=rows, steps=10**6, resample_every=0)
    trainer = SiteTrainer(("img", 0), args.d_model, settings, SiteGroup((0,), 0), device=device)
    baseline = timed(mlp_step, args.repeats, device)
    step = timed(lambda: trainer.train_step(batch), args.repeats, device)
    print(f"training one site: D={args.d_model}, F={args.features}, batch {rows} rows, fp32, {device}")
    print(f"{'what':<44}{'rows/s':>12}{'time vs MLP':>14}")
    print(f"{'dense FLUX MLP forward+backward (baseline)':<44}{rows / baseline:>12,.0f}{1.0:>13.2f}x")
    print(f"{'transcoder training step':<44}{rows / step:>12,.0f}{step / baseline:>13.2f}x")


def _phase(args: argparse.Namespace, with_harvest: bool, prompt_count: int, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(args.threads)
    config = flux_config(args.hidden, args.heads, args.depth, 1)
    model = init_random_(Flux(config), seed=0).eval().requires_grad_(False)
    encoder = HashingPromptEncoder(config.context_in_dim, config.vec_in_dim, tokens=args.text_tokens)
    prompts = tuple(f"prompt number {i}" for i in range(prompt_count))
    size = args.pixels // 8
    settings = HarvestSettings(latent_size=(size, size), prompts_per_call=args.per_call, ram_cap_mb=args.cap_mb,
                               steps=4)
    start = status_kib("VmRSS") * 1024  # the model is built; nothing has run yet
    report = None
    if with_harvest:
        with tempfile.TemporaryDirectory() as folder:
            report = harvest(model, encoder, PromptSplit(prompts, ()), Path(folder), settings)
    else:
        for first in range(0, len(prompts), args.per_call):
            chunk = prompts[first : first + args.per_call]
            context, pooled = encoder(chunk)
            euler_sample(model, torch.randn(len(chunk), config.latent_channels, size, size), context, pooled,
                         flux_sigmas(4))
    queue.put((status_kib("VmHWM") * 1024 - start, report.reserved_bytes if report else 0,
               report.bound_bytes if report else 0, sum(report.rows["train"].values()) if report else 0))


def harvest_memory(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    results = {}
    phases = (("sampling only (baseline)", False, args.prompts), ("harvest", True, args.prompts),
              ("harvest, twice the prompts", True, 2 * args.prompts))
    for label, with_harvest, prompt_count in phases:
        queue = context.Queue()
        child = context.Process(target=_phase, args=(args, with_harvest, prompt_count, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"the {label} phase failed (exit code {child.exitcode}); see its traceback above")
        results[label] = queue.get()
    mib = 2**20
    print(f"\nharvest: hidden {args.hidden}, {args.depth} double blocks + 1 single "
          f"(both streams: {2 * args.depth} sites), "
          f"{args.prompts} prompts x 4 steps at {args.pixels} px, cap {args.cap_mb:.0f} MiB")
    print(f"{'phase':<28}{'peak rise MiB':>15}{'buffers MiB':>13}{'bound MiB':>11}{'rows':>11}")
    for label, (rise, reserved, bound, rows) in results.items():
        print(f"{label:<28}{rise / mib:>15.1f}{reserved / mib:>13.1f}{bound / mib:>11.1f}{rows:>11,}")
    for label in ("harvest", "harvest, twice the prompts"):
        rise = results[label][0] - results["sampling only (baseline)"][0]
        print(f"{label}: rise over the baseline {rise / mib:.1f} MiB = {rise / (args.cap_mb * mib):.2f} of the cap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-model", type=int, default=FLUX1["hidden"])
    parser.add_argument("--features", type=int, default=FLUX1["features"])
    parser.add_argument("--batch", type=int, default=512, help="rows per step (the paper: 4096; CPU: smaller)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=FLUX1["hidden"], help="harvest model width")
    parser.add_argument("--heads", type=int, default=FLUX1["heads"])
    parser.add_argument("--depth", type=int, default=1, help="harvest model double blocks")
    parser.add_argument("--pixels", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--per-call", type=int, default=4)
    parser.add_argument("--cap-mb", type=float, default=256.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=("training", "harvest"), default=None, help="run one of the two parts")
    args = parser.parse_args()
    if args.only != "harvest":
        training(args)
    if args.only != "training":
        harvest_memory(args)


if __name__ == "__main__":
    main()
