"""Every hyper-parameter of a training run, with its default and meaning (the `[train]` table of
a config file). Defaults follow the DifFRACT paper where it sets one (L1 coefficients, AdamW
learning rate, cosine schedule, batch size, unit-norm decoder); the rest are what the reference
lacks, with conservative defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..errors import SettingsError
from ..transcoders.config import KINDS, Kind, Stream, dtype_from_name
from ..typed_dicts import checked_keys


@dataclass(frozen=True)
class TrainSettings:
    kind: Kind = "transcoder"  # "transcoder" learns x -> y (MLP input -> output); "sae" learns y -> y
    expansion_factor: int = 16  # d_features = expansion_factor * d_model (FLUX: 16 * 3072 = 49152)
    d_features: int | None = None  # set to override expansion_factor
    activation: Literal["relu", "topk"] = "relu"  # "relu" (the paper's), or "topk": keep the `topk` largest codes
    #                                               per token
    topk: int | None = None  # k of the TopK variant (the L1 penalty is then off: sparsity is fixed)
    steps: int = 62_500  # optimizer steps per site (the paper: 256 cycles x 244 steps)
    batch_size: int = 4096  # token rows per step and site (split across a site's ranks)
    lr: float = 2e-4  # AdamW learning rate (the paper's, both streams)
    lr_warmup_steps: int = 0  # linear warm-up of the learning rate from 0
    lr_final_fraction: float = 0.0  # the cosine schedule ends at lr * this
    adam_beta1: float = 0.9  # AdamW betas (PyTorch's defaults, as the paper)
    adam_beta2: float = 0.999  # (second moment)
    weight_decay: float = 0.0  # AdamW weight decay (the paper: 0)
    l1_img: float = 3e-4  # L1 coefficient for image-stream sites (the paper's)
    l1_txt: float = 5e-5  # L1 coefficient for text-stream sites (the paper's)
    l1_warmup_steps: int = 0  # the L1 coefficient ramps linearly from 0 over these steps (0: off)
    grad_clip: float = 1.0  # clip the global gradient norm of a site's parameters (0: off)
    init_decoder_bias: str = "mean"  # "mean": b_dec starts at the first batch's mean target; "zero"
    dead_after_steps: int = 1000  # a feature that fired in none of these many steps counts as dead
    resample_every: int = 2500  # every this many steps, re-initialise dead features (0: never)
    resample_until: float = 0.7  # no resampling after this fraction of the steps
    resample_encoder_scale: float = 0.2  # a resampled encoder row's norm, relative to the mean alive one
    time_embed_dim: int = 256  # sinusoidal embedding of sigma (the released transcoders: 256)
    time_mlp_width: int = 256  # width of the time MLP between the embedding and the FiLM head
    mix_shards: int = 4  # shards whose rows are shuffled together when reading
    log_every: int = 50  # steps between lines of metrics.jsonl
    checkpoint_every: int = 1000  # steps between resumable checkpoints (the last step always saves)
    seed: int = 0  # initialisation, data order and resampling
    export_dtype: str = "float32"  # the release's storage dtype ("float16" or "bfloat16" halve it; training is fp32)

    def __post_init__(self) -> None:
        dtype_from_name(self.export_dtype)
        if self.kind not in KINDS:
            raise SettingsError(f"train.kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in ("relu", "topk"):
            raise SettingsError(f"train.activation must be 'relu' or 'topk', got {self.activation!r}")
        if (self.activation == "topk") != (self.topk is not None) or (self.topk is not None and self.topk < 1):
            raise SettingsError("train.topk (a positive k) goes with activation = 'topk', and only with it")
        if self.init_decoder_bias not in ("mean", "zero"):
            raise SettingsError(f"train.init_decoder_bias must be 'mean' or 'zero', got {self.init_decoder_bias!r}")
        for name in ("steps", "batch_size", "expansion_factor", "log_every", "checkpoint_every", "mix_shards"):
            if getattr(self, name) < 1:
                raise SettingsError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "l1_warmup_steps", "resample_every", "dead_after_steps"):
            if getattr(self, name) < 0:
                raise SettingsError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.d_features is not None and self.d_features < 1:
            raise SettingsError(f"train.d_features must be positive, got {self.d_features}")
        for name, low, high in (("lr", 0.0, math.inf), ("resample_encoder_scale", 0.0, math.inf)):
            if not low < getattr(self, name) < high:
                raise SettingsError(f"train.{name} must be a positive number, got {getattr(self, name)}")
        for name in ("l1_img", "l1_txt", "weight_decay", "grad_clip"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise SettingsError(f"train.{name} must be a number >= 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SettingsError(f"train.{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("lr_final_fraction", "resample_until"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"train.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.time_embed_dim < 4 or self.time_embed_dim % 2 or self.time_mlp_width < 1:
            raise SettingsError(f"train.time_embed_dim must be even and >= 4 and time_mlp_width >= 1, got "
                                f"{self.time_embed_dim} and {self.time_mlp_width}")

    def features_for(self, d_model: int) -> int:
        return self.d_features or self.expansion_factor * d_model

    def l1_for(self, stream: Stream) -> float:
        return self.l1_img if stream == "img" else self.l1_txt

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to lr * lr_final_fraction at the last step."""
        if step < self.lr_warmup_steps:
            return self.lr * (step + 1) / self.lr_warmup_steps
        span = max(1, self.steps - self.lr_warmup_steps)
        progress = min(1.0, (step - self.lr_warmup_steps) / span)
        floor = self.lr * self.lr_final_fraction
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def l1_at(self, stream: Stream, step: int) -> float:
        if self.activation == "topk":
            return 0.0
        ramp = 1.0 if self.l1_warmup_steps == 0 else min(1.0, (step + 1) / self.l1_warmup_steps)
        return self.l1_for(stream) * ramp

    def resamples_at(self, step: int) -> bool:
        """After `step` completes: a resampling point inside the resampling window?"""
        done = step + 1
        return bool(self.resample_every) and done % self.resample_every == 0 and done < self.resample_until * self.steps

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train") -> TrainSettings:
        return cls(**checked_keys(cls, data, where))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
