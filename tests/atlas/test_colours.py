"""Colour terms of pixels and image tokens."""

from __future__ import annotations

import torch

from diffract_core.atlas.colours import COLOUR_NAMES, COLOUR_TERMS, colour_term, token_colours
from diffract_core.toy.scenes import BACKGROUND, COLOURS


def test_each_prototype_is_its_own_term_and_the_toy_palette_reads_as_named() -> None:
    for name, code in COLOUR_TERMS.items():
        assert colour_term(tuple(int(code[i : i + 2], 16) for i in (0, 2, 4))) == name
    assert {name: colour_term(rgb) for name, rgb in COLOURS.items()} == {name: name for name in COLOURS}
    assert colour_term(BACKGROUND) == "black"


def test_a_token_takes_the_colour_most_of_its_pixels_have() -> None:
    image = torch.zeros(1, 3, 8, 16, dtype=torch.uint8)  # a 2 x 4 grid of 4 px tokens
    image[0, 0, :, 4:8] = 230  # token columns 1: red
    image[0, 0, :3, 8:12] = 230  # column 2: red in 3 of 4 rows of the upper token, black below
    image[0, 2, 4:, 12:] = 255  # column 3, lower row: blue
    terms = [COLOUR_NAMES[i] for i in token_colours(image, (2, 4))[0]]
    assert terms == ["black", "red", "red", "black", "black", "red", "black", "blue"]
