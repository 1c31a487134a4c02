"""Circuits as JSON: our versioned schema (strictly validated on load, since shared graphs come
from strangers: plain `json`, no eval, no pickle), and the circuit-tracer / Neuronpedia graph shape
so their viewers can open ours."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CircuitFileError, GraphStructureError, SettingsError
from ..file_reading import parse_json, read_regular_file
from ..file_writing import replace_atomically, write_text_atomically
from ..transcoders.config import STREAMS
from .graph import NODE_KINDS, CircuitGraph, CircuitNode
from .metadata import CircuitMetadata

FORMAT = "diffract-circuit"
VERSION = 1
# Bounds checked before anything of that size is built; far above what Trace Circuit writes.
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_NODES = 200_000
MAX_EDGES = 20_000_000
MAX_POSITIONS = 1_000_000  # token positions of one stream
MAX_TOTAL_POSITIONS = 20_000_000  # over all nodes
MAX_TEXT_TOKENS = 65_536
MAX_METADATA_DEPTH = 8
MAX_METADATA_VALUES = 100_000
MAX_METADATA_STRING = 10_000  # characters of one string
MAX_METADATA_CHARACTERS = 1_000_000  # of all strings together: the metadata travels to the browser
EDGE_CHUNK = 65_536  # edge values formatted at a time when saving: the writer's memory stays flat


# --- ours ----------------------------------------------------------------------------------------


Labels = Mapping[str, str]  # feature spec ("img:12:40684") -> label, e.g. the atlas's (atlas.cards.feature_labels)


def graph_to_dict(graph: CircuitGraph, labels: Labels | None = None) -> dict[str, Any]:
    """The graph in our schema; feature nodes without a label of their own take theirs from `labels`."""
    return {
        **_header(graph),
        "nodes": [_node_to_dict(node, labels or {}) for node in graph.nodes],
        "edges": {name: column.tolist() for name, column in _edge_columns(graph)},
    }


def _header(graph: CircuitGraph) -> dict[str, Any]:
    """The keys before "nodes" and "edges", in the file's order."""
    return {"format": FORMAT, "version": VERSION,
            "metadata": graph.metadata.to_dict() if graph.metadata is not None else {}}


def _edge_columns(graph: CircuitGraph) -> tuple[tuple[str, torch.Tensor], ...]:
    return (("source", graph.edge_sources), ("target", graph.edge_targets), ("weight", graph.edge_weights))


def node_label(node: CircuitNode, labels: Labels) -> str:
    """The node's own label (the target's, or one a user gave it) wins over `labels`."""
    if node.label or node.feature_spec is None:
        return node.label
    return labels.get(node.feature_spec, "")


def _node_to_dict(node: CircuitNode, labels: Labels) -> dict[str, Any]:
    return {
        "id": node.id,
        "kind": node.kind,
        "step": node.step,
        "stream": node.stream,
        "layer": node.layer,
        "feature": node.feature,
        "value": node.value,
        "positions": node.positions.tolist(),
        "activations": [round(v, 6) for v in node.activations.tolist()],
        "label": node_label(node, labels),
    }


def save_graph(graph: CircuitGraph, path: str | os.PathLike[str], labels: Labels | None = None) -> Path:
    """The bytes of `_dumps(graph_to_dict(graph, labels))`, streamed: one node at a time, and the edges
    in chunks of EDGE_CHUNK straight from the tensors, so that no per-edge Python object outlives its
    chunk and no copy of the whole file is held in memory. Written atomically, like `_write_json`."""
    return replace_atomically(Path(path), lambda temporary: _stream_graph(graph, labels or {}, temporary))


