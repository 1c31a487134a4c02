"""The local replacement model of one traced FLUX call, and its exact adjoint.

Replaying the double blocks from the kept inputs (one sigma, one chunk, one image) fixes every
non-linearity at its value in that call: attention probabilities (from the call's queries and keys),
LayerNorm denominators, modulation and gates (functions of `vec` alone), and the MLP outputs. Each
MLP output is split into sources: its top transcoder features (`z * W_dec`), an error term (the
rest of the output, exact) and the decoder bias. What remains is affine in the sources, so a
feature's pre-activation is exactly `sum(sources' edges) + bias`.

`attribute(rows)` runs the transposed map by hand, for many target rows at once: attention's
transpose reuses one recomputation of the probabilities for every row, and nothing is evaluated
above a row's own layer. `attribute_autograd` gets the same edges with one forward and one
autograd backward per row (the reference method); the two agree to float precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import DiffractError
from ..recording.call_inputs import CallInputs
from ..transcoders.config import STREAMS, Stream
from ..transcoders.transcoder import Transcoder
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .blocks import Affine, LinearReader, StreamWeights, check_double_block, read_plain_linear, read_stream

_MEMORY_CHUNK = 1 << 26  # elements per temporary (256 MB in fp32)

MlpEdit = Callable[[int, SiteKey, torch.Tensor, torch.Tensor], torch.Tensor]  # (layer, site, x, y) -> y
AttentionEdit = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, joint attention output [B, S, H * d]) -> it


def _center(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm's centering; it is its own transpose."""
    return x - x.mean(dim=-1, keepdim=True)


def _rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * scale


def _kept_dtype(weight: torch.dtype, compute: torch.dtype) -> torch.dtype:
    """The dtype weights are read in (and cast from at use): their own where the compute dtype holds
    its values exactly (a bf16 FLUX's weights in a float32 trace, read with ComfyUI's LoRA patches
    applied in bf16 as its own layers apply them); the compute dtype for quantised formats (fp8, GGUF)."""
    plain = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return weight if weight in plain and weight.itemsize <= compute.itemsize else compute


def _value_rows(read: torch.Tensor, hidden: int, qkv: nn.Module) -> torch.Tensor:
    """The value rows of a fused qkv weight or bias as read: a view where the reader handed back the
    module's own tensor (nothing to free), a copy where it made one (so the query and key rows of
    that copy are freed)."""
    rows = read[2 * hidden :]
    own = any(read.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for p in qkv.parameters())
    return rows if own else rows.clone()


def _constant_effect(grad: torch.Tensor, constant: torch.Tensor | None) -> torch.Tensor:
    """[R] float64: sum over positions of grad[r, p] . constant, for a constant [D] (or [1, 1, D])
    added at every position."""
    if constant is None:
        return grad.new_zeros(grad.shape[0], dtype=torch.float64)
    return grad.sum(dim=1).double() @ constant.reshape(-1).double()


def _rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape)


@dataclass(frozen=True)
class StreamConstants:
    """One stream's frozen quantities in one block (batch 1)."""

    shift1: torch.Tensor  # [1, 1, D]
    scale1: torch.Tensor
    gate1: torch.Tensor
    shift2: torch.Tensor
    scale2: torch.Tensor
    gate2: torch.Tensor
    inv1: torch.Tensor  # [1, S, 1] 1 / sqrt(var + eps) of norm1's input
    inv2: torch.Tensor  # same for norm2


@dataclass(frozen=True)
class LayerConstants:
    streams: dict[Stream, StreamConstants]
    query: torch.Tensor  # [1, H, S_txt + S_img, d], RMS-normed and rotated
    key: torch.Tensor
    value: dict[Stream, Affine]  # the value rows of qkv, in the weights' own dtype (cast at use)
    proj: dict[Stream, Affine]


