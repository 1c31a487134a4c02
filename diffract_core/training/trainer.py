"""A training run: several sites trained in one loop, resumable checkpoints, a metrics log, and the
result in the native format (with its training settings and metrics in each site's config).

Run folder:
    checkpoint/{stream}_{layer}.pt   per site: weights, AdamW state, dead-feature counters, step
    checkpoint/state.json            the step every site's checkpoint holds, and the settings
    metrics.jsonl                    one JSON line per site every `log_every` steps
    transcoders/                     the native release (`TranscoderSet.open` reads it)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptFileError, DiffractError
from ..file_reading import parse_json, read_regular_file
from ..file_writing import check_destination, replace_atomically, write_text_atomically
from ..transcoders.config import dtype_from_name
from ..transcoders.native import save_site, write_manifest
from ..transcoders.release import load_checkpoint
from ..transcoders.transcoder_set import SiteKey
from .distributed import DistributedPlan, plan_from_environment
from .evaluation import site_metrics
from .settings import TrainSettings
from .shards import ActivationShards, harvested_sites, site_dir_name, site_folder
from .site_trainer import SiteTrainer

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
RELEASE_DIR = "transcoders"
# Settings that may change between a checkpoint and its resumption without changing the result.
RESUMABLE_CHANGES = frozenset({"log_every", "checkpoint_every", "export_dtype"})
NO_RESUME = "pass --no-resume to start over in this run folder (or train into a new one)"
MAX_STATE_BYTES = 1 << 20
MAX_LOG_BYTES = 1 << 30

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainResult:
    out: Path
    step: int
    finished: bool
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> last logged metrics
    seconds: float = 0.0
    rows_per_second: float = 0.0  # token rows per second and site, this process


def train(
    data: Path,
    out: Path,
    settings: TrainSettings,
    *,
    sites: Sequence[SiteKey] | None = None,
    resume: bool = True,
    until_step: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train every site harvested under `data/train` (or `sites`) for `settings.steps` steps.

    With `resume`, a run folder that holds a checkpoint continues from it, bit-identically. With
    `until_step`, the run checkpoints and returns at that step (for time-limited jobs)."""
    data, out = Path(data), Path(out)
    if until_step is not None and until_step < 1:
        raise DiffractError(f"until_step must be at least 1, got {until_step}: it is the step to checkpoint and "
                            "stop at")
    check_destination(out, "the run folder")
    sites = list(sites) if sites is not None else harvested_sites(data, "train")
    plan = plan_from_environment(sites)
    try:
        return _train(data, out, settings, plan, resume=resume, until_step=until_step, device=device, progress=progress)
    finally:
        plan.close()


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _train(
    data: Path,
    out: Path,
    settings: TrainSettings,
    plan: DistributedPlan,
    *,
    resume: bool,
    until_step: int | None,
    device: str | torch.device | None,
    progress: Progress | None,
) -> TrainResult:
    target = settings.steps if until_step is None else min(until_step, settings.steps)
    shards = {site: ActivationShards(site_folder(data, "train", site)) for site in plan.groups}
    trainers = {
        site: SiteTrainer(site, shards[site].d_model, settings, group, device=_device(device),
                          model_family=shards[site].index.get("model", {}).get("family", "flux.1"))
        for site, group in plan.groups.items()
    }
    start = _resume(out, settings, trainers) if resume else 0
    if plan.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:  # starting over: a crash before the first checkpoint must not resume the old run
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        _trim_log(out, start)
    plan.barrier()
    batches = {
        site: shards[site].batches(settings.batch_size, seed=_data_seed(settings, site), start_step=start,
                                   mix_shards=settings.mix_shards)
        for site in trainers
    }
    result = TrainResult(out=out, step=start, finished=False)
    started = time.perf_counter()
    for step in range(start, target):
        for site, trainer in trainers.items():
            trainer.train_step(next(batches[site]))
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:  # an early stop keeps its window open
            for site, trainer in trainers.items():
                metrics = trainer.take_window()
                result.metrics[site_dir_name(site)] = metrics
                if trainer.group.is_leader:
                    _log(out, {"site": site_dir_name(site), "step": done, **metrics})
        if progress is not None and plan.is_main:
            progress(done, settings.steps, next(iter(result.metrics.values()), {}))
        if done % settings.checkpoint_every == 0 or done == target:
            _checkpoint(out, settings, plan, trainers, done)
    result.seconds = time.perf_counter() - started
    result.step = target
    result.rows_per_second = (target - start) * settings.batch_size / max(result.seconds, 1e-9)
    if target == settings.steps:
        _export(data, out, settings, plan, trainers)
        result.finished = True
    return result


def _data_seed(settings: TrainSettings, site: SiteKey) -> str:
    return f"{settings.seed}:{site[0]}:{site[1]}"


