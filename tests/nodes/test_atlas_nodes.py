"""Build Feature Atlas and Explain Feature on the toy through the fake ComfyUI surface, and the atlas
labels that Load Transcoders, Top Features and Save Circuit pick up."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch

PROMPTS = "a red circle\na blue square\n\na green triangle\na yellow circle and a blue square\na red circle"


@pytest.fixture(scope="module")
def atlas_nodes(pack):
    return importlib.import_module("diffract_pack.nodes.atlas_nodes")


@pytest.fixture(scope="module")
def toy(pack):
    import fake_runtime

    return fake_runtime.run_node(importlib.import_module("diffract_pack.nodes.toy_nodes").ToyModelLoader).args


@pytest.fixture(scope="module")
def built(core, atlas_nodes, toy, tmp_path_factory):
    """The toy's release copied to a models folder, with an atlas built by the node beside it."""
    import comfy.utils
    import fake_runtime

    embedded = importlib.import_module("diffract_pack.diffract_core.toy.embedded")
    release = Path(shutil.copytree(embedded.TOY_TRANSCODERS, tmp_path_factory.mktemp("models") / "diffract-toy"))
    transcoders = core.transcoders.TranscoderSet.open(release, layers=[0, 1])
    model, text_encoder = toy
    comfy.utils.UPDATES.clear()
    output = fake_runtime.run_node(atlas_nodes.BuildFeatureAtlas, "9", model=model, transcoders=transcoders,
                                   prompts=PROMPTS, toy_text_encoder=text_encoder, steps=4, width=128, height=128,
                                   prompts_per_batch=2)
    return release, transcoders, output, list(comfy.utils.UPDATES)


def test_the_atlas_is_built_beside_the_release_with_progress(built) -> None:
    release, transcoders, output, updates = built
    (atlas,) = output.args
    assert atlas.folder == release / "atlas" and (release / "atlas" / "atlas.json").is_file()
    assert atlas.prompts == ["a red circle", "a blue square", "a green triangle", "a yellow circle and a blue square"]
    assert atlas.sites == transcoders.sites and transcoders.atlas is atlas
    assert "atlas of 4 prompts" in output.ui["text"][0]
    assert updates[0] == ("9", 0, 4) and updates[-1] == ("9", 4, 4)


def test_explain_feature_shows_the_dashboard(built, atlas_nodes, core) -> None:
    import fake_runtime

    _, transcoders, output, _ = built
    (atlas,) = output.args
    site = ("img", 0)
    index = next(iter(atlas.labels(site)))
    spec = f"img:0:{index}"
    for given in ({"transcoders": transcoders}, {"atlas": atlas}):
        shown = fake_runtime.run_node(atlas_nodes.ExplainFeature, feature=spec, **given)
        (image,) = shown.args
        assert image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3
        assert shown.ui["text"][0].startswith(f"{spec}: {atlas.label(core.features.FeatureRef('img', 0, index)).text}")
        assert "firing by sigma" in shown.ui["text"][0] and shown.ui["images"]
        card = shown.ui["diffract_feature"][0]
        assert card["feature"] == spec and any(e.get("crop", "").startswith("data:image/png") for e in card["examples"])


def test_explain_feature_without_an_atlas_names_the_fix(atlas_nodes, core, transcoders) -> None:
    import fake_runtime

    with pytest.raises(core.errors.DiffractError, match="no feature atlas .* Build Feature Atlas"):
        fake_runtime.run_node(atlas_nodes.ExplainFeature, feature="img:0:1", transcoders=transcoders)
    with pytest.raises(core.errors.FeatureSpecError, match="takes one"):
        fake_runtime.run_node(atlas_nodes.ExplainFeature, feature="img:0:1 img:0:2", transcoders=transcoders)


def test_a_build_needs_exactly_one_text_encoder(atlas_nodes, built, toy, core) -> None:
    import fake_runtime

    _, transcoders, _, _ = built
    with pytest.raises(core.errors.DiffractError, match="exactly one text encoder"):
        fake_runtime.run_node(atlas_nodes.BuildFeatureAtlas, model=toy[0], transcoders=transcoders, prompts=PROMPTS)


def test_a_clip_encodes_prompts_of_one_length_per_batch(atlas_nodes, core) -> None:
    class Clip:  # ComfyUI's CLIP: tokenize(text), encode_from_tokens(tokens, return_pooled=True)
        def tokenize(self, text: str) -> list[str]:
            return text.split()

        def encode_from_tokens(self, tokens: list[str], return_pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.ones(1, len(tokens), 4), torch.zeros(1, 2)

    context, pooled = atlas_nodes.ClipPromptEncoder(Clip())(["a b", "c d"])
    assert context.shape == (2, 2, 4) and pooled.shape == (2, 2)
    with pytest.raises(core.errors.DiffractError, match="different numbers of text tokens"):
        atlas_nodes.ClipPromptEncoder(Clip())(["a b", "c d e"])


def test_load_transcoders_reports_the_atlas_and_top_features_gets_a_label_column(built, pack, models_dir, core) -> None:
    import fake_runtime

    release, _, output, _ = built
    (atlas,) = output.args
    shutil.copytree(release, models_dir / "transcoders" / "labelled")
    transcoder_nodes = importlib.import_module("diffract_pack.nodes.transcoder_nodes")
    pack.nodes.transcoder_folders.register_transcoder_folder()
    loaded = fake_runtime.run_node(transcoder_nodes.LoadTranscoders, release="labelled", streams="img+txt",
                                   layers="0-1", dtype="fp32", kind="transcoder")
    assert loaded.ui["text"][0].startswith("feature atlas: 4 prompts")
    assert loaded.args[0].atlas is not None
    top = importlib.import_module("diffract_pack.diffract_core.render.top_features")
    ref = core.features.FeatureRef("txt", 0, next(iter(atlas.labels(("txt", 0)))))
    stat = top.FeatureStat(ref, 0, 1, None, 1.0, 1.0, 0.0, 0.0, 1.0)
    table = top.format_table([stat], {str(ref): "'red' token (text, all steps)"})
    assert (table.splitlines()[0].split()[-1] == "label"
            and table.splitlines()[2].endswith("'red' token (text, all steps)"))
