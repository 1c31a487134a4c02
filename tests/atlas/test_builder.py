"""Building an atlas: its examples and statistics against a dense recompute of every activation,
resuming after an interrupt, and the inputs it refuses."""

from __future__ import annotations

import tracemalloc
import weakref
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from diffract_core.atlas import Atlas, build_atlas, builder, sampling
from diffract_core.atlas.checkpoint import work_folder
from diffract_core.atlas.memory import release_freed_memory
from diffract_core.atlas.prompts import check_prompts
from diffract_core.errors import DiffractError, SiteNotLoadedError
from diffract_core.features import FeatureRef
from diffract_core.flux import Flux
from diffract_core.flux.sampling import flux_sigmas
from diffract_core.transcoders import TranscoderSet

from .tiny_world import D_FEATURES, PROMPTS, SETTINGS, atlas_files, decode, encoder


def dense_activations(model: Flux, transcoders: TranscoderSet, out: Path) -> dict:
    """Build an atlas into `out` while hooks keep every MLP input; return, per site, the dense
    activations [prompt, step, token, feature] the transcoders give them (rounded to fp16, as recorded)."""
    inputs: dict = defaultdict(list)
    hooks = [getattr(model.double_blocks[layer], f"{stream}_mlp").register_forward_hook(
        lambda _m, args, _out, site=(stream, layer): inputs[site].append(args[0].detach().clone()))
        for stream, layer in transcoders.sites]
    try:
        build_atlas(model, encoder(model), transcoders, PROMPTS, out, SETTINGS, decode=decode)
    finally:
        for hook in hooks:
            hook.remove()
    sigmas = flux_sigmas(SETTINGS.sampling.steps).tolist()
    steps = SETTINGS.sampling.steps
    dense = {}
    for site, calls in inputs.items():
        per_batch = [calls[i : i + steps] for i in range(0, len(calls), steps)]
        codes = [torch.stack([transcoders[site].encode(x, sigmas[s])[0] for s, x in enumerate(batch)], 1)
                 for batch in per_batch]
        dense[site] = torch.cat(codes).half().float()
    return dense


def test_examples_and_statistics_match_a_dense_recompute(model: Flux, transcoders: TranscoderSet,
                                                         tmp_path: Path) -> None:
    dense = dense_activations(model, transcoders, tmp_path / "atlas")
    atlas = Atlas.load(tmp_path / "atlas", {site: transcoders.config(site) for site in transcoders.sites})
    assert len(PROMPTS) == dense[("img", 0)].shape[0]
    checked = 0
    for site, values in dense.items():
        peaks = values.amax(dim=(1, 2))  # [prompt, feature]
        for index in range(D_FEATURES):
            ref = FeatureRef(site[0], site[1], index)
            examples = atlas.examples(ref)
            column = peaks[:, index]
            fired = int((column > 0).sum())
            assert len(examples) == min(fired, SETTINGS.top_n)
            if not examples:
                assert atlas.label(ref).text == "never fired"
                continue
            expected = torch.sort(column, descending=True).values[: len(examples)]
            assert [e.activation for e in examples] == pytest.approx(expected.tolist(), rel=2e-3)
            for example in examples:  # each example is that prompt's peak, at the step and token where it is
                assert float(column[example.prompt_index]) == pytest.approx(example.activation, rel=2e-3)
                at = values[example.prompt_index, example.step].flatten(0, -2)[example.token, index]
                assert float(at) == pytest.approx(example.activation, rel=2e-3)
            stats = atlas.stats(ref)
            hits = values[..., index] > 0  # [prompt, step, token]
            steps_fired = hits.sum(dim=(0, 2)).double()
            tokens_per_step = hits.shape[0] * hits.shape[2]
            for step in range(SETTINGS.sampling.steps):  # one step per bucket at 3 steps and 4 buckets
                bucket = next(b for b, label in enumerate(stats.buckets) if _in(flux_sigmas(3)[step].item(), label))
                assert stats.firing_rate[bucket] == pytest.approx(float(steps_fired[step]) / tokens_per_step, abs=2e-3)
                if steps_fired[step]:
                    mean = values[:, step][..., index][hits[:, step]].mean()
                    assert stats.mean[bucket] == pytest.approx(float(mean), rel=2e-3)
            checked += 1
    assert checked > 100


def _in(sigma: float, label: str) -> bool:
    low, high = (float(v) for v in label.strip("[(]").split(", "))
    return (low < sigma or (label.startswith("[") and sigma == low)) and sigma <= high


class Stop(KeyboardInterrupt):
    pass


