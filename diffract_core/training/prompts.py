"""Prompts for harvesting: a train / validation split that cannot leak, and prompt encoders.

The split is decided by a hash of each prompt's normalised text, not by its place in a list, so a
prompt (or any duplicate of it, in any list, in any later harvest) always falls on the same side.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..errors import DiffractError, SettingsError


def normalise_prompt(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def is_validation_prompt(prompt: str, validation_fraction: float) -> bool:
    digest = hashlib.sha256(normalise_prompt(prompt).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction


@dataclass(frozen=True)
class PromptSplit:
    train: tuple[str, ...]
    validation: tuple[str, ...]


def split_prompts(prompts: Iterable[str], validation_fraction: float) -> PromptSplit:
    """Deduplicate (after normalising case and spaces) and split by hash."""
    if not 0.0 <= validation_fraction < 1.0:
        raise SettingsError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    seen: set[str] = set()
    train, validation = [], []
    for prompt in prompts:
        key = normalise_prompt(prompt)
        if not key or key in seen:
            continue
        seen.add(key)
        (validation if is_validation_prompt(prompt, validation_fraction) else train).append(prompt.strip())
    if not train:
        raise DiffractError("no training prompts left after the split: add prompts or lower validation_fraction")
    return PromptSplit(tuple(train), tuple(validation))


def read_prompt_file(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


class PromptEncoder(Protocol):
    """Turns prompts into what a FLUX model is conditioned on: token features (B, L, context_dim)
    and a pooled vector (B, vec_dim)."""

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]: ...


class HashingPromptEncoder:
    """A deterministic encoder for models without a real text encoder (random-weight models in
    benchmarks and tests): each word gets a fixed random vector seeded by a hash of the word, padded
    to `tokens` positions; the pooled vector is the mean of the word vectors."""

    def __init__(self, context_dim: int, vec_dim: int, tokens: int = 32, seed: int = 0) -> None:
        self.context_dim, self.vec_dim, self.tokens, self.seed = context_dim, vec_dim, tokens, seed

    def _word(self, word: str) -> Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(word.encode()) ^ self.seed)
        return torch.randn(self.context_dim + self.vec_dim, generator=generator)

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        context = torch.zeros(len(prompts), self.tokens, self.context_dim)
        pooled = torch.zeros(len(prompts), self.vec_dim)
        for row, prompt in enumerate(prompts):
            words = normalise_prompt(prompt).split()[: self.tokens] or [""]
            vectors = torch.stack([self._word(word) for word in words])
            context[row, : len(words)] = vectors[:, : self.context_dim]
            pooled[row] = vectors[:, self.context_dim :].mean(0)
        return context, pooled
