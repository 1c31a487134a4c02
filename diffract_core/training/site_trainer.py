"""One site's transcoder (or SAE) and everything that updates it: the objective, AdamW, the
schedules, gradient clipping, decoder renormalisation, dead-feature tracking and resampling.

Objective per step, on a global batch of B rows (the paper's):
    nmse = sum_rows ||y - y_hat||^2 / B / (sum_d Var_batch(y_d) + 1e-6)      (batch FVU)
    loss = nmse + l1(step) * sum_rows sum_i |z_i| / B
The decoder rows have unit norm after every step, so the L1 needs no decoder-norm weighting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..seeding import seeded_generator
from ..transcoders.config import SiteSpec, TimeEmbeddingSpec, TranscoderConfig
from ..transcoders.transcoder import Transcoder
from ..transcoders.transcoder_set import SiteKey
from .distributed import SiteGroup
from .settings import TrainSettings
from .shards import Batch

VARIANCE_EPS = 1e-6


@dataclass
class WindowStats:
    """Sums over the steps since the last log line (this rank's rows)."""

    nmse: float = 0.0
    l1: float = 0.0
    active: float = 0.0
    rows: int = 0

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.nmse, self.l1, self.active, self.rows], dtype=torch.float64)


class SiteTrainer:
    def __init__(
        self,
        site: SiteKey,
        d_model: int,
        settings: TrainSettings,
        group: SiteGroup,
        *,
        device: torch.device | str = "cpu",
        model_family: str = "flux.1",
    ) -> None:
        self.site, self.settings, self.group, self.device = site, settings, group, torch.device(device)
        config = TranscoderConfig(
            d_model=d_model,
            d_features=settings.features_for(d_model),
            site=SiteSpec(stream=site[0], layer=site[1], model_family=model_family),
            kind=settings.kind,
            time_embedding=TimeEmbeddingSpec(dim=settings.time_embed_dim, mlp_width=settings.time_mlp_width),
            activation=settings.activation,
            topk=settings.topk,
        )
        self.transcoder = Transcoder(config).reset_parameters(seeded_generator("init", settings.seed, *site))
        self.transcoder.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.transcoder.parameters(),
            lr=settings.lr,
            betas=(settings.adam_beta1, settings.adam_beta2),
            weight_decay=settings.weight_decay,
        )
        self.steps_since_fired = torch.zeros(config.d_features, dtype=torch.long, device=self.device)
        self.step = 0
        self.resampled = 0
        self.window = WindowStats()

    def _inputs(self, batch: Batch) -> torch.Tensor:
        return batch.y if self.settings.kind == "sae" else batch.x

    def train_step(self, batch: Batch) -> None:
        """One optimizer step on a global batch (every rank of the site passes the same batch)."""
        settings, transcoder = self.settings, self.transcoder
        batch = Batch(batch.x.to(self.device), batch.y.to(self.device), batch.sigma.to(self.device))
        rows = batch.x.shape[0]
        if self.step == 0 and settings.init_decoder_bias == "mean":
            with torch.no_grad():
                transcoder.b_dec.copy_(batch.y.mean(0))
        variance = batch.y.var(0, unbiased=False).sum() + VARIANCE_EPS
        local = batch.rows(self.group.part(rows))
        z, _ = transcoder.encode(self._inputs(local), local.sigma)
        squared_error = (local.y - transcoder.decode(z)).pow(2).sum(-1).sum()
        l1 = z.sum()  # z >= 0
        l1_coefficient = settings.l1_at(self.site[0], self.step)
        loss = (squared_error / variance + l1_coefficient * l1) / rows
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._reduce_gradients()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(transcoder.parameters(), settings.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = settings.lr_at(self.step)
        self.optimizer.step()
        with torch.no_grad():
            transcoder.W_dec.div_(transcoder.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            fired = self.group.all_reduce_((z > 0).any(0).to(torch.int32), dist.ReduceOp.MAX).bool()
            self.steps_since_fired = torch.where(fired, 0, self.steps_since_fired + 1)
            self.window.nmse += float(squared_error / variance)
            self.window.l1 += float(l1)
            self.window.active += float((z > 0).sum())
            self.window.rows += local.x.shape[0]
        if settings.resamples_at(self.step):
            self.resample(batch)
        self.step += 1

    def _reduce_gradients(self) -> None:
        if self.group.size == 1:
            return
        grads = [p.grad for p in self.transcoder.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.group.all_reduce_(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    @property
    def dead(self) -> torch.Tensor:
        return self.steps_since_fired >= self.settings.dead_after_steps

    @torch.no_grad()
    def resample(self, batch: Batch) -> int:
        """Re-initialise dead features towards the rows the transcoder reconstructs worst: rows are
        drawn with probability proportional to their squared error squared; a dead feature's decoder
        row becomes that row's normalised residual, its encoder row the row's (FiLM-modulated) input
        direction at `resample_encoder_scale` times the mean alive encoder norm, its bias 0, and its
        Adam moments are cleared. Computed by the site's first rank and broadcast to the others."""
        dead = self.dead
        count = int(dead.sum())
        if not count:
            return 0
        transcoder, settings = self.transcoder, self.settings
        inputs = self._inputs(batch)
        new_encoder = torch.empty(count, transcoder.d_model, device=self.device)
        new_decoder = torch.empty_like(new_encoder)
        if self.group.is_leader:
            modulated = transcoder.modulate(inputs, batch.sigma).float()
            residual = batch.y - transcoder(inputs, batch.sigma)
            weights = residual.pow(2).sum(-1).double().pow(2).cpu() + 1e-30
            generator = seeded_generator("resample", settings.seed, *self.site, self.step)
            chosen = torch.multinomial(weights, count, replacement=True, generator=generator).to(self.device)
            alive = transcoder.W_enc[~dead]
            scale = float(alive.norm(dim=-1).mean()) if alive.shape[0] else 1.0
            new_decoder.copy_(F.normalize(residual[chosen], dim=-1))
            new_encoder.copy_(F.normalize(modulated[chosen], dim=-1) * scale * settings.resample_encoder_scale)
        self.group.broadcast_(new_encoder)
        self.group.broadcast_(new_decoder)
        transcoder.W_enc[dead] = new_encoder
        transcoder.W_dec[dead] = new_decoder
        transcoder.b_enc[dead] = 0.0
        for parameter in (transcoder.W_enc, transcoder.W_dec, transcoder.b_enc):
            for moment in self.optimizer.state.get(parameter, {}).values():
                if torch.is_tensor(moment) and moment.shape[:1] == dead.shape:
                    moment[dead] = 0.0
        self.steps_since_fired[dead] = 0
        self.resampled += count
        return count

    def take_window(self) -> dict[str, float]:
        """The metrics since the last call, reduced over the site's ranks; starts a new window."""
        sums = self.group.all_reduce_(self.window.as_tensor().to(self.device)).cpu()
        nmse, l1, active, rows = sums.tolist()
        self.window = WindowStats()
        return {
            "nmse": nmse / max(rows, 1),  # each step adds its rows' squared error / the batch variance
            "l0": active / max(rows, 1),
            "l1": l1 / max(rows, 1),
            "dead_fraction": float(self.dead.float().mean()),
            "resampled": self.resampled,
            "lr": self.settings.lr_at(max(self.step - 1, 0)),
            "l1_coefficient": self.settings.l1_at(self.site[0], max(self.step - 1, 0)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "transcoder": self.transcoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps_since_fired": self.steps_since_fired,
            "step": self.step,
            "resampled": self.resampled,
            "window": self.window.as_tensor(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.transcoder.load_state_dict(state["transcoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_since_fired = state["steps_since_fired"].to(self.device)
        self.step = int(state["step"])
        self.resampled = int(state["resampled"])
        values = state["window"].tolist()
        self.window = WindowStats(values[0], values[1], values[2], int(values[3]))
