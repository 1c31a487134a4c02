"""The modulation a direct residual path between two MLPs of one stream passes, from `vec`.

An MLP at layer L adds `gate2 * y` to its stream's residual; a later MLP reads
`x = (1 + scale2) * LN(h) + shift2`. gate2 and scale2 are functions of the conditioning vector `vec`
alone (the stream's modulation linear of each double block, on SiLU(vec)), so they are the same at
every token. LayerNorm's 1/sqrt(var) is per token and input-dependent: it is not here.

`vec` itself is FLUX's time, guidance and pooled-text embedding, computed here by the same
parameter names in ComfyUI's model and the library's reference model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError, UnsupportedModelError
from ..flux.layers import timestep_embedding
from ..transcoders.config import STREAMS, Stream
from ..transcoders.transcoder_set import SiteKey
from .blocks import Affine, LinearReader, check_double_block, read_plain_linear
from .replacement import ReplacementModel

TIME_EMBEDDING_DIM = 256  # FLUX's sinusoidal embedding of sigma and of guidance
DEFAULT_GUIDANCE = 3.5  # what ComfyUI gives guidance-distilled models (FLUX.1 dev) without FluxGuidance


@dataclass(frozen=True)
class ResidualModulation:
    """Per site (stream, layer), as [D] tensors: `gates` scale the MLP's output into the residual
    (gate2), `gains` scale the LayerNorm output into the MLP's input (1 + scale2)."""

    gates: dict[SiteKey, torch.Tensor]
    gains: dict[SiteKey, torch.Tensor]

    @classmethod
    @torch.no_grad()
    def from_blocks(
        cls,
        blocks: Sequence[nn.Module],
        vec: torch.Tensor,
        *,
        layers: Iterable[int] | None = None,
        streams: Iterable[Stream] = STREAMS,
        read_linear: LinearReader = read_plain_linear,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> ResidualModulation:
        """Read from FLUX double blocks for one conditioning vector ([D] or [1, D]); `layers`
        (default: every block) and `streams` limit the modulation linears read (FLUX's are 56 M
        weights each)."""
        if vec.dim() == 2 and vec.shape[0] != 1:
            raise SettingsError(f"give one conditioning vector, not a batch of {vec.shape[0]}: pick a row")
        place = torch.device(device) if device is not None else vec.device
        silu_vec = F.silu(vec.reshape(1, -1).to(place, dtype))
        chosen = sorted(set(range(len(blocks)) if layers is None else layers))
        gates: dict[SiteKey, torch.Tensor] = {}
        gains: dict[SiteKey, torch.Tensor] = {}
        for layer in chosen:
            if not 0 <= layer < len(blocks):
                raise SettingsError(f"layer {layer} is past this model's {len(blocks)} double blocks "
                                    f"(0..{len(blocks) - 1})")
            check_double_block(blocks[layer], layer)
            for stream in streams:
                linear = getattr(blocks[layer], f"{stream}_mod").lin
                modulation = Affine(*read_linear(linear, dtype, place))(silu_vec)[0].chunk(6)
                gains[(stream, layer)] = 1 + modulation[4]
                gates[(stream, layer)] = modulation[5]
        return cls(gates, gains)

    @classmethod
    def from_replacement(cls, model: ReplacementModel) -> ResidualModulation:
        """The frozen constants of a traced call's replacement model (layers 0..last_layer)."""
        gates, gains = {}, {}
        for layer, constants in enumerate(model.layers):
            for stream, c in constants.streams.items():
                gates[(stream, layer)] = c.gate2.reshape(-1)
                gains[(stream, layer)] = 1 + c.scale2.reshape(-1)
        return cls(gates, gains)

    def gate(self, site: SiteKey) -> torch.Tensor:
        return self._read(self.gates, site)

    def gain(self, site: SiteKey) -> torch.Tensor:
        return self._read(self.gains, site)

    def _read(self, table: dict[SiteKey, torch.Tensor], site: SiteKey) -> torch.Tensor:
        if site not in table:
            layers = sorted({layer for _, layer in table})
            raise SettingsError(
                f"the modulation was read for layers {layers}, not {site[0]}:{site[1]}: "
                f"read it for layer {site[1]} too (ResidualModulation.from_blocks(..., layers=...))"
            )
        return table[site]


@torch.no_grad()
def conditioning_vector(
    diffusion_model: nn.Module,
    sigma: float,
    pooled: torch.Tensor | None = None,
    guidance: float | None = None,
    *,
    read_linear: LinearReader = read_plain_linear,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """FLUX's `vec` [1, D] at `sigma`: time_in(sigma) + guidance_in(guidance) (guidance-distilled
    models; default DEFAULT_GUIDANCE) + vector_in(pooled). `pooled` is the pooled CLIP vector
    ([vec_in_dim] or [1, vec_in_dim]); None stands for an all-zero one (no prompt)."""
    for name in ("time_in", "vector_in"):
        if not hasattr(getattr(diffusion_model, name, None), "in_layer"):
            raise UnsupportedModelError(f"this model has no FLUX {name} embedder to compute vec from; "
                                        "connections need a FLUX.1 model")
    place = torch.device(device) if device is not None else next(diffusion_model.parameters()).device

    def embed(embedder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(Affine(*read_linear(embedder.in_layer, dtype, place))(x.to(place, dtype)))
        return Affine(*read_linear(embedder.out_layer, dtype, place))(hidden)

    vec = embed(diffusion_model.time_in, timestep_embedding(torch.tensor([float(sigma)]), TIME_EMBEDDING_DIM))
    guidance_in = getattr(diffusion_model, "guidance_in", None)
    if hasattr(guidance_in, "in_layer"):  # ComfyUI's schnell has an nn.Identity here, the library's None
        scale = DEFAULT_GUIDANCE if guidance is None else float(guidance)
        vec = vec + embed(guidance_in, timestep_embedding(torch.tensor([scale]), TIME_EMBEDDING_DIM))
    width = diffusion_model.vector_in.in_layer.weight.shape[1]
    if pooled is None:
        pooled = torch.zeros(1, width)
    pooled = pooled.reshape(1, -1)
    if pooled.shape[1] < width:
        raise SettingsError(f"the pooled text vector has {pooled.shape[1]} values but this model's vector_in "
                            f"reads {width}: give the conditioning of this model's text encoder")
    return vec + embed(diffusion_model.vector_in, pooled[:, :width])
