"""Reading an atlas back beside its release, and the named errors for atlases that do not fit."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffract_core.atlas import Atlas
from diffract_core.errors import (
    ConfigMismatchError,
    CorruptFileError,
    DiffractError,
    FeatureIndexError,
    SiteNotLoadedError,
)
from diffract_core.features import FeatureRef
from diffract_core.flux import Flux
from diffract_core.training.prompts import normalise_prompt
from diffract_core.transcoders import TranscoderSet

from .tiny_world import D_FEATURES, PROMPTS, SETTINGS, write_release


def configs(transcoders: TranscoderSet) -> dict:
    return {site: transcoders.config(site) for site in transcoders.sites}


def test_open_find_and_read_features(atlas: Atlas, transcoders: TranscoderSet, release: Path) -> None:
    assert Atlas.find(transcoders).folder == atlas.folder == release / "atlas"
    assert Atlas.find(TranscoderSet.open(release, kind="transcoder", layers=[0])).folder == atlas.folder
    assert atlas.sites == transcoders.sites and atlas.prompts == PROMPTS
    image = FeatureRef("img", 0, int(atlas.site_arrays(("img", 0))["features"][0]))
    examples = atlas.examples(image)
    assert [e.crop.shape if e.crop is not None else None for e in examples] == \
        [(3, SETTINGS.crop_size, SETTINGS.crop_size)] * SETTINGS.crops_per_feature + [None] * (len(examples) - 2)
    assert all(e.sigma == atlas.schedule[e.step] and e.token_string is None for e in examples)
    text = FeatureRef("txt", 1, int(atlas.site_arrays(("txt", 1))["features"][0]))
    for example in atlas.examples(text):
        words = normalise_prompt(example.prompt).split()
        assert example.token_string == (words[example.token] if example.token < len(words) else "<pad>")
        assert example.token_string in example.context and example.crop is None
    stats = atlas.stats(text)
    assert len(stats.firing_rate) == SETTINGS.sigma_buckets and stats.prompts == len(PROMPTS)
    assert all(0 <= z for _, z in atlas.words(text)[:1]) and len(atlas.words(text)) == SETTINGS.words_per_feature
    labels = atlas.labels(("txt", 1))
    assert atlas.label(text) == labels[text.index]


def test_features_that_never_fired_and_bad_references(atlas: Atlas) -> None:
    live = set(atlas.site_arrays(("img", 1))["features"].tolist())
    dead = next((i for i in range(D_FEATURES) if i not in live), None)
    if dead is not None:
        ref = FeatureRef("img", 1, dead)
        assert atlas.label(ref).text == "never fired" and atlas.examples(ref) == []
        assert atlas.stats(ref).prompts_fired == 0
    with pytest.raises(FeatureIndexError, match="0..95"):
        atlas.label(FeatureRef("img", 1, D_FEATURES))
    with pytest.raises(SiteNotLoadedError, match="img: 0-1"):
        atlas.label(FeatureRef("img", 9, 0))


def test_an_atlas_of_another_release_is_refused(atlas: Atlas, model: Flux, tmp_path: Path) -> None:
    other = TranscoderSet.open(write_release(tmp_path / "other", model, seed=5))
    with pytest.raises(ConfigMismatchError, match="other weights .* another release"):
        Atlas.load(atlas.folder, configs(other))
    narrower = {site: replace(config, d_features=48) for site, config in configs(other).items()}
    with pytest.raises(ConfigMismatchError, match="F=96, but the release's site has D=64, F=48"):
        Atlas.load(atlas.folder, narrower)
    with pytest.raises(DiffractError, match="no atlas beside .* build one with python -m diffract_core atlas"):
        Atlas.open(tmp_path / "other")


@pytest.fixture
def copy(atlas: Atlas, tmp_path: Path) -> Path:
    return Path(shutil.copytree(atlas.folder, tmp_path / "atlas"))


def test_a_truncated_array_file_is_refused(copy: Path, transcoders: TranscoderSet) -> None:
    path = copy / "transcoder_img_1.safetensors"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CorruptFileError, match="img_1.safetensors cannot be read .* truncated .* rebuild it"):
        Atlas.load(copy, configs(transcoders))


def test_files_that_do_not_belong_together_are_refused(copy: Path) -> None:
    shutil.copy(copy / "transcoder_txt_0.safetensors", copy / "transcoder_img_0.safetensors")
    with pytest.raises(CorruptFileError, match="transcoder_img_0.safetensors holds arrays"):
        Atlas.load(copy)


def test_a_newer_format_and_missing_labels_are_refused(copy: Path) -> None:
    info = json.loads((copy / "atlas.json").read_text())
    (copy / "atlas.json").write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(DiffractError, match="format version 2, but this package reads version 1: update the package"):
        Atlas.load(copy)
    (copy / "atlas.json").write_text(json.dumps(info))
    (copy / "labels.json").unlink()
    with pytest.raises(CorruptFileError, match="labels .* is missing; rebuild it"):
        Atlas.load(copy)


def test_nothing_is_pickled_and_files_are_readable_by_all(atlas: Atlas) -> None:
    for path in atlas.folder.iterdir():
        assert path.suffix in (".json", ".safetensors", ".jpg"), path
        assert not path.read_bytes().startswith(b"\x80"), path
        assert path.stat().st_mode & 0o044 == 0o044, path
    arrays = atlas.site_arrays(("img", 0))
    assert arrays["top_value"].dtype == torch.float16 and arrays["features"].dtype == torch.int32
