"""Attribution graphs of FLUX features: the local replacement model of one traced call, batched
exact attribution, budgeted graph expansion, pruning, faithfulness checks and circuit steering."""

from .blocks import read_plain_linear
from .circuit import trace_circuit
from .faithfulness import Faithfulness
from .graph import CircuitGraph, CircuitNode, Pruned
from .metadata import CircuitMetadata, Conservation, Passes, Pruning, Scores, TargetInfo
from .replacement import ReplacementModel, TargetRow
from .serialize import load_graph, node_label, save_graph, save_neuronpedia
from .settings import TraceSettings
from .steering import CIRCUIT_MODES, NODES_HELP, STEP_CHOICES, circuit_steering
from .targets import TARGET_HELP, TARGET_MODES, TargetSpec, resolve_target
from .tracer import CircuitTracer

__all__ = [
    "CIRCUIT_MODES",
    "NODES_HELP",
    "STEP_CHOICES",
    "TARGET_HELP",
    "TARGET_MODES",
    "CircuitGraph",
    "CircuitMetadata",
    "CircuitNode",
    "CircuitTracer",
    "Conservation",
    "Faithfulness",
    "Passes",
    "Pruned",
    "Pruning",
    "ReplacementModel",
    "Scores",
    "TargetInfo",
    "TargetRow",
    "TargetSpec",
    "TraceSettings",
    "circuit_steering",
    "load_graph",
    "node_label",
    "read_plain_linear",
    "resolve_target",
    "save_graph",
    "save_neuronpedia",
    "trace_circuit",
]