@dataclass
class SiteSources:
    """One MLP output y = sum_k values[p, k] * W_dec[indices[p, k]] + decoder_bias + error[p]."""

    site: SiteKey
    indices: torch.Tensor  # [S, k] long
    values: torch.Tensor  # [S, k], 0 in unused slots
    error: torch.Tensor  # [S, D]: the MLP output minus the kept features and the decoder bias
    decoder_bias: torch.Tensor  # [D] (zero where no transcoder covers the site)
    transcoder: Transcoder | None
    dropped_fraction: float = 0.0  # share of sum |z| beyond the kept features (folded into the error)
    features: torch.Tensor = field(init=False)  # [U] the distinct kept features, ascending
    slots: torch.Tensor = field(init=False)  # [S * k] each slot's index into `features`

    def __post_init__(self) -> None:
        self.features, self.slots = torch.unique(self.indices.flatten(), return_inverse=True)

    def output(self) -> torch.Tensor:
        """The MLP output the sources add up to: [1, S, D]."""
        return (self.decoder_bias + self.error + self.feature_part())[None]

    def feature_part(self) -> torch.Tensor:
        if self.transcoder is None or self.indices.shape[-1] == 0:
            return torch.zeros_like(self.error)
        decoder = self.transcoder.decoder_vectors(self.indices, dtype=self.error.dtype, device=self.error.device)
        return torch.einsum("sk,skd->sd", self.values, decoder)


@dataclass(frozen=True)
class TargetRow:
    """A linear read-out of one stream's MLP input x at `layer`: sum_p weights[p] * (direction . x[p]).

    A transcoder feature's pre-activation is this read-out plus a constant: its direction is
    W_enc[i] * (1 + scale(sigma)), the rest (b_enc, W_enc . shift(sigma)) is `constant` per unit weight."""

    stream: Stream
    layer: int
    weights: torch.Tensor  # [S_stream], how much each position counts
    direction: torch.Tensor  # [D]
    constant: float = 0.0  # added per unit of weight: value = sum_p w_p (direction . x_p + constant)


@dataclass
class RowEdges:
    """Direct effects on one target row of every source below it.

    `features[site]` is [U] float64: each kept feature's effect summed over its positions, aligned
    with the site's `features`; `errors[site]` and `inputs[stream]` are per position; `bias` is what
    no source explains (the row's value with every source at zero)."""

    features: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    errors: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    inputs: dict[Stream, torch.Tensor] = field(default_factory=dict)
    bias: float = 0.0

    def total(self) -> float:
        parts = [*self.features.values(), *self.errors.values(), *self.inputs.values()]
        return float(sum(part.double().sum() for part in parts))


