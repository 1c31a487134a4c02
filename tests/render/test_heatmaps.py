import pytest
import torch

from diffract_core.errors import DiffractError, InputShapeError
from diffract_core.features import FeatureRef
from diffract_core.recording import FeatureRecording, RecordKey
from diffract_core.render import colorize, normalize_maps, render_feature_heatmaps
from diffract_core.render.heatmaps import INFERNO_ANCHORS
from diffract_core.transcoders.transcoder import SparseCodes

GRID = (4, 6)
SIGMAS = (1.0, 0.75, 0.5, 0.0)  # steps 0, 1, 2
K, D = 4, 64
LIT = FeatureRef("img", 3, 7)  # fires only at grid cell (row 1, col 2)
OTHER = FeatureRef("img", 3, 9)  # fires at cell (3, 5)
SILENT = FeatureRef("img", 3, 11)  # never in the top k
BLOCK = (slice(16, 32), slice(32, 48))  # pixels of cell (1, 2) in a 96x64 image


def _codes(active: list[dict[int, dict[int, float]]], tokens: int) -> SparseCodes:
    """codes [batch, tokens, K] from {token: {feature: value}} per batch item; the rest pad with zeros."""
    indices = torch.zeros(len(active), tokens, K, dtype=torch.int32)
    values = torch.zeros(len(active), tokens, K)
    for b, per_token in enumerate(active):
        for token, features in per_token.items():
            for slot, (feature, value) in enumerate(features.items()):
                indices[b, token, slot], values[b, token, slot] = feature, value
    return SparseCodes(indices=indices, values=values, d_features=D)


def _recording(per_step: list[list[dict[int, dict[int, float]]]]) -> FeatureRecording:
    rec = FeatureRecording(sites=(("img", 3), ("txt", 3)), k=K, image_grid=GRID, text_tokens=5)
    rec.start_run(SIGMAS)
    for sigma, active in zip(SIGMAS, per_step):
        rec.add(RecordKey("img", 3, sigma, 0), _codes(active, 24))
        rec.add(RecordKey("txt", 3, sigma, 0), _codes([{}] * len(active), 5))
    return rec


@pytest.fixture
def recording() -> FeatureRecording:
    # LIT: 2.0 at step 0, 1.0 at step 1, absent at step 2; OTHER: 0.5 at step 0 only
    return _recording([[{8: {7: 2.0}, 23: {9: 0.5}}], [{8: {7: 1.0}}], [{0: {}}]])


def _gray(height: int = 64, width: int = 96) -> torch.Tensor:
    return torch.full((1, height, width, 3), 0.5)


def test_feature_lights_exactly_its_block(recording: FeatureRecording) -> None:
    overlays, masks = render_feature_heatmaps(recording, _gray(), [LIT], opacity=0.6)
    assert overlays.shape == (3, 64, 96, 3) and masks.shape == (3, 64, 96)
    expected = torch.zeros(64, 96)
    expected[BLOCK] = 1
    assert torch.equal(masks[0], expected)
    outside = expected == 0
    assert torch.equal(overlays[0][outside], torch.full((int(outside.sum()), 3), 0.5))
    hot = torch.tensor(INFERNO_ANCHORS[-1])
    assert torch.allclose(overlays[0][BLOCK], 0.5 * 0.4 + hot * 0.6)


def test_per_feature_normalisation_keeps_step_ratios(recording: FeatureRecording) -> None:
    _, masks = render_feature_heatmaps(recording, _gray(), [LIT, OTHER])
    # feature-major: (LIT, 0), (LIT, 1), (LIT, 2), (OTHER, 0), (OTHER, 1), (OTHER, 2)
    peaks = masks.amax(dim=(1, 2))
    assert peaks.tolist() == [1.0, 0.5, 0.0, 1.0, 0.0, 0.0]
    assert masks[1][BLOCK].unique().tolist() == [0.5]
    assert masks[3][48:64, 80:96].unique().tolist() == [1.0]  # OTHER's own peak reaches 1 too


