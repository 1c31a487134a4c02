"""Attribution graphs of FLUX features: the local replacement model of one traced call, batched
exact attribution, budgeted graph expansion, pruning, faithfulness checks and circuit steering."""

from .blocks import read_plain_linear
from .circuit import replay_model, trace_circuit
from .circuit_search import SearchSettings, VerifiedCircuit, find_circuit, search_circuits
from .connections import Connection, FeatureConnections, VirtualWeights
from .edge_paths import EdgePaths, split_edges
from .faithfulness import Faithfulness
from .graph import CircuitGraph, CircuitNode, Pruned
from .hierarchy import Hierarchy, HierarchySettings, build_hierarchy, supernode_graph
from .metadata import CircuitMetadata, Conservation, Passes, Preservation, Pruning, Scores, Supernode, TargetInfo
from .modulation import DEFAULT_GUIDANCE, ResidualModulation, conditioning_vector
from .preservation import CircuitIntervention, TargetValues
from .replacement import ReplacementModel, TargetRow
from .serialize import load_graph, node_label, save_graph, save_neuronpedia
from .settings import TraceSettings
from .similarity import CircuitSimilarity, by_label, by_site, circuit_similarity
from .simplify import SIMPLIFY_HELP, SIMPLIFY_METHODS, SimplifySettings, simplify_circuit
from .steering import CIRCUIT_MODES, NODES_HELP, STEP_CHOICES, circuit_steering
from .subcircuit import keep_features
from .targets import TARGET_HELP, TARGET_MODES, TargetSpec, resolve_target
from .tracer import CircuitTracer

__all__ = [
    "CIRCUIT_MODES",
    "DEFAULT_GUIDANCE",
    "NODES_HELP",
    "SIMPLIFY_HELP",
    "SIMPLIFY_METHODS",
    "STEP_CHOICES",
    "TARGET_HELP",
    "TARGET_MODES",
    "CircuitGraph",
    "CircuitIntervention",
    "CircuitMetadata",
    "CircuitNode",
    "CircuitSimilarity",
    "CircuitTracer",
    "Connection",
    "Conservation",
    "EdgePaths",
    "Faithfulness",
    "FeatureConnections",
    "Hierarchy",
    "HierarchySettings",
    "Passes",
    "Preservation",
    "Pruned",
    "Pruning",
    "ReplacementModel",
    "ResidualModulation",
    "Scores",
    "SearchSettings",
    "SimplifySettings",
    "Supernode",
    "TargetInfo",
    "TargetRow",
    "TargetSpec",
    "TargetValues",
    "TraceSettings",
    "VerifiedCircuit",
    "VirtualWeights",
    "build_hierarchy",
    "by_label",
    "by_site",
    "circuit_similarity",
    "circuit_steering",
    "conditioning_vector",
    "find_circuit",
    "keep_features",
    "load_graph",
    "node_label",
    "read_plain_linear",
    "replay_model",
    "resolve_target",
    "save_graph",
    "save_neuronpedia",
    "search_circuits",
    "simplify_circuit",
    "split_edges",
    "supernode_graph",
    "trace_circuit",
]
