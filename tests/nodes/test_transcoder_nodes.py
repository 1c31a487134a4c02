"""Load Transcoders and Download Transcoders from Hub, through the fake ComfyUI surface."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture
def release(core, models_dir: Path, tmp_path: Path) -> Path:
    """A converted release `tiny` (img and txt, layers 0-1, d_model 64) in models/transcoders/."""
    quickstart = core.quickstart
    convert = importlib.import_module("diffract_pack.diffract_core.transcoders.convert")
    quickstart.write_example_release(tmp_path / "pt", layers=(0, 1), kinds=("transcoder", "sae"), d_model=64,
                                     d_features=32)
    dest = models_dir / "transcoders" / "tiny"
    convert.convert_release(tmp_path / "pt", dest)
    return dest


def test_folder_is_registered_next_to_the_users_own_entry(pack, models_dir: Path, tmp_path: Path) -> None:
    import folder_paths

    folder_paths.add_model_folder_path("transcoders", str(tmp_path / "from_yaml"))  # as extra_model_paths.yaml does
    folder_paths.folder_names_and_paths["transcoders"][1].add(".safetensors")
    pack.nodes.transcoder_folders.register_transcoder_folder()
    pack.nodes.transcoder_folders.register_transcoder_folder()
    paths, extensions = folder_paths.folder_names_and_paths["transcoders"]
    toy_assets = str(pack.diffract_core.toy.embedded.ASSETS)
    assert paths == [str(tmp_path / "from_yaml"), str(models_dir / "transcoders"), toy_assets]
    assert extensions == {".safetensors"}


def test_load_lists_releases_and_opens_the_chosen_sites(pack, release: Path) -> None:
    import fake_runtime

    nodes = pack.nodes
    nodes.transcoder_folders.register_transcoder_folder()
    (release.parent / "not_a_release").mkdir()
    combo = next(i for i in nodes.LoadTranscoders.define_schema().inputs if i.id == "release")
    assert combo.options == ["diffract-toy", "tiny"]  # the embedded toy's release, and the user's
    out = fake_runtime.run_node(nodes.LoadTranscoders, release="tiny", streams="img", layers="1", dtype="bf16")
    transcoders = out.args[0]
    assert transcoders.sites == [("img", 1)] and not transcoders.is_loaded(("img", 1))
    assert transcoders[("img", 1)].dtype == torch.bfloat16
    fp8 = fake_runtime.run_node(nodes.LoadTranscoders, release="tiny", layers="1", dtype="fp8_e4m3").args[0]
    assert fp8[("img", 1)].fp8_weights and fp8[("img", 1)].dtype == torch.float32, "fp8, computed in fp32 on a CPU"
    saes = fake_runtime.run_node(nodes.LoadTranscoders, release="tiny", kind="sae").args[0]
    assert saes.config(("txt", 0)).kind == "sae" and len(saes) == 4
    with pytest.raises(pack.diffract_core.errors.SiteNotLoadedError,
                       match="lacks the requested sites \\[img: 7; txt: 7\\]"):
        fake_runtime.run_node(nodes.LoadTranscoders, release="tiny", layers="0, 7")
    with pytest.raises(fake_runtime.NodeInputError, match="value not in list"):
        fake_runtime.run_node(nodes.LoadTranscoders, release="elsewhere")


def test_download_converts_into_models_transcoders(pack, release: Path, tmp_path: Path) -> None:
    """The real huggingface_hub client, offline, against the node's private cache laid out by hand."""
    import fake_runtime
    from comfy.utils import UPDATES

    nodes = pack.nodes
    nodes.transcoder_folders.register_transcoder_folder()
    dest = release.parent / "DifFRACT"
    _lay_out_hub_cache(dest / ".hub-download", tmp_path / "pt", layers=(0, 1))
    UPDATES.clear()
    out = fake_runtime.run_node(nodes.DownloadTranscoders, unique_id="12", folder="DifFRACT", layers="0-1",
                                dtype="bf16")
    transcoders = out.args[0]
    assert transcoders.sites == [("img", 0), ("img", 1), ("txt", 0), ("txt", 1)]
    assert transcoders.config(("img", 0)).provenance["hub_repo"] == "Artalmaz31/DifFRACT"
    assert not (dest / ".hub-download").exists(), "the private cache is removed once converted"
    assert UPDATES[-1] == ("12", 4, 4)
    with pytest.raises(ValueError, match="not a plain folder name"):
        fake_runtime.run_node(nodes.DownloadTranscoders, folder="../escape")


def test_download_offline_without_files_names_the_urls(pack, models_dir: Path) -> None:
    import fake_runtime

    pack.nodes.transcoder_folders.register_transcoder_folder()
    with pytest.raises(pack.diffract_core.errors.HubUnavailableError, match="https://huggingface.co/Artalmaz31/DifFRACT"):
        fake_runtime.run_node(pack.nodes.DownloadTranscoders, layers="3")
    assert not any((models_dir / "transcoders" / "DifFRACT").glob("transcoder_*"))


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _lay_out_hub_cache(cache: Path, pt_folder: Path, layers: tuple[int, ...]) -> None:
    """huggingface_hub's cache layout: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / "models--Artalmaz31--DifFRACT"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for index, source in enumerate(sorted(pt_folder.glob("transcoder_*.pt"))):
        blob = repo / "blobs" / f"{index:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        link = repo / "snapshots" / COMMIT / "temporal-aware-transcoders" / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
