"""A site's running statistics equal a brute-force pass over the recorded codes, and merging the
statistics of two sets of batches equals one pass over both, bit for bit."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from diffract_core.atlas.prompts import PromptSet
from diffract_core.atlas.sampling import batch_prompt_ids, sample_recorded, site_calls
from diffract_core.atlas.statistics import BatchContext, Dimensions, SiteStatistics, from_fixed, to_fixed, token_cells
from diffract_core.flux import Flux
from diffract_core.transcoders import TranscoderSet

from .tiny_world import D_FEATURES, PROMPTS, SETTINGS, decode, encoder

SITES = [("img", 1), ("txt", 0)]
PROMPT_SET = PromptSet.from_prompts(PROMPTS, SETTINGS.vocabulary_size)
DIMENSIONS = Dimensions(D_FEATURES, SETTINGS.sigma_buckets, SETTINGS.top_n, len(PROMPT_SET.vocabulary),
                        SETTINGS.region_cells)


@pytest.fixture(scope="module")
def batches(model: Flux, transcoders: TranscoderSet) -> list[tuple[BatchContext, dict]]:
    """Two sampled batches: each one's context and its calls per site."""
    sampled = []
    for batch in range(2):
        ids = batch_prompt_ids(batch, len(PROMPT_SET.prompts), SETTINGS)
        recording, images = sample_recorded(model, encoder(model), transcoders, [PROMPT_SET.prompts[i] for i in ids],
                                            SITES, SETTINGS, decode)
        context = BatchContext.of(PROMPT_SET, ids, recording, images, {"img", "txt"})
        sampled.append((context, {site: site_calls(recording, site, SETTINGS.sigma_buckets) for site in SITES}))
    return sampled


def built(site: tuple[str, int], batches: list[tuple[BatchContext, dict]]) -> SiteStatistics:
    stats = SiteStatistics.empty(site[0], DIMENSIONS)
    for context, calls in batches:
        stats.add(calls[site], context)
    return stats


def brute_force(site: tuple[str, int], batches: list[tuple[BatchContext, dict]]) -> dict[str, torch.Tensor]:
    """The same statistics, one recorded code at a time."""
    stream = site[0]
    expected = {name: torch.zeros(shape, dtype=torch.float64) for name, (shape, _) in DIMENSIONS.layout(stream).items()}
    examples: dict[tuple[int, int], list[tuple[float, int, int]]] = defaultdict(list)  # (f, prompt) -> (v, step, t)
    for context, calls in batches:
        words = context.words.double()
        for step, bucket, codes in calls[site]:
            prompts, tokens, k = codes.indices.shape
            expected["tokens"][bucket] += prompts * tokens
            cells = token_cells(context.grid, SETTINGS.region_cells) if stream == "img" else None
            for p in range(prompts):
                for t in range(tokens):
                    if stream == "txt":
                        expected["token_count"][context.token_ids[p, t]] += 1
                    else:
                        expected["cell_count"][cells[t]] += 1
                        expected["colour_count"][context.colours[p, t]] += 1
                    for j in range(k):
                        value = float(codes.values[p, t, j])
                        if value <= 0:
                            continue
                        f = int(codes.indices[p, t, j])
                        expected["fired"][f, bucket] += 1
                        expected["mass"][f, bucket] += value
                        expected["peak"][f, bucket] = max(expected["peak"][f, bucket], value)
                        if stream == "txt":
                            expected["token_mass"][f, context.token_ids[p, t]] += value
                        else:
                            expected["cell_mass"][f, cells[t]] += value
                            expected["colour_mass"][f, context.colours[p, t]] += value
                        examples[(f, int(context.prompt_ids[p]))].append((value, step, t))
        expected["prompts"] += len(context.prompt_ids)
        expected["word_prompts"] += words.sum(0)
        for (f, prompt), hits in examples.items():
            if prompt in context.prompt_ids.tolist():
                row = context.prompt_ids.tolist().index(prompt)
                peak = max(v for v, _, _ in hits)
                expected["prompt_mass"][f] += peak
                expected["word_mass"][f] += peak * words[row]
                expected["prompts_fired"][f] += 1
    top = {name: expected[name].fill_(-1 if name in ("top_value", "top_prompt") else 0) for name in
           ("top_value", "top_prompt", "top_step", "top_token", "top_box") if name in expected}
    per_feature = defaultdict(list)
    for (f, prompt), hits in examples.items():
        peak = max(v for v, _, _ in hits)
        step, token = min((s, t) for v, s, t in hits if v == peak)
        per_feature[f].append((-peak, prompt, step, token, hits))
    for f, rows in per_feature.items():
        best = sorted(rows, key=lambda r: (r[0], r[1]))[: SETTINGS.top_n]
        for rank, (negative, prompt, step, token, hits) in enumerate(best):
            top["top_value"][f, rank], top["top_prompt"][f, rank] = -negative, prompt
            top["top_step"][f, rank], top["top_token"][f, rank] = step, token
            if stream == "img":
                cols = batches[0][0].grid[1]
                near = [t for v, s, t in hits if s == step and 2 * v >= -negative]
                box = [min(near) // cols, min(t % cols for t in near), max(near) // cols, max(t % cols for t in near)]
                top["top_box"][f, rank] = torch.tensor(box, dtype=torch.float64)
    return expected


@pytest.mark.parametrize("site", SITES, ids=lambda s: f"{s[0]}:{s[1]}")
def test_statistics_equal_brute_force(batches: list, site: tuple[str, int]) -> None:
    stats, expected = built(site, batches).arrays, brute_force(site, batches)
    assert int(stats["fired"].sum()) > 100, "the tiny world must exercise the statistics"
    for name, array in stats.items():
        fixed = name in ("mass", "prompt_mass", "word_mass", "token_mass", "cell_mass", "colour_mass")
        value = from_fixed(array) if fixed else array.double()
        assert torch.allclose(value, expected[name], rtol=1e-9, atol=1e-9), name


def test_merging_split_batches_equals_one_pass(batches: list) -> None:
    for site in SITES:
        whole = built(site, batches)
        first, second = built(site, batches[:1]), built(site, batches[1:])
        first.merge(second)
        reverse = built(site, batches[1:])
        reverse.merge(built(site, batches[:1]))
        for name, array in whole.arrays.items():
            assert torch.equal(first.arrays[name], array), name
            assert torch.equal(reverse.arrays[name], array), name


def test_fixed_point_sums_are_exact_in_any_order() -> None:
    values = (torch.rand(5000, generator=torch.Generator().manual_seed(0)) * 30).half()
    fixed = to_fixed(values)
    assert torch.equal(from_fixed(fixed).half(), values)
    shuffled = fixed[torch.randperm(len(fixed), generator=torch.Generator().manual_seed(1))]
    assert int(fixed.sum()) == int(shuffled.sum()) == sum(fixed.tolist())
