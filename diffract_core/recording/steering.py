"""Feature steering in delta form: y' = y + W_dec^T (z' - z).

Only the steered features are encoded (one encoder row each), and the MLP output is changed by
exactly the decoder-weighted change of their activations, so a setting that leaves z' = z (scale
1, add 0) leaves the output bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from ..errors import DiffractError, InputShapeError, SettingsError
from ..features import FeatureRef
from ..spatial import Grid, mask_to_token_weights
from ..transcoders.transcoder import Transcoder
from .recording import COND, UNCOND


class Steering(Protocol):
    """What a patched MLP applies: the features it touches, the chunks it acts on, and the change of
    the MLP output it makes for input rows x ([batch, tokens, d_model]) at `sigma` (None: nothing
    here). SteeringSpec, attribution's CircuitSteering and PerImageSteering are the three kinds."""

    @property
    def features(self) -> tuple[FeatureRef, ...]: ...

    @property
    def chunks(self) -> frozenset[int]: ...

    def delta(self, transcoder: Transcoder, x: torch.Tensor, sigma: float,
              grid: Grid | None = None) -> torch.Tensor | None: ...


SteerMode = Literal["scale", "set", "add", "ablate"]
STEER_MODES: tuple[SteerMode, ...] = ("scale", "set", "add", "ablate")


@dataclass(frozen=True)
class SteeringSpec:
    """Change some features' activations while sigma_end <= sigma <= sigma_start, on the chosen
    chunks, at image tokens weighted by `mask` (None: every token).

    The mask is a picture of the generated image ([H, W] or [1, H, W], values in [0, 1], e.g. a
    ComfyUI MASK); it is area-averaged onto the image-token grid of each model call, so one spec
    fits any resolution of the same aspect ratio. It applies to image-stream features only.
    `mask_name` names the mask in the error a mask of another aspect raises mid-sampling (e.g. the
    node input it came from).
    """

    features: tuple[FeatureRef, ...]
    mode: SteerMode
    strength: float = 1.0
    sigma_start: float = math.inf
    sigma_end: float = 0.0
    mask: torch.Tensor | None = None
    chunks: frozenset[int] = frozenset({COND, UNCOND})
    mask_name: str = "steering mask"
    _token_weights: dict[Grid, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in STEER_MODES:
            raise SettingsError(f"steering mode {self.mode!r} is not one of {STEER_MODES}")
        if self.sigma_end > self.sigma_start:
            raise SettingsError(f"sigma window is empty: sigma_end {self.sigma_end} > sigma_start {self.sigma_start}")

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

    def token_weights(self, grid: Grid | None, tokens: int) -> torch.Tensor:
        """The mask on the image-token grid of this call: [tokens] weights in [0, 1]."""
        if self.mask is None:
            raise DiffractError("this steering spec has no mask")
        if grid is None:
            raise DiffractError(
                "a masked steering spec ran in a model call that did not publish its image-token grid: "
                "patch the model through the DifFRACT nodes or patch_reference_model"
            )
        if grid not in self._token_weights:
            self._token_weights[grid] = mask_to_token_weights(self.mask, grid, self.mask_name)
        weights = self._token_weights[grid]
        if weights.numel() != tokens:
            raise InputShapeError(
                f"the steering mask covers {weights.numel()} image tokens ({grid[0]}x{grid[1]}) but the MLP saw "
                f"{tokens}: this model appends tokens to the image (reference latents?); steer without a mask"
            )
        return weights

    def delta(
        self, transcoder: Transcoder, x: torch.Tensor, sigma: float, grid: Grid | None = None
    ) -> torch.Tensor | None:
        """The change of the MLP output for input rows x ([batch, tokens, d_model]), or None when
        this spec does not touch this site here. `grid` is the call's (rows, cols) of image tokens."""
        site = transcoder.config.site.key
        index = [ref.index for ref in self.features if ref.site == site]
        if not index or self.is_noop or not self.active_at(sigma):
            return None
        z = transcoder.feature_activation(x, sigma, index)  # [batch, tokens, n]
        change = self.steered_codes(z) - z
        if self.mask is not None and site[0] == "img":
            weights = self.token_weights(grid, x.shape[-2])
            change = change * weights.to(change.device, change.dtype)[None, :, None]
        return torch.matmul(change, transcoder.decoder_vectors(index, dtype=change.dtype, device=change.device))


@dataclass(frozen=True)
class PerImageSteering:
    """Each image of a batch steered its own way: `by_image[i]` holds the steerings of batch row i
    (of each chunk), so one run steers many images differently, each as if it were alone."""

    by_image: tuple[tuple[Steering, ...], ...]
    chunks: frozenset[int] = frozenset({COND, UNCOND})

    def __post_init__(self) -> None:
        for steerings in self.by_image:
            for steering in steerings:
                if not self.chunks <= steering.chunks:
                    raise SettingsError(f"a steering of this batch acts on chunks {sorted(steering.chunks)} only, "
                                        f"not on all of {sorted(self.chunks)}: "
                                        "give PerImageSteering the chunks they share")

    @property
    def features(self) -> tuple[FeatureRef, ...]:
        return tuple(dict.fromkeys(ref for steerings in self.by_image for s in steerings for ref in s.features))

    def delta(self, transcoder: Transcoder, x: torch.Tensor, sigma: float,
              grid: Grid | None = None) -> torch.Tensor | None:
        if len(self.by_image) > x.shape[0]:
            raise InputShapeError(f"steerings for {len(self.by_image)} images, but the batch holds {x.shape[0]}")
        site = transcoder.config.site.key
        out = None
        for row, steerings in enumerate(self.by_image):
            for steering in steerings:
                if not any(ref.site == site for ref in steering.features):
                    continue
                delta = steering.delta(transcoder, x[row : row + 1], sigma, grid)
                if delta is None:
                    continue
                if out is None:
                    out = delta.new_zeros(*x.shape[:-1], delta.shape[-1])
                out[row] += delta[0]
        return out
