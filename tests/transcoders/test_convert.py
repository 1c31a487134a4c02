import shutil
from pathlib import Path

import pytest
import torch

from diffract_core.quickstart import write_example_release
from diffract_core.transcoders import TranscoderSet, convert_release
from diffract_core.transcoders.native import WEIGHTS_FILE


def test_converting_again_keeps_finished_sites(tmp_path: Path) -> None:
    write_example_release(tmp_path / "release", layers=(0,), kinds=("transcoder",), d_model=8, d_features=16)
    convert_release(tmp_path / "release", tmp_path / "native", dtype=torch.bfloat16)
    weights = tmp_path / "native" / "transcoder_img_0" / WEIGHTS_FILE
    stamp = weights.stat().st_mtime_ns
    convert_release(tmp_path / "release", tmp_path / "native", dtype=torch.bfloat16)
    assert weights.stat().st_mtime_ns == stamp

    with pytest.raises(FileExistsError, match=r"already holds transcoder_img_0.pt as bfloat16, not float32.*overwrite"):
        convert_release(tmp_path / "release", tmp_path / "native", dtype=torch.float32)
    convert_release(tmp_path / "release", tmp_path / "native", dtype=torch.float32, overwrite=True)
    assert TranscoderSet.open(tmp_path / "native").config(("img", 0)).dtype == "float32"


def test_hidden_folders_are_never_sites(tmp_path: Path) -> None:
    write_example_release(tmp_path / "release", layers=(0,), streams=("img",), kinds=("transcoder",), d_model=8,
                          d_features=16)
    convert_release(tmp_path / "release", tmp_path / "native")
    # What an interrupted write leaves behind: a complete-looking staging copy under a hidden name.
    shutil.copytree(tmp_path / "native" / "transcoder_img_0", tmp_path / "native" / ".transcoder_img_0.k2j4")
    assert TranscoderSet.open(tmp_path / "native").sites == [("img", 0)]
