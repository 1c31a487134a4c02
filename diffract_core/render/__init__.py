"""Pictures and tables of a recording: feature heatmaps over the image, and ranked feature statistics."""

from .circuit import render_circuit
from .connections import format_connections, render_connections
from .head_table import render_head_table
from .heatmaps import NORMALIZE_MODES, colorize, normalize_maps, render_feature_heatmaps
from .top_features import FeatureStat, format_table, top_features

__all__ = [
    "NORMALIZE_MODES",
    "FeatureStat",
    "colorize",
    "format_connections",
    "format_table",
    "normalize_maps",
    "render_circuit",
    "render_connections",
    "render_feature_heatmaps",
    "render_head_table",
    "top_features",
]
