import copy
import ctypes
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffract_core.errors import (
    ConfigMismatchError,
    CorruptFileError,
    DestinationError,
    DimensionMismatchError,
    NonFiniteWeightsError,
    SiteNotLoadedError,
    UnreadableFileError,
)
from diffract_core.quickstart import random_transcoder, write_example_release
from diffract_core.transcoders import TranscoderSet, convert_release, load_site, save_site
from diffract_core.transcoders.convert import inspect_path
from diffract_core.transcoders.native import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, read_manifest, read_site_config


def _native_release(tmp_path: Path, **kwargs: object) -> Path:
    write_example_release(tmp_path / "release", **{"d_model": 16, "d_features": 64, **kwargs})
    convert_release(tmp_path / "release", tmp_path / "native")
    return tmp_path / "native"


def _rss_anon_mib() -> float:
    """Private resident memory, after handing freed heap back to the OS (earlier tests in the same
    process leave freed memory that would otherwise blur the measurement)."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def test_site_folder_holds_config_and_safetensors(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(4,))
    folder = native / "transcoder_img_4"
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == "diffract-transcoder" and config["format_version"] == 1
    assert (config["d_model"], config["d_features"], config["dtype"]) == (16, 64, "float32")
    assert config["site"] == {"stream": "img", "layer": 4, "model_family": "flux.1",
                              "hook_point": "double_blocks.4.img_mlp"}
    assert config["time_embedding"]["order"] == "sin_cos" and config["timestep_convention"] == "sigma"
    assert (config["provenance"]["source_file"] == "transcoder_img_4.pt"
            and len(config["provenance"]["weights_sha256"]) == 64)
    manifest = read_manifest(native)
    assert [site["folder"] for site in manifest["sites"]] == ["sae_img_4", "sae_txt_4", "transcoder_img_4",
                                                              "transcoder_txt_4"]


def test_loading_is_lazy_and_memory_mapped(tmp_path: Path) -> None:
    big = random_transcoder("img", 0, d_model=256, d_features=65536, time_dim=8)  # 128 MiB of fp32 dictionaries
    save_site(tmp_path, big.config, dict(big.state_dict()))
    del big
    transcoders = TranscoderSet.open(tmp_path)
    assert not transcoders.is_loaded(("img", 0))

    before = _rss_anon_mib()
    site = transcoders[("img", 0)]
    assert float(site.W_enc.sum() + site.W_dec.sum()) == float(site.W_enc.sum() + site.W_dec.sum())  # touch every page
    mapped_growth = _rss_anon_mib() - before
    assert transcoders.is_loaded(("img", 0)) and transcoders[("img", 0)] is site
    assert mapped_growth < 32, f"loading copied the weights into private memory (+{mapped_growth:.0f} MiB)"

    before = _rss_anon_mib()
    cast = load_site(tmp_path / "transcoder_img_0", dtype=torch.bfloat16)
    assert cast.dtype == torch.bfloat16 and cast.config.dtype == "bfloat16"
    assert _rss_anon_mib() - before > 56, "a dtype change must copy (64 MiB of bf16), so the probe above can fail"


def test_fp8_loading_quantises_from_the_mapped_file(tmp_path: Path) -> None:
    big = random_transcoder("img", 0, d_model=256, d_features=65536, time_dim=8)  # 128 MiB of fp32 dictionaries
    save_site(tmp_path, big.config, dict(big.state_dict()))
    x = torch.randn(3, 256)
    reference = big(x, 0.5).detach()
    del big
    before = _rss_anon_mib()
    site = TranscoderSet.open(tmp_path, fp8_weights=True, dtype=torch.bfloat16)[("img", 0)]
    growth = _rss_anon_mib() - before
    assert site.fp8_weights and site.dtype == torch.bfloat16 and site.config.dtype == "bfloat16"
    assert 28 < growth < 48, f"fp8 codes are 32 MiB; a full-size cast copy would add 64 MiB or more (+{growth:.0f})"
    error = (site.set_compute_dtype(torch.float32)(x, 0.5) - reference).norm() / reference.norm()
    assert error < 0.03


def test_truncated_safetensors_is_a_clear_error(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    weights = native / "transcoder_img_0" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    transcoders = TranscoderSet.open(native)
    with pytest.raises(CorruptFileError, match=r"weights.safetensors cannot be read.*truncated.*convert"):
        transcoders[("img", 0)]


def test_config_that_contradicts_its_tensors_is_refused(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    config_path = native / "transcoder_img_0" / CONFIG_FILE
    original = config_path.read_text()
    config = json.loads(original)
    config["d_features"] = 128
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match=r"W_enc has shape \(64, 16\).*d_features=128.*implies \(128, 16\)"):
        load_site(native / "transcoder_img_0")
    config["d_features"], config["dtype"] = 64, "bfloat16"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match="stored as float32 but config.json says dtype 'bfloat16'"):
        load_site(native / "transcoder_img_0")
    config_path.write_text(original[:-20])
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_site(native / "transcoder_img_0")


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    transcoder = random_transcoder("img", 0, d_model=8, d_features=16, time_dim=4)
    tensors = dict(transcoder.state_dict())
    tensors["W_dec"] = tensors["W_dec"][:, :7]
    with pytest.raises(ConfigMismatchError):
        save_site(tmp_path, transcoder.config, tensors)
    assert list(tmp_path.iterdir()) == []
    save_site(tmp_path, transcoder.config, dict(transcoder.state_dict()))
    with pytest.raises(FileExistsError, match="overwrite"):
        save_site(tmp_path, transcoder.config, dict(transcoder.state_dict()))
    assert [p.name for p in tmp_path.iterdir()] == ["transcoder_img_0"]


def test_a_write_denied_after_the_checks_is_a_destination_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission checks can pass and the write still be denied (ACLs, NFS root_squash)."""
    transcoder = random_transcoder("img", 0, d_model=8, d_features=16, time_dim=4)

    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(tmp_path / ".staging"))

    monkeypatch.setattr("diffract_core.transcoders.native.tempfile.mkdtemp", denied)
    with pytest.raises(DestinationError, match="transcoder_img_0 cannot be written \\(Permission denied"):
        save_site(tmp_path, transcoder.config, dict(transcoder.state_dict()))
    assert list(tmp_path.iterdir()) == []


