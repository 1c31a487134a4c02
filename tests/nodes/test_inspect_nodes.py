"""Feature Heatmaps and Top Features through the fake ComfyUI surface."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch


@pytest.fixture
def recorded(pack, patcher, transcoders, sampler):
    import fake_runtime

    model, recording = fake_runtime.run_node(pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders,
                                             top_k=6).args
    return recording, sampler(model)


def _strongest_image_feature(recording) -> str:
    codes = recording.codes(("img", 1), 0)
    return f"img:1:{int(codes.indices[0, 0, 0])}"


def test_heatmaps_give_one_overlay_per_feature_and_step(pack, recorded) -> None:
    import fake_runtime

    recording, _ = recorded
    feature = _strongest_image_feature(recording)
    image = torch.full((1, 64, 96, 3), 0.5)
    out = fake_runtime.run_node(
        pack.nodes.FeatureHeatmaps, recording=recording, image=image, features=f"{feature} img:0:1", steps="0, 2"
    )
    overlays, masks = out.args
    assert overlays.shape == (4, 64, 96, 3) and masks.shape == (4, 64, 96)
    assert masks[0].max() == 1.0, "the feature is strongest at token 0 of step 0"
    payload = out.ui["diffract_heatmaps"][0]
    assert {k: payload[k] for k in ("features", "steps", "sigmas", "order")} == {
        "features": [feature, "img:0:1"], "steps": [0, 2], "sigmas": [1.0, 0.5], "order": "feature-major"}
    assert "images" not in out.ui, "the viewer replaces in-node thumbnails, which would grow the node after the run"
    assert payload["image"] == {"filename": "preview_0.png", "subfolder": "", "type": "temp"}
    viewer = payload["viewer"]
    assert viewer["grid"] == [4, 6] and [(m["feature"], m["step"]) for m in viewer["maps"]] == [
        (feature, 0), (feature, 2), ("img:0:1", 0), ("img:0:1", 2)]
    for mask, entry in zip(masks, viewer["maps"]):  # the viewer's token maps are the MASK outputs at token resolution
        tokens = torch.tensor(list(base64.b64decode(entry["data"])), dtype=torch.float32).view(4, 6) / 255
        assert torch.allclose(tokens, mask[::16, ::16], atol=1 / 255)


def test_top_features_rank_a_region_and_label_prompt_tokens(pack, core, recorded) -> None:
    import fake_runtime

    recording, samples = recorded
    mask = torch.zeros(1, 64, 96)
    mask[:, :32, :48] = 1
    clip = _FakeClip()
    out = fake_runtime.run_node(
        pack.nodes.TopFeatures, recording=recording, samples={"samples": samples}, rows=8, mask=mask, clip=clip,
        prompt="a red cup",
    )
    table = out.args[0]
    rows = out.ui["diffract_top_features"][0]["rows"]
    assert out.ui["text"] == [table] and len(rows) == 8
    assert table.splitlines()[0].split()[:3] == ["feature", "step", "token"]
    assert rows == sorted(rows, key=lambda r: -r["score"])
    text_rows = [r for r in rows if r["feature"].startswith("txt")]
    assert text_rows and all(r["token_label"] == clip.words[r["token"]] for r in text_rows)
    # each text row's token strip: the feature's activation on every prompt token, as recorded
    text = out.ui["diffract_top_features"][0]["text"]
    assert text["tokens"] == clip.words
    strips = {(s["feature"], s["step"]): s["values"] for s in text["strips"]}
    assert set(strips) == {(r["feature"], r["step"]) for r in text_rows}
    for row in text_rows:
        recorded = recording.feature_map(core.features.parse_features(row["feature"])[0], row["step"])[0]
        assert strips[(row["feature"], row["step"])] == pytest.approx(recorded.tolist(), abs=1e-4)
        assert strips[(row["feature"], row["step"])][row["token"]] == pytest.approx(row["score"], abs=1e-3)
    images = fake_runtime.run_node(pack.nodes.TopFeatures, recording=recording, samples={}, streams="img", steps="3").ui
    assert {r["step"] for r in images["diffract_top_features"][0]["rows"]} == {3}


def test_unfinished_recordings_and_wrong_masks_are_refused(pack, core, patcher, transcoders, recorded) -> None:
    import fake_runtime

    _, recording = fake_runtime.run_node(pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders).args
    with pytest.raises(core.errors.DiffractError, match="has not run yet"):
        fake_runtime.run_node(pack.nodes.TopFeatures, recording=recording, samples={})
    recorded_run, _ = recorded
    with pytest.raises(core.errors.InputShapeError, match="a different aspect ratio"):
        fake_runtime.run_node(pack.nodes.TopFeatures, recording=recorded_run, samples={}, mask=torch.ones(1, 64, 64))
    with pytest.raises(core.errors.DiffractError, match="text-stream feature"):
        fake_runtime.run_node(
            pack.nodes.FeatureHeatmaps, recording=recorded_run, image=torch.zeros(1, 64, 96, 3), features="txt:0:1"
        )


class _FakeClip:
    """ComfyUI's CLIP surface for labels: tokenize(text) -> {"l": ..., "t5xxl": [[(id, weight), ...]]}
    and tokenizer.t5xxl.inv_vocab; five T5 positions, as the recorded context has."""

    words: ClassVar[list[str]] = ["▁a", "▁red", "▁cup", "</s>", "<pad>"]

    def __init__(self) -> None:
        self.tokenizer = SimpleNamespace(
            t5xxl=SimpleNamespace(inv_vocab={i + 100: w for i, w in enumerate(self.words)})
        )

    def tokenize(self, text: str) -> dict[str, list[list[tuple[int, float]]]]:
        return {"l": [[(49406, 1.0)]], "t5xxl": [[(i + 100, 1.0) for i in range(len(self.words))]]}
