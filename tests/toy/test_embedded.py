"""The committed toy and its dictionaries: within the size budget, reproducible from their recipe,
and good at what they are for (drawing its world, and erring on the held-out swaps)."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch

from diffract_core.toy.embedded import ASSETS, TOY_TRANSCODERS, load_toy, open_toy_saes, open_toy_transcoders
from diffract_core.toy.model import ToyTrainSettings, train_toy
from diffract_core.toy.quality import measure_quality
from diffract_core.toy.scenes import all_prompts
from diffract_core.training.prompts import read_prompt_file

SITES = sorted((s, layer) for s in ("img", "txt") for layer in range(4))


@pytest.fixture(scope="module")
def toy():
    return load_toy()


def test_all_toy_assets_fit_in_25_mb() -> None:
    total = sum(path.stat().st_size for path in ASSETS.rglob("*") if path.is_file())
    assert total <= 25_000_000, f"{total / 1e6:.1f} MB"


def test_the_committed_toy_reproduces_its_first_training_steps(toy) -> None:
    trained = toy.info["trained"]
    settings = ToyTrainSettings(**{f.name: trained[f.name] for f in fields(ToyTrainSettings)})
    _, losses = train_toy(settings, stop_after=4)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(toy.info["losses"][:4]), rtol=1e-4, atol=2e-6)
    assert toy.info["steps_done"] == settings.steps


def test_the_toy_draws_single_objects_and_binds_wrongly_on_the_held_out_swaps(toy) -> None:
    """A small sample of benchmarks/toy_quality.py (the committed figures are in its docstring's run)."""
    results = {r.name: r for r in measure_quality(toy, 24)}
    for name in ("one object, training", "one object, held out"):
        assert results[name].score.exact >= 0.9, (name, results[name].score.exact)
    swaps = results["two objects, held out (swaps)"]
    assert swaps.score.binding_errors >= 0.15
    assert swaps.score.binding_errors > swaps.shuffled_binding_errors
    usual = results["two objects, usual colours, training"]
    assert usual.score.binding_errors < swaps.score.binding_errors


def test_the_releases_cover_every_double_block_mlp_with_their_metrics() -> None:
    transcoders, saes = open_toy_transcoders(), open_toy_saes()
    assert sorted(transcoders.sites) == SITES and sorted(saes.sites) == SITES
    assert {transcoders.config(site).kind for site in transcoders} == {"transcoder"}
    assert {saes.config(site).kind for site in saes} == {"sae"}
    assert {transcoders.config(site).d_model for site in transcoders} == {128}
    d_features = transcoders.config(("img", 0)).d_features
    for file, kind in (("evaluation.json", "transcoder"), ("evaluation-sae.json", "sae")):
        evaluation = json.loads((ASSETS / file).read_text())
        assert {m["site"] for m in evaluation["sites"]} == {f"{s}_{layer}" for s, layer in SITES}
        for metrics in evaluation["sites"]:
            assert metrics["kind"] == kind and metrics["fvu"] < 0.3 and 0 < metrics["l0"] < 0.2 * d_features
        assert evaluation["spliced"]["latent_cosine"] > 0.9
    assert (TOY_TRANSCODERS / "manifest.json").is_file()


def test_the_prompt_file_is_the_toy_world() -> None:
    assert read_prompt_file(str(ASSETS / "diffract-toy-prompts.txt")) == all_prompts()
