import time

import pytest
import torch

from diffract_core.errors import DiffractError, InputShapeError
from diffract_core.features import FeatureRef
from diffract_core.recording import FeatureRecording, RecordKey
from diffract_core.render import FeatureStat, format_table, top_features
from diffract_core.spatial import mask_to_token_weights
from diffract_core.transcoders.transcoder import SparseCodes

GRID = (4, 6)
SIGMAS = (1.0, 0.75, 0.5, 0.0)  # steps 0, 1, 2
K, D = 4, 64
LABELS = ["a", "cat", "sits", "on", "mat"]
INSIDE_A, INSIDE_B = FeatureRef("img", 3, 10), FeatureRef("img", 3, 11)


def _codes(active: dict[int, dict[int, float]], tokens: int, d_features: int = D) -> SparseCodes:
    """codes [1, tokens, K] from {token: {feature: value}}; the rest pad with index 0, value 0."""
    indices = torch.zeros(1, tokens, K, dtype=torch.int32)
    values = torch.zeros(1, tokens, K)
    for token, features in active.items():
        for slot, (feature, value) in enumerate(features.items()):
            indices[0, token, slot], values[0, token, slot] = feature, value
    return SparseCodes(indices=indices, values=values, d_features=d_features)


# Image step 0. The top-left quarter is tokens 0, 1, 2, 6, 7, 8.
# feature 10: 2.0 at token 0 and 1.0 at token 7 (inside), 0.5 at token 20 (outside)
# feature 11: 0.5 at token 1 (inside), 4.0 at token 15 and 2.0 at token 23 (outside)
IMAGE_STEP0 = {0: {10: 2.0}, 7: {10: 1.0}, 20: {10: 0.5}, 1: {11: 0.5}, 15: {11: 4.0}, 23: {11: 2.0}}
# Text step 0: feature 5 at "a" (1.5) and "sits" (3.0); feature 6 at "cat" (3.0, ties with 5 at "sits").
# Position 6 lies past the prompt's 5 tokens and must be ignored.
TEXT_STEP0 = {0: {5: 1.5}, 2: {5: 3.0}, 1: {6: 3.0}, 6: {9: 100.0}}


@pytest.fixture
def recording() -> FeatureRecording:
    rec = FeatureRecording(sites=(("img", 3), ("txt", 3), ("img", 5)), k=K, image_grid=GRID, text_tokens=5)
    rec.start_run(SIGMAS)
    rec.add(RecordKey("img", 3, 1.0, 0), _codes(IMAGE_STEP0, 24))
    rec.add(RecordKey("img", 3, 0.75, 0), _codes({0: {10: 1.0}}, 24))
    rec.add(RecordKey("txt", 3, 1.0, 0), _codes(TEXT_STEP0, 7))
    rec.add(RecordKey("img", 5, 1.0, 0), _codes({3: {12: 0.25}}, 24))
    return rec


@pytest.fixture
def quarter() -> torch.Tensor:
    mask = torch.zeros(64, 96)
    mask[:32, :48] = 1
    return mask_to_token_weights(mask, GRID)


def _find(stats: list[FeatureStat], feature: FeatureRef, step: int) -> FeatureStat:
    return next(s for s in stats if s.feature == feature and s.step == step)


def test_region_ranks_the_feature_active_inside_first(recording: FeatureRecording, quarter: torch.Tensor) -> None:
    stats = top_features(recording, region=quarter, streams=("img",), layers=[3], steps=[0])
    assert [s.feature for s in stats] == [INSIDE_A, INSIDE_B]
    a, b = stats
    assert a.mean_inside == pytest.approx(3.0 / 6) and a.max_inside == 2.0
    assert a.mean_outside == pytest.approx(0.5 / 18) and a.max_outside == 0.5
    assert a.score == pytest.approx(3.0 / 6 - 0.5 / 18)
    assert b.mean_inside == pytest.approx(0.5 / 6) and b.max_inside == 0.5
    assert b.mean_outside == pytest.approx(6.0 / 18) and b.max_outside == 4.0
    assert b.score == pytest.approx(0.5 / 6 - 6.0 / 18)
    assert a.token is None and a.token_label is None


def test_without_region_the_peak_decides(recording: FeatureRecording) -> None:
    stats = top_features(recording, streams=("img",), layers=[3], steps=[0])
    assert [s.feature for s in stats] == [INSIDE_B, INSIDE_A]
    b, a = stats
    assert b.score == b.max_inside == 4.0 and b.mean_inside == pytest.approx(6.5 / 24)
    assert a.score == 2.0 and a.mean_inside == pytest.approx(3.5 / 24)
    assert (a.mean_outside, a.max_outside) == (0.0, 0.0)


