"""Attribution graphs of FLUX features: the local replacement model of one traced call, batched
exact attribution, budgeted graph expansion, pruning, faithfulness checks and circuit steering."""

from .circuit import trace_circuit
from .graph import CircuitGraph, CircuitNode, Pruned
from .replacement import ReplacementModel, TargetRow
from .targets import TARGET_HELP, TARGET_MODES, TargetSpec, resolve_target
from .tracer import CircuitTracer, TraceSettings

__all__ = [
    "TARGET_HELP",
    "TARGET_MODES",
    "CircuitGraph",
    "CircuitNode",
    "CircuitTracer",
    "Pruned",
    "ReplacementModel",
    "TargetRow",
    "TargetSpec",
    "TraceSettings",
    "resolve_target",
    "trace_circuit",
]
