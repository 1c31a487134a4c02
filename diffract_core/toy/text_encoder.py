"""The toy's own text encoder: prompt words -> token features (context) and a pooled vector, as
FLUX's T5 and CLIP provide them, at toy size. It is trained together with the toy model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import DiffractError
from .scenes import COLOURS, SHAPES

VOCABULARY: tuple[str, ...] = ("<pad>", "a", "an", "and", *COLOURS, *SHAPES)


@dataclass(frozen=True)
class TextEncoderConfig:
    context_dim: int = 64  # FluxConfig.context_in_dim of the toy
    vec_dim: int = 32  # FluxConfig.vec_in_dim of the toy
    width: int = 64
    heads: int = 2
    layers: int = 1
    max_tokens: int = 8  # "a red circle and a blue square" is 7 tokens

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def tokenize(prompts: Sequence[str], max_tokens: int) -> torch.Tensor:
    """Token ids [B, max_tokens], padded with 0; a word outside the toy's vocabulary is an error."""
    ids = torch.zeros(len(prompts), max_tokens, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = prompt.lower().split()
        unknown = [w for w in words if w not in VOCABULARY[1:]]
        if unknown or not words or len(words) > max_tokens:
            raise DiffractError(
                f"the toy cannot read {prompt!r}: it knows the words {list(VOCABULARY[1:])} and at most "
                f"{max_tokens} of them per prompt" + (f" (unknown: {unknown})" if unknown else "")
            )
        ids[row, : len(words)] = torch.tensor([VOCABULARY.index(w) for w in words])
    return ids


class ToyTextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(len(VOCABULARY), config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_tokens, config.width))
        layer = nn.TransformerEncoderLayer(config.width, config.heads, 2 * config.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.to_context = nn.Linear(config.width, config.context_dim)
        self.to_pooled = nn.Linear(config.width, config.vec_dim)

    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, max_tokens, context_dim], pooled [B, vec_dim])."""
        ids = tokenize(prompts, self.config.max_tokens).to(self.position_embedding.device)
        padding = ids == 0
        hidden = self.encoder(self.token_embedding(ids) + self.position_embedding, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).float()
        pooled = (hidden * keep).sum(1) / keep.sum(1)
        return self.to_context(hidden) * keep, self.to_pooled(pooled)
