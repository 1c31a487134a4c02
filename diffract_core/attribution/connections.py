"""Input-invariant connections between transcoder features (Dunefsky, Chlenski & Nanda,
"Transcoders Find Interpretable LLM Feature Circuits"), for FLUX's residual streams.

Along the residual stream alone, feature i of the MLP at (s, L1) moves the pre-activation of feature j
of the transcoder at (s, L2 > L1) by

    z_i[p] * inv2_L2[p] * VW(i, j),    VW(i, j) = r_j . (gate2_L1 * d_i),
    r_j = centre((1 + scale2_L2) * (1 + scale_j(sigma)) * e_j)

with d_i the source's decoder row, e_j the target's encoder row, scale_j the target transcoder's FiLM
at sigma, and gate2 / scale2 the blocks' modulation (functions of `vec`). The activation z_i and
LayerNorm's per-token 1/sqrt(var) inv2 depend on the input; the virtual weight VW depends only on the
weights, sigma and vec. Intermediate MLPs are not on this path (their outputs are other features),
and attention, which moves information between tokens and streams, is input-dependent: features of
two streams have no virtual weight.

Whole rows of virtual weights (one feature against every feature of a site) are chunked products of
the site's stored rows with one direction, so no [F, F] matrix is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import SettingsError, SiteNotLoadedError
from ..features import FeatureRef
from ..transcoders.transcoder import Transcoder, row_chunks
from ..transcoders.transcoder_set import SiteKey, TranscoderSet, describe_sites
from .modulation import ResidualModulation

Matrix = Literal["encoder", "decoder"]


@dataclass(frozen=True)
class Connection:
    source: FeatureRef
    target: FeatureRef
    weight: float  # the target's pre-activation per unit of the source's activation, at LayerNorm factor 1


@dataclass(frozen=True)
class FeatureConnections:
    """A feature's strongest connections on both sides, strongest first."""

    feature: FeatureRef
    sigma: float
    upstream: list[Connection]  # features of earlier layers into it
    downstream: list[Connection]  # features of later layers it writes into


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean()