def test_missing_site_names_the_sites_held(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(0, 1, 2, 5), streams=("img",))
    transcoders = TranscoderSet.open(native)
    with pytest.raises(SiteNotLoadedError, match=r"no transcoder for site txt:1; this set holds \[img: 0-2, 5\]"):
        transcoders[("txt", 1)]
    with pytest.raises(SiteNotLoadedError, match=r"lacks the requested sites \[img: 3\]; it holds \[img: 0-2, 5\]"):
        TranscoderSet.open(native, layers=[1, 3])
    assert TranscoderSet.open(native, layers=[1, 5]).sites == [("img", 1), ("img", 5)]
    assert TranscoderSet.open(native, kind="sae").sites == [("img", 0), ("img", 1), ("img", 2), ("img", 5)]


def test_only_sae_folder_says_which_kind_to_ask_for(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(6,), kinds=("sae",))
    with pytest.raises(CorruptFileError, match="holds only sae sites: pass kind='sae'"):
        TranscoderSet.open(native)


def test_transcoders_must_fit_the_model(tmp_path: Path) -> None:
    transcoders = TranscoderSet.open(_native_release(tmp_path, layers=(0, 3)))
    transcoders.check_model(hidden_size=16, depth=4)
    with pytest.raises(DimensionMismatchError, match="d_model=16 activations but the model's hidden size is 3072"):
        transcoders.check_model(hidden_size=3072, depth=19)
    with pytest.raises(DimensionMismatchError, match=r"img: 3; txt: 3 are past the model's last double-stream block"):
        transcoders.check_model(hidden_size=16, depth=3)


