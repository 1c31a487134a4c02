"""Evaluation numbers against direct computations: FVU (overall and per sigma bucket), L0, dead
features, and the spliced-in generation test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.flux.sampling import euler_sample, flux_sigmas
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import patch_reference_model
from diffract_core.training.evaluation import site_metrics, spliced_fidelity
from diffract_core.training.harvest import HarvestSettings, prompt_noise
from diffract_core.training.prompts import HashingPromptEncoder
from diffract_core.training.shards import ActivationShards, site_folder
from diffract_core.transcoders import TranscoderSet

from .conftest import SITE


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    y, y_hat = y.double(), y_hat.double()
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def test_site_metrics_equal_direct_computation(synthetic_data: Path) -> None:
    transcoder = random_transcoder("img", 0, d_model=64, d_features=200, time_dim=16, seed=1)
    with torch.no_grad():
        transcoder.b_enc[:50] = -1e4
    shards = ActivationShards(site_folder(synthetic_data, "validation", SITE))
    metrics = site_metrics(transcoder, shards, chunk_rows=1000)
    parts = list(shards.sequential())
    x, y, sigma = (torch.cat([getattr(p, name) for p in parts]) for name in ("x", "y", "sigma"))
    with torch.no_grad():
        z, _ = transcoder.encode(x, sigma)
        y_hat = transcoder.decode(z)
    assert metrics.rows == 8192
    assert metrics.fvu == pytest.approx(fvu(y, y_hat), rel=1e-6)
    for value, label in ((0.25, "[0, 0.25]"), (0.5, "(0.25, 0.5]"), (0.75, "(0.5, 0.75]"), (1.0, "(0.75, 1]")):
        rows = sigma == value
        assert metrics.fvu_by_sigma[label]["rows"] == int(rows.sum())
        assert metrics.fvu_by_sigma[label]["fvu"] == pytest.approx(fvu(y[rows], y_hat[rows]), rel=1e-6)
    assert metrics.l0 == pytest.approx(float((z > 0).sum(-1).double().mean()))
    assert metrics.l0_fraction == pytest.approx(metrics.l0 / 200)
    assert metrics.dead_fraction == pytest.approx(1 - float((z > 0).any(0).double().mean()))
    assert metrics.dead_fraction >= 0.25


def test_spliced_fidelity_compares_generations_without_error_terms() -> None:
    model = init_random_(Flux(FluxConfig.tiny()), seed=0, std=0.1).eval()
    encoder = HashingPromptEncoder(model.config.context_in_dim, model.config.vec_in_dim, tokens=4)
    transcoders = TranscoderSet.from_transcoders(
        random_transcoder(s, layer, d_model=64, d_features=96, time_dim=16, seed=layer)
        for s in ("img", "txt") for layer in (0, 1)
    )
    sampling = HarvestSettings(latent_size=(4, 4), steps=3, seed=2)
    prompts = ["a red circle", "a blue star", "a green square"]
    result = spliced_fidelity(model, encoder, transcoders, prompts, sampling, batch_size=2)
    prompt = prompts[2]
    context, pooled = encoder([prompt])
    noise = prompt_noise(prompt, 2, (model.config.latent_channels, 4, 4))[None]
    original = euler_sample(model, noise, context, pooled, flux_sigmas(3))
    with patch_reference_model(model, transcoders, mode="replace_without_error"):
        spliced = euler_sample(model, noise, context, pooled, flux_sigmas(3))
    row = result.per_prompt[2]
    assert row["prompt"] == prompt
    assert row["latent_mse"] == pytest.approx(float((spliced - original).pow(2).mean()), rel=1e-5)
    assert row["latent_cosine"] == pytest.approx(float(F.cosine_similarity(spliced.flatten(), original.flatten(), 0)),
                                                 rel=1e-6)
    assert 0 < result.latent_mse and result.latent_cosine < 1
    assert result.latent_mse == pytest.approx(sum(r["latent_mse"] for r in result.per_prompt) / 3)


def test_a_shorter_sweep_run_scales_its_schedules_with_its_steps() -> None:
    from diffract_core.training.runs import sweep_override
    from diffract_core.training.settings import TrainSettings

    train = TrainSettings(steps=3000, lr_warmup_steps=300, l1_warmup_steps=600, dead_after_steps=1000,
                          resample_every=0, l1_img=1e-3, l1_txt=2e-3)
    point = sweep_override(train, "sae", 16.0, 500)
    assert point == {"kind": "sae", "l1_img": 0.016, "l1_txt": 0.032, "steps": 500, "lr_warmup_steps": 50,
                     "l1_warmup_steps": 100, "dead_after_steps": 167, "resample_every": 0}
    assert sweep_override(train, "transcoder", 1.0, 3000)["l1_warmup_steps"] == 600