def _stream_graph(graph: CircuitGraph, labels: Labels, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(_graph_pieces(graph, labels))


def _graph_pieces(graph: CircuitGraph, labels: Labels) -> Iterator[str]:
    """The file's text in pieces: the header, one node at a time, then the edge columns."""
    yield _dumps(_header(graph))[:-1] + ',"nodes":['
    for index, node in enumerate(graph.nodes):
        yield ("," if index else "") + _dumps(_node_to_dict(node, labels))
    yield '],"edges":{'
    for index, (name, column) in enumerate(_edge_columns(graph)):
        yield f'{"," if index else ""}{_dumps(name)}:['
        yield from _column_pieces(column)
        yield "]"
    yield "}}"


def _column_pieces(column: torch.Tensor) -> Iterator[str]:
    """The column's values as JSON list items (without the brackets), EDGE_CHUNK at a time."""
    for start in range(0, len(column), EDGE_CHUNK):
        yield ("," if start else "") + _dumps(column[start : start + EDGE_CHUNK].tolist())[1:-1]


def save_neuronpedia(graph: CircuitGraph, path: str | os.PathLike[str], slug: str, labels: Labels | None = None,
                     **thresholds: float) -> Path:
    """The graph in the circuit-tracer / Neuronpedia viewer shape (see `neuronpedia_graph`)."""
    return _write_json(neuronpedia_graph(graph, slug, labels=labels, **thresholds), Path(path))


def _write_json(data: dict[str, Any], path: Path) -> Path:
    """Write atomically (a failed write leaves any existing file as it was), readable by others: a
    circuit file is meant to be shared."""
    return write_text_atomically(path, _dumps(data))


def _dumps(data: object) -> str:
    """Compact JSON; NaN and infinities are refused (ValueError), since strict readers reject them."""
    return json.dumps(data, allow_nan=False, separators=(",", ":"))


def load_graph(path: str | os.PathLike[str]) -> CircuitGraph:
    path = Path(path)
    fix = "it cannot be loaded as a circuit"
    try:
        data = read_regular_file(path, max_bytes=MAX_FILE_BYTES, fix=fix, error=CircuitFileError)
    except FileNotFoundError:
        raise CircuitFileError(f"no circuit file at {path.name}: pick a .json file saved by Save Circuit") from None
    document = parse_json(data, path.name, fix, error=CircuitFileError, allow_constants=False)
    return graph_from_dict(document, source=path.name)


def graph_from_dict(data: Any, source: str = "the circuit") -> CircuitGraph:
    """Validate every field and build the graph; any problem raises CircuitFileError naming it.
    Every size is checked before anything of that size is built."""
    check = _Checker(source)
    check.that(isinstance(data, dict), "is not a JSON object")
    check.that(data.get("format") == FORMAT,
               f'is not a DifFRACT circuit (its "format" is {data.get("format")!r:.80}, expected {FORMAT!r})')
    version = data.get("version")
    check.that(_is_int(version), '"version" is missing or not an integer')
    check.that(version <= VERSION, f"was written by a newer DifFRACT (circuit version {version}, "
                                   f"this one reads {VERSION}): update the pack")
    check.that(version >= 1, f"has an unknown circuit version {version}")
    unknown = set(data) - {"format", "version", "metadata", "nodes", "edges"}
    check.that(not unknown, f"has unknown top-level keys {sorted(unknown)[:10]}")
    metadata = data.get("metadata")
    check.that(isinstance(metadata, dict), '"metadata" must be an object')
    _check_json_values(metadata, check)
    tokens = check.metadata(metadata)
    try:
        typed_metadata = CircuitMetadata.from_dict(metadata)
    except SettingsError as exc:
        check.that(False, f"has metadata that does not fit: {exc}")
    raw_nodes = data.get("nodes")
    check.that(isinstance(raw_nodes, list) and 0 < len(raw_nodes) <= MAX_NODES,
               f'"nodes" must be a list of 1..{MAX_NODES} nodes')
    edges = data.get("edges")
    check.that(isinstance(edges, dict) and set(edges) == {"source", "target", "weight"},
               '"edges" must be an object with "source", "target" and "weight" lists')
    columns = [edges[name] for name in ("source", "target", "weight")]
    check.that(all(isinstance(column, list) for column in columns), "edge columns must be lists")
    check.that(len({len(column) for column in columns}) == 1, "edge columns have different lengths")
    check.that(len(columns[0]) <= MAX_EDGES, f"has more than {MAX_EDGES} edges")
    positions = sum(len(raw["positions"]) for raw in raw_nodes
                    if isinstance(raw, dict) and isinstance(raw.get("positions"), list))
    check.that(positions <= MAX_TOTAL_POSITIONS,
               f"has {positions} node positions, more than a circuit holds ({MAX_TOTAL_POSITIONS})")
    nodes = [_node_from_dict(raw, i, check, tokens) for i, raw in enumerate(raw_nodes)]
    ids = [node.id for node in nodes]
    check.that(len(set(ids)) == len(ids), "has two nodes with the same id")
    targets = [node for node in nodes if node.kind == "target"]
    check.that(len(targets) == 1, f"must have exactly one target node, has {len(targets)}")
    for name, column in zip(("source", "target"), columns[:2]):
        check.that(all(_is_int(i) and 0 <= i < len(nodes) for i in column),
                   f"edge {name}s must be node indices 0..{len(nodes) - 1}")
    check.that(all(_is_number(w) for w in columns[2]), "edge weights must be finite numbers")
    dtype = {"dtype": torch.long}
    graph = CircuitGraph(
        nodes,
        torch.tensor(columns[0], **dtype),
        torch.tensor(columns[1], **dtype),
        torch.tensor(columns[2], dtype=torch.float64),
        typed_metadata,
    )
    try:
        graph.sparse_adjacency()
    except GraphStructureError as exc:
        check.that(False, str(exc).removeprefix("the graph's "))
    return graph


def _node_from_dict(raw: Any, index: int, check: _Checker, tokens: dict[str, int]) -> CircuitNode:
    where = f"node {index}"
    check.that(isinstance(raw, dict), f"{where} is not an object")
    allowed = {"id", "kind", "step", "stream", "layer", "feature", "value", "positions", "activations", "label"}
    check.that(not set(raw) - allowed, f"{where} has unknown keys {sorted(set(raw) - allowed)[:10]}")
    kind = raw.get("kind")
    check.that(kind in NODE_KINDS, f"{where} has kind {kind!r:.80}, not one of {', '.join(NODE_KINDS)}")
    check.that(_is_int(raw.get("step")) and raw["step"] >= 0, f"{where} needs a step (integer >= 0)")
    stream, layer, feature = raw.get("stream"), raw.get("layer"), raw.get("feature")
    if kind != "bias":
        check.that(stream in STREAMS, f"{where} ({kind}) needs a stream, one of {STREAMS}")
    if kind in ("feature", "target", "error", "rest"):
        check.that(_is_int(layer) and 0 <= layer < 1000, f"{where} ({kind}) needs a layer (integer 0..999)")
    if kind in ("feature", "target"):
        check.that(_is_int(feature) and 0 <= feature < 2**31, f"{where} ({kind}) needs a feature index (integer >= 0)")
    check.that(_is_number(raw.get("value", 0.0)), f"{where} value must be a finite number")
    positions, activations = raw.get("positions", []), raw.get("activations", [])
    check.that(isinstance(positions, list) and isinstance(activations, list)
               and len(positions) == len(activations) <= MAX_POSITIONS,
               f"{where} positions and activations must be lists of equal length")
    limit = tokens.get(stream, 0) if kind != "bias" else 0
    check.that(all(_is_int(p) and 0 <= p < limit for p in positions),
               f"{where} positions must be token indices of its stream, 0..{limit - 1} "
               "(metadata image_tokens / text_tokens)")
    check.that(all(_is_number(a) for a in activations), f"{where} activations must be finite numbers")
    label = raw.get("label", "")
    check.that(isinstance(label, str) and len(label) <= 500,
               f"{where} label must be a string of at most 500 characters")
    node = CircuitNode(
        kind,
        raw["step"],
        stream if kind != "bias" else None,
        layer if kind in ("feature", "target", "error", "rest") else None,
        feature if kind in ("feature", "target") else None,
        float(raw.get("value", 0.0)),
        torch.tensor(positions, dtype=torch.long),
        torch.tensor(activations, dtype=torch.float32),
        label,
    )
    if "id" in raw:
        check.that(raw["id"] == node.id, f"{where} id {raw['id']!r:.120} does not match its fields ({node.id!r})")
    return node


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def that(self, condition: bool, problem: str) -> None:
        if not condition:
            raise CircuitFileError(f"{self.source} {problem}; it cannot be loaded as a circuit")

    def metadata(self, metadata: dict) -> dict[str, int]:
        """Check the fields the pack reads; returns the tokens per stream."""
        self.that(_is_int(metadata.get("step")) and metadata["step"] >= 0, 'metadata needs "step" (integer >= 0)')
        self.that(_is_number(metadata.get("sigma")), 'metadata needs "sigma" (a number)')
        tokens = metadata.get("text_tokens")
        self.that(isinstance(tokens, list) and len(tokens) <= MAX_TEXT_TOKENS
                  and all(isinstance(t, str) for t in tokens),
                  f'metadata needs "text_tokens" (a list of at most {MAX_TEXT_TOKENS} strings)')
        image_tokens = metadata.get("image_tokens")
        self.that(_is_int(image_tokens) and 0 <= image_tokens <= MAX_POSITIONS,
                  f'metadata needs "image_tokens" (integer 0..{MAX_POSITIONS})')
        grid = metadata.get("image_grid")
        self.that(grid is None or (isinstance(grid, list) and len(grid) == 2 and all(_is_int(v) and v > 0 for v in grid)
                                   and grid[0] * grid[1] == image_tokens),
                  'metadata "image_grid" must be null or [rows, cols] with rows * cols = image_tokens')
        return {"img": image_tokens, "txt": len(tokens)}


def _check_json_values(metadata: dict, check: _Checker) -> None:
    """Plain JSON values only, walked without recursion, with bounded depth, count and string sizes."""
    pending: list[tuple[Any, str, int]] = [(metadata, "metadata", 0)]
    values = characters = 0
    while pending:
        value, where, depth = pending.pop()
        values += 1
        check.that(depth <= MAX_METADATA_DEPTH, f"{where} is nested too deeply")
        check.that(values <= MAX_METADATA_VALUES, f"metadata holds more than {MAX_METADATA_VALUES} values")
        if isinstance(value, dict):
            check.that(all(isinstance(key, str) and len(key) <= 100 for key in value),
                       f"{where} has non-string or long keys")
            pending.extend((item, f"{where}.{key}", depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((item, where, depth + 1) for item in value)
        elif isinstance(value, str):
            check.that(len(value) <= MAX_METADATA_STRING,
                       f"{where} is a string of {len(value)} characters, more than {MAX_METADATA_STRING}")
            characters += len(value)
            check.that(characters <= MAX_METADATA_CHARACTERS,
                       f"metadata holds more than {MAX_METADATA_CHARACTERS} characters of text")
        else:
            check.that(value is None or isinstance(value, (bool, int)) or _is_number(value),
                       f"{where} holds a non-JSON value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- circuit-tracer / Neuronpedia ----------------------------------------------------------------


def neuronpedia_graph(graph: CircuitGraph, slug: str, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                      labels: Labels | None = None) -> dict[str, Any]:
    """The graph in the JSON shape of circuit-tracer's `create_graph_files` (metadata, qParams, nodes,
    links). Positions become context columns: text tokens keep theirs, the image is one extra
    column; a node sits at its strongest position. Layers are 1-based rows, "E" the inputs, and the
    target is the "logit" node on top. A feature's `clerp` is its label (see `node_label`), else its
    site and index. The pruned graph is exported."""
    pruned = graph.prune(node_threshold, edge_threshold)
    text_tokens = list(graph.metadata.text_tokens) if graph.metadata is not None else []
    image_column = len(text_tokens)
    prompt_tokens = [*text_tokens, "[image]"]
    top_layer = max((node.layer or 0) for node in graph.nodes) + 2
    exported: dict[int, dict[str, Any]] = {}
    for index in torch.nonzero(pruned.node_mask).flatten().tolist():
        node = graph.nodes[index]
        column = image_column if node.stream == "img" else _strongest_position(node)
        influence = float(pruned.influence[index])
        if node.kind == "feature":
            row = {"node_id": f"{node.layer + 1}_{node.feature}_{column}", "feature": _pair(node),
                   "layer": str(node.layer + 1), "feature_type": "cross layer transcoder",
                   "clerp": node_label(node, labels or {}) or f"{node.stream} L{node.layer} #{node.feature}"}
        elif node.kind in ("error", "rest"):
            row = {"node_id": f"{node.layer + 1}_-{1 if node.kind == 'error' else 2}"
                              f"{'0' if node.stream == 'img' else '1'}_{column}",
                   "feature": -1, "layer": str(node.layer + 1), "feature_type": "mlp reconstruction error",
                   "clerp": node.describe()}
        elif node.kind in ("input", "bias"):
            column = image_column if node.stream == "img" else 0
            tag = "bias" if node.kind == "bias" else node.stream
            row = {"node_id": f"E_{tag}_{column}", "feature": column, "layer": "E", "feature_type": "embedding",
                   "clerp": node.describe()}
        else:
            row = {"node_id": f"{top_layer}_{node.feature}_{column}", "feature": _pair(node), "layer": str(top_layer),
                   "feature_type": "logit", "is_target_logit": True, "token_prob": 1.0,
                   "clerp": f'Target "{node.label or node.feature_spec}" (p=1.000)'}
        row.setdefault("is_target_logit", False)
        row.setdefault("token_prob", 0.0)
        row.update({"ctx_idx": column, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": row["node_id"],
                    "influence": None if node.kind == "target" else influence, "activation": node.value})
        exported[index] = row
    links = [
        {"source": exported[s]["node_id"], "target": exported[t]["node_id"], "weight": w}
        for s, t, w, keep in zip(graph.edge_sources.tolist(), graph.edge_targets.tolist(), graph.edge_weights.tolist(),
                                 pruned.edge_mask.tolist())
        if keep and s in exported and t in exported
    ]
    return {
        "metadata": {"slug": slug, "scan": "diffract-flux", "transcoder_list": [], "prompt_tokens": prompt_tokens,
                     "prompt": " ".join(text_tokens), "node_threshold": node_threshold, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": list(exported.values()),
        "links": links,
    }


def _strongest_position(node: CircuitNode) -> int:
    if len(node.positions) == 0:
        return 0
    return int(node.positions[int(torch.argmax(node.activations.abs()))])


def _pair(node: CircuitNode) -> int:
    """A unique feature number per (stream, layer, feature), as circuit-tracer's Cantor pairing."""
    x = 2 * (node.layer or 0) + (node.stream == "txt")
    y = node.feature or 0
    return (x + y) * (x + y + 1) // 2 + y
