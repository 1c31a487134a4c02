"""The extension's node list: ids are permanent once shipped (workflows store them)."""

from __future__ import annotations

import asyncio


def test_the_nodes_and_their_permanent_ids(pack, models_dir) -> None:
    import folder_paths

    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    schemas = {node.define_schema().node_id: node.define_schema() for node in nodes}
    assert {node_id: schema.display_name for node_id, schema in schemas.items()} == {
        "DiffractLoadTranscoders": "Load Transcoders (DifFRACT)",
        "DiffractDownloadTranscoders": "Download Transcoders from Hub",
        "DiffractRecordFeatures": "Record Features",
        "DiffractFeatureHeatmaps": "Feature Heatmaps",
        "DiffractTopFeatures": "Top Features",
        "DiffractSteerFeature": "Steer Feature",
        "DiffractTraceCircuit": "Trace Circuit",
        "DiffractSimplifyCircuit": "Simplify Circuit",
        "DiffractSteerCircuit": "Steer Circuit",
        "DiffractFeatureConnections": "Feature Connections",
        "DiffractAttentionHeads": "Attention Heads",
        "DiffractSaveCircuit": "Save Circuit",
        "DiffractLoadCircuit": "Load Circuit",
        "DiffractBuildFeatureAtlas": "Build Feature Atlas",
        "DiffractExplainFeature": "Explain Feature",
        "DiffractToyModelLoader": "Load Toy FLUX",
        "DiffractToyTextEncode": "Toy Text Encode",
        "DiffractToyDecode": "Toy Decode",
    }
    assert {schema.category for schema in schemas.values()} == {"DifFRACT"}
    assert "transcoders" in folder_paths.folder_names_and_paths, "listing the nodes registers the model folder"
