"""ComfyUI adapters over `diffract_core`: the only code of the pack that imports `comfy` or
`comfy_api`. Node ids registered here are permanent once shipped (workflows store them).
"""

from comfy_api.latest import ComfyExtension, io

from . import circuit_store
from .atlas_nodes import BuildFeatureAtlas, ExplainFeature
from .attention_heads import AttentionHeads
from .circuit_files import LoadCircuit, SaveCircuit
from .circuit_nodes import SteerCircuit, TraceCircuit
from .feature_connections import FeatureConnections
from .inspect_nodes import FeatureHeatmaps, TopFeatures
from .record_node import RecordFeatures
from .simplify_circuit import SimplifyCircuit
from .steer_node import SteerFeature
from .toy_nodes import ToyDecode, ToyModelLoader, ToyTextEncode
from .transcoder_folders import register_transcoder_folder
from .transcoder_nodes import DownloadTranscoders, LoadTranscoders

NODES: tuple[type[io.ComfyNode], ...] = (
    LoadTranscoders,
    DownloadTranscoders,
    RecordFeatures,
    FeatureHeatmaps,
    TopFeatures,
    SteerFeature,
    TraceCircuit,
    SimplifyCircuit,
    SteerCircuit,
    FeatureConnections,
    AttentionHeads,
    SaveCircuit,
    LoadCircuit,
    BuildFeatureAtlas,
    ExplainFeature,
    ToyModelLoader,
    ToyTextEncode,
    ToyDecode,
)

_route_registered = False


class DiffractExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.8 calls get_node_list (not on_load) when it loads the pack, after it has read
        # extra_model_paths.yaml; registering here extends the user's `transcoders` entry.
        global _route_registered
        register_transcoder_folder()
        if not _route_registered:
            _route_registered = circuit_store.register_route()
        return list(NODES)
