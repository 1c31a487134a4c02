"""Naming features: `img:12:40684` is feature 40684 of the image-stream transcoder at layer 12."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FeatureIndexError, FeatureSpecError
from .transcoders.config import STREAMS, Stream
from .transcoders.transcoder_set import SiteKey, TranscoderSet

_SPEC = re.compile(r"^(?P<stream>[a-z]+):(?P<layer>\d+):(?P<index>\d+)$")
SPEC_HELP = "stream:layer:feature, e.g. img:12:40684 (stream img or txt); separate several with commas or spaces"


@dataclass(frozen=True, order=True)
class FeatureRef:
    stream: Stream
    layer: int
    index: int

    @property
    def site(self) -> SiteKey:
        return (self.stream, self.layer)

    def __str__(self) -> str:
        return f"{self.stream}:{self.layer}:{self.index}"


def parse_features(text: str) -> list[FeatureRef]:
    """Parse one or more feature specs; duplicates are kept once, in first-seen order."""
    refs: list[FeatureRef] = []
    for token in filter(None, re.split(r"[\s,;]+", text.strip())):
        match = _SPEC.match(token)
        if match is None or match["stream"] not in STREAMS:
            raise FeatureSpecError(f"{token!r} is not a feature spec; write {SPEC_HELP}")
        ref = FeatureRef(match["stream"], int(match["layer"]), int(match["index"]))  # type: ignore[arg-type]
        if ref not in refs:
            refs.append(ref)
    if not refs:
        raise FeatureSpecError(f"no feature given; write {SPEC_HELP}")
    return refs


def check_features(refs: list[FeatureRef], transcoders: TranscoderSet) -> None:
    """Refuse features of sites the set does not hold, or indices past a dictionary's size."""
    for ref in refs:
        d_features = transcoders.config(ref.site).d_features  # raises SiteNotLoadedError naming the held sites
        if ref.index >= d_features:
            raise FeatureIndexError(
                f"feature {ref} is out of range: the {ref.stream} transcoder at layer {ref.layer} has "
                f"{d_features} features (0..{d_features - 1})"
            )
