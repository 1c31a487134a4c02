"""How good a trained transcoder is.

- Per site, on held-out activations: FVU (fraction of variance unexplained, overall and per sigma
  bucket, each bucket against its own variance), L0 (mean active features per token) and the
  fraction of features that never fire.
- The spliced-in test of the paper: generate with every trained site's MLP replaced by its
  transcoder alone (no error term) and compare the final latents with the original model's
  (per-image MSE and cosine), from the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..flux.model import Flux
from ..flux.sampling import euler_sample, flux_sigmas
from ..recording.reference import patch_reference_model
from ..transcoders.transcoder import Transcoder
from ..transcoders.transcoder_set import TranscoderSet
from .harvest import HarvestSettings, prompt_noise
from .prompts import PromptEncoder
from .shards import ActivationShards


def sigma_bucket_edges(buckets: int) -> list[float]:
    return [i / buckets for i in range(buckets + 1)]


def bucket_label(low: float, high: float) -> str:
    return f"({low:g}, {high:g}]" if low > 0 else f"[0, {high:g}]"


@dataclass
class _Sums:
    """fp64 sums from which FVU follows: rows, sum y, sum |y|^2, sum |y - y_hat|^2."""

    rows: int = 0
    y: torch.Tensor | None = None
    y_squared: float = 0.0
    error: float = 0.0

    def add(self, y: torch.Tensor, error: torch.Tensor) -> None:
        y = y.double()
        self.rows += y.shape[0]
        self.y = y.sum(0) if self.y is None else self.y + y.sum(0)
        self.y_squared += float(y.pow(2).sum())
        self.error += float(error.double().pow(2).sum())

    def fvu(self) -> float:
        if not self.rows or self.y is None:
            return float("nan")
        variance = self.y_squared - float(self.y.pow(2).sum()) / self.rows
        return self.error / max(variance, 1e-30)


@dataclass
class SiteMetrics:
    site: str
    kind: str
    rows: int
    fvu: float
    fvu_by_sigma: dict[str, dict[str, float]] = field(default_factory=dict)  # bucket -> {rows, fvu}
    l0: float = 0.0
    l0_fraction: float = 0.0  # l0 / d_features
    dead_fraction: float = 0.0  # features that fired on none of the rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def site_metrics(
    transcoder: Transcoder, shards: ActivationShards, *, sigma_buckets: int = 4, chunk_rows: int = 4096
) -> SiteMetrics:
    """FVU, L0 and dead fraction of `transcoder` on every row of `shards` (its held-out split)."""
    edges = sigma_bucket_edges(sigma_buckets)
    total, buckets = _Sums(), [_Sums() for _ in range(sigma_buckets)]
    fired = torch.zeros(transcoder.d_features, dtype=torch.bool, device=transcoder.device)
    active = 0
    reads_output = transcoder.config.input_point == "mlp_out"
    for batch in shards.sequential(chunk_rows):
        x, y, sigma = (t.to(transcoder.device) for t in (batch.x, batch.y, batch.sigma))
        z, _ = transcoder.encode(y if reads_output else x, sigma)
        error = y - transcoder.decode(z).float()
        total.add(y, error)
        positive = z > 0
        fired |= positive.any(0)
        active += int(positive.sum())
        index = torch.bucketize(sigma, torch.tensor(edges[1:-1], device=sigma.device), right=False)
        for bucket in range(sigma_buckets):
            rows = index == bucket
            if bool(rows.any()):
                buckets[bucket].add(y[rows], error[rows])
    site = transcoder.config.site
    return SiteMetrics(
        site=f"{site.stream}_{site.layer}",
        kind=transcoder.config.kind,
        rows=total.rows,
        fvu=total.fvu(),
        fvu_by_sigma={
            bucket_label(edges[i], edges[i + 1]): {"rows": sums.rows, "fvu": sums.fvu()}
            for i, sums in enumerate(buckets)
            if sums.rows
        },
        l0=active / max(total.rows, 1),
        l0_fraction=active / max(total.rows, 1) / transcoder.d_features,
        dead_fraction=1.0 - float(fired.float().mean()),
    )


@dataclass
class SplicedFidelity:
    prompts: int
    latent_mse: float  # mean over images of the mean squared difference of final latents
    latent_cosine: float  # mean over images of the cosine between flattened final latents
    per_prompt: list[dict[str, Any]] = field(default_factory=list)  # prompt, latent_mse, latent_cosine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def spliced_fidelity(
    model: Flux,
    encoder: PromptEncoder,
    transcoders: TranscoderSet,
    prompts: Sequence[str],
    sampling: HarvestSettings,
    *,
    batch_size: int = 8,
) -> SplicedFidelity:
    """Generate `prompts` twice from the same noise: with the original model, and with every site of
    `transcoders` replaced by the transcoder alone (no error term, every step)."""
    parameters = next(model.parameters())
    sigmas = flux_sigmas(sampling.steps, sampling.shift).to(parameters.device)
    height, width = sampling.latent_size
    per_prompt = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        noise = torch.stack([prompt_noise(p, sampling.seed, (model.config.latent_channels, height, width))
                             for p in batch])
        context, pooled = encoder(batch)
        args = (noise.to(parameters.device), context.to(parameters.device, parameters.dtype),
                pooled.to(parameters.device, parameters.dtype), sigmas)
        original = euler_sample(model, *args, guidance=sampling.guidance)
        with patch_reference_model(model, transcoders, mode="replace_without_error"):
            spliced = euler_sample(model, *args, guidance=sampling.guidance)
        mse = (spliced - original).pow(2).flatten(1).mean(1)
        cosine = F.cosine_similarity(spliced.flatten(1), original.flatten(1), dim=1)
        per_prompt += [{"prompt": p, "latent_mse": float(m), "latent_cosine": float(c)}
                       for p, m, c in zip(batch, mse, cosine)]
    return SplicedFidelity(
        prompts=len(per_prompt),
        latent_mse=sum(r["latent_mse"] for r in per_prompt) / max(len(per_prompt), 1),
        latent_cosine=sum(r["latent_cosine"] for r in per_prompt) / max(len(per_prompt), 1),
        per_prompt=per_prompt,
    )
