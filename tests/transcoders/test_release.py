import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from diffract_core.errors import (
    CorruptFileError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    UnknownFileNameError,
    UnreadableFileError,
    UnsafeCheckpointError,
)
from diffract_core.quickstart import random_transcoder, write_example_release
from diffract_core.transcoders import (
    TranscoderSet,
    convert_file,
    convert_release,
    load_release_state_dict,
    release_state_dict,
)
from diffract_core.transcoders.release import parse_release_name


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_crafted_pickle_is_refused_with_nothing_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "transcoder_img_0.pt"
    payload = {"encoder.weight": _RunsCodeWhenUnpickled(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match="refused before anything in it could run"):
        load_release_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        convert_release(tmp_path, tmp_path / "native")
    assert not marker.exists()
    assert not (tmp_path / "native").exists() or not any((tmp_path / "native").iterdir())


def test_only_plain_tensor_dicts_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "transcoder_img_0.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(UnsafeCheckpointError, match="holds a list, not a state dict"):
        load_release_state_dict(path)
    torch.save({"encoder.weight": torch.zeros(2), "step": 10}, path)
    with pytest.raises(UnsafeCheckpointError, match="non-tensor entries.*'step': 'int'"):
        load_release_state_dict(path)


def test_convert_load_round_trip_is_exact(tmp_path: Path) -> None:
    originals = write_example_release(tmp_path / "release", layers=(0, 5), d_model=32, d_features=128)
    convert_release(tmp_path / "release", tmp_path / "native")
    x = torch.randn(3, 11, 32)
    sigmas = torch.tensor([1.0, 0.5, 0.25])
    for kind in ("transcoder", "sae"):
        loaded = TranscoderSet.open(tmp_path / "native", kind=kind)
        assert loaded.sites == [("img", 0), ("img", 5), ("txt", 0), ("txt", 5)]
        for original in (tc for tc in originals.values() if tc.config.kind == kind):
            converted = loaded[original.config.site.key]
            assert converted.config.d_model == 32 and converted.config.d_features == 128
            assert torch.equal(converted(x, sigmas), original(x, sigmas))
            assert torch.equal(converted.encode(x, sigmas)[1], original.encode(x, sigmas)[1])


def test_shapes_are_inferred_and_checked(tmp_path: Path) -> None:
    state = release_state_dict(random_transcoder("txt", 2, d_model=8, d_features=40, time_dim=6).state_dict())
    path = tmp_path / "transcoder_txt_2.pt"
    torch.save(state, path)
    site = convert_file(path, tmp_path / "native")
    config = TranscoderSet.open(tmp_path / "native").config(("txt", 2))
    assert (config.d_model, config.d_features, config.time_embedding.dim) == (8, 40, 6)
    assert config.provenance["source_file"] == "transcoder_txt_2.pt" and site.name == "transcoder_txt_2"

    state["decoder.weight"] = state["decoder.weight"][:, :39]
    torch.save(state, path)
    with pytest.raises(ShapeMismatchError, match=r"decoder.weight has shape \(8, 39\).*imply \(8, 40\)"):
        convert_file(path, tmp_path / "other")
    del state["decoder.weight"]
    torch.save(state, path)
    with pytest.raises(ShapeMismatchError, match=r"missing keys: \['decoder.weight'\]"):
        convert_file(path, tmp_path / "other")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, bad: float) -> None:
    state = release_state_dict(random_transcoder("img", 1, d_model=8, d_features=16, time_dim=4).state_dict())
    state["encoder.weight"][3, 2] = bad
    torch.save(state, tmp_path / "transcoder_img_1.pt")
    with pytest.raises(NonFiniteWeightsError, match="encoder.weight contains NaN or Inf"):
        convert_release(tmp_path, tmp_path / "native")
    assert not (tmp_path / "native" / "transcoder_img_1").exists()


def test_unknown_file_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    write_example_release(tmp_path, layers=(0,), d_model=8, d_features=16)
    (tmp_path / "transcoder_image_0.pt").write_bytes(b"")
    with pytest.raises(UnknownFileNameError, match=r"'transcoder_image_0.pt'.*transcoder_\{img\|txt\}_\{layer\}\.pt"):
        convert_release(tmp_path, tmp_path / "native")
    assert not (tmp_path / "native").exists()
    assert parse_release_name("sae_txt_18.pt").layer == 18


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    write_example_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",), d_model=8, d_features=16)
    path = tmp_path / "transcoder_img_0.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not zipfile.is_zipfile(path)
    with pytest.raises(CorruptFileError, match="transcoder_img_0.pt cannot be read.*truncated"):
        load_release_state_dict(path)


def test_a_refused_pickle_names_what_it_imports_without_torchs_advice(tmp_path: Path) -> None:
    path = tmp_path / "transcoder_img_0.pt"
    torch.save({"encoder.weight": _RunsCodeWhenUnpickled(tmp_path / "code-ran")}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_release_state_dict(path)
    message = str(error.value)
    assert "it imports posix.system" in message or "it imports nt.system" in message
    assert "weights_only" not in message and "\x1b" not in message and error.value.__cause__ is None


def test_tensors_declaring_more_than_the_file_holds_are_refused_before_allocation(tmp_path: Path) -> None:
    state = release_state_dict(random_transcoder("img", 0, d_model=16, d_features=32, time_dim=4).state_dict())
    features = 10**9  # stride-0 views: 132 GB declared, a few floats stored
    state["encoder.weight"] = torch.zeros(1, 1).expand(features, 16)
    state["encoder.bias"] = torch.zeros(1).expand(features)
    state["decoder.weight"] = torch.zeros(1, 1).expand(16, features)
    path = tmp_path / "transcoder_img_0.pt"
    torch.save(state, path)
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(CorruptFileError,
                       match=r"declares 122.9 GiB of tensors but the file holds [\d.]+ KiB.*refused before allocating"):
        load_release_state_dict(path)
    with pytest.raises(CorruptFileError, match="declares"):
        convert_release(tmp_path, tmp_path / "native")
    assert not any((tmp_path / "native").iterdir())


@pytest.mark.skipif(os.name == "nt", reason="FIFOs are a POSIX feature")
def test_a_fifo_named_like_a_release_file_is_refused(tmp_path: Path, returns_within) -> None:
    os.mkfifo(tmp_path / "transcoder_img_0.pt")
    with pytest.raises(UnreadableFileError, match=r"transcoder_img_0.pt is a FIFO"):
        returns_within(10, lambda: convert_release(tmp_path, tmp_path / "native"))
