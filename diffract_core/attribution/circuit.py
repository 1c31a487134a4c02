"""One call to trace a circuit: build the replacement model of a kept call, resolve the target,
expand the graph, and record what it cost and how exact it is."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..recording.call_inputs import CallInputs
from ..recording.recording import CHUNK_NAMES
from ..transcoders.transcoder_set import TranscoderSet
from .blocks import LinearReader, read_plain_linear
from .faithfulness import check_faithfulness
from .graph import CircuitGraph
from .replacement import ReplacementModel
from .targets import TargetSpec, resolve_target
from .tracer import CircuitTracer, ProgressCallback, TraceSettings

SCHEMA_NOTE = "edges point source -> target; every expanded node's incoming edges sum to its value"


def trace_circuit(
    blocks: Sequence[nn.Module],
    transcoders: TranscoderSet,
    call: CallInputs,
    target: TargetSpec,
    *,
    step: int,
    settings: TraceSettings | None = None,
    read_linear: LinearReader = read_plain_linear,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    max_active: int = 128,
    text_tokens: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    check_top_k: int = 0,
) -> CircuitGraph:
    """The attribution graph of `target` in the call `call` (one image, one sigma, one chunk).

    `check_top_k` > 0 also ablates that many of the most influential features in the real blocks
    and stores how well the graph predicted the target's changes (metadata["faithfulness"])."""
    settings = settings or TraceSettings()
    model = ReplacementModel(
        blocks, transcoders, call, last_layer=target.layer, read_linear=read_linear, dtype=dtype, device=device,
        max_active=max_active,
    )
    root = resolve_target(model, target, call.image_grid)
    graph = CircuitTracer(model, settings).trace(root, step=step, progress=progress)
    residuals = graph.conservation()
    replacement, completeness = graph.scores()
    graph.metadata.update(
        {
            "step": step,
            "sigma": call.sigma,
            "chunk": CHUNK_NAMES[call.chunk],
            "image_grid": list(call.image_grid) if call.image_grid is not None else None,
            "text_tokens": (list(text_tokens) if text_tokens is not None
                            else [f"t{i}" for i in range(call.txt.shape[1])]),
            "image_tokens": int(call.img.shape[1]),
            "target": {
                "feature": f"{target.stream}:{target.layer}:{root.feature}",
                "mode": target.mode,
                "label": root.label,
                "value": graph.target.value,
            },
            "settings": {
                "max_feature_nodes": settings.max_feature_nodes,
                "batch_size": settings.batch_size,
                "max_edges_per_node": settings.max_edges_per_node,
                "max_active": max_active,
                "dtype": str(dtype).removeprefix("torch."),
            },
            "conservation": {
                "max_relative_residual": float(residuals.max()) if len(residuals) else 0.0,
                "mean_relative_residual": float(residuals.mean()) if len(residuals) else 0.0,
                "nodes_checked": len(residuals),
            },
            "scores": {"replacement": replacement, "completeness": completeness},
            "features_beyond_max_active": {
                f"{site[0]}:{site[1]}": sources.dropped_fraction
                for site, sources in model.sites.items()
                if sources.dropped_fraction > 0
            },
            "note": SCHEMA_NOTE,
        }
    )
    if check_top_k > 0:
        graph.metadata["faithfulness"] = check_faithfulness(model, graph, root.row, check_top_k).to_dict()
    return graph
