"""The commands behind `python -m diffract_core harvest | train | evaluate | sweep --config FILE`."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import DiffractError
from ..flux.model import Flux
from ..render.plot import line_chart, side_by_side
from ..transcoders.transcoder_set import TranscoderSet
from .config_file import RunConfig
from .evaluation import SiteMetrics, site_metrics, spliced_fidelity
from .harvest import HarvestReport, harvest
from .prompts import PromptEncoder
from .settings import TrainSettings
from .shards import INDEX_FILE, ActivationShards, site_folder
from .trainer import RELEASE_DIR, Progress, TrainResult, train

EVALUATION_FILE = "evaluation.json"


def is_harvested(config: RunConfig) -> bool:
    return (config.data / "train").is_dir() and any((config.data / "train").glob(f"*/{INDEX_FILE}"))


def run_harvest(config: RunConfig, progress: Callable[[int, int], None] | None = None) -> HarvestReport:
    if config.data.exists() and any(config.data.iterdir()):
        raise DiffractError(f"{config.data} is not empty: harvest into a new folder (set `data` in the config)")
    model = config.model.build()
    encoder = config.encoder.build(model.config, config.model)
    return harvest(model, encoder, config.prompts.split(), config.data, config.harvest, progress=progress,
                   model_info=config.model.describe())


def run_train(config: RunConfig, *, out: Path | None = None, resume: bool = True, until_step: int | None = None,
              progress: Progress | None = None, harvest_progress: Callable[[int, int], None] | None = None,
              settings_override: dict[str, Any] | None = None) -> TrainResult:
    if not is_harvested(config):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DiffractError(
                f"{config.data} holds no activations; harvest once before a multi-process run: "
                "`python -m diffract_core harvest --config FILE`"
            )
        run_harvest(config, progress=harvest_progress)
    settings = replace(config.train, **(settings_override or {}))
    return train(config.data, out or config.out, settings, sites=config.harvest.sites, resume=resume,
                 until_step=until_step, progress=progress)


@dataclass
class EvaluationReport:
    sites: list[SiteMetrics]
    spliced: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"sites": [s.to_dict() for s in self.sites], "spliced": self.spliced}


def run_evaluate(config: RunConfig, transcoders: Path | None = None, *,
                 generator: tuple[Flux, PromptEncoder] | None = None) -> EvaluationReport:
    """Per-site metrics on the validation activations, and the spliced-in generation test on the
    validation prompts; written to `<transcoders>/../evaluation.json`. The stored weights (fp32 or
    half precision) are evaluated in fp32. `generator`: the config's model and encoder, already
    built (a sweep builds them once)."""
    folder = Path(transcoders or config.out / RELEASE_DIR)
    kind = config.train.kind
    sets = TranscoderSet.open(folder, kind=kind).to(dtype=torch.float32)
    sites = []
    for site in sets.sites:
        shards = site_folder(config.data, "validation", site)
        if not (shards / INDEX_FILE).exists():
            raise DiffractError(
                f"no validation activations for {site[0]}:{site[1]} under {config.data}: harvest with "
                "[prompts] validation_fraction > 0"
            )
        sites.append(site_metrics(sets[site], ActivationShards(shards), sigma_buckets=config.evaluate.sigma_buckets))
    spliced = None
    count = config.evaluate.spliced_prompts
    if count:
        prompts = config.prompts.split().validation[:count]
        if not prompts:
            raise DiffractError("no validation prompts for the spliced-in test: raise [prompts] validation_fraction")
        model, encoder = generator or build_generator(config)
        sets = sets.to(device=next(model.parameters()).device)
        spliced = spliced_fidelity(model, encoder, sets, prompts, config.harvest).to_dict()
    report = EvaluationReport(sites, spliced)
    (folder.parent / EVALUATION_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report


def build_generator(config: RunConfig) -> tuple[Flux, PromptEncoder]:
    model = config.model.build()
    return model, config.encoder.build(model.config, config.model)


def format_evaluation(report: EvaluationReport) -> str:
    lines = ["site     kind         rows       FVU      L0   L0/F    dead  FVU per sigma bucket"]
    for m in report.sites:
        buckets = "  ".join(f"{label} {v['fvu']:.3f}" for label, v in m.fvu_by_sigma.items())
        lines.append(f"{m.site:<8} {m.kind:<11} {m.rows:>7} {m.fvu:>9.4f} {m.l0:>7.1f} {m.l0_fraction:>6.3f} "
                     f"{m.dead_fraction:>7.3f}  {buckets}")
    if report.spliced:
        s = report.spliced
        lines.append(f"spliced-in (all sites replaced, no error term), {s['prompts']} validation prompts: "
                     f"final-latent cosine {s['latent_cosine']:.4f}, MSE {s['latent_mse']:.4g}")
    return "\n".join(lines)


@dataclass
class SweepPoint:
    kind: str
    l1_scale: float
    stream: str  # the sites of one stream: image and text sites differ too much to average together
    l0: float  # mean over the stream's sites
    fvu: float  # mean over the stream's sites
    latent_cosine: float | None  # the run's spliced-in test (every site of both streams replaced)
    latent_mse: float | None


def run_sweep(config: RunConfig, progress: Progress | None = None) -> list[SweepPoint]:
    """Train each kind at each L1 scale on the same activations, evaluate, and write
    `out/sweep/sweep.{md,json,png}`."""
    folder = config.out / "sweep"
    generator = build_generator(config) if config.evaluate.spliced_prompts else None
    points = []
    for kind in config.sweep.kinds:
        for scale in config.sweep.scales(kind):
            run = folder / f"{kind}_l1x{scale:g}"
            override = sweep_override(config.train, kind, scale, config.sweep.steps or config.train.steps)
            run_train(config, out=run, progress=progress, settings_override=override)
            kind_config = replace(config, train=replace(config.train, **override))
            report = run_evaluate(kind_config, run / RELEASE_DIR, generator=generator)
            spliced = report.spliced or {}
            for stream in sorted({m.site.split("_")[0] for m in report.sites}):
                sites = [m for m in report.sites if m.site.split("_")[0] == stream]
                points.append(SweepPoint(
                    kind=kind, l1_scale=scale, stream=stream,
                    l0=sum(m.l0 for m in sites) / len(sites), fvu=sum(m.fvu for m in sites) / len(sites),
                    latent_cosine=spliced.get("latent_cosine"), latent_mse=spliced.get("latent_mse"),
                ))
    write_sweep(folder, points)
    return points


SCHEDULED = ("lr_warmup_steps", "l1_warmup_steps", "dead_after_steps", "resample_every")


def sweep_override(train: TrainSettings, kind: str, scale: float, steps: int) -> dict[str, Any]:
    """The settings of one sweep point: `kind` at `scale` times the L1, trained `steps` steps, with the
    step schedules (warm-ups, dead-feature window, resampling) scaled by steps / train.steps so that a
    shorter sweep run goes through the same phases as the full run (an L1 warm-up longer than the run
    would leave every point at a fraction of its L1)."""
    ratio = steps / train.steps
    scheduled = {name: max(1, round(getattr(train, name) * ratio)) if getattr(train, name) else 0 for name in SCHEDULED}
    return {"kind": kind, "l1_img": train.l1_img * scale, "l1_txt": train.l1_txt * scale, "steps": steps, **scheduled}


def matched_fvu(points: list[SweepPoint], kind: str, stream: str, l0: float) -> float | None:
    """`kind`'s FVU on `stream` at this L0, interpolated linearly in log L0 between its two nearest
    points (None outside the range it covers)."""
    curve = sorted((p.l0, p.fvu) for p in points if p.kind == kind and p.stream == stream and p.l0 > 0)
    for (l0_a, fvu_a), (l0_b, fvu_b) in itertools.pairwise(curve):
        if l0_a <= l0 <= l0_b:
            weight = 0.0 if l0_b == l0_a else (math.log(l0) - math.log(l0_a)) / (math.log(l0_b) - math.log(l0_a))
            return fvu_a + weight * (fvu_b - fvu_a)
    return None


def write_sweep(folder: Path, points: list[SweepPoint]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["| kind | stream | L1 scale | L0 | FVU | SAE FVU at this L0 | final-latent cosine | final-latent MSE |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        matched = matched_fvu(points, "sae", p.stream, p.l0) if p.kind == "transcoder" else None
        cells = [p.kind, p.stream, f"{p.l1_scale:g}", f"{p.l0:.2f}", f"{p.fvu:.4f}",
                 "" if matched is None else f"{matched:.4f}",
                 "" if p.latent_cosine is None else f"{p.latent_cosine:.4f}",
                 "" if p.latent_mse is None else f"{p.latent_mse:.4g}"]
        lines.append("| " + " | ".join(cells) + " |")
    (folder / "sweep.md").write_text("\n".join(lines) + "\n")
    (folder / "sweep.json").write_text(json.dumps([p.__dict__ for p in points], indent=1) + "\n")
    series = sorted({(p.kind, p.stream) for p in points})
    charts = [line_chart({f"{k} ({s})": [(p.l0, p.fvu) for p in points if (p.kind, p.stream) == (k, s) and p.l0 > 0]
                          for k, s in series},
                         title="Sparsity vs reconstruction (validation)", x_label="L0 (active features per token)",
                         y_label="FVU", log_x=True)]
    if all(p.latent_cosine is not None for p in points):
        kinds = sorted({p.kind for p in points})
        runs = {k: sorted({(p.l1_scale, p.latent_cosine) for p in points if p.kind == k}) for k in kinds}
        mean_l0 = {(p.kind, p.l1_scale): sum(q.l0 for q in points if (q.kind, q.l1_scale) == (p.kind, p.l1_scale))
                   / sum(1 for q in points if (q.kind, q.l1_scale) == (p.kind, p.l1_scale)) for p in points}
        charts.append(line_chart({k: [(mean_l0[k, scale], cosine) for scale, cosine in runs[k] if mean_l0[k, scale] > 0]
                                  for k in kinds},
                                 title="Spliced-in generations", x_label="L0 (mean over the streams)",
                                 y_label="final-latent cosine", log_x=True))
    side_by_side(charts).save(folder / "sweep.png")
