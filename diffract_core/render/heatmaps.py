"""Feature heatmaps over the generated image, in torch alone (no plotting or imaging library).

Activation maps live on the image-token grid; they are normalised, upsampled to the image, coloured
with a small built-in inferno-like ramp and blended over the image with alpha = opacity * activation,
so pixels where the feature is silent keep the image as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import DiffractError, FeatureIndexError, InputShapeError
from ..features import FeatureRef
from ..recording import COND, FeatureRecording
from ..spatial import UpsampleMode, check_aspect, check_grid, token_map_to_image
from ..transcoders.transcoder_set import SiteKey

Normalize = Literal["per_feature", "per_map", "global"]
NORMALIZE_MODES: tuple[Normalize, ...] = ("per_feature", "per_map", "global")

# Six points of matplotlib's inferno, evenly spaced from 0 to 1.
INFERNO_ANCHORS = (
    (0.0015, 0.0005, 0.0139),
    (0.2582, 0.0386, 0.4065),
    (0.5783, 0.1480, 0.4044),
    (0.8650, 0.3168, 0.2261),
    (0.9876, 0.6453, 0.0399),
    (0.9884, 0.9984, 0.6449),
)


def colorize(values: torch.Tensor, anchors: Sequence[Sequence[float]] = INFERNO_ANCHORS) -> torch.Tensor:
    """Values in [0, 1] (clamped), shape [..., H, W], to RGB [..., H, W, 3] along a piecewise-linear ramp."""
    ramp = torch.tensor(anchors, dtype=torch.float32, device=values.device)
    position = values.float().clamp(0, 1) * (len(ramp) - 1)
    colors = position.new_zeros(*position.shape, 3)
    weight = torch.empty_like(position)
    # Each anchor weighs in with a hat function of the distance to it: elementwise passes over the
    # pixels run several times faster on the CPU than gathering anchor pairs by index.
    for i, anchor in enumerate(ramp):
        torch.sub(position, i, out=weight).abs_().neg_().add_(1).clamp_(min=0)
        colors.addcmul_(weight.unsqueeze(-1), anchor)
    return colors


def normalize_maps(maps: torch.Tensor, normalize: Normalize = "per_feature") -> torch.Tensor:
    """Scale activation maps [features, steps, tokens] into [0, 1]; all-zero maps stay zero.

    per_feature: one scale per feature over all its steps (steps stay comparable); per_map: every
    (feature, step) map on its own; global: one scale for everything.
    """
    if normalize not in NORMALIZE_MODES:
        raise DiffractError(f"normalisation {normalize!r} is unknown: use one of {', '.join(NORMALIZE_MODES)}")
    maps = maps.float().clamp(min=0)
    dims = {"per_feature": (1, 2), "per_map": (2,), "global": (0, 1, 2)}[normalize]
    peak = maps.amax(dim=dims, keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(maps))


def blend(image: torch.Tensor, activation: torch.Tensor, opacity: float) -> torch.Tensor:
    """Image [..., H, W, 3] under the coloured activation [..., H, W] with alpha = opacity * activation."""
    return torch.lerp(image, colorize(activation), (opacity * activation).unsqueeze(-1))


def image_grid_of(recording: FeatureRecording) -> tuple[int, int]:
    """The recording's (rows, cols) of image tokens, or a DiffractError if it never saw an image."""
    if recording.image_grid is None:
        raise DiffractError(
            "this recording has no image grid (it saw no image tokens): record a run with Record Features first"
        )
    return check_grid(recording.image_grid)


def _pick_image(images: torch.Tensor, batch_index: int) -> torch.Tensor:
    if images.dim() != 4 or images.shape[-1] != 3:
        raise InputShapeError(
            f"an IMAGE is a [batch, H, W, 3] tensor, got shape {tuple(images.shape)}: connect a ComfyUI IMAGE output"
        )
    if images.shape[0] == 1:
        return images[0].float()
    if not 0 <= batch_index < images.shape[0]:
        raise InputShapeError(
            f"batch_index {batch_index} is outside the IMAGE batch of {images.shape[0]}: "
            f"pick 0..{images.shape[0] - 1}"
        )
    return images[batch_index].float()