def _log(out: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record) + "\n").encode()
    descriptor = os.open(out / METRICS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, line)  # one append: lines from several ranks never interleave
    finally:
        os.close(descriptor)


def _trim_log(out: Path, step: int) -> None:
    """Keep the log lines up to the step the run starts from: a fresh start empties the log, and a
    resumed run drops lines logged after its checkpoint (they are logged again)."""
    path = out / METRICS_FILE
    if not path.exists():
        return
    kept = []
    if step > 0:
        text = read_regular_file(path, max_bytes=MAX_LOG_BYTES, fix=NO_RESUME).decode("utf-8", "replace")
        for number, line in enumerate(text.splitlines(keepends=True), start=1):
            record = parse_json(line, f"{path} line {number}", NO_RESUME)
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
                raise CorruptFileError(f"{path} line {number} is not a metrics record with a step; {NO_RESUME}")
            if record["step"] <= step:
                kept.append(line)
    write_text_atomically(path, "".join(kept))


def _checkpoint(out: Path, settings: TrainSettings, plan: DistributedPlan, trainers: dict[SiteKey, SiteTrainer],
                step: int) -> None:
    folder = out / CHECKPOINT_DIR
    if plan.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    plan.barrier()
    for site, trainer in trainers.items():
        if trainer.group.is_leader:
            replace_atomically(folder / f"{site_dir_name(site)}.pt", partial(torch.save, trainer.state_dict()))
    plan.barrier()
    if plan.is_main:
        state = {"step": step, "settings": settings.to_dict()}
        write_text_atomically(folder / STATE_FILE, json.dumps(state, indent=1) + "\n")
    plan.barrier()


def _resume(out: Path, settings: TrainSettings, trainers: dict[SiteKey, SiteTrainer]) -> int:
    state_path = out / CHECKPOINT_DIR / STATE_FILE
    if not state_path.exists():
        return 0
    text = read_regular_file(state_path, max_bytes=MAX_STATE_BYTES, fix=NO_RESUME)
    state = parse_json(text, str(state_path), NO_RESUME)
    if not (isinstance(state, dict) and _is_step(state.get("step")) and isinstance(state.get("settings"), dict)):
        raise CorruptFileError(f'{state_path} lacks "step" (an integer >= 0) or "settings" (an object); {NO_RESUME}')
    saved = state["settings"]
    changed = sorted(k for k, v in settings.to_dict().items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r:.40} -> {getattr(settings, k)!r}" for k in changed)
        raise DiffractError(
            f"{out} holds a checkpoint trained with other settings ({details}); resume with the same settings, "
            "or train into a new folder (or pass --no-resume to start over in this one)"
        )
    step = state["step"]
    for site, trainer in trainers.items():
        path = out / CHECKPOINT_DIR / f"{site_dir_name(site)}.pt"
        if not path.exists():
            raise DiffractError(f"{path} is missing: the checkpoint at step {step} is incomplete; {NO_RESUME}")
        checkpoint = load_checkpoint(path, NO_RESUME, map_location=trainer.device)
        try:
            trainer.load_state_dict(checkpoint)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            raise CorruptFileError(
                f"{path} is not a checkpoint of this run ({type(exc).__name__}: {exc!s:.200}); {NO_RESUME}"
            ) from exc
        if trainer.step != step:
            raise DiffractError(f"{path} holds step {trainer.step}, but {state_path} says {step}; {NO_RESUME}")
    return step


def _is_step(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _export(data: Path, out: Path, settings: TrainSettings, plan: DistributedPlan,
            trainers: dict[SiteKey, SiteTrainer]) -> None:
    """Write each site in the native format, with its training record and validation metrics."""
    release = out / RELEASE_DIR
    for site, trainer in trainers.items():
        if not trainer.group.is_leader:
            continue
        train_index = ActivationShards(site_folder(data, "train", site)).index
        validation = site_folder(data, "validation", site)
        record: dict[str, Any] = {
            "settings": settings.to_dict(),
            "steps": trainer.step,
            "rows_seen": trainer.step * settings.batch_size,
            "resampled_features": trainer.resampled,
            "dead_fraction_in_training": float(trainer.dead.float().mean()),
            "data": {"rows": train_index["rows"], "sigmas": train_index["sigmas"],
                     "harvest": train_index.get("harvest"), "model": train_index.get("model")},
        }
        transcoder = trainer.transcoder
        if (validation / "index.json").exists():
            record["validation"] = site_metrics(transcoder, ActivationShards(validation)).to_dict()
        config = replace(transcoder.config, training=record)
        dtype = dtype_from_name(settings.export_dtype)
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in transcoder.state_dict().items()}
        save_site(release, config, tensors, overwrite=True)
    plan.barrier()
    if plan.is_main:
        write_manifest(release, {"trained_by": "diffract_core train", "kind": settings.kind})
    plan.barrier()
