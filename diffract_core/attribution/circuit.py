"""One call to trace a circuit: build the replacement model of a kept call, resolve the target,
expand the graph, and record what it cost and how exact it is."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import GraphStructureError
from ..recording.call_inputs import CallInputs
from ..recording.recording import CHUNK_NAMES
from ..transcoders.transcoder_set import TranscoderSet
from .blocks import LinearReader, read_plain_linear
from .faithfulness import check_faithfulness
from .graph import CircuitGraph
from .metadata import CircuitMetadata, Conservation, Passes, Scores, TargetInfo
from .replacement import ReplacementModel, TargetRow
from .settings import TraceSettings
from .targets import TargetSpec, resolve_target
from .tracer import CircuitTracer, ProgressCallback

_VALUE_TOLERANCE = 1e-3  # relative: a target rebuilt from a circuit must read the circuit's value to this


def trace_circuit(
    blocks: Sequence[nn.Module],
    transcoders: TranscoderSet,
    call: CallInputs,
    target: TargetSpec,
    *,
    step: int,
    settings: TraceSettings | None = None,
    read_linear: LinearReader = read_plain_linear,
    device: torch.device | str | None = None,
    text_tokens: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> CircuitGraph:
    """The attribution graph of `target` in the call `call` (one image, one sigma, one chunk).

    `settings.faithfulness_checks` > 0 also ablates that many of the most influential features in the
    real blocks and stores how well the graph predicted the target's changes (metadata.faithfulness)."""
    settings = settings or TraceSettings()
    started = time.perf_counter()
    model = ReplacementModel(
        blocks, transcoders, call, last_layer=target.layer, read_linear=read_linear, dtype=settings.torch_dtype,
        device=device, max_active=settings.max_active,
    )
    root = resolve_target(model, target, call.image_grid)
    tracer = CircuitTracer(model, settings)
    graph = tracer.trace(root, step=step, progress=progress)
    passes = Passes(model.forward_passes, model.backward_passes, tracer.rows_per_pass)
    seconds = time.perf_counter() - started
    residuals = graph.conservation()
    faithfulness = None
    if settings.faithfulness_checks > 0:
        faithfulness = check_faithfulness(model, graph, root.row, settings.faithfulness_checks)
    graph.metadata = CircuitMetadata(
        step=step,
        sigma=call.sigma,
        text_tokens=tuple(text_tokens) if text_tokens is not None else tuple(f"t{i}" for i in range(call.txt.shape[1])),
        image_tokens=int(call.img.shape[1]),
        image_grid=call.image_grid,
        chunk=CHUNK_NAMES[call.chunk],
        target=TargetInfo(f"{target.stream}:{target.layer}:{root.feature}", target.mode, root.label,
                          graph.target.value),
        settings=settings,
        passes=passes,
        rows=len(graph.expanded()),
        seconds=seconds,
        conservation=Conservation(
            float(residuals.max()) if len(residuals) else 0.0,
            float(residuals.mean()) if len(residuals) else 0.0,
            len(residuals),
        ),
        scores=Scores(*graph.scores()),
        features_beyond_max_active={
            f"{site[0]}:{site[1]}": sources.dropped_fraction
            for site, sources in model.sites.items()
            if sources.dropped_fraction > 0
        },
        faithfulness=faithfulness,
    )
    return graph


def replay_model(graph: CircuitGraph, blocks: Sequence[nn.Module], transcoders: TranscoderSet, call: CallInputs, *,
                 read_linear: LinearReader = read_plain_linear,
                 device: torch.device | str | None = None) -> ReplacementModel:
    """The replacement model `trace_circuit` built for `graph`, from the same call (its dtype and
    max_active; the defaults where a foreign file holds no trace settings)."""
    metadata = graph.require_metadata()
    if (abs(call.sigma - metadata.sigma) > 1e-5 * max(1.0, abs(metadata.sigma))
            or call.img.shape[1] != metadata.image_tokens):
        raise GraphStructureError(
            f"this call is at sigma {call.sigma:.4g} but the circuit was traced at step {metadata.step} (sigma "
            f"{metadata.sigma:.4g}; image tokens: {call.img.shape[1]} here, {metadata.image_tokens} traced): it is not "
            f"the traced one (give the kept inputs of step {metadata.step})"
        )
    settings = metadata.settings or TraceSettings()
    layer = graph.target.layer
    assert layer is not None
    return ReplacementModel(blocks, transcoders, call, last_layer=layer, read_linear=read_linear,
                            dtype=settings.torch_dtype, device=device, max_active=settings.max_active)


def target_row(model: ReplacementModel, graph: CircuitGraph) -> TargetRow:
    """The graph's target as a read-out of `model`'s call (its feature, weighted at the target node's
    positions), checked against the value the graph recorded: a call other than the traced one, or a
    contrastive target (which the graph does not describe fully), is refused."""
    target = graph.target
    weights = torch.zeros(model.tokens(target.stream), dtype=model.dtype, device=model.device)
    if len(target.positions) and int(target.positions.max()) >= len(weights):
        raise GraphStructureError(f"the circuit's target reads {target.stream} token {int(target.positions.max())} "
                                  f"but this call has {len(weights)}: give it the call the circuit was traced from")
    weights[target.positions.to(model.device)] = target.activations.to(model.device, model.dtype)
    row = model.feature_row(target.stream, target.layer, target.feature, weights)
    value = float(model.value(row)[0])
    if abs(value - target.value) > _VALUE_TOLERANCE * max(abs(target.value), 1e-6):
        raise GraphStructureError(
            f"the circuit's target {target.feature_spec} reads {value:.6g} in this call but {target.value:.6g} in "
            "the circuit: a contrastive target (it cannot be rebuilt from a circuit: pass its row, or split its two "
            "features' graphs), or not the traced call (give the recording, step, chunk and batch_index it was "
            "traced from)"
        )
    return row
