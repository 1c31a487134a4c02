"""The real huggingface_hub client against a local cache laid out as the client expects it.

Nothing is downloaded: tests run with HF_HUB_OFFLINE=1 (tests/conftest.py) or against a closed
loopback port.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffract_core.errors import HubUnavailableError, UnsafeCheckpointError
from diffract_core.hub import DEFAULT_REPO_ID, SAE_FOLDER, HubRelease, download_release, release_files
from diffract_core.quickstart import write_example_release

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache: Path, repo_id: str = DEFAULT_REPO_ID) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


def put_in_cache(cache: Path, files: dict[str, Path], repo_id: str = DEFAULT_REPO_ID) -> None:
    """Lay files out as huggingface_hub's cache does: blobs named by content, snapshot symlinks,
    and refs/main naming the snapshot."""
    repo = _cache_repo(cache, repo_id)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for index, (repo_path, source) in enumerate(files.items()):
        blob = repo / "blobs" / f"{index:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        link = repo / "snapshots" / COMMIT / repo_path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def release_files_on_disk(tmp_path: Path) -> dict[str, Path]:
    written = write_example_release(tmp_path / "made", layers=(0, 1), kinds=("transcoder",), d_model=16, d_features=32)
    return {f"temporal-aware-transcoders/{path.name}": path for path in written}


def test_download_converts_from_the_cache(tmp_path: Path, release_files_on_disk: dict[str, Path]) -> None:
    cache = tmp_path / "hf-cache"
    put_in_cache(cache, release_files_on_disk)
    dest = tmp_path / "models" / "transcoders" / "difFRACT"
    seen = []
    transcoders = download_release(
        dest, layers=[0, 1], dtype=torch.bfloat16, cache_dir=cache, offline=True, progress=lambda *a: seen.append(a)
    )
    assert transcoders.sites == [("img", 0), ("img", 1), ("txt", 0), ("txt", 1)]
    config = transcoders.config(("txt", 1))
    assert config.dtype == "bfloat16"
    assert config.provenance["hub_repo"] == DEFAULT_REPO_ID
    assert config.provenance["hub_path"] == "temporal-aware-transcoders/transcoder_txt_1.pt"
    assert seen[0] == (0, 4, "temporal-aware-transcoders/transcoder_img_0.pt") and seen[-1] == (4, 4, "done")
    assert _cache_repo(cache).exists(), "a cache the caller names is left as it is"


def test_download_resumes_and_reports_what_to_fetch_by_hand(tmp_path: Path,
                                                            release_files_on_disk: dict[str, Path]) -> None:
    dest = tmp_path / "dest"
    private_cache = dest / ".hub-download"
    present = {k: v for k, v in release_files_on_disk.items() if "img" in k}
    put_in_cache(private_cache, present)
    with pytest.raises(HubUnavailableError) as error:
        download_release(dest, layers=[0, 1], offline=True)
    message = str(error.value)
    assert "could not be reached" in message
    assert (f"https://huggingface.co/{DEFAULT_REPO_ID}/resolve/main/temporal-aware-transcoders/transcoder_txt_0.pt"
            in message)
    assert "transcoder_txt_1.pt" in message and "transcoder_img_0.pt" not in message
    assert f"python -m diffract_core convert {dest / 'downloads'} {dest}" in message
    assert sorted(p.name for p in dest.iterdir() if p.name.startswith("transcoder")) == ["transcoder_img_0",
                                                                                          "transcoder_img_1"]

    # Converted raw files left the private cache; the retry finds only the missing ones there.
    assert not list((_cache_repo(private_cache) / "blobs").iterdir())
    put_in_cache(private_cache, {k: v for k, v in release_files_on_disk.items() if "txt" in k})
    transcoders = download_release(dest, layers=[0, 1], offline=True)
    assert len(transcoders) == 4 and not private_cache.exists()


def test_hub_offline_by_environment_is_the_same_clear_error(tmp_path: Path) -> None:
    script = (
        "from diffract_core.hub import download_release\n"
        "from diffract_core.errors import HubUnavailableError\n"
        "try:\n"
        f"    download_release({str(tmp_path / 'dest')!r}, layers=[18], streams=['img'])\n"
        "except HubUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert "Could not download temporal-aware-transcoders/transcoder_img_18.pt" in out.stdout, out.stderr


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    script = (
        "from diffract_core.hub import HubRelease, download_release\n"
        "from diffract_core.errors import HubUnavailableError\n"
        "try:\n"
        f"    download_release({str(tmp_path / 'dest')!r}, release=HubRelease(folder='temporal-aware-saes'),\n"
        "                     layers=[6], streams=['txt'], endpoint='http://127.0.0.1:9')\n"
        "except HubUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert "Could not download temporal-aware-saes/sae_txt_6.pt: the Hub could not be reached" in out.stdout, out.stderr


def test_release_files_cover_the_official_release() -> None:
    files = release_files(HubRelease())
    assert len(files) == 34 and "temporal-aware-transcoders/transcoder_txt_18.pt" in files
    assert not any("_16.pt" in f or "_17.pt" in f for f in files)
    saes = release_files(HubRelease(folder=SAE_FOLDER), streams=["img"])
    assert saes == [f"temporal-aware-saes/sae_img_{layer}.pt" for layer in (6, 12, 18)]
    with pytest.raises(ValueError, match=r"layer\(s\) \[16\] are not in Artalmaz31/DifFRACT"):
        release_files(HubRelease(), layers=[15, 16])


def test_a_refused_file_does_not_stay_in_the_private_cache(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    crafted = tmp_path / "transcoder_img_0.pt"
    torch.save({"encoder.weight": ["not", "a", "tensor"], "hook": os.system}, crafted)
    put_in_cache(dest / ".hub-download", {"temporal-aware-transcoders/transcoder_img_0.pt": crafted})
    with pytest.raises(UnsafeCheckpointError, match="refused before anything in it could run"):
        download_release(dest, layers=[0], streams=["img"], offline=True)
    assert not list((_cache_repo(dest / ".hub-download") / "blobs").iterdir())
    assert not list((_cache_repo(dest / ".hub-download") / "snapshots" / COMMIT).rglob("*.pt"))


def test_a_silent_endpoint_fails_within_a_minute_with_the_manual_instructions(tmp_path: Path) -> None:
    """A local server that accepts connections and never answers: no real network."""
    script = (
        "import socket, threading, time\n"
        "from diffract_core.hub import HubRelease, download_release, release_files\n"
        "from diffract_core.errors import HubUnavailableError\n"
        "server = socket.socket()\nserver.bind(('127.0.0.1', 0))\nserver.listen(8)\nheld = []\n"
        "threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()\n"
        "endpoint = f'http://127.0.0.1:{server.getsockname()[1]}'\n"
        "for attempt in ('download', 'listing'):\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        if attempt == 'download':\n"
        f"            download_release({str(tmp_path / 'dest')!r}, release=HubRelease(folder='temporal-aware-saes'),\n"
        "                             layers=[6], streams=['txt'], endpoint=endpoint)\n"
        "        else:\n"
        "            release_files(HubRelease(repo_id='someone/else'), endpoint=endpoint)\n"
        "    except HubUnavailableError as exc:\n"
        "        print(attempt, round(time.monotonic() - started), exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    download, listing = out.stdout.split("\nlisting ", 1)
    seconds = int(download.split()[1])
    assert seconds < 60, out.stdout
    assert "Could not download temporal-aware-saes/sae_txt_6.pt: the Hub could not be reached" in download
    assert f"python -m diffract_core convert {tmp_path / 'dest' / 'downloads'}" in download
    assert int(listing.split()[0]) < 60 and "could not list someone/else on the Hub" in listing, out.stdout
