"""Choosing sites by text, as node widgets do: layer lists (`0-15, 18`) and site lists (`img:0-3 txt:5`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import FeatureSpecError, SiteNotLoadedError
from .transcoders.config import STREAMS
from .transcoders.transcoder_set import SiteKey, describe_sites

ALL = ("", "all", "*")
_LAYER_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_SITE = re.compile(r"^(?P<stream>[a-z]+)(?::(?P<layers>[\d-]+))?$")
LAYERS_HELP = "layers like 0-15, 18 (ranges and single layers, comma-separated) or all"
SITES_HELP = "sites like img:0-3 txt:5, a whole stream like img, or all"


def parse_layers(text: str) -> list[int] | None:
    """`0-3, 18` -> [0, 1, 2, 3, 18]; empty, `all` or `*` -> None (every layer)."""
    if text.strip().lower() in ALL:
        return None
    layers: list[int] = []
    for part in filter(None, re.split(r"[\s,;]+", text.strip())):
        match = _LAYER_RANGE.match(part)
        if match is None:
            raise FeatureSpecError(f"{part!r} is not a layer or a layer range; write {LAYERS_HELP}")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise FeatureSpecError(f"layer range {part!r} runs backwards; write it as {last}-{first}")
        layers.extend(layer for layer in range(first, last + 1) if layer not in layers)
    return sorted(layers)


def parse_sites(text: str, available: Sequence[SiteKey]) -> tuple[SiteKey, ...]:
    """The sites a text names, all of which must be available; empty, `all` or `*` -> all of them."""
    if text.strip().lower() in ALL:
        return tuple(sorted(available))
    chosen: list[SiteKey] = []
    for part in filter(None, re.split(r"[\s,;]+", text.strip().lower())):
        match = _SITE.match(part)
        if match is None or match["stream"] not in STREAMS:
            raise FeatureSpecError(f"{part!r} does not name sites; write {SITES_HELP}")
        stream = match["stream"]
        layers = parse_layers(match["layers"]) if match["layers"] else None
        wanted = [(s, layer) for s, layer in available if s == stream and (layers is None or layer in layers)]
        missing = [] if layers is None else [(stream, layer) for layer in layers if (stream, layer) not in available]
        if missing or not wanted:
            asked = describe_sites(missing) if missing else f"{stream}: any layer"
            raise SiteNotLoadedError(
                f"{part!r} asks for [{asked}] but the "
                f"transcoders hold [{describe_sites(available)}]; choose among those or load more layers"
            )
        chosen.extend(site for site in wanted if site not in chosen)
    return tuple(sorted(chosen))


def parse_steps(text: str) -> frozenset[int]:
    """Explicit step indices (`0, 2-3`); empty or `none` -> no step. There is no `all`: kept inputs
    are dense ([tokens, d_model] per site and step), so the caller names the steps it will trace."""
    cleaned = text.strip().lower()
    if cleaned in ("", "none"):
        return frozenset()
    if cleaned in ALL:
        raise FeatureSpecError(
            "keep inputs at 'all' steps is refused: each kept step costs a dense copy of every recorded MLP "
            "input (about 50 MB per site at 1024 px); name the steps to trace, e.g. 0, 2"
        )
    steps = parse_layers(cleaned)
    assert steps is not None
    return frozenset(steps)
