"""Download released transcoders from the Hugging Face Hub and convert them to the native format.

Files are fetched with `huggingface_hub` (resumable: an interrupted file continues where it
stopped, and sites already converted are skipped), one at a time, into a private cache inside the
destination unless the caller names a cache; each is converted as soon as it arrives and its raw
copy dropped, so the disk holds at most one raw file beyond the converted release. Nothing is
downloaded at import time, and nothing goes silently into the user's global cache.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import HubUnavailableError, SettingsError
from .file_writing import prepare_destination
from .transcoders.config import STREAMS, Kind, Stream
from .transcoders.convert import convert_file, is_converted
from .transcoders.native import recover_interrupted_writes, write_manifest
from .transcoders.release import RELEASE_NAME, parse_release_name
from .transcoders.transcoder_set import TranscoderSet

DEFAULT_REPO_ID = "Artalmaz31/DifFRACT"
TRANSCODER_FOLDER = "temporal-aware-transcoders"
SAE_FOLDER = "temporal-aware-saes"
RELEASED_LAYERS: dict[str, tuple[int, ...]] = {TRANSCODER_FOLDER: (*range(16), 18), SAE_FOLDER: (6, 12, 18)}
FOLDER_KINDS: dict[str, Kind] = {TRANSCODER_FOLDER: "transcoder", SAE_FOLDER: "sae"}
PRIVATE_CACHE = ".hub-download"
HUB_TIMEOUT_S = 15.0  # connect and read timeout of each request to the Hub

Progress = Callable[[int, int, str], None]
_UNREACHABLE = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
_HUB_FAILURES = (*_UNREACHABLE, EntryNotFoundError, HfHubHTTPError)


@dataclass(frozen=True)
class HubRelease:
    """Where a release lives on the Hub: repo, folder inside it, revision."""

    repo_id: str = DEFAULT_REPO_ID
    folder: str = TRANSCODER_FOLDER
    revision: str | None = None

    @property
    def kind(self) -> Kind:
        return FOLDER_KINDS.get(self.folder, "transcoder")

    def path(self, stream: Stream, layer: int) -> str:
        name = f"{self.kind}_{stream}_{layer}.pt"
        return f"{self.folder}/{name}" if self.folder else name

    def url(self, path: str) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{path}"


def release_files(
    release: HubRelease,
    streams: Iterable[Stream] = STREAMS,
    layers: Iterable[int] | None = None,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool = False,
) -> list[str]:
    """Repo paths of the requested sites. Layers default to every released layer: known for the
    official release, listed from the Hub for other repos."""
    streams = tuple(streams)
    bad = [s for s in streams if s not in STREAMS]
    if bad:
        raise SettingsError(f"unknown stream(s) {bad}; use {list(STREAMS)}")
    if release.repo_id == DEFAULT_REPO_ID and release.folder in RELEASED_LAYERS:
        released = RELEASED_LAYERS[release.folder]
    elif layers is not None:
        released = tuple(layers)
    else:
        released = _listed_layers(release, endpoint=endpoint, token=token, offline=offline)
    chosen = tuple(sorted(set(layers))) if layers is not None else released
    unknown = sorted(set(chosen) - set(released))
    if unknown:
        raise SettingsError(
            f"layer(s) {unknown} are not in {release.repo_id}/{release.folder}; it holds layers {list(released)}"
        )
    return [release.path(stream, layer) for stream in streams for layer in chosen]


def _listed_layers(
    release: HubRelease, *, endpoint: str | None, token: str | bool | None, offline: bool
) -> tuple[int, ...]:
    if offline:
        raise HubUnavailableError(
            f"offline: cannot list the layers of {release.repo_id}/{release.folder}; pass the layers explicitly"
        )
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(release.repo_id, revision=release.revision,
                                                                timeout=HUB_TIMEOUT_S)
        files = [sibling.rfilename for sibling in info.siblings or []]
    except Exception as exc:  # the listing is optional help: any failure is reported the same way
        raise HubUnavailableError(
            f"could not list {release.repo_id} on the Hub ({exc}); pass the layers explicitly or check the repo id"
        ) from exc
    prefix = f"{release.folder}/" if release.folder else ""
    layers = set()
    for path in files:
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            match = RELEASE_NAME.match(path[len(prefix) :])
            if match and match["kind"] == release.kind:
                layers.add(int(match["layer"]))
    if not layers:
        raise HubUnavailableError(f"{release.repo_id} has no {release.kind} files under {release.folder!r}")
    return tuple(sorted(layers))


def download_release(
    dest: str | Path,
    *,
    release: HubRelease = HubRelease(),
    streams: Sequence[Stream] = STREAMS,
    layers: Iterable[int] | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
    endpoint: str | None = None,
    token: str | bool | None = None,
    progress: Progress | None = None,
) -> TranscoderSet:
    """Fetch and convert the chosen sites into `dest` (e.g. ComfyUI's `models/transcoders/<name>/`),
    returning them as a lazily loaded TranscoderSet."""
    dest = Path(dest)
    layers = tuple(layers) if layers is not None else None
    paths = release_files(release, streams, layers, endpoint=endpoint, token=token, offline=offline)
    prepare_destination(dest, "the download destination")
    recover_interrupted_writes(dest)
    private_cache = cache_dir is None
    cache = Path(cache_dir) if cache_dir is not None else dest / PRIVATE_CACHE
    for done, repo_path in enumerate(paths):
        name = parse_release_name(repo_path)
        if progress:
            progress(done, len(paths), repo_path)
        if is_converted(dest, name, dtype):
            continue
        try:
            if not offline:
                _check_answers(release, repo_path, cache, endpoint, token)
            local = hf_hub_download(
                release.repo_id,
                repo_path,
                revision=release.revision,
                cache_dir=cache,
                local_files_only=offline,
                endpoint=endpoint,
                token=token,
                etag_timeout=HUB_TIMEOUT_S,
            )
        except _HUB_FAILURES as exc:
            raise _hub_error(exc, release, paths[done:], dest) from exc
        try:
            convert_file(
                Path(local),
                dest,
                dtype=dtype,
                overwrite=True,
                provenance={"hub_repo": release.repo_id, "hub_path": repo_path,
                            "hub_revision": release.revision or "main"},
            )
            write_manifest(dest, release={"hub_repo": release.repo_id, "folder": release.folder})
        finally:  # converted, or refused: either way the raw file has no further use
            if private_cache:
                _drop_cached_file(Path(local))
    if private_cache:
        shutil.rmtree(cache, ignore_errors=True)
    if progress:
        progress(len(paths), len(paths), "done")
    return TranscoderSet.open(dest, kind=release.kind, streams=streams, layers=layers)


def _check_answers(release: HubRelease, repo_path: str, cache: Path, endpoint: str | None,
                   token: str | bool | None) -> None:
    """One request with a connect and read timeout before a download the cache cannot serve.
    huggingface_hub retries a server that accepts connections and never answers for minutes; this
    fails within HUB_TIMEOUT_S, and the caller reports it with the instructions to download by hand."""
    if isinstance(try_to_load_from_cache(release.repo_id, repo_path, cache_dir=cache, revision=release.revision), str):
        return
    url = hf_hub_url(release.repo_id, repo_path, revision=release.revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, token=token, timeout=HUB_TIMEOUT_S)
    except _HUB_FAILURES:
        raise
    except Exception as exc:  # the HTTP client's own timeout and network errors; their types vary between versions
        raise TimeoutError(f"{url} did not answer within {HUB_TIMEOUT_S:g} s ({type(exc).__name__})") from exc


def _drop_cached_file(snapshot_path: Path) -> None:
    """Remove a converted file from the private cache (its snapshot link and the blob behind it)."""
    blob = snapshot_path.resolve()
    snapshot_path.unlink(missing_ok=True)
    if blob != snapshot_path:
        blob.unlink(missing_ok=True)


def _hub_error(exc: Exception, release: HubRelease, missing: Sequence[str], dest: Path) -> HubUnavailableError:
    if isinstance(exc, GatedRepoError):
        reason = (f"{release.repo_id} is gated: accept its terms on the Hub and pass a token "
                  "(or log in with `hf auth login`)")
    elif isinstance(exc, RepositoryNotFoundError):
        reason = f"repository {release.repo_id!r} was not found (or is private: pass a token)"
    elif isinstance(exc, RevisionNotFoundError):
        reason = f"revision {release.revision!r} does not exist in {release.repo_id}"
    elif isinstance(exc, _UNREACHABLE) or isinstance(exc.__cause__, _UNREACHABLE):
        reason = "the Hub could not be reached (offline mode, or no network) and the file is not in the download cache"
    elif isinstance(exc, EntryNotFoundError):
        reason = f"{missing[0]} does not exist in {release.repo_id}"
    else:
        reason = f"the Hub answered with an error ({exc})"
    manual = dest / "downloads"
    urls = "\n".join(f"  {release.url(path)}" for path in missing)
    return HubUnavailableError(
        f"Could not download {missing[0]}: {reason}.\n"
        f"To install the remaining {len(missing)} file(s) by hand, download\n{urls}\n"
        f"into {manual}{os.sep} and run:\n  python -m diffract_core convert {manual} {dest}\n"
        f"Sites already in {dest} are kept; running the download again resumes where it stopped."
    )
