"""Where the web widget gets a traced circuit: the node's UI payload carries only a summary and an
opaque id, and `GET /diffract/circuit/{id}` serves the full graph JSON (with its features' atlas
labels and cards, `diffract_core.viewer.circuit_payload`). Ids are random hex
strings checked against a strict pattern and looked up in memory, never turned into paths.

ComfyUI surface used: `server.PromptServer.instance.routes` (an aiohttp RouteTableDef), only when
the server module exists (it does not in CI).
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from typing import Any

from ..diffract_core.atlas import Atlas, feature_labels
from ..diffract_core.attribution import CircuitGraph, node_label
from ..diffract_core.viewer import circuit_payload, circuit_refs

ROUTE = "/diffract/circuit/{circuit_id}"
_ID = re.compile(r"^[0-9a-f]{32}$")
KEEP = 16  # circuits served at once; older ones drop out (re-run Trace Circuit to see them again)

_circuits: OrderedDict[str, tuple[CircuitGraph, Atlas | None]] = OrderedDict()


def publish(graph: CircuitGraph, atlas: Atlas | None = None) -> str:
    """Serve `graph` (with the labels and cards of `atlas`, the transcoders' atlas) under a new id."""
    circuit_id = secrets.token_hex(16)
    _circuits[circuit_id] = (graph, atlas)
    while len(_circuits) > KEEP:
        _circuits.popitem(last=False)
    return circuit_id


def lookup(circuit_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for a request of `circuit_id`."""
    if not _ID.match(circuit_id or ""):
        return 400, {"error": "a circuit id is 32 lowercase hex characters"}
    entry = _circuits.get(circuit_id)
    if entry is None:
        return 404, {"error": f"no circuit {circuit_id} here (the server keeps the last {KEEP}): "
                              "run Trace Circuit again"}
    return 200, circuit_payload(*entry)


def summary(graph: CircuitGraph, circuit_id: str, top: int = 12, atlas: Atlas | None = None) -> dict[str, Any]:
    """The small payload the node shows and the widget starts from."""
    meta = graph.metadata.to_dict() if graph.metadata is not None else {}
    labels = feature_labels(atlas, circuit_refs(graph))
    influence = graph.influence()
    features = sorted(graph.indices("feature"), key=lambda i: -float(influence[i]))[:top]
    return {
        "id": circuit_id,
        "url": ROUTE.format(circuit_id=circuit_id),
        "target": meta.get("target", {}),
        "step": meta.get("step"),
        "nodes": len(graph.nodes),
        "features": len(graph.indices("feature")),
        "edges": int(graph.edge_weights.numel()),
        "scores": meta.get("scores", {}),
        "conservation": meta.get("conservation", {}),
        "passes": meta.get("passes", {}),
        "faithfulness": ({k: meta["faithfulness"][k] for k in ("spearman", "mean_relative_error")}
                         if "faithfulness" in meta else None),
        "top_features": [{"id": graph.nodes[i].id, "feature": graph.nodes[i].feature_spec,
                          "influence": float(influence[i]), "label": node_label(graph.nodes[i], labels)}
                         for i in features],
    }


def register_route() -> bool:
    """Add the GET route to ComfyUI's server; False where there is no server (CI, scripts)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False

    @instance.routes.get(ROUTE)
    async def get_circuit(request: web.Request) -> web.Response:
        status, body = lookup(request.match_info.get("circuit_id", ""))
        return web.json_response(body, status=status)

    return True
