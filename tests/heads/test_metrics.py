"""Head statistics from queries and keys against direct softmax computations and hand-built patterns."""

from __future__ import annotations

import math

import pytest
import torch

from diffract_core.errors import InputShapeError
from diffract_core.heads import METRICS, grid_distances, layer_head_stats
from diffract_core.heads import metrics as metrics_module


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp(min=1e-300).log()).sum(-1)


def direct(query: torch.Tensor, key: torch.Tensor, text: int, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Every statistic from the full float64 probability matrix."""
    q, k = query[0].double(), key[0].double()
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    p = torch.softmax(logits, -1)
    img, txt = slice(text, None), slice(0, text)

    def route(queries: slice, keys: slice) -> torch.Tensor:
        return _entropy(torch.softmax(logits[:, queries, keys], -1)).mean(-1)

    within = torch.softmax(logits[:, img, img], -1)
    return {
        "entropy": _entropy(p).mean(-1),
        "entropy_img_img": route(img, img),
        "entropy_img_txt": route(img, txt),
        "entropy_txt_img": route(txt, img),
        "entropy_txt_txt": route(txt, txt),
        "text_focus": p[:, img, txt].sum(-1).mean(-1),
        "locality": (within * grid_distances(grid).double()).sum(-1).mean(-1),
        "token_focus": p[:, img, txt].mean(1),
    }


@pytest.mark.parametrize("chunk", [1 << 24, 40])  # one chunk; chunks of a few query rows that straddle txt | img
def test_statistics_match_a_direct_softmax_computation(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", chunk)
    generator = torch.Generator().manual_seed(0)
    text, grid = 5, (3, 4)
    query = torch.randn(1, 3, text + 12, 8, generator=generator) * 2
    key = torch.randn(1, 3, text + 12, 8, generator=generator) * 2
    stats = layer_head_stats(query, key, text, grid)
    expected = direct(query, key, text, grid)
    assert set(stats.values) == set(METRICS)
    for name in METRICS:
        torch.testing.assert_close(stats.values[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(stats.token_focus, expected["token_focus"], rtol=1e-5, atol=1e-7)


def test_locality_and_focus_of_hand_built_patterns() -> None:
    """Head 0: each image query looks only at its right-hand neighbour (wrapping round the row);
    head 1: attends uniformly (all queries and keys zero)."""
    text, grid = 1, (3, 3)
    tokens = text + 9
    key = torch.zeros(1, 2, tokens, tokens)
    query = torch.zeros(1, 2, tokens, tokens)
    key[0, 0] = torch.eye(tokens)
    for cell in range(9):
        row, col = divmod(cell, 3)
        query[0, 0, text + cell, text + row * 3 + (col + 1) % 3] = 60 * math.sqrt(tokens)
    stats = layer_head_stats(query, key, text, grid).values
    assert float(stats["locality"][0]) == pytest.approx((6 * 1 + 3 * 2) / 9, abs=1e-6)
    assert float(stats["text_focus"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["entropy_img_img"][0]) == pytest.approx(0.0, abs=1e-4)
    distances = grid_distances(grid)
    assert float(stats["locality"][1]) == pytest.approx(float(distances.mean()), rel=1e-6)
    assert float(stats["text_focus"][1]) == pytest.approx(text / tokens, rel=1e-6)
    assert float(stats["entropy"][1]) == pytest.approx(math.log(tokens), rel=1e-6)
    assert float(stats["entropy_img_txt"][1]) == pytest.approx(0.0, abs=1e-7)  # one text token


def test_grid_distances_are_euclidean_on_a_row_major_grid() -> None:
    distances = grid_distances((2, 3))
    assert distances.shape == (6, 6)
    assert float(distances[0, 5]) == pytest.approx(math.hypot(1, 2))
    assert float(distances[1, 4]) == 1.0


def test_bad_layouts_are_refused_clearly() -> None:
    query = torch.zeros(1, 2, 10, 4)
    with pytest.raises(InputShapeError, match=r"10 tokens do not split into 2 text tokens and a 3x3 image grid"):
        layer_head_stats(query, query, 2, (3, 3))
    with pytest.raises(InputShapeError, match="at least one text token"):
        layer_head_stats(query, query, 0, (2, 5))
    with pytest.raises(InputShapeError, match=r"one image's \[1, heads, tokens, head_dim\]"):
        layer_head_stats(query.expand(2, -1, -1, -1), query.expand(2, -1, -1, -1), 1, (3, 3))
