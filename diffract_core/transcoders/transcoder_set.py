"""A set of transcoders keyed by site (stream, layer), loaded lazily from a native release folder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CorruptFileError, DimensionMismatchError, MissingPathError, SiteNotLoadedError
from .config import STREAMS, Kind, Stream, TranscoderConfig
from .native import load_site, read_site_config, site_folders
from .transcoder import Transcoder, fp8_dtype

if TYPE_CHECKING:
    from ..atlas import Atlas

SiteKey = tuple[Stream, int]


def describe_sites(keys: Iterable[SiteKey]) -> str:
    """`img: 0-15, 18; txt: 0-3` — compact enough for an error message."""
    parts = []
    for stream in STREAMS:
        layers = sorted(layer for s, layer in keys if s == stream)
        if layers:
            parts.append(f"{stream}: {_ranges(layers)}")
    return "; ".join(parts) or "none"


def _ranges(layers: list[int]) -> str:
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


class TranscoderSet(Mapping[SiteKey, Transcoder]):
    """Maps (stream, layer) to a transcoder. Sites opened from disk load on first access."""

    def __init__(
        self,
        configs: Mapping[SiteKey, TranscoderConfig],
        *,
        folders: Mapping[SiteKey, Path] | None = None,
        loaded: Mapping[SiteKey, Transcoder] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        root: Path | None = None,
        fp8_weights: bool = False,
    ) -> None:
        if fp8_weights:
            fp8_dtype()  # refuses here, at load time, where this PyTorch has no float8
        self._fp8_weights = fp8_weights
        self._configs = {key: config if dtype is None else config.with_dtype(dtype) for key, config in configs.items()}
        self._folders = dict(folders or {})
        self._loaded: dict[SiteKey, Transcoder] = dict(loaded or {})
        self._dtype = dtype
        self._device = device
        self.root = root
        self._atlas: tuple[tuple[int, int], Atlas] | None = None  # (atlas.json's mtime and size, the atlas read)
        d_models = {config.d_model for config in self._configs.values()}
        if len(d_models) > 1:
            raise DimensionMismatchError(
                f"a transcoder set must share one d_model, got {sorted(d_models)}; "
                "load each model's transcoders separately"
            )

    @classmethod
    def from_transcoders(cls, transcoders: Iterable[Transcoder]) -> TranscoderSet:
        loaded = {tc.config.site.key: tc for tc in transcoders}
        return cls({key: tc.config for key, tc in loaded.items()}, loaded=loaded)

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        kind: Kind = "transcoder",
        streams: Iterable[Stream] | None = None,
        layers: Iterable[int] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        fp8_weights: bool = False,
    ) -> TranscoderSet:
        """Read the configs of a native release folder; weights load when a site is first used.
        `fp8_weights`: each site holds its encoder and decoder in float8 e4m3 with one scale per
        feature (half the memory of bf16); `dtype` is then that of the biases and the compute."""
        root = Path(root)
        if not root.is_dir():
            raise MissingPathError(f"transcoder folder {root} does not exist")
        found: dict[SiteKey, tuple[TranscoderConfig, Path]] = {}
        kinds_seen: set[str] = set()
        for folder in site_folders(root):
            config = read_site_config(folder)
            kinds_seen.add(config.kind)
            if config.kind == kind:
                if config.site.key in found:
                    raise CorruptFileError(f"{root} holds two {kind}s for site {config.site.key}: "
                                           f"{found[config.site.key][1].name} and {folder.name}")
                found[config.site.key] = (config, folder)
        if not found:
            hint = (
                f"it holds only {', '.join(sorted(kinds_seen))} sites: pass kind={min(kinds_seen)!r}"
                if kinds_seen
                else "convert released .pt files first with `python -m diffract_core convert SRC DST`"
            )
            raise CorruptFileError(f"{root} holds no {kind} sites; {hint}")
        wanted = cls._select(found, streams, layers, root)
        return cls(
            {key: found[key][0] for key in wanted},
            folders={key: found[key][1] for key in wanted},
            dtype=dtype,
            device=device,
            root=root,
            fp8_weights=fp8_weights,
        )

    @staticmethod
    def _select(
        found: Mapping[SiteKey, object], streams: Iterable[Stream] | None, layers: Iterable[int] | None, root: Path
    ) -> list[SiteKey]:
        streams = tuple(streams) if streams is not None else tuple(sorted({stream for stream, _ in found}))
        layer_set = set(layers) if layers is not None else None
        wanted = [key for key in found if key[0] in streams and (layer_set is None or key[1] in layer_set)]
        requested = {(s, layer) for s in streams for layer in layer_set} if layer_set is not None else set()
        missing = sorted(requested - set(found))
        if missing or not wanted:
            raise SiteNotLoadedError(
                f"{root} lacks the requested sites [{describe_sites(missing or requested)}]; it holds "
                f"[{describe_sites(found)}]. Choose among those, or download/convert the missing ones"
            )
        return sorted(wanted)

    # --- Mapping -------------------------------------------------------------------------------

    def __getitem__(self, key: SiteKey) -> Transcoder:
        key = (key[0], int(key[1]))
        if key not in self._configs:
            raise SiteNotLoadedError(
                f"no transcoder for site {key[0]}:{key[1]}; this set holds [{describe_sites(self._configs)}]. "
                "Load that layer/stream, or pick one of these"
            )
        if key not in self._loaded:
            self._loaded[key] = load_site(self._folders[key], dtype=self._dtype, device=self._device,
                                          fp8_weights=self._fp8_weights)
        return self._loaded[key]

    def __iter__(self) -> Iterator[SiteKey]:
        return iter(sorted(self._configs))

    def __len__(self) -> int:
        return len(self._configs)

    # --- what it holds -------------------------------------------------------------------------

    @property
    def sites(self) -> list[SiteKey]:
        return sorted(self._configs)

    def config(self, key: SiteKey) -> TranscoderConfig:
        """A site's config, without loading its weights."""
        if key not in self._configs:
            self[key]  # raises SiteNotLoadedError naming the held sites
        return self._configs[key]

    @property
    def d_model(self) -> int:
        return next(iter(self._configs.values())).d_model

    @property
    def atlas(self) -> Atlas | None:
        """The feature atlas beside the release folder, checked against these sites and read on first
        use; None where there is none. An atlas built or rebuilt later is picked up on the next use."""
        from ..atlas.storage import INFO_FILE, Atlas, atlas_folder  # the atlas package imports this module

        if self.root is None or not self._configs:
            return None
        info = atlas_folder(self.root, next(iter(self._configs.values())).kind) / INFO_FILE
        try:
            stat = info.stat()
        except FileNotFoundError:
            self._atlas = None
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._atlas is None or self._atlas[0] != stamp:
            self._atlas = (stamp, Atlas.open(self))
        return self._atlas[1]

    def is_loaded(self, key: SiteKey) -> bool:
        return key in self._loaded

    def check_model(self, hidden_size: int, depth: int) -> None:
        """Refuse a model these transcoders cannot read: another hidden size, or too few double blocks."""
        if self._configs and self.d_model != hidden_size:
            raise DimensionMismatchError(
                f"the transcoders read d_model={self.d_model} activations but the model's hidden size is "
                f"{hidden_size}; use transcoders trained on this model (FLUX.1 needs d_model=3072)"
            )
        beyond = [key for key in self._configs if key[1] >= depth]
        if beyond:
            raise DimensionMismatchError(
                f"sites {describe_sites(beyond)} are past the model's last double-stream block (it has {depth}: "
                f"0..{depth - 1}); load only layers below {depth}"
            )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TranscoderSet:
        """Move (or cast) in place: loaded sites now, the others when they load. fp8 weights stay fp8:
        `dtype` casts their biases and time path."""
        self._device = device if device is not None else self._device
        self._dtype = dtype if dtype is not None else self._dtype
        for transcoder in self._loaded.values():
            transcoder.to(device=device)
            if dtype is not None:
                transcoder.cast_parameters(dtype)
        if dtype is not None:
            self._configs = {key: config.with_dtype(dtype) for key, config in self._configs.items()}
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TranscoderSet:
        # ComfyUI deep-copies model_options on every clone; the weights must be shared, not copied.
        return self

    def __repr__(self) -> str:
        return f"TranscoderSet({describe_sites(self._configs)}, d_model={self.d_model if self._configs else None})"
