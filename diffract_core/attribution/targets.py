"""What a circuit explains: one feature's pre-activation at a position, at its strongest position,
or summed over an image region; or the strongest feature of a region."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..errors import DiffractError
from ..features import FeatureRef
from ..spatial import Grid, mask_to_token_weights
from ..transcoders.config import Stream
from .replacement import ReplacementModel
from .tracer import RootTarget

TargetMode = Literal["position", "argmax", "region", "strongest_in_region"]
TARGET_MODES: tuple[TargetMode, ...] = ("argmax", "position", "region", "strongest_in_region")
TARGET_HELP = (
    "argmax: the feature at the token where its pre-activation is largest; position: at one token; "
    "region: summed over the image tokens of the mask where it fires; strongest_in_region: the feature of "
    "this site with the largest activation inside the mask"
)


@dataclass(frozen=True)
class TargetSpec:
    stream: Stream
    layer: int
    feature: int | None = None  # None only for strongest_in_region
    mode: TargetMode = "argmax"
    position: int | None = None  # token index in the stream (image tokens row-major)
    region: torch.Tensor | None = None  # a MASK of the generated image, [H, W] or [1, H, W]
    against: int | None = None  # a contrastive target: the feature minus this feature of the same site

    def __post_init__(self) -> None:
        if self.mode not in TARGET_MODES:
            raise DiffractError(f"target mode {self.mode!r} is not one of {', '.join(TARGET_MODES)}")
        if self.mode != "strongest_in_region" and self.feature is None:
            raise DiffractError(f"a {self.mode} target needs a feature (stream:layer:feature)")
        if self.mode == "position" and self.position is None:
            raise DiffractError("a position target needs a token position")
        if self.against is not None and (self.against == self.feature or self.mode == "strongest_in_region"):
            raise DiffractError("a contrastive target needs a named feature and another feature of the same site "
                                "to subtract")
        if self.mode in ("region", "strongest_in_region"):
            if self.region is None:
                raise DiffractError(f"a {self.mode} target needs a MASK region: connect one")
            if self.stream != "img":
                raise DiffractError("a region target needs an image-stream feature (img:...): "
                                    "text tokens have no region")

    @classmethod
    def from_ref(cls, ref: FeatureRef, mode: TargetMode = "argmax", **kwargs: object) -> TargetSpec:
        return cls(ref.stream, ref.layer, ref.index, mode, **kwargs)  # type: ignore[arg-type]


def describe_position(stream: Stream, position: int, grid: Grid | None) -> str:
    if stream == "img" and grid is not None:
        return f"image token {position} (row {position // grid[1]}, col {position % grid[1]})"
    return f"{stream} token {position}"


@torch.no_grad()
def resolve_target(model: ReplacementModel, spec: TargetSpec, grid: Grid | None) -> RootTarget:
    """The root row of a graph for `spec` in the traced call of `model`."""
    site = (spec.stream, spec.layer)
    if spec.layer != model.last_layer:
        raise DiffractError(f"the replacement model was built up to layer {model.last_layer}, "
                            f"not the target's {spec.layer}")
    transcoder = model.transcoder_at(site)
    x = model.mlp_inputs[site][0]
    tokens = x.shape[0]
    feature = spec.feature
    if spec.mode == "strongest_in_region":
        feature = _strongest(model, site, x, _region_weights(spec, grid, tokens).to(model.device, model.dtype))
    assert feature is not None
    if not 0 <= feature < transcoder.d_features:
        raise DiffractError(
            f"feature {feature} is out of range: the {spec.stream} transcoder at layer {spec.layer} has "
            f"{transcoder.d_features} features (0..{transcoder.d_features - 1})"
        )
    pre = transcoder.feature_preactivation(x.to(transcoder.dtype), model.sigma, feature).to(model.dtype)
    name = f"{spec.stream}:{spec.layer}:{feature}"
    if spec.mode in ("position", "argmax"):
        position = int(torch.argmax(pre)) if spec.mode == "argmax" else int(spec.position)  # type: ignore[arg-type]
        if not 0 <= position < tokens:
            raise DiffractError(f"position {position} is outside the {tokens} {spec.stream} tokens (0..{tokens - 1})")
        weights = torch.zeros(tokens, dtype=model.dtype, device=model.device)
        weights[position] = 1.0
        label = f"{name} at {describe_position(spec.stream, position, grid)}"
    else:
        region = _region_weights(spec, grid, tokens).to(model.device, model.dtype)
        weights = region * (pre > 0)
        if not bool(weights.any()):
            strongest = _strongest(model, site, x, region)
            raise DiffractError(
                f"feature {name} does not fire inside the region at this step; the strongest feature there is "
                f"{spec.stream}:{spec.layer}:{strongest} (or use the strongest_in_region target)"
            )
        label = f"{name} summed over the region ({int((weights > 0).sum())} tokens)"
    row = model.feature_row(spec.stream, spec.layer, feature, weights)
    if spec.against is not None:
        if not 0 <= spec.against < transcoder.d_features:
            raise DiffractError(f"feature {spec.against} to subtract is out of range (0..{transcoder.d_features - 1})")
        other = model.feature_row(spec.stream, spec.layer, spec.against, weights)
        row = replace(row, direction=row.direction - other.direction, constant=row.constant - other.constant)
        label = f"{label} minus {spec.stream}:{spec.layer}:{spec.against}"
    positions = torch.nonzero(weights).flatten()
    return RootTarget(row, feature, label, positions, weights[positions])


def _region_weights(spec: TargetSpec, grid: Grid | None, tokens: int) -> torch.Tensor:
    assert spec.region is not None
    if grid is None:
        raise DiffractError("the traced call did not record its image-token grid, so a region cannot be placed")
    weights = mask_to_token_weights(spec.region, grid, "target's region")
    if weights.numel() != tokens:
        raise DiffractError(
            f"the region covers {weights.numel()} image tokens but the traced call has {tokens}: "
            "the model appends tokens to the image (reference latents?); use a position target"
        )
    if not bool(weights.any()):
        raise DiffractError("the region MASK is empty (all zero): paint the region to trace")
    return weights


def _strongest(model: ReplacementModel, site: tuple[Stream, int], x: torch.Tensor, weights: torch.Tensor) -> int:
    transcoder = model.transcoder_at(site)
    inside = torch.nonzero(weights).flatten()
    z, _ = transcoder.encode(x[inside].to(transcoder.dtype), model.sigma)
    scores = (z.to(weights.dtype) * weights[inside, None].to(z.device, weights.dtype)).sum(0)
    return int(torch.argmax(scores))
