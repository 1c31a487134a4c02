"""Harvest (MLP input x, pre-gate MLP output y, sigma) rows from sampling runs, to disk.

`capture_mlp_io` is the harvest's host adapter of the call lifecycle (recording/lifecycle.py): a
pre-hook publishes each call and forward hooks on the sites' MLPs (`Site.module_path`) read their
input and output; it works on any module with FLUX's BFL names, the library's reference `Flux` and
ComfyUI's `diffusion_model` alike. `harvest` drives the
reference model through Euler sampling over a prompt list and streams the rows into shards with a
fixed RAM budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DiffractError, SettingsError, UnsupportedModelError
from ..file_writing import check_destination
from ..flux.model import Flux
from ..flux.sampling import euler_sample, flux_sigmas
from ..recording.lifecycle import end_call, flux_call, publish_call
from ..recording.patched_mlp import CallContext
from ..seeding import seeded_generator
from ..transcoders.config import STREAMS, Site, dtype_from_name
from ..transcoders.transcoder_set import SiteKey
from .prompts import PromptEncoder, PromptSplit
from .shards import ShardWriter, site_folder

RowsCallback = Callable[[SiteKey, torch.Tensor, torch.Tensor, torch.Tensor], None]
PROMPTS_FILE = "prompts.json"


def mlp_module(model: nn.Module, site: SiteKey) -> nn.Module:
    site = Site(*site)
    blocks = getattr(model, "double_blocks", None)
    if blocks is None or site.stream not in STREAMS:
        raise UnsupportedModelError(
            f"cannot find {site.module_path}: the model is not a FLUX MM-DiT with BFL / ComfyUI "
            "parameter names (pass the diffusion model itself, e.g. model.model.diffusion_model in ComfyUI)"
        )
    if not 0 <= site.layer < len(blocks):
        raise DiffractError(f"layer {site.layer} does not exist: the model has double blocks 0..{len(blocks) - 1}")
    return model.get_submodule(site.module_path)


@contextmanager
def capture_mlp_io(model: nn.Module, sites: Iterable[SiteKey], on_rows: RowsCallback) -> Iterator[None]:
    """While the block runs, every call of `model` passes `on_rows(site, x, y, sigmas)` for each
    site: x and y of shape [batch, tokens, d_model], sigmas [batch] (the timestep the model got)."""
    sites = tuple(sites)
    modules = {site: mlp_module(model, site) for site in sites}
    context = CallContext()
    patch_size = int(getattr(getattr(model, "config", None), "patch_size", getattr(model, "patch_size", 2)))

    def publish(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        publish_call(context, *flux_call(args, kwargs), patch_size)

    def make_hook(site: SiteKey) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if context.sigmas is None:
                raise DiffractError("an MLP ran outside a model call: call the model itself, not a block")
            on_rows(site, args[0].detach(), output.detach(), context.sigmas)

        return hook

    handles = [model.register_forward_pre_hook(publish, with_kwargs=True)]
    try:
        handles += [module.register_forward_hook(make_hook(site)) for site, module in modules.items()]
        yield
    finally:
        for handle in handles:
            handle.remove()
        end_call(context)


@dataclass(frozen=True)
class HarvestSettings:
    """How activations are collected (every field is a key of the config file's `[harvest]`)."""

    sites: tuple[SiteKey, ...] | None = None  # e.g. "img:0-3, txt:0"; unset or "all": every double-block MLP
    steps: int = 4  # sampling steps per prompt (schnell: 4)
    shift: float = 1.0  # sigma-schedule shift (1: schnell's linear schedule; dev uses > 1)
    keep_steps: tuple[int, ...] | None = None  # which steps' calls are kept (None: all)
    latent_size: tuple[int, int] = (64, 64)  # latent height and width (FLUX: image pixels / 8)
    prompts_per_call: int = 8  # prompts sampled together in one batch
    guidance: float | None = None  # distilled guidance for models that embed it (dev: 3.5)
    ram_cap_mb: float = 1024.0  # the harvest's own memory: every site's buffer and the copies made while writing one
    dtype: str = "bfloat16"  # storage dtype of x and y (sigma is always fp32)
    seed: int = 0  # prompt order and noise

    def __post_init__(self) -> None:
        dtype_from_name(self.dtype)
        for name in ("steps", "prompts_per_call"):
            if getattr(self, name) < 1:
                raise SettingsError(f"harvest.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.ram_cap_mb < math.inf:
            raise SettingsError(f"harvest.ram_cap_mb must be positive, got {self.ram_cap_mb}")
        if not 0 < self.shift < math.inf or (self.guidance is not None and not math.isfinite(self.guidance)):
            raise SettingsError(f"harvest.shift must be a positive number and guidance a number, got {self.shift} and "
                             f"{self.guidance}")
        if len(self.latent_size) != 2 or not all(size >= 2 and size % 2 == 0 for size in self.latent_size):
            raise SettingsError(f"harvest.latent_size must be two even sizes of at least 2 (FLUX packs 2 x 2 latent "
                             f"patches), got {list(self.latent_size)}")
        if self.keep_steps is not None and not all(0 <= s < self.steps for s in self.keep_steps):
            raise SettingsError(f"harvest.keep_steps {list(self.keep_steps)} must lie in 0..{self.steps - 1}")


def all_sites(model: Flux) -> tuple[SiteKey, ...]:
    return tuple((stream, layer) for layer in range(model.config.depth) for stream in STREAMS)


FLUSH_COPIES = 2  # writing a shard holds a shuffled copy of one site's buffer and its serialised bytes


def rows_per_shard(settings: HarvestSettings, n_sites: int, d_model: int) -> int:
    """The per-site buffer size that keeps the harvest's own memory within the RAM cap: every site's
    buffer, plus the two transient copies of one buffer while it is written."""
    row = ShardWriter.row_bytes(d_model, dtype_from_name(settings.dtype))
    rows = int(settings.ram_cap_mb * 2**20) // ((n_sites + FLUSH_COPIES) * row)
    if rows < 256:
        need = 256 * (n_sites + FLUSH_COPIES) * row / 2**20
        raise DiffractError(
            f"harvest.ram_cap_mb = {settings.ram_cap_mb} leaves {rows} rows per site for {n_sites} sites of "
            f"d_model {d_model}; raise it to at least {need:.2f} MB or harvest fewer sites at a time"
        )
    return rows


@dataclass
class HarvestReport:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> site -> rows
    reserved_bytes: int = 0  # the writers' buffers, all sites together, allocated once
    bound_bytes: int = 0  # reserved_bytes plus the transient copies of one buffer while a shard is written
    ram_cap_bytes: int = 0
    seconds: float = 0.0


def harvest(
    model: Flux,
    encoder: PromptEncoder,
    prompts: PromptSplit,
    out: Path,
    settings: HarvestSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
    model_info: dict[str, Any] | None = None,
) -> HarvestReport:
    """Sample every prompt of both splits and write `out/{train,validation}/{stream}_{layer}/`."""
    out = check_destination(Path(out), "the harvest folder")
    sites = settings.sites or all_sites(model)
    d_model = model.config.hidden_size
    for stream, layer in sites:
        mlp_module(model, (stream, layer))
    per_site = rows_per_shard(settings, len(sites), d_model)
    report = HarvestReport(ram_cap_bytes=int(settings.ram_cap_mb * 2**20))
    started = time.perf_counter()
    total = len(prompts.train) + len(prompts.validation)
    done = 0
    out.mkdir(parents=True, exist_ok=True)
    (out / PROMPTS_FILE).write_text(
        json.dumps({"train": list(prompts.train), "validation": list(prompts.validation)}, indent=1) + "\n"
    )
    for split, split_prompts in (("train", prompts.train), ("validation", prompts.validation)):
        if not split_prompts:
            continue
        metadata = {"split": split, "harvest": _settings_dict(settings), "model": model_info or {}}
        writers = {
            site: ShardWriter(
                site_folder(out, split, site), site, d_model, per_site,
                dtype=dtype_from_name(settings.dtype), seed=settings.seed, metadata=metadata,
            )
            for site in sites
        }
        reserved = sum(w.reserved_bytes for w in writers.values())
        report.reserved_bytes = max(report.reserved_bytes, reserved)
        report.bound_bytes = max(report.bound_bytes,
                                 reserved + FLUSH_COPIES * max(w.reserved_bytes for w in writers.values()))
        for ids in _prompt_batches(len(split_prompts), settings):
            _sample_batch(model, encoder, [split_prompts[i] for i in ids], ids, settings, writers)
            done += len(ids)
            if progress is not None:
                progress(done, total)
        for writer in writers.values():
            writer.close()
        report.rows[split] = {f"{s}_{l}": sum(sh["rows"] for sh in w.shards) for (s, l), w in writers.items()}
        writers.clear()  # free this split's buffers before the next split allocates its own
    report.seconds = time.perf_counter() - started
    return report


def _settings_dict(settings: HarvestSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["sites"] = None if settings.sites is None else [f"{s}:{l}" for s, l in settings.sites]
    return data


def _prompt_batches(count: int, settings: HarvestSettings) -> Iterator[list[int]]:
    order = torch.randperm(count, generator=seeded_generator("prompt-order", settings.seed)).tolist()
    for start in range(0, count, settings.prompts_per_call):
        yield order[start : start + settings.prompts_per_call]


def prompt_noise(prompt: str, seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The starting noise of a prompt: fixed by the prompt text and the seed, whatever the batch."""
    return torch.randn(tuple(shape), generator=seeded_generator("noise", seed, prompt))


def _sample_batch(
    model: Flux,
    encoder: PromptEncoder,
    batch_prompts: list[str],
    prompt_ids: list[int],
    settings: HarvestSettings,
    writers: dict[SiteKey, ShardWriter],
) -> None:
    parameters = next(model.parameters())
    height, width = settings.latent_size
    noise = torch.stack([prompt_noise(p, settings.seed, (model.config.latent_channels, height, width))
                         for p in batch_prompts])
    context, pooled = encoder(batch_prompts)
    keep = set(range(settings.steps)) if settings.keep_steps is None else set(settings.keep_steps)
    current = {"step": 0}
    ids = torch.tensor(prompt_ids, dtype=torch.int32)

    def on_step(step: int, _sigma: float, _x: torch.Tensor) -> None:
        current["step"] = step

    def on_rows(site: SiteKey, x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor) -> None:
        if current["step"] not in keep:
            return
        tokens = x.shape[1]
        writers[site].add(
            x.reshape(-1, x.shape[-1]),
            y.reshape(-1, y.shape[-1]),
            sigmas.float().repeat_interleave(tokens),
            ids.repeat_interleave(tokens),
            current["step"],
        )

    with capture_mlp_io(model, writers, on_rows):
        euler_sample(
            model,
            noise.to(parameters.device),
            context.to(parameters.device, parameters.dtype),
            pooled.to(parameters.device, parameters.dtype),
            flux_sigmas(settings.steps, settings.shift).to(parameters.device),
            guidance=settings.guidance,
            callback=on_step,
        )
