"""The timestep-conditioned transcoder of DifFRACT, exactly as the released weights compute it.

    e      = sinusoidal(t)                            t = sigma in [0, 1]
    f      = SiLU(time_mlp.2(SiLU(time_mlp.0(e))))
    scale, shift = split(mod_linear(f))               first d_model outputs are the scale
    z      = ReLU(W_enc (x * (1 + scale) + shift) + b_enc)   (TopK variant: only the k largest kept)
    y_hat  = W_dec^T z + b_dec

Weights are stored one row per feature (`W_enc` and `W_dec` both [F, D]), so the decoder vectors of
the active features are a contiguous gather. The time path always runs in fp32 (it is tiny); the
encoder and decoder run in `compute_dtype` (the weights' dtype unless the caller sets another).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatureIndexError, InputShapeError, SettingsError
from .config import TranscoderConfig
from .time_embedding import sinusoidal_embedding

Timestep = float | torch.Tensor


@dataclass(frozen=True)
class SparseCodes:
    """The k largest feature activations of every row: `indices` and `values` of shape [..., k].

    Rows with fewer than k active features carry zeros in `values` for the rest.
    """

    indices: torch.Tensor
    values: torch.Tensor
    d_features: int

    def to_dense(self) -> torch.Tensor:
        dense = self.values.new_zeros(*self.values.shape[:-1], self.d_features)
        return dense.scatter_(-1, self.indices.long(), self.values)


class Transcoder(nn.Module):
    """One site's transcoder (or SAE: the same module trained to reconstruct the MLP output)."""

    def __init__(
        self,
        config: TranscoderConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        spec = config.time_embedding
        d_model, d_features = config.d_model, config.d_features
        factory = {"device": device, "dtype": dtype or config.torch_dtype}
        self.time_mlp = nn.Sequential(
            nn.Linear(spec.dim, spec.mlp_width, **factory),
            nn.SiLU(),
            nn.Linear(spec.mlp_width, spec.mlp_width, **factory),
            nn.SiLU(),
        )
        self.mod_linear = nn.Linear(spec.mlp_width, 2 * d_model, **factory)
        self.W_enc = nn.Parameter(torch.empty(d_features, d_model, **factory))
        self.b_enc = nn.Parameter(torch.empty(d_features, **factory))
        self.W_dec = nn.Parameter(torch.empty(d_features, d_model, **factory))
        self.b_dec = nn.Parameter(torch.empty(d_model, **factory))
        self.compute_dtype: torch.dtype | None = None

    # --- construction -------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> Transcoder:
        """The reference initialisation: unit-norm decoder rows, encoder tied to the decoder at
        init, zero biases, identity FiLM (mod_linear zero)."""
        d_model = self.config.d_model
        bound = 1.0 / math.sqrt(self.config.d_features)
        decoder = torch.empty(d_model, self.config.d_features).uniform_(-bound, bound, generator=generator)
        decoder = F.normalize(decoder, dim=0).t()
        self.W_dec.copy_(decoder)
        self.W_enc.copy_(decoder)
        self.b_enc.zero_()
        self.b_dec.zero_()
        for layer in (self.time_mlp[0], self.time_mlp[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))
            layer.bias.zero_()
        self.mod_linear.weight.zero_()
        self.mod_linear.bias.zero_()
        return self

    def set_compute_dtype(self, dtype: torch.dtype | None) -> Transcoder:
        """Run the encoder and decoder in `dtype` (None: the weights' own dtype)."""
        self.compute_dtype = dtype
        return self

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def d_features(self) -> int:
        return self.config.d_features

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # --- the time path --------------------------------------------------------------------------

    def film(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each [n, d_model] in fp32, for a flat tensor of n timesteps."""
        embedding = sinusoidal_embedding(t, self.config.time_embedding)
        first, second = self.time_mlp[0], self.time_mlp[2]
        hidden = F.silu(F.linear(embedding, first.weight.float(), first.bias.float()))
        hidden = F.silu(F.linear(hidden, second.weight.float(), second.bias.float()))
        modulation = F.linear(hidden, self.mod_linear.weight.float(), self.mod_linear.bias.float())
        scale, shift = modulation.chunk(2, dim=-1)
        return scale, shift

    @staticmethod
    def _timesteps(x: torch.Tensor, t: Timestep) -> torch.Tensor:
        """t as an fp32 tensor: a scalar, or one value per leading index of x (its shape a prefix
        of x.shape[:-1])."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        lead = x.shape[:-1]
        if tuple(t.shape) != tuple(lead[: t.dim()]):
            raise InputShapeError(
                f"timestep shape {tuple(t.shape)} does not fit activations of shape {tuple(x.shape)}: "
                f"pass one float, or one sigma per leading index (a shape that starts {tuple(lead)})"
            )
        return t

    def _film_for(self, x: torch.Tensor, t: Timestep) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 + scale, shift) shaped to broadcast against x; 1 + scale is formed in fp32 before
        any cast to a half-precision compute dtype."""
        t = self._timesteps(x, t)
        unique, inverse = torch.unique(t.reshape(-1), return_inverse=True)
        scale, shift = self.film(unique)
        shape = (*t.shape, *([1] * (x.dim() - 1 - t.dim())), self.d_model)
        dtype = self._compute_dtype()
        gain = (1 + scale)[inverse].reshape(shape).to(dtype)
        return gain, shift[inverse].reshape(shape).to(dtype)

    # --- encoder and decoder ------------------------------------------------------------------

    def _compute_dtype(self) -> torch.dtype:
        return self.compute_dtype or self.W_enc.dtype

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self._compute_dtype()
        return tensor if tensor.dtype == dtype else tensor.to(dtype)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise InputShapeError(
                f"{self._site_name()} expects activations with last dimension d_model={self.d_model}, got shape "
                f"{tuple(x.shape)}: feed the {self.config.input_point} of {self.config.site.hook_point}"
            )
        return self._cast(x)

    def _site_name(self) -> str:
        site = self.config.site
        return f"{self.config.kind} {site.stream}:{site.layer}"

    def modulate(self, x: torch.Tensor, t: Timestep) -> torch.Tensor:
        """x * (1 + scale(t)) + shift(t): the input the encoder sees."""
        x = self._check_input(x)
        gain, shift = self._film_for(x, t)
        return x * gain + shift

    def preactivations(self, x: torch.Tensor, t: Timestep) -> torch.Tensor:
        """W_enc x~ + b_enc for all features: [..., d_features]."""
        return F.linear(self.modulate(x, t), self._cast(self.W_enc), self._cast(self.b_enc))

    def encode(self, x: torch.Tensor, t: Timestep) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes z, pre-activations), both [..., d_features]; z = ReLU(pre), of which a TopK
        transcoder keeps the k largest per token."""
        pre = self.preactivations(x, t)
        return self._activate(pre), pre

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        z = F.relu(pre)
        if self.config.topk is None:
            return z
        top = torch.topk(z, self.config.topk, dim=-1)
        return torch.zeros_like(z).scatter(-1, top.indices, top.values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """W_dec^T z + b_dec: [..., d_model]."""
        if z.dim() == 0 or z.shape[-1] != self.d_features:
            raise InputShapeError(
                f"{self._site_name()} decodes codes with last dimension d_features={self.d_features}, "
                f"got shape {tuple(z.shape)}"
            )
        z, decoder, bias = self._cast(z), self._cast(self.W_dec), self._cast(self.b_dec)
        if decoder.device.type == "cpu" and decoder.dtype in (torch.bfloat16, torch.float16):
            # PyTorch's CPU half-precision GEMM is about 100x slower with the right operand in this
            # feature-major layout than the same product done in fp32 (measured in the throughput
            # benchmark), so the product runs in fp32 on the CPU.
            return (torch.matmul(z.float(), decoder.float()) + bias.float()).to(decoder.dtype)
        return torch.matmul(z, decoder) + bias

    def forward(self, x: torch.Tensor, t: Timestep) -> torch.Tensor:
        """The reconstruction y_hat of the MLP output."""
        return self.decode(self.encode(x, t)[0])

    def _feature_index(self, features: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(features, dtype=torch.long, device=self.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.d_features):
            bad = index[(index < 0) | (index >= self.d_features)].tolist()
            raise FeatureIndexError(
                f"feature index {bad} is out of range for {self._site_name()}, which has "
                f"{self.d_features} features (valid: 0..{self.d_features - 1})"
            )
        return index

    def feature_preactivation(
        self, x: torch.Tensor, t: Timestep, features: int | Sequence[int] | torch.Tensor
    ) -> torch.Tensor:
        """Pre-activation of the chosen features only (differentiable in x): [...] for one int,
        [..., n] for a list of n indices. Costs n encoder rows, not the whole dictionary."""
        index = self._feature_index(features)
        encoder = self._cast(self.W_enc[index.reshape(-1)])
        bias = self._cast(self.b_enc[index.reshape(-1)])
        pre = F.linear(self.modulate(x, t), encoder, bias)
        return pre.squeeze(-1) if index.dim() == 0 else pre

    def feature_activation(
        self, x: torch.Tensor, t: Timestep, features: int | Sequence[int] | torch.Tensor
    ) -> torch.Tensor:
        """The codes z of the chosen features (differentiable in x), shaped as
        `feature_preactivation`. A ReLU transcoder needs only their encoder rows; whether a TopK
        transcoder keeps a feature depends on every other feature, so it encodes the whole dictionary."""
        if self.config.topk is None:
            return F.relu(self.feature_preactivation(x, t, features))
        index = self._feature_index(features)
        z, _ = self.encode(x, t)
        return z[..., index]

    def decoder_vectors(self, features: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Decoder rows (unit-norm directions in the MLP-output space) of the chosen features."""
        return self._cast(self.W_dec[self._feature_index(features)])

    @torch.no_grad()
    def encode_topk(self, x: torch.Tensor, t: Timestep, k: int, chunk_rows: int = 2048) -> SparseCodes:
        """The k largest activations per row, computed `chunk_rows` rows at a time so the dense
        [rows, d_features] activations never exist for all rows at once."""
        if not 0 < k <= self.d_features:
            raise SettingsError(f"k must be in 1..{self.d_features}, got {k}")
        x = self._check_input(x)
        t = self._timesteps(x, t)
        lead = x.shape[:-1]
        t_rows = t.reshape(*t.shape, *([1] * (len(lead) - t.dim()))).expand(lead).reshape(-1)
        rows = x.reshape(-1, self.d_model)
        values, indices = [], []
        for start in range(0, rows.shape[0], chunk_rows):
            z, _ = self.encode(rows[start : start + chunk_rows], t_rows[start : start + chunk_rows])
            top = torch.topk(z, k, dim=-1)
            values.append(top.values)
            indices.append(top.indices)
        return SparseCodes(
            indices=torch.cat(indices).reshape(*lead, k),
            values=torch.cat(values).reshape(*lead, k),
            d_features=self.d_features,
        )

    def decode_sparse(self, codes: SparseCodes) -> torch.Tensor:
        """Decode top-k codes without materialising dense activations."""
        k = codes.indices.shape[-1]
        flat_index = codes.indices.reshape(-1, k).long()
        flat_values = self._cast(codes.values.reshape(-1, k))
        out = F.embedding_bag(flat_index, self._cast(self.W_dec), per_sample_weights=flat_values, mode="sum")
        return (out + self._cast(self.b_dec)).reshape(*codes.indices.shape[:-1], self.d_model)
