"""Hyper-parameters of a FLUX.1 transformer, named as in Black Forest Labs' ``FluxParams``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ShapeMismatchError


@dataclass(frozen=True)
class FluxConfig:
    """Size of a FLUX.1 MM-DiT. The defaults are FLUX.1 schnell.

    ``in_channels`` counts the patchified channels fed to ``img_in`` (latent channels * patch_size**2);
    ``out_channels`` counts latent channels, so the final layer emits ``out_channels * patch_size**2``.
    """

    in_channels: int = 64
    out_channels: int = 16
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = False
    patch_size: int = 2

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep the frozen config hashable.
        object.__setattr__(self, "axes_dim", tuple(int(a) for a in self.axes_dim))
        self._check_positive()
        self._check_heads()
        self._check_channels()

    def _check_positive(self) -> None:
        for name in (
            "in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size", "num_heads",
            "depth", "depth_single_blocks", "theta", "patch_size",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ShapeMismatchError(
                    f"FluxConfig.{name} must be a positive integer, got {value}; set it to 1 or more."
                )
        if self.mlp_ratio <= 0 or int(self.hidden_size * self.mlp_ratio) < 1:
            raise ShapeMismatchError(
                f"FluxConfig.mlp_ratio={self.mlp_ratio} gives an empty MLP for hidden_size={self.hidden_size}; "
                "use a positive ratio such as 4.0."
            )

    def _check_heads(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ShapeMismatchError(
                f"FluxConfig.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads that divides hidden_size (head dim = hidden_size / num_heads)."
            )
        if len(self.axes_dim) != 3:
            raise ShapeMismatchError(
                f"FluxConfig.axes_dim={self.axes_dim} must have 3 entries, one per position id axis "
                "(index, row, column), e.g. (16, 56, 56)."
            )
        odd = [a for a in self.axes_dim if a < 2 or a % 2]
        if odd:
            raise ShapeMismatchError(
                f"FluxConfig.axes_dim={self.axes_dim} has entries {odd} that are not positive and even; "
                "RoPE rotates pairs of channels, so make every axis an even number >= 2."
            )
        if sum(self.axes_dim) != self.head_dim:
            raise ShapeMismatchError(
                f"FluxConfig.axes_dim={self.axes_dim} sums to {sum(self.axes_dim)} but the head dim "
                f"hidden_size/num_heads is {self.head_dim}; make the axes sum to the head dim."
            )

    def _check_channels(self) -> None:
        patch_area = self.patch_size * self.patch_size
        if self.in_channels % patch_area:
            raise ShapeMismatchError(
                f"FluxConfig.in_channels={self.in_channels} is not a multiple of patch_size**2={patch_area}; "
                "in_channels counts patchified channels, i.e. latent channels * patch_size**2."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent image that ``Flux.forward`` patchifies into ``in_channels``."""
        return self.in_channels // (self.patch_size * self.patch_size)

    @classmethod
    def flux1_schnell(cls) -> FluxConfig:
        return cls()

    @classmethod
    def flux1_dev(cls) -> FluxConfig:
        return cls(guidance_embed=True)

    @classmethod
    def tiny(cls, **overrides: Any) -> FluxConfig:
        """A few-kilobyte model for tests: 2 heads of 32 channels, 2 double and 2 single blocks."""
        base = cls(
            in_channels=16,
            out_channels=4,
            vec_in_dim=32,
            context_in_dim=48,
            hidden_size=64,
            num_heads=2,
            depth=2,
            depth_single_blocks=2,
            axes_dim=(8, 12, 12),
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``axes_dim`` as a list)."""
        data = asdict(self)
        data["axes_dim"] = list(self.axes_dim)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FluxConfig:
        return cls(**data)