class VirtualWeights:
    """Virtual weights between the transcoder features of one release at one sigma and one `vec`."""

    def __init__(self, transcoders: TranscoderSet, modulation: ResidualModulation, sigma: float, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.transcoders = transcoders
        self.modulation = modulation
        self.sigma = float(sigma)
        self.dtype = dtype
        self.device = torch.device(device)
        self._film_gains: dict[SiteKey, torch.Tensor] = {}

    # --- single weights and whole rows -----------------------------------------------------------

    @torch.no_grad()
    def between(self, source: FeatureRef, target: FeatureRef) -> float:
        self._check_pair(source.site, target.site)
        return float(self._reading(target) @ self._writing(source))

    @torch.no_grad()
    def into(self, target: FeatureRef, layer: int) -> torch.Tensor:
        """[F] the virtual weight of every feature of (target.stream, layer) into `target`."""
        site = (target.stream, layer)
        self._check_pair(site, target.site)
        return self._products(site, "decoder", self.modulation.gate(site).to(self.device, self.dtype)
                              * self._reading(target))

    @torch.no_grad()
    def out_of(self, source: FeatureRef, layer: int) -> torch.Tensor:
        """[F] the virtual weight of `source` into every feature of (source.stream, layer)."""
        site = (source.stream, layer)
        self._check_pair(source.site, site)
        return self._products(site, "encoder", self._read_gain(site) * _centre(self._writing(source)))

    # --- the strongest connections ---------------------------------------------------------------

    def upstream(self, target: FeatureRef, k: int = 10, layers: Iterable[int] | None = None) -> list[Connection]:
        """The k features with the largest |virtual weight| into `target`, from `layers` (default:
        every transcoder of its stream below it), strongest first."""
        chosen = self._layers(target.stream, layers, lambda layer: layer < target.layer)
        candidates = [(FeatureRef(target.stream, layer, index), target, weight)
                      for layer in chosen for index, weight in _top(self.into(target, layer), k)]
        return _strongest(candidates, k)

    def downstream(self, source: FeatureRef, k: int = 10, layers: Iterable[int] | None = None) -> list[Connection]:
        """The k features with the largest |virtual weight| from `source`, in `layers` (default:
        every transcoder of its stream above it), strongest first."""
        chosen = self._layers(source.stream, layers, lambda layer: layer > source.layer)
        candidates = [(source, FeatureRef(source.stream, layer, index), weight)
                      for layer in chosen for index, weight in _top(self.out_of(source, layer), k)]
        return _strongest(candidates, k)

    def strongest(self, feature: FeatureRef, k: int = 10) -> FeatureConnections:
        """The k strongest connections of `feature` on each side, over every transcoder of its stream."""
        self._transcoder(feature.site)
        return FeatureConnections(feature, self.sigma, self.upstream(feature, k), self.downstream(feature, k))

    # --- the two directions ----------------------------------------------------------------------

    def _writing(self, source: FeatureRef) -> torch.Tensor:
        """What one unit of `source` adds to its stream's residual: gate2 * d_i."""
        decoder = self._transcoder(source.site).decoder_vectors(source.index, dtype=self.dtype, device=self.device)
        return self.modulation.gate(source.site).to(self.device, self.dtype) * decoder

    def _reading(self, target: FeatureRef) -> torch.Tensor:
        """What `target` reads from its stream's residual at LayerNorm factor 1: r_j (centred, as the
        LayerNorm centres its input before reading)."""
        encoder = self._transcoder(target.site).encoder_vectors(target.index, dtype=self.dtype, device=self.device)
        return _centre(self._read_gain(target.site) * encoder)

    def _read_gain(self, site: SiteKey) -> torch.Tensor:
        """(1 + scale2) * (1 + FiLM scale at sigma): how the residual's direction is scaled into the encoder."""
        if site not in self._film_gains:
            scale, _ = self._transcoder(site).film(torch.tensor([self.sigma], device=self.device))
            self._film_gains[site] = (1 + scale[0]).to(self.dtype) * self.modulation.gain(site).to(
                self.device, self.dtype)
        return self._film_gains[site]

    def _products(self, site: SiteKey, matrix: Matrix, direction: torch.Tensor) -> torch.Tensor:
        transcoder = self._transcoder(site)
        read = transcoder.encoder_vectors if matrix == "encoder" else transcoder.decoder_vectors
        out = torch.empty(transcoder.d_features, dtype=self.dtype, device=self.device)
        for rows in row_chunks(transcoder.d_features):
            out[rows] = read(torch.arange(rows.start, rows.stop), dtype=self.dtype, device=self.device) @ direction
        return out

    # --- checks ----------------------------------------------------------------------------------

    def _transcoder(self, site: SiteKey) -> Transcoder:
        if site not in self.transcoders.sites:
            raise SiteNotLoadedError(
                f"no transcoder for {site[0]}:{site[1]}; this set holds [{describe_sites(self.transcoders.sites)}]: "
                "load that layer (Load Transcoders' layers) or pick a feature of a held site"
            )
        transcoder = self.transcoders[site]
        if transcoder.config.kind != "transcoder":
            raise SettingsError(
                f"{site[0]}:{site[1]} holds an SAE, which reads the MLP's output, not its input: virtual weights "
                "need transcoders; load the transcoder release"
            )
        return transcoder

    @staticmethod
    def _check_pair(source: SiteKey, target: SiteKey) -> None:
        if source[0] != target[0]:
            raise SettingsError(
                f"{source[0]}:{source[1]} and {target[0]}:{target[1]} are in different streams: the streams meet only "
                "in attention, which depends on the input, so they have no virtual weight; pick two features of "
                "one stream"
            )
        if source[1] >= target[1]:
            raise SettingsError(
                f"the source layer {source[1]} is not before the target layer {target[1]}: an MLP's output reaches "
                "only later layers; swap the two features (or look downstream instead of upstream)"
            )

    def _layers(self, stream: str, layers: Iterable[int] | None, default: Callable[[int], bool]) -> list[int]:
        """The layers asked for (each checked where it is used), or the stream's held layers that pass `default`."""
        if layers is not None:
            return sorted(set(layers))
        return [layer for s, layer in self.transcoders.sites if s == stream and default(layer)]


def _top(weights: torch.Tensor, k: int) -> list[tuple[int, float]]:
    top = torch.topk(weights.abs(), min(k, weights.numel())).indices
    return list(zip(top.tolist(), weights[top].tolist()))


def _strongest(candidates: list[tuple[FeatureRef, FeatureRef, float]], k: int) -> list[Connection]:
    ordered = sorted(candidates, key=lambda c: (-abs(c[2]), c[0], c[1]))
    return [Connection(source, target, weight) for source, target, weight in ordered[:k]]
