"""The toy text encoder reads the toy's prompts and nothing else; padding never changes its output."""

from __future__ import annotations

import pytest
import torch

from diffract_core.errors import DiffractError
from diffract_core.toy.text_encoder import TextEncoderConfig, ToyTextEncoder, tokenize


def test_shapes_padding_and_word_order() -> None:
    torch.manual_seed(0)
    encoder = ToyTextEncoder(TextEncoderConfig()).eval()
    context, pooled = encoder(["a red circle and a blue square", "a red circle"])
    assert context.shape == (2, 8, 64) and pooled.shape == (2, 32)
    assert torch.equal(context[1, 3:], torch.zeros(5, 64))  # padding positions carry nothing
    alone_context, alone_pooled = encoder(["a red circle"])
    torch.testing.assert_close(alone_context[0], context[1])  # batching with a longer prompt changes nothing
    torch.testing.assert_close(alone_pooled[0], pooled[1])
    swapped, _ = encoder(["a blue circle and a red square"])
    assert not torch.allclose(swapped[0], context[0])  # which colour goes with which shape is in the features


def test_words_outside_the_toy_world_are_refused() -> None:
    assert tokenize(["An orange triangle"], 8).tolist() == [[2, 9, 12, 0, 0, 0, 0, 0]]
    with pytest.raises(DiffractError, match=r"unknown: \['teal'\]"):
        tokenize(["a teal circle"], 8)
    with pytest.raises(DiffractError, match="at most 8"):
        tokenize(["a red circle and a blue square and a green square"], 8)
