"""What the viewers and nodes show of a feature: labels and cards from the atlas, the dashboard,
and the atlas a TranscoderSet finds beside its release (or refuses, naming the fix)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffract_core.atlas import Atlas, describe_feature, render_dashboard
from diffract_core.atlas.cards import feature_cards, feature_labels
from diffract_core.errors import ConfigMismatchError, CorruptFileError
from diffract_core.features import FeatureRef
from diffract_core.flux import Flux
from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import TranscoderSet
from diffract_core.transcoders.native import save_site, write_manifest

from .tiny_world import SETTINGS


def live_refs(atlas: Atlas, stream: str) -> list[FeatureRef]:
    site = next(site for site in atlas.sites if site[0] == stream)
    return [FeatureRef(stream, site[1], index) for index in atlas.labels(site)]


def test_labels_name_what_says_more_than_an_index(atlas: Atlas) -> None:
    refs = live_refs(atlas, "img") + live_refs(atlas, "txt") + [FeatureRef("img", 9, 0)]  # a site it lacks
    labels = feature_labels(atlas, refs)
    assert labels, "the tiny world's atlas labels some features"
    for ref in refs[:-1]:
        label = atlas.label(ref)
        assert labels.get(str(ref)) == (label.text if label.describes else None)
    assert "img:9:0" not in labels and feature_labels(None, refs) == {}


def test_cards_carry_the_label_and_the_top_crops_or_words(atlas: Atlas) -> None:
    image, text = live_refs(atlas, "img")[0], live_refs(atlas, "txt")[0]
    cards = feature_cards(atlas, [image, text, image])
    assert list(cards) == [str(image), str(text)]
    card = cards[str(image)]
    assert card["label"] == atlas.label(image).text and 0 < len(card["examples"]) <= 3
    crops = [example["crop"] for example in card["examples"] if "crop" in example]
    assert crops, "an image feature's best examples come with crops"
    png = Image.open(io.BytesIO(base64.b64decode(crops[0].removeprefix("data:image/png;base64,"))))
    assert png.size == (SETTINGS.crop_size, SETTINGS.crop_size)
    assert torch.equal(torch.from_numpy(np.asarray(png).copy()).permute(2, 0, 1),
                       atlas.examples(image)[0].crop)
    words = cards[str(text)]["examples"][0]
    assert words["token"] in words["context"].split() and "crop" not in words


def test_the_dashboard_shows_label_firing_by_sigma_and_examples(atlas: Atlas) -> None:
    ref = live_refs(atlas, "img")[0]
    text = describe_feature(atlas, ref)
    label, stats = atlas.label(ref), atlas.stats(ref)
    assert label.text in text and all(f"sigma {bucket}" in text for bucket in stats.buckets)
    assert "top examples:" in text and atlas.examples(ref)[0].prompt in text
    picture = render_dashboard(atlas, ref)
    assert picture.dim() == 3 and picture.shape[-1] == 3 and 0 <= float(picture.min()) <= float(picture.max()) <= 1
    text_picture = render_dashboard(atlas, live_refs(atlas, "txt")[0])
    assert text_picture.shape[1] == picture.shape[1]


def _release(root: Path, model: Flux, d_features: int) -> Path:
    for layer in range(model.config.depth):
        for stream in ("img", "txt"):
            transcoder = random_transcoder(stream, layer, d_model=model.config.hidden_size, d_features=d_features,
                                           time_dim=16, seed=layer)
            save_site(root, transcoder.config, {k: v.contiguous() for k, v in transcoder.state_dict().items()})
    write_manifest(root)
    return root


def test_transcoders_pick_up_the_atlas_beside_their_release(atlas: Atlas, release: Path, tmp_path: Path) -> None:
    assert TranscoderSet.open(release).atlas is not None
    copy = Path(shutil.copytree(release, tmp_path / "release", ignore=shutil.ignore_patterns("atlas*")))
    transcoders = TranscoderSet.open(copy)
    assert transcoders.atlas is None
    shutil.copytree(atlas.folder, copy / "atlas")  # built after the transcoders were loaded
    found = transcoders.atlas
    assert found is not None and transcoders.atlas is found
    assert TranscoderSet.from_transcoders([transcoders[transcoders.sites[0]]]).atlas is None


def test_an_atlas_of_another_release_is_refused_naming_the_fix(atlas: Atlas, model: Flux, tmp_path: Path) -> None:
    other = _release(tmp_path / "other", model, d_features=48)
    shutil.copytree(atlas.folder, other / "atlas")
    with pytest.raises(ConfigMismatchError, match=r"F=96, but the release's site has D=64, F=48: it belongs to another "
                                                  r"release; rebuild it: python -m diffract_core atlas --release"):
        TranscoderSet.open(other).atlas  # noqa: B018 - reading the property is what is tested


@pytest.mark.parametrize("name", ["atlas.json", "labels.json", "prompts.json"])
def test_a_truncated_atlas_file_is_refused_naming_the_fix(atlas: Atlas, release: Path, tmp_path: Path,
                                                         name: str) -> None:
    copy = Path(shutil.copytree(release, tmp_path / "release"))
    path = copy / "atlas" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CorruptFileError, match=rf"{name}.*rebuild it: python -m diffract_core atlas --release"):
        TranscoderSet.open(copy).atlas  # noqa: B018