def test_an_interrupted_build_resumes_to_the_same_atlas(model: Flux, transcoders: TranscoderSet, atlas: Atlas,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "atlas"

    def interrupt(done: int, _total: int) -> None:
        if done >= 8:
            raise Stop

    with pytest.raises(Stop):
        build_atlas(model, encoder(model), transcoders, PROMPTS, out, SETTINGS, decode=decode, progress=interrupt)
    work = work_folder(out)
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == ["images", "state-0-of-1.safetensors"]  # nothing half-written
    resumed = build_atlas(model, encoder(model), transcoders, PROMPTS, out, SETTINGS, decode=decode)
    assert (resumed.resumed_batches, resumed.batches) == (2, 4)
    assert not work.exists()
    assert atlas_files(out) == atlas_files(atlas.folder)


def test_a_stopped_build_refuses_other_settings_until_told_to_start_over(model: Flux, transcoders: TranscoderSet,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "atlas"

    def interrupt(done: int, _total: int) -> None:
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        build_atlas(model, encoder(model), transcoders, PROMPTS, out, SETTINGS, progress=interrupt)
    other = type(SETTINGS)(**{**SETTINGS.__dict__, "top_n": 3})
    with pytest.raises(DiffractError, match="--no-resume"):
        build_atlas(model, encoder(model), transcoders, PROMPTS, out, other)
    started_over = build_atlas(model, encoder(model), transcoders, PROMPTS, out, other, resume=False)
    assert started_over.resumed_batches == 0 and Atlas.load(out).shape.top_n == 3


def test_memory_cap_and_unknown_sites_are_refused(model: Flux, transcoders: TranscoderSet, tmp_path: Path) -> None:
    small = type(SETTINGS)(**{**SETTINGS.__dict__, "cap_mb": 0.05})
    with pytest.raises(DiffractError, match=r"needs about .* MiB .* raise the cap \(--cap-mb\)"):
        build_atlas(model, encoder(model), transcoders, PROMPTS, tmp_path / "atlas", small)
    elsewhere = type(SETTINGS)(**{**SETTINGS.__dict__, "sites": (("img", 7),)})
    with pytest.raises(SiteNotLoadedError, match="img: 7"):
        build_atlas(model, encoder(model), transcoders, PROMPTS, tmp_path / "atlas", elsewhere)
    assert not (tmp_path / "atlas").exists()


def test_a_refused_prompt_is_named_with_its_file_and_line(model: Flux, tmp_path: Path) -> None:
    base = encoder(model)

    def picky(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if any("pink" in p for p in prompts):
            raise DiffractError("the encoder cannot read 'pink'")
        return base(prompts)

    source = tmp_path / "prompts.txt"
    source.write_text("# colours\na red circle\n\na pink square\n")
    with pytest.raises(DiffractError, match=r"prompts\.txt, line 4: the encoder cannot read 'pink'"):
        check_prompts(picky, ["a red circle", "a pink square"], 8, source)


def test_a_build_holds_one_batch_at_a_time_and_gives_freed_memory_back(
        model: Flux, transcoders: TranscoderSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory a build holds is bounded by its cap, not by its batches: no batch's recording or
    images outlive it, and what a model call or batch freed goes back to the system (glibc's malloc
    keeps it otherwise, and the resident memory grows with every batch)."""
    recorded: list[weakref.ref] = []
    trims = {"call": 0, "batch": 0}

    def sample(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert all(ref() is None for ref in recorded), "an earlier batch's recording is still alive"
        recording, images = sampling.sample_recorded(*args, **kwargs)
        recorded.append(weakref.ref(recording))
        return recording, images

    def counting(kind: str):  # type: ignore[no-untyped-def]
        def trim() -> bool:
            trims[kind] += 1
            return release_freed_memory()
        return trim

    monkeypatch.setattr(builder, "sample_recorded", sample)
    monkeypatch.setattr(builder, "release_freed_memory", counting("batch"))
    monkeypatch.setattr(sampling, "release_freed_memory", counting("call"))
    result = build_atlas(model, encoder(model), transcoders, PROMPTS, tmp_path / "atlas", SETTINGS, decode=decode)
    assert result.batches == len(recorded) == 4
    assert all(ref() is None for ref in recorded)
    assert trims == {"call": 4 * SETTINGS.sampling.steps, "batch": 2 * 4}


def test_the_python_memory_of_a_build_does_not_grow_with_its_prompts(model: Flux, transcoders: TranscoderSet,
                                                                     tmp_path: Path) -> None:
    """Peak Python allocations (lists, dicts, JSON; tracemalloc does not see tensor storage, which the
    test above covers) of a build of twice the prompts, in twice the batches, stay those of one."""
    doubled = PROMPTS + [f"{prompt} again" for prompt in PROMPTS]
    peaks = []
    for number, prompts in enumerate((PROMPTS, doubled)):
        build_atlas(model, encoder(model), transcoders, prompts, tmp_path / f"warm-{number}", SETTINGS, decode=decode)
        tracemalloc.start()
        try:
            build_atlas(model, encoder(model), transcoders, prompts, tmp_path / f"atlas-{number}", SETTINGS,
                        decode=decode)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] <= 1.1 * peaks[0] + 64 * 1024, peaks
