"""The toy FLUX: the library's reference MM-DiT at about 3 M parameters, its own text encoder, and
rectified-flow training on coloured-shape scenes (FLUX's objective: predict noise - x0 from
x_sigma = (1 - sigma) x0 + sigma noise, with sigma drawn logit-normally as in SD3 / FLUX).

Training scenes never hold a held-out prompt (scenes.py). Batch n is a pure function of the seed
and n, so the same seed gives the same losses on the same machine.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..flux.config import FluxConfig
from ..flux.model import Flux, init_random_
from ..seeding import seeded_generator
from . import codec
from .scenes import USUAL_SHARE, render, sample_scene
from .text_encoder import TextEncoderConfig, ToyTextEncoder


def toy_flux_config() -> FluxConfig:
    """FLUX.1's block math and input layout (64-channel patchified latents), at toy width and depth."""
    return FluxConfig(in_channels=64, out_channels=16, vec_in_dim=32, context_in_dim=64, hidden_size=128, num_heads=2,
                      depth=4, depth_single_blocks=2, axes_dim=(8, 28, 28))


STORED_DTYPE = torch.float16


@dataclass(frozen=True)
class ToyTrainSettings:
    steps: int = 4_500  # optimizer steps (about 35 min on 2 CPU cores: 0.45 s per step at batch 32)
    batch_size: int = 32  # scenes per step
    lr: float = 3e-4  # AdamW learning rate (cosine to 10%)
    two_objects: float = 0.6  # share of scenes with two objects
    usual_share: float = USUAL_SHARE  # two-object scenes whose objects both have a usual colour
    grad_clip: float = 1.0
    ema: float = 0.999  # the saved weights are this exponential moving average of the trained ones
    seed: int = 0


@dataclass
class ToyModel:
    flux: Flux
    text_encoder: ToyTextEncoder
    info: dict[str, object] = field(default_factory=dict)

    @classmethod
    def create(cls, seed: int = 0) -> ToyModel:
        torch.manual_seed(seed)
        text_encoder = ToyTextEncoder(TextEncoderConfig())
        return cls(init_random_(Flux(toy_flux_config()), seed=seed), text_encoder)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.flux.parameters(), *self.text_encoder.parameters()]

    def save(self, path: Path) -> None:
        """One safetensors file (flux.* with BFL names, text_encoder.*) in fp16, half the size of fp32
        (`load` computes in fp32 from them), with the configs in its metadata."""
        tensors = {f"flux.{k}": v.to(STORED_DTYPE).contiguous() for k, v in self.flux.state_dict().items()}
        tensors |= {f"text_encoder.{k}": v.to(STORED_DTYPE).contiguous()
                    for k, v in self.text_encoder.state_dict().items()}
        metadata = {"flux_config": json.dumps(self.flux.config.to_dict()),
                    "text_encoder_config": json.dumps(self.text_encoder.config.to_dict()),
                    "info": json.dumps(self.info)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> ToyModel:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        flux = Flux(FluxConfig.from_dict(json.loads(metadata["flux_config"])))
        flux.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("flux.")})
        text_encoder = ToyTextEncoder(TextEncoderConfig(**json.loads(metadata["text_encoder_config"])))
        text_encoder.load_state_dict({k[13:]: v for k, v in tensors.items() if k.startswith("text_encoder.")})
        return cls(flux.eval(), text_encoder.eval(), json.loads(metadata.get("info", "{}")))


def training_batch(settings: ToyTrainSettings, step: int) -> tuple[list[str], torch.Tensor]:
    """Step `step`'s prompts and images (never a held-out prompt)."""
    generator = seeded_generator("toy-batch", settings.seed, step)
    scenes = [sample_scene(generator, two_objects=settings.two_objects, usual_share=settings.usual_share)
              for _ in range(settings.batch_size)]
    return [s.prompt for s in scenes], torch.stack([render(s) for s in scenes])


def flow_loss(model: ToyModel, prompts: list[str], images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """FLUX's rectified-flow loss on one batch."""
    x0 = codec.encode(images)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))
    x_sigma = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
    context, pooled = model.text_encoder(prompts)
    velocity = model.flux(x_sigma, sigma, context, pooled)
    return F.mse_loss(velocity, noise - x0)


def train_toy(settings: ToyTrainSettings, *, model: ToyModel | None = None,
              progress: Callable[[int, int, float], None] | None = None,
              snapshot: Callable[[ToyModel], None] | None = None, snapshot_every: int = 0,
              stop_after: int | None = None) -> tuple[ToyModel, list[float]]:
    """Train from `ToyModel.create(seed)` (or `model`); returns the weights' moving average and the loss
    of every step. `snapshot` receives that average every `snapshot_every` steps, to save it;
    `stop_after` ends the run early on the full run's schedule (to check its first steps)."""
    model = model or ToyModel.create(settings.seed)
    average = copy.deepcopy(model)
    model.flux.train()
    model.text_encoder.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps, eta_min=settings.lr / 10)
    losses: list[float] = []
    for step in range(settings.steps if stop_after is None else min(stop_after, settings.steps)):
        prompts, images = training_batch(settings, step)
        loss = flow_loss(model, prompts, images, seeded_generator("toy-noise", settings.seed, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(settings.ema, (1 + step) / (10 + step))  # short memory early, as the weights move fast
            for kept, current in zip(average.parameters(), model.parameters()):
                kept.lerp_(current, 1 - decay)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, settings.steps, losses[-1])
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < settings.steps:
            snapshot(_finished(average, settings, losses))
    return _finished(average, settings, losses), losses


def _finished(model: ToyModel, settings: ToyTrainSettings, losses: list[float]) -> ToyModel:
    model.flux.eval()
    model.text_encoder.eval()
    window = losses[-100:]
    model.info = {"trained": asdict(settings), "steps_done": len(losses), "final_loss": sum(window) / len(window),
                  "losses": [round(loss, 6) for loss in losses]}
    return model
