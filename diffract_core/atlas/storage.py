"""The atlas on disk, beside its release, and reading it back.

`<release>/atlas/` (`atlas-sae/` for the SAE sites of the same folder) holds:
- `atlas.json`: format and version, the release it describes (per site: stream, layer, d_model,
  d_features, weights sha256), the settings, sigma schedule, vocabulary and array sizes;
- `prompts.json`: the prompt set (examples refer to prompts by index);
- `labels.json`: per site, one label per live feature (text, confidence, attributes);
- `{kind}_{stream}_{layer}.safetensors`: a site's statistics, one row per live feature
  (`summary.SummaryShape.layout` lists every array);
- `crops-NNN.jpg`: sprite sheets of image crops (`crops.py`).
Nothing is pickled. Loading checks every file against `atlas.json` and `atlas.json` against the
release, and names the problem and the fix.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigMismatchError, CorruptFileError, DiffractError, FeatureIndexError, SiteNotLoadedError
from ..features import FeatureRef
from ..file_reading import SAFETENSORS_DTYPES, check_readable_file, parse_json, read_regular_file
from ..file_writing import give_usual_permissions
from ..training.evaluation import bucket_label, sigma_bucket_edges
from ..transcoders.config import TranscoderConfig
from ..transcoders.native import site_folder_name
from ..transcoders.transcoder_set import SiteKey, TranscoderSet, describe_sites
from .crops import TILES_PER_SHEET, TileStore, read_tile
from .labels import NEVER_FIRED, FeatureLabel
from .prompts import PromptSet
from .settings import AtlasSettings
from .summary import SummaryShape

ATLAS_FORMAT = "diffract-feature-atlas"
ATLAS_VERSION = 1
INFO_FILE = "atlas.json"
PROMPTS_FILE = "prompts.json"
LABELS_FILE = "labels.json"
CONTEXT_WORDS = 2  # a text example shows this many words either side of its token
MAX_INFO_BYTES = 1 << 20
MAX_LIST_BYTES = 1 << 30  # prompts.json, labels.json: FLUX's 34 released sites of 49152 features label in ~150 MB
INFO_KEYS = frozenset({"release", "settings", "prompts", "vocabulary", "schedule", "shape", "crop_size", "crop_sheets"})


def atlas_folder(release: Path, kind: str = "transcoder") -> Path:
    return Path(release) / ("atlas" if kind == "transcoder" else f"atlas-{kind}")


def site_name(site: SiteKey) -> str:
    return f"{site[0]}:{site[1]}"


def rebuild_hint(folder: Path) -> str:
    kind = f" --kind {folder.name[len('atlas-'):]}" if folder.name.startswith("atlas-") else ""
    return f"rebuild it: python -m diffract_core atlas --release {folder.parent} --prompts FILE --out {folder}{kind}"


def write_atlas(out: Path, info: dict[str, Any], prompts: Sequence[str],
                arrays: Mapping[SiteKey, dict[str, torch.Tensor]], labels: Mapping[SiteKey, list[FeatureLabel]],
                tiles: TileStore | None) -> Path:
    """Write the atlas folder in one step: into a hidden staging folder, then renamed into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        kind = info["release"]["kind"]
        for site, site_arrays in arrays.items():
            save_file({name: array.contiguous() for name, array in site_arrays.items()},
                      str(staging / f"{site_folder_name(kind, *site)}.safetensors"))
        info = {**info, "crop_sheets": tiles.write_sheets(staging) if tiles is not None else []}
        (staging / PROMPTS_FILE).write_text(json.dumps({"prompts": list(prompts)}, indent=0) + "\n")
        site_labels = {site_name(site): [label.to_json() for label in rows] for site, rows in labels.items()}
        (staging / LABELS_FILE).write_text(json.dumps({"format_version": ATLAS_VERSION, "sites": site_labels},
                                                      separators=(",", ":")) + "\n")
        (staging / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        give_usual_permissions(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


@dataclass(frozen=True)
class FeatureStats:
    feature: FeatureRef
    buckets: tuple[str, ...]  # sigma bucket labels, "[0, 0.25]", ...
    firing_rate: tuple[float, ...]  # per bucket: share of token positions where it fired (in the top k)
    mean: tuple[float, ...]  # per bucket: mean activation where it fired
    max: tuple[float, ...]  # per bucket
    prompts_fired: int
    prompts: int


@dataclass(frozen=True)
class Example:
    prompt: str
    prompt_index: int
    step: int
    sigma: float
    token: int  # the token (image grid position, row-major, or text position) of the feature's peak
    activation: float
    token_string: str | None  # text features: the word at `token`
    context: tuple[str, ...] | None  # text features: the words around it
    crop: torch.Tensor | None  # image features with a stored crop: uint8 [3, size, size]


def _read_json(path: Path, what: str, max_bytes: int) -> Any:
    fix = rebuild_hint(path.parent)
    try:
        data = read_regular_file(path, max_bytes=max_bytes, fix=fix)
    except FileNotFoundError as exc:
        raise CorruptFileError(f"the atlas's {what} {path} is missing; {fix}") from exc
    return parse_json(data, f"the atlas's {what} {path}", fix)


class Atlas:
    """Per-feature statistics, examples and labels of one release, read from its atlas folder."""

    def __init__(self, folder: Path, info: dict[str, Any], prompts: list[str], labels: dict[str, list[Any]],
                 release: dict[SiteKey, dict[str, Any]]) -> None:
        self.folder = folder
        self.info = info
        self.prompts = prompts
        self._labels = labels
        self._release = release
        self.shape = SummaryShape(**info["shape"])
        self._arrays: dict[SiteKey, dict[str, torch.Tensor]] = {}
        self._sheets: dict[int, Image.Image] = {}

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, release: str | Path | TranscoderSet, *, kind: str | None = None) -> Atlas:
        """The atlas beside a release folder (or beside the folder a TranscoderSet was opened from),
        checked against that release's site configs."""
        if isinstance(release, TranscoderSet):
            if release.root is None:
                raise DiffractError("these transcoders were not opened from a release folder, so no atlas lies "
                                    "beside them")
            transcoders = release
        else:
            transcoders = TranscoderSet.open(release, kind=kind or "transcoder")  # type: ignore[arg-type]
        root = transcoders.root
        assert root is not None
        configs = {site: transcoders.config(site) for site in transcoders.sites}
        kind = kind or next(iter(configs.values())).kind
        folder = atlas_folder(root, kind)
        if not (folder / INFO_FILE).exists():
            raise DiffractError(
                f"no atlas beside {root} (looked for {folder / INFO_FILE}): build one with "
                f"python -m diffract_core atlas --release {root} --prompts FILE"
            )
        return cls.load(folder, configs)

    @classmethod
    def find(cls, transcoders: TranscoderSet) -> Atlas | None:
        """The atlas beside the transcoders' release folder, or None when there is none."""
        if transcoders.root is None or not transcoders.sites:
            return None
        kind = transcoders.config(transcoders.sites[0]).kind
        if not (atlas_folder(transcoders.root, kind) / INFO_FILE).exists():
            return None
        return cls.open(transcoders)

    @classmethod
    def load(cls, folder: str | Path, configs: Mapping[SiteKey, TranscoderConfig] | None = None) -> Atlas:
        """Read and check an atlas folder; with `configs`, also against the release it claims to describe."""
        folder = Path(folder)
        info = _read_json(folder / INFO_FILE, "index", MAX_INFO_BYTES)
        if not isinstance(info, dict) or info.get("format") != ATLAS_FORMAT:
            raise CorruptFileError(f"{folder / INFO_FILE} is not a {ATLAS_FORMAT} index; {rebuild_hint(folder)}")
        version = info.get("format_version")
        if not isinstance(version, int) or version > ATLAS_VERSION or version < 1:
            raise DiffractError(
                f"{folder} holds atlas format version {version!r}, but this package reads version {ATLAS_VERSION}: "
                f"update the package, or {rebuild_hint(folder)}"
            )
        missing = sorted(INFO_KEYS - set(info))
        if missing:
            raise CorruptFileError(f"{folder / INFO_FILE} lacks {missing}; {rebuild_hint(folder)}")
        release = {(s["stream"], int(s["layer"])): s for s in info["release"]["sites"]}
        if configs is not None:
            _check_release(folder, info, release, configs)
        prompts = _read_json(folder / PROMPTS_FILE, "prompt list", MAX_LIST_BYTES)
        prompts = prompts.get("prompts") if isinstance(prompts, dict) else None
        if not isinstance(prompts, list) or len(prompts) != info["prompts"]:
            raise CorruptFileError(f"{folder / PROMPTS_FILE} does not hold the atlas's {info['prompts']} prompts; "
                                   f"{rebuild_hint(folder)}")
        labels = _read_json(folder / LABELS_FILE, "labels", MAX_LIST_BYTES)
        labels = labels.get("sites") if isinstance(labels, dict) else None
        if not isinstance(labels, dict):
            raise CorruptFileError(f"{folder / LABELS_FILE} holds no labels per site; {rebuild_hint(folder)}")
        atlas = cls(folder, info, prompts, labels, release)
        for site in release:
            atlas._check_site_file(site)
        for name in info["crop_sheets"]:
            if not (folder / name).is_file():
                raise CorruptFileError(f"the atlas's crop sheet {folder / name} is missing; {rebuild_hint(folder)}")
        return atlas

    def _site_file(self, site: SiteKey) -> Path:
        return self.folder / f"{site_folder_name(self.info['release']['kind'], *site)}.safetensors"

    def _check_site_file(self, site: SiteKey) -> None:
        """Names, shapes and dtypes of a site's arrays against atlas.json, without reading them."""
        path = self._site_file(site)
        try:
            check_readable_file(path, rebuild_hint(self.folder))
            with safe_open(str(path), framework="pt") as handle:
                found = {key: (tuple(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype())
                         for key in handle.keys()}  # noqa: SIM118 - a safe_open handle has keys() but no `in` or iteration
        except (SafetensorError, OSError) as exc:
            raise CorruptFileError(f"{path} cannot be read ({exc}): it is missing, truncated or damaged; "
                                   f"{rebuild_hint(self.folder)}") from exc
        live = found.get("features", ((-1,), ""))[0][0]
        expected = self.shape.layout(site[0], live)
        if set(found) != set(expected):
            raise CorruptFileError(f"{path} holds arrays {sorted(found)}, not the atlas's {sorted(expected)}; "
                                   f"{rebuild_hint(self.folder)}")
        for name, (shape, dtype) in expected.items():
            if found[name][0] != shape or SAFETENSORS_DTYPES.get(found[name][1]) != dtype:
                raise CorruptFileError(
                    f"{path}: {name} is {found[name][1]} {list(found[name][0])}, but {INFO_FILE} implies "
                    f"{dtype} {list(shape)}: the file does not belong to this atlas; {rebuild_hint(self.folder)}"
                )
        rows = self._labels.get(site_name(site))
        if rows is None or len(rows) != live:
            raise CorruptFileError(f"{self.folder / LABELS_FILE} holds no label for each of the {live} live features "
                                   f"of {site_name(site)}; {rebuild_hint(self.folder)}")

    def site_arrays(self, site: SiteKey) -> dict[str, torch.Tensor]:
        """A site's stored arrays (read on first use, their indices checked)."""
        if site not in self._release:
            raise SiteNotLoadedError(f"the atlas covers [{describe_sites(self._release)}], not {site_name(site)}")
        if site not in self._arrays:
            path = self._site_file(site)
            with safe_open(str(path), framework="pt") as handle:
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle has keys() but no `in` or iteration
            features = arrays["features"].long()
            d_features = int(self._release[site]["d_features"])
            if len(features) and (features[0] < 0 or features[-1] >= d_features or bool((features.diff() <= 0).any())):
                raise CorruptFileError(f"{path}: feature indices are not ascending within 0..{d_features - 1}; "
                                       f"{rebuild_hint(self.folder)}")
            if arrays["top_prompt"].numel() and int(arrays["top_prompt"].max()) >= len(self.prompts):
                raise CorruptFileError(f"{path}: examples refer to prompts past the atlas's {len(self.prompts)}; "
                                       f"{rebuild_hint(self.folder)}")
            self._arrays[site] = arrays
        return self._arrays[site]

    # --- reading -------------------------------------------------------------------------------

    @property
    def sites(self) -> list[SiteKey]:
        return sorted(self._release)

    @property
    def settings(self) -> AtlasSettings:
        return AtlasSettings.from_dict(self.info["settings"])

    @cached_property
    def prompt_set(self) -> PromptSet:
        return PromptSet(tuple(self.prompts), tuple(self.info["vocabulary"]))

    @property
    def schedule(self) -> list[float]:
        return list(self.info["schedule"])

    def _row(self, ref: FeatureRef) -> int | None:
        """The feature's row in its site's arrays; None when it never fired."""
        arrays = self.site_arrays(ref.site)
        d_features = int(self._release[ref.site]["d_features"])
        if not 0 <= ref.index < d_features:
            raise FeatureIndexError(f"feature {ref} is out of range: the atlas's {ref.stream} site at layer "
                                    f"{ref.layer} has {d_features} features (0..{d_features - 1})")
        features = arrays["features"].tolist()
        position = bisect.bisect_left(features, ref.index)
        return position if position < len(features) and features[position] == ref.index else None

    def label(self, ref: FeatureRef) -> FeatureLabel:
        row = self._row(ref)
        if row is None:
            return FeatureLabel(NEVER_FIRED, 0.0)
        return FeatureLabel.from_json(self._labels[site_name(ref.site)][row])

    def labels(self, site: SiteKey) -> dict[int, FeatureLabel]:
        """Feature index -> label, for the features of a site that fired."""
        features = self.site_arrays(site)["features"].tolist()
        return {index: FeatureLabel.from_json(row) for index, row in zip(features, self._labels[site_name(site)])}

    def stats(self, ref: FeatureRef) -> FeatureStats:
        row = self._row(ref)
        arrays = self.site_arrays(ref.site)
        edges = sigma_bucket_edges(self.shape.buckets)
        buckets = tuple(bucket_label(edges[i], edges[i + 1]) for i in range(self.shape.buckets))
        zeros = (0.0,) * self.shape.buckets
        if row is None:
            return FeatureStats(ref, buckets, zeros, zeros, zeros, 0, len(self.prompts))
        rate = arrays["fired"][row].double() / arrays["tokens"].double().clamp(min=1)
        return FeatureStats(ref, buckets, tuple(rate.tolist()), tuple(arrays["mean"][row].double().tolist()),
                            tuple(arrays["max"][row].double().tolist()), int(arrays["prompts_fired"][row]),
                            len(self.prompts))

    def words(self, ref: FeatureRef) -> list[tuple[str, float]]:
        """The prompt words most associated with the feature (log-odds z-score), best first."""
        row = self._row(ref)
        if row is None:
            return []
        arrays, vocabulary = self.site_arrays(ref.site), self.info["vocabulary"]
        ranked = zip(arrays["word_ids"][row].tolist(), arrays["word_z"][row].tolist())
        return [(vocabulary[index], z) for index, z in ranked if index >= 0]

    def examples(self, ref: FeatureRef) -> list[Example]:
        """The feature's top activating prompts, strongest first."""
        row = self._row(ref)
        if row is None:
            return []
        arrays = self.site_arrays(ref.site)
        schedule = self.schedule
        examples = []
        for rank in range(self.shape.top_n):
            prompt = int(arrays["top_prompt"][row, rank])
            if prompt < 0:
                break
            token, step = int(arrays["top_token"][row, rank]), int(arrays["top_step"][row, rank])
            string = context = crop = None
            if ref.stream == "txt":
                strings = self.prompt_set.token_strings(prompt, token + CONTEXT_WORDS + 1)
                string = strings[token]
                context = tuple(strings[max(0, token - CONTEXT_WORDS) :])
            elif rank < self.shape.crops and int(arrays["crop_tiles"][row, rank]) >= 0:
                crop = self._crop(int(arrays["crop_tiles"][row, rank]))
            examples.append(Example(self.prompts[prompt], prompt, step, schedule[step], token,
                                    float(arrays["top_value"][row, rank]), string, context, crop))
        return examples

    def _crop(self, tile: int) -> torch.Tensor:
        sheet = tile // TILES_PER_SHEET
        if sheet not in self._sheets:
            path = self.folder / self.info["crop_sheets"][sheet]
            check_readable_file(path, rebuild_hint(self.folder))
            try:
                image = Image.open(path)
                image.load()
            except OSError as exc:
                raise CorruptFileError(f"{path} cannot be read ({exc}); {rebuild_hint(self.folder)}") from exc
            self._sheets[sheet] = image
        return read_tile(self._sheets[sheet], tile, int(self.info["crop_size"]))


def _check_release(folder: Path, info: Mapping[str, Any], release: Mapping[SiteKey, Mapping[str, Any]],
                   configs: Mapping[SiteKey, TranscoderConfig]) -> None:
    """The atlas must describe these very transcoders: same kind, widths and (where known) weights."""
    common = sorted(set(release) & set(configs))
    if not common:
        raise ConfigMismatchError(
            f"the atlas {folder} covers sites [{describe_sites(release)}] but the release holds "
            f"[{describe_sites(configs)}]: it belongs to another release; {rebuild_hint(folder)}"
        )
    for site in common:
        stored, config = release[site], configs[site]
        if info["release"]["kind"] != config.kind:
            raise ConfigMismatchError(f"the atlas {folder} describes {info['release']['kind']} sites, not "
                                      f"{config.kind}s: open atlas-{config.kind} or {rebuild_hint(folder)}")
        if (int(stored["d_model"]), int(stored["d_features"])) != (config.d_model, config.d_features):
            raise ConfigMismatchError(
                f"the atlas {folder} was built for {site_name(site)} with D={stored['d_model']}, "
                f"F={stored['d_features']}, but the release's site has D={config.d_model}, F={config.d_features}: "
                f"it belongs to another release; {rebuild_hint(folder)}"
            )
        ours, theirs = stored.get("weights_sha256"), config.provenance.get("weights_sha256")
        if ours and theirs and ours != theirs:
            raise ConfigMismatchError(
                f"the atlas {folder} was built from other weights for {site_name(site)} (sha256 {ours[:12]}…, the "
                f"release's is {theirs[:12]}…): it belongs to another release or an older training; "
                f"{rebuild_hint(folder)}"
            )
