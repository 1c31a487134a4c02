"""The toy ground truth behind the atlas's label check: what each token shows, what a label names,
how features are scored, and the whole evaluation on the embedded toy."""

from __future__ import annotations

from pathlib import Path

import torch

from diffract_core.atlas import Atlas, AtlasSettings, Attribute, FeatureLabel, build_atlas
from diffract_core.atlas.toy_truth import _image_truth, _score, evaluate_toy_atlas, named_by, truth_attributes
from diffract_core.toy import codec
from diffract_core.toy.embedded import load_toy, open_toy_transcoders
from diffract_core.toy.scenes import render, scene_for
from diffract_core.training.harvest import HarvestSettings

ATTRIBUTES = truth_attributes(("a", "red", "circle"))


def test_what_a_label_attribute_names() -> None:
    assert named_by(Attribute("colour", "black", 1, 1)) == {("background", "")}
    assert named_by(Attribute("colour", "red", 1, 1)) == {("colour", "red")}
    assert named_by(Attribute("region", "bottom-left", 1, 1)) == {("slot", "left")}
    assert named_by(Attribute("region", "top half", 1, 1)) == set()
    assert named_by(Attribute("word", "circle", 1, 1)) == {("word", "circle"), ("shape", "circle")}
    assert named_by(Attribute("token", "red", 1, 1)) == {("word", "red"), ("colour", "red")}


def test_each_image_token_gets_its_objects_attributes() -> None:
    prompt = "a red circle and a blue square"
    truth = _image_truth(render(scene_for(prompt, first_slot="left"))[None], [prompt], (8, 8), ATTRIBUTES)[0]
    index = {a: i for i, a in enumerate(ATTRIBUTES)}
    red, left, circle = (truth[:, index[a]] for a in (("colour", "red"), ("slot", "left"), ("shape", "circle")))
    blue, right, background = (truth[:, index[a]] for a in (("colour", "blue"), ("slot", "right"), ("background", "")))
    assert red.any() and torch.equal(red, left) and torch.equal(red, circle)
    assert blue.any() and torch.equal(blue, right) and not (red & blue).any()
    assert torch.equal(background, ~(red | blue))
    assert not red.view(8, 8)[:, 4:].any() and not blue.view(8, 8)[:, :4].any()


class Labelled:
    """An atlas stand-in: only the labels `_score` reads."""

    def __init__(self, labels: dict[int, FeatureLabel]) -> None:
        self._labels = labels

    def labels(self, _site: object) -> dict[int, FeatureLabel]:
        return self._labels


def test_features_are_scored_against_the_truth() -> None:
    index = {a: i for i, a in enumerate(ATTRIBUTES)}
    mass = torch.zeros(4, len(ATTRIBUTES) + 1, dtype=torch.float64)
    mass[0, index[("colour", "red")]] = mass[0, -1] = 5.0  # pure red, labelled red: right
    mass[1, index[("colour", "red")]], mass[1, index[("background", "")]], mass[1, -1] = 1.0, 1.0, 2.0  # mixed
    mass[2, index[("background", "")]] = mass[2, -1] = 3.0  # pure background, labelled blue: wrong
    red = FeatureLabel("red", 0.9, (Attribute("colour", "red", 0.95, 0.9),))
    blue = FeatureLabel("blue", 0.8, (Attribute("colour", "blue", 0.9, 0.8),))
    labels = {0: red, 1: FeatureLabel("unclear", 0.0), 2: blue, 3: red}  # feature 3 has no activation in the re-run
    score = _score(Labelled(labels), {("img", 0): mass}, ATTRIBUTES, 0.9).streams["img"]
    counts = (score.features, score.monosemantic, score.labelled, score.labelled_monosemantic, score.correct)
    assert counts == (3, 2, 2, 2, 1)
    assert score.label_accuracy == 0.5 and score.coverage == 1.0 and score.label_precision == 0.5  # red 1.0, blue 0.0


def test_a_small_toy_atlas_evaluates(tmp_path: Path) -> None:
    toy, transcoders = load_toy(), open_toy_transcoders()
    settings = AtlasSettings(sampling=HarvestSettings(steps=2, latent_size=(16, 16), prompts_per_call=3),
                             sites=(("img", 3), ("txt", 3)), k=8, top_n=3, crops_per_feature=1)
    prompts = ["a red circle", "a blue square and a green triangle", "an orange triangle", "a purple square"]
    build_atlas(toy.flux, toy.text_encoder, transcoders, prompts, tmp_path / "atlas", settings, decode=codec.decode)
    atlas = Atlas.load(tmp_path / "atlas", {site: transcoders.config(site) for site in transcoders.sites})
    evaluation = evaluate_toy_atlas(atlas, toy, transcoders)
    total = evaluation.total
    assert total.features == sum(len(atlas.labels(site)) for site in atlas.sites) > 0  # the re-run saw the same codes
    assert total.correct <= total.labelled_monosemantic <= min(total.labelled, total.monosemantic) <= total.features
    assert set(evaluation.to_dict()["streams"]) == {"img", "txt"}
