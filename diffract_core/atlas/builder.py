"""Build a release's feature atlas: sample a prompt set with every atlas site recorded, one batch at
a time, keep running statistics per site (`statistics.py`), save them after every
`checkpoint_every` batches, and write the atlas folder at the end.

Resumable: a stopped or interrupted build started again with the same arguments continues after
its last saved batch and gives the same atlas. Under `torchrun` the batches are dealt out to the
ranks, each saves its own statistics, and rank 0 merges them (exactly) and writes the atlas.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptFileError, SiteNotLoadedError
from ..flux.model import Flux
from ..flux.sampling import flux_sigmas
from ..spatial import Grid
from ..training.prompts import PromptEncoder
from ..transcoders.config import TranscoderConfig
from ..transcoders.transcoder_set import SiteKey, TranscoderSet, describe_sites
from .assemble import BuildFacts, assemble_atlas
from .budget import MemoryBudget, memory_budget
from .checkpoint import load_state, remove_work, save_images, save_state, work_folder
from .labels import LabelRule
from .memory import release_freed_memory
from .prompts import PromptSet, check_prompts
from .ranks import Ranks
from .sampling import ImageDecoder, batch_count, batch_prompt_ids, sample_recorded, site_calls
from .settings import AtlasSettings
from .statistics import BatchContext, Dimensions, SiteStatistics

Progress = Callable[[int, int], None]  # (prompts done, prompts) of this process


@dataclass(frozen=True)
class AtlasBuild:
    out: Path
    prompts: int  # the prompt set, deduplicated
    batches: int  # this process's
    resumed_batches: int  # of those, taken from a saved state
    seconds: float
    budget: MemoryBudget
    written: bool  # this process wrote the atlas (rank 0)


@dataclass(frozen=True)
class _Plan:
    """What a build samples and keeps, fixed before it starts."""

    sites: list[SiteKey]
    prompt_set: PromptSet
    configs: dict[SiteKey, TranscoderConfig]
    dimensions: dict[SiteKey, Dimensions]
    grid: Grid
    text_tokens: int
    budget: MemoryBudget
    decode: ImageDecoder | None  # None as well when no site is an image site


def build_atlas(
    model: Flux,
    encoder: PromptEncoder,
    transcoders: TranscoderSet,
    prompts: Sequence[str],
    out: Path,
    settings: AtlasSettings,
    *,
    decode: ImageDecoder | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    model_info: Mapping[str, Any] | None = None,
    prompt_source: Path | None = None,
    label_rule: LabelRule | None = None,
) -> AtlasBuild:
    """Build the atlas of `transcoders` into the folder `out` (usually `<release>/atlas`).

    `decode` turns final latents into images (for crops and colour statistics; None: neither).
    `prompt_source` is the file the prompts came from, named in errors; `label_rule` defaults to LabelRule()."""
    started = time.perf_counter()
    out = Path(out)
    plan = _plan(model, encoder, transcoders, prompts, settings, decode, prompt_source)
    ranks = Ranks.from_environment()
    try:
        work = work_folder(out)
        fingerprint = _fingerprint(plan, settings, model_info, ranks.world)
        if not resume and ranks.is_main:
            remove_work(work)
        ranks.barrier()
        work.mkdir(parents=True, exist_ok=True)
        saved = load_state(work, ranks.rank, ranks.world, fingerprint, plan.dimensions)
        empty = {site: SiteStatistics.empty(site[0], dims) for site, dims in plan.dimensions.items()}
        stats, done = saved or (empty, [])
        batches = batch_count(len(plan.prompt_set.prompts), settings)
        mine = ranks.batches(batches)
        resumed = sum(batch in done for batch in mine)
        sampler = _Sampler(model, encoder, transcoders, plan, settings, work)
        sampler.run(mine, done, stats, progress,
                    save=lambda: save_state(work, ranks.rank, ranks.world, fingerprint, stats, done))
        if saved is None and not mine:  # more ranks than batches: an empty state, for rank 0 to merge
            save_state(work, ranks.rank, ranks.world, fingerprint, stats, done)
        ranks.barrier()
        if ranks.is_main:
            _merge_other_ranks(stats, work, ranks.world, fingerprint, plan.dimensions)
            facts = BuildFacts(tuple(flux_sigmas(settings.sampling.steps, settings.sampling.shift).tolist()), plan.grid,
                               plan.text_tokens, batches, plan.decode is not None and settings.crops_per_feature > 0,
                               ranks.world, time.perf_counter() - started)
            assemble_atlas(out, work, stats, plan.configs, plan.prompt_set, settings, facts, label_rule or LabelRule(),
                           model_info)
            remove_work(work)
        ranks.barrier()
    finally:
        ranks.close()
    return AtlasBuild(out, len(plan.prompt_set.prompts), len(mine), resumed, time.perf_counter() - started,
                      plan.budget, ranks.is_main)


def _plan(model: Flux, encoder: PromptEncoder, transcoders: TranscoderSet, prompts: Sequence[str],
          settings: AtlasSettings, decode: ImageDecoder | None, prompt_source: Path | None) -> _Plan:
    """Check the inputs and fix the sizes; refuse a build that would not fit its memory cap."""
    transcoders.check_model(model.config.hidden_size, model.config.depth)
    sites = _atlas_sites(transcoders, settings)
    prompt_set = PromptSet.from_prompts(prompts, settings.vocabulary_size)
    check_prompts(encoder, prompt_set.prompts, settings.sampling.prompts_per_call, prompt_source)
    configs = {site: transcoders.config(site) for site in sites}
    dimensions = {site: Dimensions(config.d_features, settings.sigma_buckets, settings.top_n,
                                   len(prompt_set.vocabulary), settings.region_cells)
                  for site, config in configs.items()}
    decode = decode if any(stream == "img" for stream, _ in sites) else None
    grid, text_tokens, image_size = _token_layout(model, encoder, prompt_set, settings, decode)
    budget = memory_budget({site: config.d_features for site, config in configs.items()}, settings,
                           vocabulary=len(prompt_set.vocabulary), image_tokens=grid[0] * grid[1],
                           text_tokens=text_tokens, image_size=image_size)
    budget.check()
    return _Plan(sites, prompt_set, configs, dimensions, grid, text_tokens, budget, decode)


@dataclass(frozen=True)
class _Sampler:
    model: Flux
    encoder: PromptEncoder
    transcoders: TranscoderSet
    plan: _Plan
    settings: AtlasSettings
    work: Path

    def run(self, mine: list[int], done: list[int], stats: dict[SiteKey, SiteStatistics], progress: Progress | None,
            save: Callable[[], None]) -> None:
        """Sample this process's batches not `done` yet into `stats` (appending them to `done`);
        `save` every `checkpoint_every` batches and after the last."""
        prompt_set, settings = self.plan.prompt_set, self.settings
        sizes = {batch: len(batch_prompt_ids(batch, len(prompt_set.prompts), settings)) for batch in mine}
        total, finished = sum(sizes.values()), sum(sizes[batch] for batch in mine if batch in done)
        if progress is not None:
            progress(finished, total)
        todo = [batch for batch in mine if batch not in done]
        for number, batch in enumerate(todo, start=1):
            ids = batch_prompt_ids(batch, len(prompt_set.prompts), settings)
            recording, images = sample_recorded(self.model, self.encoder, self.transcoders,
                                                [prompt_set.prompts[i] for i in ids], self.plan.sites, settings,
                                                self.plan.decode)
            release_freed_memory()  # the sampling's garbage, before the update of the statistics allocates its own
            if images is not None and settings.crops_per_feature:
                save_images(self.work, batch, ids, images)
            context = BatchContext.of(prompt_set, ids, recording, images, {stream for stream, _ in self.plan.sites})
            for site in self.plan.sites:
                stats[site].add(site_calls(recording, site, settings.sigma_buckets), context)
            # One batch in flight, as budgeted: this one's recording and images go before the checkpoint and
            # the next batch, and what they and the update freed goes back to the system.
            del recording, images, context
            release_freed_memory()
            done.append(batch)
            if number % settings.checkpoint_every == 0 or number == len(todo):
                save()
            finished += len(ids)
            if progress is not None:
                progress(finished, total)


def _atlas_sites(transcoders: TranscoderSet, settings: AtlasSettings) -> list[SiteKey]:
    if settings.sites is None:
        return transcoders.sites
    missing = [site for site in settings.sites if site not in transcoders.sites]
    if missing:
        raise SiteNotLoadedError(f"the atlas sites [{describe_sites(missing)}] are not in the release, which holds "
                                 f"[{describe_sites(transcoders.sites)}]; choose among those")
    return sorted(settings.sites)


def _token_layout(model: Flux, encoder: PromptEncoder, prompt_set: PromptSet, settings: AtlasSettings,
                  decode: ImageDecoder | None) -> tuple[Grid, int, tuple[int, int] | None]:
    """(image token grid, text tokens per prompt, decoded image size) of this model, encoder and decoder."""
    height, width = settings.sampling.latent_size
    patch = model.config.patch_size
    grid = (-(-height // patch), -(-width // patch))
    text_tokens = int(encoder([prompt_set.prompts[0]])[0].shape[1])
    if decode is None:
        return grid, text_tokens, None
    with torch.no_grad():
        image = decode(torch.zeros(1, model.config.latent_channels, height, width))
    return grid, text_tokens, (int(image.shape[-2]), int(image.shape[-1]))


def _fingerprint(plan: _Plan, settings: AtlasSettings, model_info: Mapping[str, Any] | None, world: int) -> str:
    release = [[s, layer, c.kind, c.d_model, c.d_features, c.provenance.get("weights_sha256")]
               for (s, layer), c in sorted(plan.configs.items())]
    data = [plan.prompt_set.fingerprint(), settings.to_dict(), release, dict(model_info or {}), world,
            plan.decode is not None]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _merge_other_ranks(stats: dict[SiteKey, SiteStatistics], work: Path, world: int, fingerprint: str,
                       dimensions: Mapping[SiteKey, Dimensions]) -> None:
    """Rank 0 adds every other rank's saved statistics to its own, one rank at a time."""
    for rank in range(1, world):
        state = load_state(work, rank, world, fingerprint, dimensions)
        if state is None:
            raise CorruptFileError(f"rank {rank}'s statistics are missing from {work}: run the build again to "
                                   "finish it")
        for site, other in state[0].items():
            stats[site].merge(other)
