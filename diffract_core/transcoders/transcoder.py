"""The timestep-conditioned transcoder of DifFRACT, exactly as the released weights compute it.

    e      = sinusoidal(t)                            t = sigma in [0, 1]
    f      = SiLU(time_mlp.2(SiLU(time_mlp.0(e))))
    scale, shift = split(mod_linear(f))               first d_model outputs are the scale
    z      = ReLU(W_enc (x * (1 + scale) + shift) + b_enc)   (TopK variant: only the k largest kept)
    y_hat  = W_dec^T z + b_dec

Weights are stored one row per feature (`W_enc` and `W_dec` both [F, D]), so the decoder vectors of
the active features are a contiguous gather. The time path always runs in fp32 (it is tiny); the
encoder and decoder run in `compute_dtype` (the weights' dtype unless the caller sets another).

Everything runs on the activations' device. A matrix that is not there already, in the compute
dtype (fp8 storage, another dtype, or weights a model manager left on the CPU), is cast into the
product `ROWS_PER_CHUNK` rows at a time, so no full-size cast copy ever exists. Read the matrices
through `encoder_vectors` / `decoder_vectors`, which work for every storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatureIndexError, InputShapeError, QuantisedWeightsError, SettingsError
from .config import TranscoderConfig
from .time_embedding import sinusoidal_embedding

Timestep = float | torch.Tensor
RowSelection = slice | torch.Tensor  # a range of feature rows, or an index tensor of any shape

ROWS_PER_CHUNK = 4096  # rows cast or dequantised at a time: 4096 x 3072 bf16 values are 24 MiB
# Dense decoding reads every decoder row; decoding from the rows of the features active anywhere in
# the batch gathers only those. On a CPU (1024 rows, 16384 features, d_model 768, fp32) the gather
# was 4x faster at 5% active, 2x at 40% and even near 60%; so it is used up to half.
ACTIVE_ROWS_PAY = 0.5  # largest share of active features decoded from their rows alone
QUANTISED = ("W_enc", "W_dec")  # the matrices fp8 storage holds as codes and per-row scales


def fp8_dtype() -> torch.dtype:
    """torch.float8_e4m3fn, or a refusal naming the fix where this PyTorch lacks it."""
    dtype = getattr(torch, "float8_e4m3fn", None)
    if dtype is None:
        raise SettingsError(
            f"fp8 transcoder weights need torch.float8_e4m3fn, which PyTorch {torch.__version__} lacks: "
            "upgrade PyTorch (2.1 or later), or load the transcoders in bf16"
        )
    return dtype


def row_chunks(count: int) -> Iterator[slice]:
    """Consecutive ranges of at most ROWS_PER_CHUNK rows covering 0..count."""
    for start in range(0, count, ROWS_PER_CHUNK):
        yield slice(start, min(count, start + ROWS_PER_CHUNK))


@torch.no_grad()
def quantise_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 e4m3 codes, one fp32 scale per row) with weight ~ codes * scale[:, None]: each row's
    largest magnitude maps to e4m3's largest finite value. A chunk of rows at a time, so `weight`
    (often a memory-mapped file) is never copied whole."""
    fp8 = fp8_dtype()
    largest = torch.finfo(fp8).max
    codes = torch.empty(weight.shape, dtype=fp8, device=weight.device)
    scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for rows in row_chunks(weight.shape[0]):
        block = weight[rows].float()
        scale = (block.abs().amax(-1) / largest).clamp_min(torch.finfo(torch.float32).tiny)
        codes[rows] = (block / scale[:, None]).clamp(-largest, largest).to(fp8)
        scales[rows] = scale
    return codes, scales


def resident(stored: torch.Tensor, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a stored matrix enters a product on `device` in `dtype` as it is; otherwise it is
    cast a chunk of rows at a time (fp8 codes never are: their dtype is not a compute dtype)."""
    return stored.device == device and stored.dtype == dtype


def _product_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a decoder product runs in: PyTorch's CPU half-precision GEMM is about 100x slower
    with the right operand in this feature-major layout than the same product in fp32 (measured in
    the throughput benchmark), so on a CPU it runs in fp32."""
    return torch.float32 if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) else dtype


