"""Feature steering in delta form: y' = y + W_dec^T (z' - z).

Only the steered features are encoded (one encoder row each), and the MLP output is changed by
exactly the decoder-weighted change of their activations, so a setting that leaves z' = z (scale
1, add 0) leaves the output bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputShapeError
from ..features import FeatureRef
from ..transcoders.transcoder import Transcoder
from .recording import COND, UNCOND

SteerMode = Literal["scale", "set", "add", "ablate"]
STEER_MODES: tuple[SteerMode, ...] = ("scale", "set", "add", "ablate")


@dataclass(frozen=True)
class SteeringSpec:
    """Change some features' activations while sigma_end <= sigma <= sigma_start, on the chosen
    chunks, at image tokens weighted by `token_mask` (None: every token)."""

    features: tuple[FeatureRef, ...]
    mode: SteerMode
    strength: float = 1.0
    sigma_start: float = math.inf
    sigma_end: float = 0.0
    token_mask: torch.Tensor | None = None  # [image tokens], weights in [0, 1]; image-stream features only
    chunks: frozenset[int] = frozenset({COND, UNCOND})

    def __post_init__(self) -> None:
        if self.mode not in STEER_MODES:
            raise ValueError(f"steering mode {self.mode!r} is not one of {STEER_MODES}")
        if self.sigma_end > self.sigma_start:
            raise ValueError(f"sigma window is empty: sigma_end {self.sigma_end} > sigma_start {self.sigma_start}")

    @property
    def is_noop(self) -> bool:
        return (self.mode == "scale" and self.strength == 1.0) or (self.mode == "add" and self.strength == 0.0)

    def active_at(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def steered_codes(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "scale":
            return z * self.strength
        if self.mode == "add":
            return z + self.strength
        if self.mode == "set":
            return torch.full_like(z, self.strength)
        return torch.zeros_like(z)

    def delta(self, transcoder: Transcoder, x: torch.Tensor, sigma: float) -> torch.Tensor | None:
        """The change of the MLP output for input rows x ([batch, tokens, d_model]), or None when
        this spec does not touch this site here."""
        site = transcoder.config.site.key
        index = [ref.index for ref in self.features if ref.site == site]
        if not index or self.is_noop or not self.active_at(sigma):
            return None
        z = torch.relu(transcoder.feature_preactivation(x, sigma, index))  # [batch, tokens, n]
        change = self.steered_codes(z) - z
        if self.token_mask is not None and site[0] == "img":
            if self.token_mask.numel() != x.shape[-2]:
                raise InputShapeError(
                    f"the steering mask covers {self.token_mask.numel()} image tokens but the image has "
                    f"{x.shape[-2]}: give a mask of the generated image's size (one value per 2x2 latent patch)"
                )
            change = change * self.token_mask.to(change.device, change.dtype)[None, :, None]
        return torch.matmul(change, transcoder.decoder_vectors(index))
