"""Harvesting from the reference model: the rows are the MLPs' real inputs and pre-gate outputs,
the RAM held is fixed by the cap, shards mix prompts and steps, and the splits never share a prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffract_core.errors import DiffractError
from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.flux.sampling import euler_sample, flux_sigmas
from diffract_core.training.harvest import HarvestSettings, capture_mlp_io, harvest, prompt_noise
from diffract_core.training.prompts import HashingPromptEncoder, split_prompts
from diffract_core.training.shards import ActivationShards, ShardWriter, site_folder

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "star", "triangle")
PROMPTS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]


@pytest.fixture(scope="module")
def model() -> Flux:
    return init_random_(Flux(FluxConfig.tiny()), seed=0, std=0.05).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def encoder(model: Flux) -> HashingPromptEncoder:
    return HashingPromptEncoder(model.config.context_in_dim, model.config.vec_in_dim, tokens=6)


SETTINGS = HarvestSettings(latent_size=(8, 8), prompts_per_call=5, ram_cap_mb=1.0, dtype="float32", seed=3)


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory, model: Flux, encoder: HashingPromptEncoder) -> Path:
    out = tmp_path_factory.mktemp("harvest")
    report = harvest(model, encoder, split_prompts(PROMPTS, 0.25), out, SETTINGS)
    assert report.reserved_bytes < report.bound_bytes <= report.ram_cap_bytes
    return out


def test_rows_are_the_mlp_inputs_and_outputs(harvested: Path, model: Flux, encoder: HashingPromptEncoder) -> None:
    prompt = json.loads((harvested / "prompts.json").read_text())["train"][0]
    expected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    mlp = model.double_blocks[1].img_mlp

    def keep(_module: object, args: tuple, output: torch.Tensor) -> None:
        expected[len(expected)] = (args[0][0], output[0])

    handle = mlp.register_forward_hook(keep)
    context, pooled = encoder([prompt])
    noise = prompt_noise(prompt, SETTINGS.seed, (model.config.latent_channels, 8, 8))[None]
    euler_sample(model, noise, context, pooled, flux_sigmas(4))
    handle.remove()
    shards = ActivationShards(site_folder(harvested, "train", ("img", 1)))
    assert shards.index["sigmas"] == [1.0, 0.75, 0.5, 0.25]
    x = torch.cat([shards.read(i, ("x",))["x"] for i in range(len(shards.shard_rows))])
    y = torch.cat([shards.read(i, ("y",))["y"] for i in range(len(shards.shard_rows))])
    for step, (x_true, y_true) in expected.items():
        # The harvest sampled this prompt in a batch of five, so its rows agree to float precision.
        distance = torch.cdist(x_true, x, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = distance.argmin(-1)
        assert float(distance.min(-1).values.max()) < 1e-4 * float(x_true.norm(dim=-1).min()), f"step {step}"
        torch.testing.assert_close(y[nearest], y_true, rtol=1e-4, atol=1e-5)


def test_the_ram_cap_fixes_the_buffers_and_shards_mix_prompts_and_steps(harvested: Path) -> None:
    shards = ActivationShards(site_folder(harvested, "train", ("img", 0)))
    per_site = int(SETTINGS.ram_cap_mb * 2**20) // ((4 + 2) * ShardWriter.row_bytes(64, torch.float32))
    assert max(shards.shard_rows) == per_site and len(shards.shard_rows) > 1
    first = shards.read(0, ("prompt", "step"))
    assert len(set(first["prompt"].tolist())) > 1 and len(set(first["step"].tolist())) == 4
    assert first["step"][:50].unique().numel() > 1  # shuffled inside the shard, not in call order
    with pytest.raises(DiffractError, match=r"raise it to at least .* MB"):
        harvest(Flux(FluxConfig.tiny()), None, split_prompts(PROMPTS, 0.25), harvested / "x",  # type: ignore[arg-type]
                HarvestSettings(ram_cap_mb=0.01))


def test_validation_prompts_are_disjoint_by_construction(harvested: Path) -> None:
    prompts = json.loads((harvested / "prompts.json").read_text())
    assert prompts["validation"] and not set(prompts["train"]) & set(prompts["validation"])
    reordered = split_prompts([p.upper() + "  " for p in reversed(PROMPTS)] + PROMPTS, 0.25)
    assert {p.lower().strip() for p in reordered.validation} == set(prompts["validation"])  # by text, not position
    for split, names in prompts.items():
        ids = ActivationShards(site_folder(harvested, split, ("img", 1))).index["prompt_ids"]
        assert ids == list(range(len(names)))


def test_keep_steps_and_capture_on_any_bfl_model(model: Flux, encoder: HashingPromptEncoder, tmp_path: Path) -> None:
    settings = HarvestSettings(sites=(("img", 0),), keep_steps=(0, 3), latent_size=(4, 4), dtype="float32")
    harvest(model, encoder, split_prompts(PROMPTS[:6], 0.0), tmp_path, settings)
    index = ActivationShards(site_folder(tmp_path, "train", ("img", 0))).index
    assert index["sigmas"] == [1.0, 0.25] and index["rows"] == 6 * 2 * 4
    with pytest.raises(Exception, match="not a FLUX MM-DiT"), capture_mlp_io(torch.nn.Linear(2, 2), [("img", 0)],
                                                                             print):
        pass


def test_batches_are_seekable_and_cover_every_row_once_per_epoch(harvested: Path) -> None:
    shards = ActivationShards(site_folder(harvested, "train", ("img", 0)))
    batch = 64
    stream = shards.batches(batch, seed=5, mix_shards=2)
    first_epoch = [next(stream) for _ in range(shards.rows // batch)]
    rows = torch.cat([b.x for b in first_epoch])
    assert rows.unique(dim=0).shape[0] == rows.shape[0]  # no row twice within an epoch
    resumed = next(shards.batches(batch, seed=5, start_step=7, mix_shards=2))
    assert torch.equal(resumed.x, first_epoch[7].x) and torch.equal(resumed.sigma, first_epoch[7].sigma)
    other = next(shards.batches(batch, seed=6, mix_shards=2))
    assert not torch.equal(other.x, first_epoch[0].x)


def test_an_interrupted_harvest_is_refused_for_training(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "train" / "img_0", ("img", 0), 8, 4, dtype=torch.float32)
    writer.add(torch.randn(6, 8), torch.randn(6, 8), torch.ones(6), torch.zeros(6, dtype=torch.int32), 0)
    with pytest.raises(DiffractError, match="unfinished harvest.*harvest again"):
        ActivationShards(tmp_path / "train" / "img_0")
    writer.close()
    assert ActivationShards(tmp_path / "train" / "img_0").rows == 6
    with pytest.raises(FileExistsError, match="empty folder"):
        ShardWriter(tmp_path / "train" / "img_0", ("img", 0), 8, 4)
