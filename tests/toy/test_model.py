"""The toy FLUX trains with FLUX's objective, reproducibly, and round-trips through its file."""

from __future__ import annotations

from pathlib import Path

import torch

from diffract_core.flux.sampling import euler_sample, flux_sigmas
from diffract_core.toy import is_held_out, parse_prompt
from diffract_core.toy.model import ToyModel, ToyTrainSettings, toy_flux_config, train_toy, training_batch


def test_the_toy_has_a_few_million_parameters_and_flux_names() -> None:
    model = ToyModel.create(0)
    count = sum(p.numel() for p in model.parameters())
    assert 2e6 < count < 5e6
    names = set(model.flux.state_dict())
    assert {"double_blocks.0.img_attn.qkv.weight", "double_blocks.3.txt_mlp.2.weight",
            "single_blocks.1.linear1.weight"} <= names
    assert toy_flux_config().in_channels == 64  # FLUX's patchified 16-channel latents


def test_same_seed_same_losses_and_the_loss_falls() -> None:
    settings = ToyTrainSettings(steps=30, batch_size=8, lr=1e-3, seed=3)
    _, first = train_toy(settings)
    _, again = train_toy(settings)
    assert first == again
    _, other = train_toy(ToyTrainSettings(steps=5, batch_size=8, lr=1e-3, seed=4))
    assert other != first[:5]
    assert sum(first[-5:]) / 5 < sum(first[:5]) / 5


def test_training_batches_avoid_held_out_prompts() -> None:
    settings = ToyTrainSettings(batch_size=64)
    prompts = [prompt for step in range(10) for prompt in training_batch(settings, step)[0]]
    assert len(set(prompts)) > 100 and not any(is_held_out(parse_prompt(p)) for p in prompts)


def test_save_and_load_keep_the_samples_to_fp16_precision(tmp_path: Path) -> None:
    model, _ = train_toy(ToyTrainSettings(steps=2, batch_size=4))
    model.save(tmp_path / "toy.safetensors")
    loaded = ToyModel.load(tmp_path / "toy.safetensors")
    assert loaded.info["trained"]["steps"] == 2
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}  # stored in fp16, computed in fp32
    loaded.save(tmp_path / "again.safetensors")
    again = ToyModel.load(tmp_path / "again.safetensors")
    noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = []
        for m in (model, loaded, again):
            context, pooled = m.text_encoder(["a red circle"])
            outputs.append(euler_sample(m.flux, noise, context, pooled, flux_sigmas(4)))
    assert torch.equal(outputs[1], outputs[2])  # a saved toy round-trips exactly
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-3, rtol=0)