def test_zero_padding_is_not_a_feature(recording: FeatureRecording) -> None:
    stats = top_features(recording, streams=("img",), n=100)
    assert FeatureRef("img", 3, 0) not in {s.feature for s in stats}


def test_text_rows_carry_positions_and_labels(recording: FeatureRecording, quarter: torch.Tensor) -> None:
    stats = top_features(recording, region=quarter, streams=("txt",), token_labels=LABELS)
    assert [(str(s.feature), s.token, s.token_label, s.score) for s in stats] == [
        ("txt:3:5", 2, "sits", 3.0),  # ties with txt:3:6 at "cat": the lower feature index goes first
        ("txt:3:6", 1, "cat", 3.0),
        ("txt:3:5", 0, "a", 1.5),
    ]
    assert all(s.mean_inside == s.max_inside == s.score and s.mean_outside == s.max_outside == 0 for s in stats)
    unlabeled = top_features(recording, streams=("txt",), n=1)
    assert unlabeled[0].token == 2 and unlabeled[0].token_label is None


def test_all_sites_and_steps_merge_in_score_order(recording: FeatureRecording) -> None:
    stats = top_features(recording, n=100)
    assert [s.score for s in stats] == sorted((s.score for s in stats), reverse=True)
    keys = {(str(s.feature), s.step, s.token) for s in stats}
    assert keys == {
        ("img:3:10", 0, None), ("img:3:11", 0, None), ("img:3:10", 1, None), ("img:5:12", 0, None),
        ("txt:3:5", 0, 2), ("txt:3:6", 0, 1), ("txt:3:5", 0, 0),
    }  # fmt: skip
    assert [str(s.feature) for s in top_features(recording, n=2)] == ["img:3:11", "txt:3:5"]
    assert top_features(recording, n=2) == top_features(recording, n=2)


def test_ties_are_broken_deterministically() -> None:
    rec = FeatureRecording(sites=(("img", 3),), k=K, image_grid=GRID)
    rec.start_run(SIGMAS)
    rec.add(RecordKey("img", 3, 1.0, 0), _codes({5: {40: 1.0, 30: 1.0}, 6: {20: 1.0}}, 24))
    rec.add(RecordKey("img", 3, 0.75, 0), _codes({0: {10: 1.0}}, 24))
    stats = top_features(rec, n=3)
    assert [(s.feature.index, s.step) for s in stats] == [(20, 0), (30, 0), (40, 0)]


def test_scores_come_from_sparse_codes_without_densifying() -> None:
    huge = 2**31 - 1  # the recording keeps int32 indices; dense [24, huge] fp32 would be 200 GB
    rec = FeatureRecording(sites=(("img", 3),), k=K, image_grid=GRID)
    rec.start_run(SIGMAS)
    rec.add(RecordKey("img", 3, 1.0, 0), _codes({4: {huge - 1: 2.0}}, 24, d_features=huge))
    start = time.perf_counter()
    (stat,) = top_features(rec)
    assert stat.feature.index == huge - 1 and stat.score == 2.0
    assert time.perf_counter() - start < 5


def test_bad_inputs_are_refused(recording: FeatureRecording) -> None:
    with pytest.raises(InputShapeError, match=r"does not fit the 4x6 image-token grid: pass \[24\] token weights"):
        top_features(recording, region=torch.ones(16))
    with pytest.raises(DiffractError, match="covers no image token.*draw a larger mask"):
        top_features(recording, region=torch.full((24,), 0.25))
    with pytest.raises(DiffractError, match="step 7 was not recorded; recorded steps: 0, 1"):
        top_features(recording, steps=[7])
    with pytest.raises(DiffractError, match=r"no recorded site matches.*\[img: 3, 5; txt: 3\]"):
        top_features(recording, layers=[9])
    with pytest.raises(DiffractError, match="nothing was recorded for the uncond chunk"):
        top_features(recording, chunk=1)
    with pytest.raises(DiffractError, match="stream 'vae' is unknown"):
        top_features(recording, streams=("vae",))  # type: ignore[arg-type]


def test_format_table(recording: FeatureRecording, quarter: torch.Tensor) -> None:
    stats = top_features(recording, region=quarter, n=4, token_labels=LABELS)
    table = format_table(stats)
    lines = table.splitlines()
    header = ["feature", "step", "token", "mean", "in", "max", "in", "mean", "out", "max", "out", "score"]
    assert lines[0].split() == header
    assert len(lines) == 2 + len(stats) and len({len(line) for line in lines}) == 1
    assert "txt:3:5" in lines[2] and "2 'sits'" in lines[2] and lines[2].endswith("3.0000")
    img_line = next(line for line in lines if line.startswith("img:3:10"))
    assert img_line.split()[1:] == ["0", "-", "0.5000", "2.0000", "0.0278", "0.5000", "0.4722"]
    assert "(no active features)" in format_table([])