def _check_image_features(features: Sequence[FeatureRef]) -> None:
    if not features:
        raise DiffractError("no feature given: name at least one image-stream feature, e.g. img:12:40684")
    text = [str(f) for f in features if f.stream != "img"]
    if text:
        raise DiffractError(
            f"{', '.join(text)} {'is a text-stream feature' if len(text) == 1 else 'are text-stream features'}: "
            "heatmaps show image tokens only; look text features up with top features (one row per prompt token)"
        )


def site_codes(
    recording: FeatureRecording, site: SiteKey, step: int, chunk: int, batch_index: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One batch item's codes at a site and step: (indices [tokens, k] long, values [tokens, k] fp32, d_features)."""
    codes = recording.codes(site, step, chunk)
    batch = codes.indices.shape[0]
    if not 0 <= batch_index < batch:
        raise InputShapeError(
            f"batch_index {batch_index} is outside the recorded batch of {batch}: pick 0..{batch - 1}"
        )
    return codes.indices[batch_index].long(), codes.values[batch_index].float(), codes.d_features


def check_image_tokens(site: SiteKey, tokens: int, grid: tuple[int, int]) -> None:
    if tokens != grid[0] * grid[1]:
        raise InputShapeError(
            f"{site[0]}:{site[1]} recorded {tokens} image tokens but the image grid is {grid[0]}x{grid[1]} = "
            f"{grid[0] * grid[1]}: the recording's image_grid does not match its codes; record the run again"
        )


def activation_maps(
    recording: FeatureRecording,
    features: Sequence[FeatureRef],
    steps: Sequence[int],
    chunk: int = COND,
    batch_index: int = 0,
) -> torch.Tensor:
    """Raw activations [features, steps, tokens] of image-stream features (0 where not in the top k)."""
    grid = image_grid_of(recording)
    maps = torch.zeros(len(features), len(steps), grid[0] * grid[1])
    for i, feature in enumerate(features):
        for j, step in enumerate(steps):
            indices, values, d_features = site_codes(recording, feature.site, step, chunk, batch_index)
            if feature.index >= d_features:
                raise FeatureIndexError(
                    f"feature {feature} is out of range: the img transcoder at layer {feature.layer} has "
                    f"{d_features} features (0..{d_features - 1})"
                )
            check_image_tokens(feature.site, indices.shape[0], grid)
            maps[i, j] = torch.where(indices == feature.index, values, 0.0).sum(-1)
    return maps


def render_feature_heatmaps(
    recording: FeatureRecording,
    images: torch.Tensor,
    features: Sequence[FeatureRef],
    steps: Sequence[int] | None = None,
    chunk: int = COND,
    batch_index: int = 0,
    opacity: float = 0.6,
    normalize: Normalize = "per_feature",
    mode: UpsampleMode = "nearest",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One overlay per (feature, step), feature-major: (overlays [n, H, W, 3], masks [n, H, W]).

    The masks are the normalised activation maps at image resolution; `steps=None` takes every
    recorded step.
    """
    _check_image_features(features)
    grid = image_grid_of(recording)
    if not 0 <= opacity <= 1:
        raise DiffractError(f"opacity {opacity} is outside [0, 1]: 0 shows the image alone, 1 the heatmap alone")
    image = _pick_image(images, batch_index)
    height, width = image.shape[:2]
    check_aspect(height, width, grid, "image")
    steps = list(recording.steps if steps is None else steps)
    if not steps:
        raise DiffractError("this recording holds no steps: run the sampler with Record Features first")

    maps = normalize_maps(activation_maps(recording, features, steps, chunk, batch_index), normalize)
    masks = token_map_to_image(maps.flatten(0, 1).to(image.device), grid, (height, width), mode)
    overlays = blend(image.unsqueeze(0), masks, opacity)
    return overlays.clamp(0, 1), masks