def test_steps_subset_and_silent_feature(recording: FeatureRecording) -> None:
    overlays, masks = render_feature_heatmaps(recording, _gray(), [SILENT, LIT], steps=[1])
    assert masks.shape == (2, 64, 96)
    assert not masks[0].any() and not masks[0].isnan().any()
    assert torch.equal(overlays[0], _gray()[0])
    assert masks[1].max().item() == 1.0  # one step only: its map is the feature's max


def test_global_and_per_map_normalisation() -> None:
    maps = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]]])
    assert torch.equal(normalize_maps(maps, "global"), maps / 2)
    per_map = normalize_maps(maps, "per_map")
    assert per_map[:, :, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    with pytest.raises(DiffractError, match="unknown: use one of per_feature, per_map, global"):
        normalize_maps(maps, "per_pixel")  # type: ignore[arg-type]


def test_zero_opacity_returns_the_image(recording: FeatureRecording) -> None:
    images = torch.rand(1, 64, 96, 3)
    overlays, masks = render_feature_heatmaps(recording, images, [LIT, OTHER], opacity=0.0)
    assert masks.any()
    for overlay in overlays:
        assert torch.equal(overlay, images[0])


def test_batch_index_picks_image_and_record() -> None:
    rec = _recording([[{0: {7: 1.0}}, {8: {7: 1.0}}]] * 3)
    images = torch.stack([torch.zeros(64, 96, 3), torch.ones(64, 96, 3)])
    overlays, masks = render_feature_heatmaps(rec, images, [LIT], steps=[0], batch_index=1, opacity=0.0)
    assert torch.equal(overlays[0], images[1])
    assert masks[0][BLOCK].min().item() == 1.0 and masks[0][:16, :16].max().item() == 0.0
    with pytest.raises(InputShapeError, match="outside the recorded batch of 2: pick 0..1"):
        render_feature_heatmaps(rec, images[:1], [LIT], batch_index=2)


def test_image_at_a_larger_resolution(recording: FeatureRecording) -> None:
    _, masks = render_feature_heatmaps(recording, _gray(640, 960), [LIT], steps=[0])
    assert masks.shape == (1, 640, 960)
    assert masks[0, 160:320, 320:480].min().item() == 1.0 and masks[0].sum().item() == 160 * 160


def test_text_features_are_refused(recording: FeatureRecording) -> None:
    with pytest.raises(DiffractError, match="txt:3:7 is a text-stream feature: heatmaps show image tokens only"):
        render_feature_heatmaps(recording, _gray(), [LIT, FeatureRef("txt", 3, 7)])


def test_bad_inputs_are_refused(recording: FeatureRecording) -> None:
    with pytest.raises(InputShapeError, match=r"image is 64x64 \(WxH\).*6x4 grid.*resize it to 64x43"):
        render_feature_heatmaps(recording, _gray(64, 64), [LIT])
    with pytest.raises(InputShapeError, match=r"\[batch, H, W, 3\]"):
        render_feature_heatmaps(recording, torch.zeros(64, 96, 3), [LIT])
    with pytest.raises(DiffractError, match="opacity 1.5 is outside"):
        render_feature_heatmaps(recording, _gray(), [LIT], opacity=1.5)
    with pytest.raises(DiffractError, match="recorded steps: 0, 1, 2"):
        render_feature_heatmaps(recording, _gray(), [LIT], steps=[5])
    with pytest.raises(DiffractError, match="out of range.*64 features"):
        render_feature_heatmaps(recording, _gray(), [FeatureRef("img", 3, 64)])


def test_colorize_ramp() -> None:
    values = torch.linspace(0, 1, 11).reshape(1, 11)
    colors = colorize(values)
    assert colors.shape == (1, 11, 3)
    assert torch.allclose(colors[0, 0], torch.tensor(INFERNO_ANCHORS[0]))
    assert torch.allclose(colors[0, -1], torch.tensor(INFERNO_ANCHORS[-1]))
    midpoint = (torch.tensor(INFERNO_ANCHORS[0]) + torch.tensor(INFERNO_ANCHORS[1])) / 2
    assert torch.allclose(colorize(torch.tensor(0.1)), midpoint)
    assert (colors[0].sum(-1).diff() > 0).all()  # brightness rises along the ramp
    assert torch.equal(colorize(torch.tensor([-1.0, 2.0])), colorize(torch.tensor([0.0, 1.0])))