class ReplacementModel:
    """The frozen, linearised double blocks 0..`last_layer` of one traced call."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        transcoders: TranscoderSet,
        call: CallInputs,
        *,
        last_layer: int,
        read_linear: LinearReader = read_plain_linear,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        max_active: int = 128,
        keep_inputs_of: Iterable[int] = (),
    ) -> None:
        if call.batch != 1:
            raise DiffractError(f"trace one image at a time: these call inputs hold {call.batch}; "
                                "pick one with .row(i)")
        if not 0 <= last_layer < len(blocks):
            raise DiffractError(f"layer {last_layer} is past this model's {len(blocks)} double blocks "
                                f"(0..{len(blocks) - 1})")
        if max_active < 1:
            raise DiffractError(f"max_active must be at least 1, got {max_active}")
        self.blocks = blocks
        self.transcoders = transcoders
        self.read_linear: LinearReader = lambda module, compute, where: read_linear(
            module, _kept_dtype(module.weight.dtype, compute), where)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else call.img.device
        self.sigma = call.sigma
        self.last_layer = last_layer
        self.max_active = max_active
        self.num_heads = int(blocks[0].num_heads)
        self.hidden = int(call.img.shape[-1])
        self.inputs: dict[Stream, torch.Tensor] = {
            "img": call.img.to(self.device, dtype),
            "txt": call.txt.to(self.device, dtype),
        }
        self.vec = call.vec.to(self.device, dtype)
        self.pe = call.pe.to(self.device, dtype)
        self.layers: list[LayerConstants] = []
        self.sites: dict[SiteKey, SiteSources] = {}
        self.mlp_inputs: dict[SiteKey, torch.Tensor] = {}  # clean MLP inputs of the layers in keep_inputs_of
        self._zero_inputs: dict[SiteKey, torch.Tensor] | None = None  # MLP inputs with every source at zero
        self.forward_passes = 0
        self.backward_passes = 0
        for index in range(last_layer + 1):
            check_double_block(blocks[index], index)
        self._clean_forward(set(keep_inputs_of) | {last_layer})

    # --- shapes ----------------------------------------------------------------------------------

    def tokens(self, stream: Stream) -> int:
        return self.inputs[stream].shape[1]

    def _transcoder_or_none(self, site: SiteKey) -> Transcoder | None:
        """The site's transcoder; None where none is loaded or it is an SAE (no features to trace)."""
        transcoder = self.transcoders.get(site)
        return transcoder if transcoder is not None and transcoder.config.kind == "transcoder" else None

    def transcoder_at(self, site: SiteKey) -> Transcoder:
        transcoder = self._transcoder_or_none(site)
        if transcoder is None:
            raise DiffractError(
                f"no transcoder covers {site[0]}:{site[1]}: targets and expanded features need a transcoder "
                "(an SAE reads the MLP output, which the replacement model holds fixed)"
            )
        return transcoder

    # --- the clean pass: constants and sources ---------------------------------------------------

    def _stream_weights(self, index: int) -> dict[Stream, StreamWeights]:
        return {s: read_stream(self.blocks[index], s, self.dtype, self.device, self.read_linear) for s in STREAMS}

    def _transpose_weights(self, index: int) -> tuple[dict[Stream, Affine], dict[Stream, Affine]]:
        """(value rows of qkv, proj) per stream: all the linearised blocks keep of the weights, in
        the dtype they are read in (a bf16 FLUX's: a quarter of what fp32 copies of qkv would take)."""
        values, projs = {}, {}
        for s in STREAMS:
            attn = getattr(self.blocks[index], f"{s}_attn")
            qkv = Affine(*self.read_linear(attn.qkv, self.dtype, self.device))
            values[s] = Affine(*(None if part is None else _value_rows(part, self.hidden, attn.qkv)
                                 for part in (qkv.weight, qkv.bias)))
            projs[s] = Affine(*self.read_linear(attn.proj, self.dtype, self.device))
        return values, projs

    @torch.no_grad()
    def _clean_forward(self, keep_layers: set[int]) -> None:
        def observe(index: int, site: SiteKey, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if index in keep_layers:
                self.mlp_inputs[site] = x
            if index < self.last_layer:
                self.sites[site] = self._split_sources(site, x[0], y[0])
            return y

        self.real_forward(observe, keep_constants=True)

    @torch.no_grad()
    def real_forward(self, edit: MlpEdit | None = None, *, keep_constants: bool = False,
                     attention_edit: AttentionEdit | None = None) -> dict[SiteKey, torch.Tensor]:
        """The blocks as the model runs them (nothing frozen) on the traced call's inputs; `edit` sees
        each MLP's input and output and returns the output to use, `attention_edit` each layer's joint
        attention output ([txt | img], before proj). Returns every MLP input."""
        h = dict(self.inputs)
        silu_vec = F.silu(self.vec)[:, None, :]
        xs: dict[SiteKey, torch.Tensor] = {}
        for index in range(self.last_layer + 1):
            weights = self._stream_weights(index)
            mods = {s: weights[s].modulation(silu_vec).chunk(6, dim=-1) for s in STREAMS}
            inv1 = {s: torch.rsqrt(h[s].var(-1, unbiased=False, keepdim=True) + weights[s].norm1_eps) for s in STREAMS}
            qkv = {}
            for s in STREAMS:
                shift1, scale1 = mods[s][0], mods[s][1]
                a = (1 + scale1) * (_center(h[s]) * inv1[s]) + shift1
                q, k, v = rearrange(weights[s].qkv(a), "B L (K H D) -> K B H L D", K=3, H=self.num_heads)
                qkv[s] = (_rms(q, weights[s].query_scale), _rms(k, weights[s].key_scale), v)
            query = _rope(torch.cat((qkv["txt"][0], qkv["img"][0]), dim=2), self.pe)
            key = _rope(torch.cat((qkv["txt"][1], qkv["img"][1]), dim=2), self.pe)
            value = torch.cat((qkv["txt"][2], qkv["img"][2]), dim=2)
            attended = self._attend(query, key, value)
            if attention_edit is not None:
                attended = attention_edit(index, attended)
            split = self._split_joint(attended, dim=1)
            constants: dict[Stream, StreamConstants] = {}
            for s in STREAMS:
                shift1, scale1, gate1, shift2, scale2, gate2 = mods[s]
                h[s] = h[s] + gate1 * weights[s].proj(split[s])
                inv2 = torch.rsqrt(h[s].var(-1, unbiased=False, keepdim=True) + weights[s].norm2_eps)
                x = (1 + scale2) * (_center(h[s]) * inv2) + shift2
                xs[(s, index)] = x
                y = weights[s].mlp_out(F.gelu(weights[s].mlp_in(x), approximate="tanh"))
                if edit is not None:
                    y = edit(index, (s, index), x, y)
                h[s] = h[s] + gate2 * y
                constants[s] = StreamConstants(shift1, scale1, gate1, shift2, scale2, gate2, inv1[s], inv2)
            if keep_constants:
                del weights
                self.layers.append(LayerConstants(constants, query, key, *self._transpose_weights(index)))
        self.forward_passes += 1
        return xs

    def _split_sources(self, site: SiteKey, x: torch.Tensor, y: torch.Tensor) -> SiteSources:
        transcoder = self._transcoder_or_none(site)
        if transcoder is None:
            empty = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
            return SiteSources(site, empty, y.new_zeros(x.shape[0], 0), y, torch.zeros_like(y[0]), None)
        z, _ = transcoder.encode(x.to(transcoder.dtype), self.sigma)
        z = z.to(self.dtype)
        k = min(self.max_active, z.shape[-1])
        top = torch.topk(z, k, dim=-1)
        total = float(z.sum())
        dropped = 0.0 if total == 0 else max(0.0, 1.0 - float(top.values.sum()) / total)
        sources = SiteSources(site, top.indices, top.values, y, transcoder.b_dec.detach().to(y), transcoder, dropped)
        sources.error = y - sources.feature_part() - sources.decoder_bias
        return sources

    def _split_joint(self, joint: torch.Tensor, dim: int) -> dict[Stream, torch.Tensor]:
        """The [txt | img] joint sequence along `dim`, split by stream."""
        text = self.tokens("txt")
        return {"txt": joint.narrow(dim, 0, text), "img": joint.narrow(dim, text, joint.shape[dim] - text)}

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Frozen-probability attention: softmax(q k^T / sqrt(d)) applied to `value` [R, H, S, d]."""
        out = torch.empty_like(value)
        for rows, probs in self._probabilities(query, key, value.shape[0]):
            out[:, :, rows] = torch.matmul(probs, value)
        return rearrange(out, "B H L D -> B L (H D)")

    def _attend_transposed(self, layer: LayerConstants, folded: torch.Tensor) -> torch.Tensor:
        """P^T grad: the value gradient of frozen attention, for the rows' gradients folded into the
        matmul's columns ([H, S, R * d]), so each chunk of probabilities serves every row at once."""
        out = torch.zeros_like(folded)
        for chunk, probs in self._probabilities(layer.query, layer.key, 1):
            out += torch.matmul(probs[0].transpose(-1, -2), folded[:, chunk])
        return out

    def _probabilities(self, query: torch.Tensor, key: torch.Tensor, rows: int) -> Iterable[tuple[slice, torch.Tensor]]:
        heads, length, dim = query.shape[1], query.shape[2], query.shape[3]
        step = max(1, _MEMORY_CHUNK // (heads * length * max(1, rows)))
        scale = 1.0 / math.sqrt(dim)
        for start in range(0, length, step):
            chunk = slice(start, min(length, start + step))
            logits = torch.matmul(query[:, :, chunk], key.transpose(-1, -2)) * scale
            yield chunk, torch.softmax(logits.float(), dim=-1).to(self.dtype)

    # --- the linearised forward ------------------------------------------------------------------

    def linear_forward(
        self, inputs: dict[Stream, torch.Tensor], mlp_outputs: dict[SiteKey, torch.Tensor]
    ) -> dict[SiteKey, torch.Tensor]:
        """MLP inputs x at every (stream, layer) up to `last_layer`, for given block-0 inputs
        ([R, S, D] per stream) and MLP outputs ([R or 1, S, D] per site below `last_layer`);
        differentiable in both. With the traced call's own values it reproduces that call."""
        h = dict(inputs)
        xs: dict[SiteKey, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            values = []
            for s in ("txt", "img"):
                c = layer.streams[s]
                a = (1 + c.scale1) * (_center(h[s]) * c.inv1) + c.shift1
                values.append(rearrange(layer.value[s](a), "B L (H D) -> B H L D", H=self.num_heads))
            split = self._split_joint(self._attend(layer.query, layer.key, torch.cat(values, dim=2)), dim=1)
            for s in STREAMS:
                c = layer.streams[s]
                h[s] = h[s] + c.gate1 * layer.proj[s](split[s])
                xs[(s, index)] = (1 + c.scale2) * (_center(h[s]) * c.inv2) + c.shift2
                if index < self.last_layer:
                    h[s] = h[s] + c.gate2 * mlp_outputs[(s, index)]
        self.forward_passes += 1
        return xs

    def source_outputs(self) -> dict[SiteKey, torch.Tensor]:
        """Every MLP output below `last_layer` as its sources add it up: [1, S, D] per site."""
        return {site: src.output() for site, src in self.sites.items()}

    # --- targets ---------------------------------------------------------------------------------

    @torch.no_grad()
    def feature_row(self, stream: Stream, layer: int, feature: int, weights: torch.Tensor) -> TargetRow:
        """The read-out whose value is sum_p weights[p] * pre-activation of `feature` at position p."""
        transcoder = self.transcoder_at((stream, layer))
        sigma = torch.tensor([self.sigma], device=self.device)
        scale, shift = transcoder.film(sigma)
        encoder = transcoder.encoder_vectors(feature, dtype=torch.float32, device=self.device)
        direction = (encoder * (1 + scale[0])).to(self.device, self.dtype)
        constant = float(encoder @ shift[0] + transcoder.b_enc[feature].detach().float())
        return TargetRow(stream, layer, weights.to(self.device, self.dtype), direction, constant)

    def value(self, row: TargetRow, xs: dict[SiteKey, torch.Tensor] | None = None) -> torch.Tensor:
        """The row's value on MLP inputs `xs` ([R, S, D]; default: the traced call's)."""
        x = self.mlp_inputs[(row.stream, row.layer)] if xs is None else xs[(row.stream, row.layer)]
        return torch.einsum("rsd,d,s->r", x, row.direction, row.weights) + row.constant * row.weights.sum()

    def bias(self, row: TargetRow) -> float:
        """The row's value with every source at zero: what no edge explains (biases, shifts), by a
        forward pass with zero sources (`attribute` gets the same from its backward pass)."""
        if self._zero_inputs is None:  # kept once made: the reference method asks for it per row
            self._zero_inputs = self.linear_forward(
                {stream: torch.zeros_like(h) for stream, h in self.inputs.items()},
                {site: src.decoder_bias.expand_as(src.error)[None] for site, src in self.sites.items()},
            )
        return float(self.value(row, self._zero_inputs)[0])

    # --- edges: the hand-written transpose, many rows per pass -----------------------------------

    @torch.no_grad()
    def attribute(self, rows: Sequence[TargetRow], *, through_attention: bool = True) -> list[RowEdges]:
        """Direct effects of every source on every row, in one backward pass. Without
        `through_attention`, only the effects along the residual stream itself (attention's value
        path left out): each edge's direct-residual share."""
        if not rows:
            return []
        for row in rows:
            self._check_row(row)
        order = sorted(range(len(rows)), key=lambda i: -rows[i].layer)
        ordered = [rows[i] for i in order]
        layers = torch.tensor([row.layer for row in ordered])
        grads = {s: torch.zeros(len(rows), self.tokens(s), self.hidden, dtype=self.dtype, device=self.device)
                 for s in STREAMS}
        bias = torch.zeros(len(rows), dtype=torch.float64, device=self.device)  # the constants' effects
        edges = [RowEdges() for _ in rows]
        for index in range(max(row.layer for row in rows), -1, -1):
            layer = self.layers[index]
            above = int((layers > index).sum())  # rows reading a later layer: a prefix of `ordered`
            if above:
                for s in STREAMS:
                    grad_y = layer.streams[s].gate2 * grads[s][:above]
                    self._site_edges((s, index), grad_y, edges, order)
                    bias[:above] += _constant_effect(grad_y, self.sites[(s, index)].decoder_bias)
            for r, row in enumerate(ordered):
                if row.layer == index:
                    c = layer.streams[row.stream]
                    seed = (1 + c.scale2[0]) * (row.weights[:, None] * row.direction[None, :])
                    grads[row.stream][r] += _center(c.inv2[0] * seed)
                    per_weight = float(row.direction.double() @ c.shift2.reshape(-1).double()) + row.constant
                    bias[r] += float(row.weights.double().sum()) * per_weight
            live = int((layers >= index).sum())
            if through_attention:
                self._block_transposed(layer, {s: g[:live] for s, g in grads.items()}, bias[:live])
        for s in STREAMS:
            contribution = (grads[s] * self.inputs[s]).sum(-1)
            for r, original in enumerate(order):
                edges[original].inputs[s] = contribution[r]
        for r, original in enumerate(order):
            edges[original].bias = float(bias[r])
        self.backward_passes += 1
        return edges

    def pass_bytes_per_row(self) -> int:
        """Memory one more row adds to a pass of `attribute`: the residual gradients of both streams
        and at most two more tensors of their size in the block transpose (see `_block_transposed`)."""
        tokens = self.tokens("txt") + self.tokens("img")
        return 3 * tokens * self.hidden * self.dtype.itemsize

    def pass_fixed_bytes(self) -> int:
        """Memory a pass takes whatever its rows: a chunk of attention logits and probabilities, and
        one of gathered decoder rows."""
        return 3 * _MEMORY_CHUNK * self.dtype.itemsize

    def _check_row(self, row: TargetRow) -> None:
        if not 0 <= row.layer <= self.last_layer:
            raise DiffractError(f"target layer {row.layer} is outside the traced blocks 0..{self.last_layer}")
        if row.weights.shape != (self.tokens(row.stream),):
            raise DiffractError(f"target weights of shape {tuple(row.weights.shape)} do not fit the "
                                f"{self.tokens(row.stream)} {row.stream} tokens")

    def _block_transposed(self, layer: LayerConstants, grads: dict[Stream, torch.Tensor], bias: torch.Tensor) -> None:
        """In place: gradients at a block's output -> at its input (MLP outputs are constants), and
        the effects of the block's constants (proj and value biases, shift1) added to `bias` [R].

        Besides `grads`, at most two gradient-sized tensors live at once: the value gradient of the
        joint sequence (rows folded into its columns) and one stream's gradient at the attention input."""
        rows = grads["img"].shape[0]
        heads, dim = self.num_heads, self.hidden // self.num_heads
        folded = grads["img"].new_empty(heads, self.tokens("txt") + self.tokens("img"), rows * dim)
        for s in STREAMS:
            projected = layer.streams[s].gate1 * grads[s]  # d/d(proj output)
            bias += _constant_effect(projected, layer.proj[s].bias)
            attended = torch.matmul(projected, layer.proj[s].weight.to(self.dtype))  # d/d(attention output)
            del projected
            self._split_joint(folded, dim=1)[s].copy_(rearrange(attended, "R L (H D) -> H L (R D)", H=heads))
            del attended
        value_grads = self._attend_transposed(layer, folded)
        del folded
        for s in STREAMS:
            c = layer.streams[s]
            grad_a = self._value_input_grad(self._split_joint(value_grads, dim=1)[s], layer.value[s], bias)
            bias += _constant_effect(grad_a, c.shift1)
            grad_a.mul_(1 + c.scale1).mul_(c.inv1)
            grad_a.sub_(grad_a.mean(dim=-1, keepdim=True))
            grads[s].add_(grad_a)

    def _value_input_grad(self, value_grads: torch.Tensor, value: Affine, bias: torch.Tensor) -> torch.Tensor:
        """[R, S, D] gradient at the value projection's input from its output's [H, S, R * d]
        (folded) gradient, token chunk by token chunk; the value bias's effects go to `bias`."""
        heads, length, folded = value_grads.shape
        rows, dim = folded // (self.hidden // heads), self.hidden // heads
        weight = value.weight.to(self.dtype)
        out = value_grads.new_empty(rows, length, self.hidden)
        step = max(1, _MEMORY_CHUNK // (rows * self.hidden))
        for start in range(0, length, step):
            chunk = slice(start, min(length, start + step))
            unfolded = rearrange(value_grads[:, chunk], "H L (R D) -> R L (H D)", R=rows, D=dim)
            bias += _constant_effect(unfolded, value.bias)
            out[:, chunk] = torch.matmul(unfolded, weight)
        return out

    def _site_edges(self, site: SiteKey, grad_y: torch.Tensor, edges: list[RowEdges], order: list[int]) -> None:
        """Edges from one MLP's sources to the first len(grad_y) rows (in `order`)."""
        error, features = self._site_effects(site, grad_y)
        for r in range(grad_y.shape[0]):
            edges[order[r]].errors[site] = error[r]
            edges[order[r]].features[site] = features[r]

    def _site_effects(self, site: SiteKey, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The effect of the site's error term per position ([R, S]) and of each kept feature summed
        over its positions ([R, U] float64) on rows whose gradient at the MLP output is `grad_y` [R, S, D]."""
        sources = self.sites[site]
        return (grad_y * sources.error).sum(-1), self._feature_totals(sources, grad_y)

    def _feature_totals(self, sources: SiteSources, grad_y: torch.Tensor) -> torch.Tensor:
        """sum over the slots (p, k) holding feature u of values[p, k] * (grad_y[r, p] . W_dec[u]): [R, U].
        Token chunk by token chunk, so no [R, S, k] tensor is ever whole."""
        tokens, k = sources.indices.shape
        rows = grad_y.shape[0]
        out = torch.zeros(rows, len(sources.features), dtype=torch.float64, device=grad_y.device)
        if sources.transcoder is None or k == 0:
            return out
        step = max(1, _MEMORY_CHUNK // (max(rows, k) * self.hidden))
        for start in range(0, tokens, step):
            chunk = slice(start, min(tokens, start + step))
            vectors = sources.transcoder.decoder_vectors(sources.indices[chunk], dtype=self.dtype,
                                                         device=grad_y.device)  # [c, k, D]
            effects = torch.einsum("rcd,ckd->rck", grad_y[:, chunk], vectors) * sources.values[chunk]
            out.index_add_(1, sources.slots[start * k : chunk.stop * k], effects.reshape(rows, -1).double())
        return out

    # --- the same edges by autograd, one row per forward and backward -----------------------------

    def attribute_autograd(self, row: TargetRow) -> RowEdges:
        self._check_row(row)
        inputs = {s: h.clone().requires_grad_(True) for s, h in self.inputs.items()}
        outputs = {site: out.clone().requires_grad_(True) for site, out in self.source_outputs().items()}
        xs = self.linear_forward(inputs, outputs)
        value = self.value(row, xs).sum()
        below = [site for site in outputs if site[1] < row.layer]
        grads = torch.autograd.grad(value, [inputs["img"], inputs["txt"], *(outputs[s] for s in below)],
                                    allow_unused=True)
        self.backward_passes += 1
        edges = RowEdges()
        for s, grad in zip(("img", "txt"), grads[:2]):
            edges.inputs[s] = (grad[0] * self.inputs[s][0]).sum(-1).detach()
        for site, grad_out in zip(below, grads[2:]):
            grad_y = (grad_out if grad_out is not None else torch.zeros_like(outputs[site])).detach()
            error, features = self._site_effects(site, grad_y)
            edges.errors[site], edges.features[site] = error[0], features[0]
        edges.bias = self.bias(row)
        return edges

