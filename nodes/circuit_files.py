"""Save Circuit and Load Circuit: circuits as JSON files in ComfyUI's output folder.

Loading takes a name from a workflow, which may come from anyone: the name must resolve to a
`.json` file inside the output folder, and the file is parsed as plain JSON and validated field by
field (no eval, no unpickling).

ComfyUI surface used: `folder_paths.get_output_directory`, `folder_paths.get_save_image_path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..diffract_core.atlas import feature_labels
from ..diffract_core.attribution import CircuitGraph, load_graph, save_graph, save_neuronpedia
from ..diffract_core.errors import CircuitFileError
from ..diffract_core.transcoders import TranscoderSet
from ..diffract_core.viewer import circuit_refs
from . import circuit_store
from .node_types import CATEGORY, Circuit, Transcoders

FORMATS = ("diffract", "neuronpedia")
MAX_LISTED = 500


def _output_dir() -> Path:
    return Path(folder_paths.get_output_directory()).resolve()


def saved_circuits() -> list[str]:
    """Circuit files under the output folder, newest first, as paths relative to it; links that lead
    outside it are left out, as resolve_circuit would refuse them."""
    base = _output_dir()
    if not base.is_dir():
        return []
    found = []
    for path in base.rglob("*.json"):
        if path.name.endswith(".neuronpedia.json") or not path.is_file() or base not in path.resolve().parents:
            continue
        found.append((path.stat().st_mtime, path.relative_to(base).as_posix()))
    return [name for _, name in sorted(found, reverse=True)[:MAX_LISTED]]


def resolve_circuit(name: str) -> Path:
    """The file a workflow names, refused unless it is a .json file inside the output folder."""
    base = _output_dir()
    path = (base / name).resolve()
    if base not in path.parents or path.suffix != ".json":
        raise CircuitFileError(f"{name!r} is not a circuit file in ComfyUI's output folder: pick one from the list")
    return path


class SaveCircuit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractSaveCircuit",
            display_name="Save Circuit",
            category=CATEGORY,
            description="Write a circuit to ComfyUI's output folder as JSON (DifFRACT's schema, or the "
            "circuit-tracer / Neuronpedia graph shape for their viewers). With the transcoders connected, "
            "features are labelled from their feature atlas (Neuronpedia: as clerps).",
            inputs=[
                Circuit.Input("circuit"),
                io.String.Input("filename_prefix", default="diffract/circuit"),
                io.Combo.Input("format", options=list(FORMATS), default="diffract"),
                Transcoders.Input("transcoders", optional=True,
                                  tooltip="the traced transcoders: their atlas labels the features"),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, circuit: CircuitGraph, filename_prefix: str, format: str,
                transcoders: TranscoderSet | None = None) -> io.NodeOutput:
        labels = feature_labels(transcoders.atlas if transcoders is not None else None, circuit_refs(circuit))
        output = str(_output_dir())
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output)
        suffix = ".neuronpedia.json" if format == "neuronpedia" else ".json"
        name = f"{filename}_{counter:05}_{suffix}"
        path = Path(folder) / name
        if format == "neuronpedia":
            save_neuronpedia(circuit, path, Path(name).stem, labels, **_thresholds(circuit))
        else:
            save_graph(circuit, path, labels)
        relative = path.relative_to(output).as_posix()
        return io.NodeOutput(relative, ui={"text": [relative],
                                           "diffract_saved": [{"subfolder": subfolder, "filename": name}]})


def _thresholds(circuit: CircuitGraph) -> dict[str, float]:
    pruning = circuit.metadata.pruning if circuit.metadata is not None else None
    if pruning is None:
        return {}
    return {"node_threshold": pruning.node_threshold, "edge_threshold": pruning.edge_threshold}


class LoadCircuit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractLoadCircuit",
            display_name="Load Circuit",
            category=CATEGORY,
            description="Read a circuit saved by Save Circuit from ComfyUI's output folder (validated; files "
            "from others are safe to open).",
            inputs=[io.Combo.Input("circuit_file", options=saved_circuits())],
            outputs=[Circuit.Output(display_name="CIRCUIT")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, circuit_file: str) -> Any:
        try:
            return resolve_circuit(circuit_file).stat().st_mtime_ns
        except (CircuitFileError, OSError):
            return circuit_file

    @classmethod
    def execute(cls, circuit_file: str) -> io.NodeOutput:
        graph = load_graph(resolve_circuit(circuit_file))
        circuit_id = circuit_store.publish(graph)
        return io.NodeOutput(graph, ui={"diffract_circuit": [circuit_store.summary(graph, circuit_id)]})