def test_deepcopy_shares_weights_and_to_casts(tmp_path: Path) -> None:
    transcoders = TranscoderSet.open(_native_release(tmp_path, layers=(0,)))
    loaded = transcoders[("img", 0)]
    assert copy.deepcopy({"holder": transcoders})["holder"] is transcoders
    transcoders.to(dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and transcoders[("txt", 0)].dtype == torch.bfloat16
    assert transcoders.config(("txt", 0)).dtype == "bfloat16"


def test_non_finite_native_weights_are_refused_at_load(tmp_path: Path) -> None:
    transcoder = random_transcoder("txt", 7, d_model=8, d_features=16, time_dim=4)
    tensors = {key: value.clone() for key, value in transcoder.state_dict().items()}
    tensors["W_dec"][5, 1] = float("nan")
    save_site(tmp_path, transcoder.config, tensors)
    with pytest.raises(NonFiniteWeightsError, match="transcoder_txt_7: W_dec contains NaN or Inf"):
        TranscoderSet.open(tmp_path)[("txt", 7)]


KILL_POINTS = {
    # after the new site is staged: the release still holds the old site, beside a staging folder
    "staged": "import diffract_core.transcoders.native as native\n"
              "real = native.give_usual_permissions\n"
              "def killed(folder):\n    real(folder)\n    os._exit(9)\n"
              "native.give_usual_permissions = killed\n",
    # inside the replace window: the old site renamed aside, the new one not yet renamed in
    "old site aside": "real = os.replace\n"
                      "def killed(source, target):\n    real(source, target)\n"
                      "    if str(target).endswith('.replaced'):\n        os._exit(9)\n"
                      "os.replace = killed\n",
}


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_a_conversion_killed_midway_is_repaired_by_the_next_run(tmp_path: Path, kill_point: str) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    site = native / "transcoder_img_0"
    before = read_site_config(site).provenance["weights_sha256"]
    script = (
        "import os, sys\nfrom pathlib import Path\n" + KILL_POINTS[kill_point]
        + "from diffract_core.transcoders import convert_release\n"
        f"convert_release(Path({str(tmp_path / 'release')!r}), Path({str(native)!r}), "
        "dtype=__import__('torch').bfloat16, "
        "overwrite=True)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == 9, killed.stderr
    debris = sorted(p.name for p in native.iterdir() if p.name.startswith("."))
    assert debris and all(name.startswith(".transcoder_img_0.") for name in debris)

    convert_release(tmp_path / "release", native)  # the next run, without --overwrite
    assert sorted(p.name for p in native.iterdir()) == [MANIFEST_FILE, "transcoder_img_0"]
    assert read_site_config(site).provenance["weights_sha256"] == before, "the old site is back, unchanged"
    assert TranscoderSet.open(native)[("img", 0)].W_enc.dtype == torch.float32


def test_converted_sites_are_readable_by_others(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    finally:
        os.umask(previous)
    site = native / "transcoder_img_0"
    assert stat.S_IMODE(site.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in site.iterdir()} == {0o644}


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are a POSIX feature")
def test_a_fifo_as_weights_is_refused_without_blocking(tmp_path: Path, returns_within) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    weights = native / "transcoder_img_0" / WEIGHTS_FILE
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(UnreadableFileError,
                       match=r"weights.safetensors is a FIFO \(named pipe\), not a regular file.*convert"):
        returns_within(10, lambda: TranscoderSet.open(native)[("img", 0)])
    with pytest.raises(UnreadableFileError, match="FIFO"):
        returns_within(10, lambda: inspect_path(native))


def test_unreadable_weights_say_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    weights = native / "transcoder_img_0" / WEIGHTS_FILE
    real_open = os.open

    def denied(target, *args, **kwargs):  # root reads everything: deny as for any other user
        if Path(target) == weights:
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(UnreadableFileError, match=r"weights.safetensors cannot be read: permission denied") as error:
        TranscoderSet.open(native)[("img", 0)]
    assert "No such file" not in str(error.value)


def test_a_site_linked_from_outside_the_release_is_refused(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    outside = tmp_path / "elsewhere"
    (native / "transcoder_img_0").rename(outside)
    (native / "transcoder_img_0").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CorruptFileError, match=r"transcoder_img_0 links to .*elsewhere, outside the release.*cp -rL"):
        TranscoderSet.open(native)


@pytest.mark.parametrize("file_name", [CONFIG_FILE, MANIFEST_FILE])
def test_deeply_nested_json_is_refused_by_name(tmp_path: Path, file_name: str) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    path = native / "transcoder_img_0" / CONFIG_FILE if file_name == CONFIG_FILE else native / MANIFEST_FILE
    path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    open_it = (lambda: TranscoderSet.open(native)) if file_name == CONFIG_FILE else (lambda: read_manifest(native))
    with pytest.raises(CorruptFileError, match=rf"{file_name} nests 100001 levels deep"):
        open_it()
    if file_name == CONFIG_FILE:
        with pytest.raises(CorruptFileError, match="levels deep"):
            inspect_path(native)
    else:
        with pytest.raises(CorruptFileError, match="levels deep.*delete .*manifest.json and re-run convert"):
            convert_release(tmp_path / "release", native, overwrite=True)


def test_a_manifest_with_a_malformed_release_is_named(tmp_path: Path) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    manifest = json.loads((native / MANIFEST_FILE).read_text())
    (native / MANIFEST_FILE).write_text(json.dumps({**manifest, "release": "abc"}))
    with pytest.raises(CorruptFileError, match=r'manifest.json: "release" must be an object.*delete .*re-run convert'):
        convert_release(tmp_path / "release", native, overwrite=True)


@pytest.mark.parametrize(("field", "value"),
                         [("d_features", 10**12), ("d_model", True), ("time_embedding", {"dim": 10**9})])
def test_configs_declaring_absurd_sizes_are_refused(tmp_path: Path, field: str, value: object) -> None:
    native = _native_release(tmp_path, layers=(0,), streams=("img",), kinds=("transcoder",))
    path = native / "transcoder_img_0" / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(CorruptFileError, match="must be an integer in"):
        TranscoderSet.open(native)