def _fp32_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """A time-path layer in fp32 on x's device (the layers are tiny: casting them per call is free)."""
    return F.linear(x, layer.weight.to(x.device, torch.float32), layer.bias.to(x.device, torch.float32))


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
        # True while a model manager (ComfyUI) decides where the weights live: the MLP patch then
        # computes with them where they are instead of moving them to the activations' device.
        self.placement_managed = False

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

    @torch.no_grad()
    def cast_parameters(self, dtype: torch.dtype) -> Transcoder:
        """Cast the parameters to `dtype` and record it in the config. fp8 codes and their fp32
        scales are buffers and stay as they are; a plain `.to(dtype)` would widen the codes and
        give back the memory fp8 saves."""
        for parameter in self.parameters():
            parameter.data = parameter.data.to(dtype)
        self.config = self.config.with_dtype(dtype)
        return self

    @torch.no_grad()
    def quantise_fp8(self) -> Transcoder:
        """Hold W_enc and W_dec as float8 e4m3 codes (`W_enc_fp8`, `W_dec_fp8`) with one fp32 scale
        per feature (`W_enc_scale`, `W_dec_scale`): half their bf16 memory. Encode and decode
        dequantise a chunk of rows at a time inside the product. In place; refused where this
        PyTorch has no float8."""
        if self.fp8_weights:
            return self
        for name in QUANTISED:
            codes, scales = quantise_rows(self._parameters[name])
            delattr(self, name)
            self.register_buffer(f"{name}_fp8", codes)
            self.register_buffer(f"{name}_scale", scales)
        return self

    @property
    def fp8_weights(self) -> bool:
        return "W_enc_fp8" in self._buffers

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in QUANTISED and self.fp8_weights:
                accessor = "encoder_vectors" if name == "W_enc" else "decoder_vectors"
                raise QuantisedWeightsError(
                    f"this transcoder holds {name} in fp8 ({name}_fp8 codes, one {name}_scale per feature): "
                    f"read its rows with {accessor}(features, dtype=..., device=...), which dequantises them"
                ) from None
            raise

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def d_features(self) -> int:
        return self.config.d_features

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype (with fp8 weights: the biases' and time path's)."""
        return self.b_dec.dtype

    @property
    def device(self) -> torch.device:
        """Where the encoder and decoder matrices are stored."""
        return self._stored("W_enc").device

    # --- the time path --------------------------------------------------------------------------

    def film(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each [n, d_model] in fp32, for a flat tensor of n timesteps."""
        embedding = sinusoidal_embedding(t, self.config.time_embedding)
        hidden = F.silu(_fp32_linear(embedding, self.time_mlp[0]))
        hidden = F.silu(_fp32_linear(hidden, self.time_mlp[2]))
        modulation = _fp32_linear(hidden, self.mod_linear)
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
        return self.compute_dtype or self.dtype

    def _stored(self, name: str) -> torch.Tensor:
        """W_enc or W_dec as stored: the parameter, or its fp8 codes."""
        return self._buffers[f"{name}_fp8"] if self.fp8_weights else self._parameters[name]

    def _rows(self, name: str, rows: RowSelection, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The chosen rows of W_enc or W_dec ([..., d_model]), dequantised, on `device` in `dtype`.
        The stored rows cross devices first: in fp8 that moves one byte per value."""
        stored = self._stored(name)
        if isinstance(rows, torch.Tensor):
            rows = rows.to(stored.device)
        picked = stored[rows].to(device)
        if not self.fp8_weights:
            return picked.to(dtype)
        scales = self._buffers[f"{name}_scale"][rows].to(device)
        return (picked.float() * scales[..., None]).to(dtype)

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
        x = self.modulate(x, t)
        bias = self.b_enc.to(x.device, x.dtype)
        stored = self._stored("W_enc")
        if resident(stored, x.device, x.dtype):
            return F.linear(x, stored, bias)
        pre = x.new_empty(*x.shape[:-1], self.d_features)
        for rows in row_chunks(self.d_features):
            pre[..., rows] = F.linear(x, self._rows("W_enc", rows, x.device, x.dtype), bias[rows])
        return pre

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
        z = self._cast(z)
        codes = z.to(_product_dtype(z.device, z.dtype))
        return (self._decoder_product(codes) + self.b_dec.to(codes.device, codes.dtype)).to(z.dtype)

    def _decoder_product(self, codes: torch.Tensor) -> torch.Tensor:
        """W_dec^T codes: from the active features' rows where that pays, else from every row (the
        stored matrix itself where it can serve as it is)."""
        active = self._active_features(codes)
        if active is not None:
            return self._decoder_sum(
                ((codes.index_select(-1, active[rows]), active[rows]) for rows in row_chunks(active.numel())), codes
            )
        stored = self._stored("W_dec")
        if resident(stored, codes.device, codes.dtype):
            return torch.matmul(codes, stored)
        return self._decoder_sum(((codes[..., rows], rows) for rows in row_chunks(self.d_features)), codes)

    def _active_features(self, z: torch.Tensor) -> torch.Tensor | None:
        """The features active anywhere in z when few enough that decoding from their rows alone
        pays (see ACTIVE_ROWS_PAY); None for the dense product, which is also what a gradient in z
        needs (every column of z gets one, active or not)."""
        if z.requires_grad and torch.is_grad_enabled():
            return None
        rows = z.reshape(-1, self.d_features)
        # two reductions, no [rows, d_features] mask (torch.aminmax along rows is 4x slower on a CPU)
        active = ((rows.amin(0) != 0) | (rows.amax(0) != 0)).nonzero().squeeze(-1)
        return active if active.numel() <= ACTIVE_ROWS_PAY * self.d_features else None

    def _decoder_sum(self, parts: Iterable[tuple[torch.Tensor, RowSelection]], codes: torch.Tensor) -> torch.Tensor:
        """Sum over (columns [..., n] of `codes`, the n decoder rows they weigh) of columns @ rows:
        [*codes.shape[:-1], d_model]."""
        total = codes.new_zeros(*codes.shape[:-1], self.d_model)
        for columns, rows in parts:
            total += torch.matmul(columns, self._rows("W_dec", rows, codes.device, codes.dtype))
        return total

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
        x = self.modulate(x, t)
        flat = index.reshape(-1)
        encoder = self.encoder_vectors(flat, dtype=x.dtype, device=x.device)
        pre = F.linear(x, encoder, self.b_enc[flat].to(x.device, x.dtype))
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

    def decoder_vectors(self, features: int | Sequence[int] | torch.Tensor, *, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """Decoder rows (unit-norm directions in the MLP-output space) of the chosen features,
        [*index shape, d_model], dequantised, in `dtype` (default: the compute dtype) on `device`
        (default: where the weights are)."""
        return self._rows("W_dec", self._feature_index(features), torch.device(device or self.device),
                          dtype or self._compute_dtype())

    def encoder_vectors(self, features: int | Sequence[int] | torch.Tensor, *, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """Encoder rows W_enc[i] of the chosen features (pre-FiLM: the encoder sees x * (1 + scale) + shift),
        shaped, dequantised and placed as `decoder_vectors`."""
        return self._rows("W_enc", self._feature_index(features), torch.device(device or self.device),
                          dtype or self._compute_dtype())

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
        """Decode top-k codes from the decoder rows of the features they name, without dense
        [rows, d_features] activations: the named features are taken a chunk at a time, each
        chunk's codes scattered into a [rows, chunk] block."""
        k = codes.indices.shape[-1]
        values = self._cast(codes.values.reshape(-1, k))
        dtype = _product_dtype(values.device, values.dtype)
        features, slot = torch.unique(codes.indices.reshape(-1, k).long(), return_inverse=True)
        parts = ((_scattered(values.to(dtype), slot, rows), features[rows]) for rows in row_chunks(features.numel()))
        decoded = self._decoder_sum(parts, values.to(dtype)) + self.b_dec.to(values.device, dtype)
        return decoded.to(values.dtype).reshape(*codes.indices.shape[:-1], self.d_model)


def _scattered(values: torch.Tensor, slot: torch.Tensor, rows: slice) -> torch.Tensor:
    """[n, rows.stop - rows.start] codes of the features whose slot falls in `rows` (values and
    slot are [n, k]; a slot is a feature's place in the sorted list of the features named)."""
    width = rows.stop - rows.start
    local = slot.to(values.device) - rows.start
    inside = (local >= 0) & (local < width)
    block = values.new_zeros(values.shape[0], width)
    return block.scatter_add_(-1, local.clamp(0, width - 1), values * inside)
