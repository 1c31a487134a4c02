"""What the web viewers (`web/diffract/`) need from Python: heatmap payloads (token maps quantised to
bytes, base64), text features' token strips, circuit payloads (the graph with its features' atlas
labels and cards) and, for standalone pages such as the demo's report, the viewer's ES modules
joined into one inline script so the page opens offline."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .atlas import Atlas
from .atlas.cards import feature_cards, feature_labels
from .attribution.graph import CircuitGraph
from .attribution.serialize import graph_to_dict
from .errors import DiffractError
from .features import FeatureRef
from .recording import FeatureRecording
from .recording.recording import COND
from .render.heatmaps import Normalize, activation_maps, image_grid_of, normalize_maps, site_codes

ENTRY = "standalone.js"
_PACKAGE = Path(__file__).resolve().parent
# A wheel carries the repository's web/diffract/ as diffract_core/web/ (see pyproject.toml); a checkout
# (ComfyUI's custom_nodes/, pip install -e) has it beside diffract_core.
WEB_LOCATIONS = (_PACKAGE / "web", _PACKAGE.parent / "web" / "diffract")
WEB_MODULES = next((folder for folder in WEB_LOCATIONS if (folder / ENTRY).is_file()), WEB_LOCATIONS[0])
_IMPORT = re.compile(r'^import \{[^}]*\} from "\./(?P<module>[\w-]+\.js)";\n', re.MULTILINE)
_EXPORT = re.compile(r"^export (?=(?:async )?(?:function|class|const|let) )", re.MULTILINE)


def encode_token_map(values: torch.Tensor) -> str:
    """Values in [0, 1] (clamped), any shape, as base64 of one byte each."""
    quantised = (values.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return base64.b64encode(quantised.tobytes()).decode("ascii")


def heatmap_payload(
    recording: FeatureRecording,
    features: Sequence[FeatureRef],
    steps: Sequence[int],
    *,
    image: str | None,
    chunk: int = COND,
    batch_index: int = 0,
    normalize: Normalize = "per_feature",
    opacity: float = 0.6,
    atlas: Atlas | None = None,
) -> dict[str, Any]:
    """The heatmap viewer's data: every (feature, step) map over the image grid, normalised as the
    Feature Heatmaps node does; `image` is a URL or data: URI of the generated image (or None);
    `labels` holds the atlas's labels of the features (none without an atlas)."""
    grid = image_grid_of(recording)
    maps = normalize_maps(activation_maps(recording, features, steps, chunk, batch_index), normalize)
    return {
        "grid": list(grid),
        "image": image,
        "opacity": opacity,
        "maps": [
            {"feature": str(feature), "step": step, "sigma": recording.schedule[step],
             "data": encode_token_map(maps[i, j])}
            for i, feature in enumerate(features)
            for j, step in enumerate(steps)
        ],
        "labels": feature_labels(atlas, features),
    }


def token_strip_payload(
    recording: FeatureRecording,
    rows: Sequence[tuple[FeatureRef, int]],
    *,
    chunk: int = COND,
    batch_index: int = 0,
    token_labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What the Top Features node's token strips show for its text-stream rows: each (feature, step)'s
    activation on every prompt token; `tokens` are the tokens' strings (their positions without a tokenizer)."""
    strips = []
    tokens = 0
    for feature, step in dict.fromkeys(rows):
        indices, values, _ = site_codes(recording, feature.site, step, chunk, batch_index)
        limit = recording.text_tokens or indices.shape[0]
        activation = torch.where(indices[:limit] == feature.index, values[:limit], 0.0).sum(-1)
        tokens = max(tokens, int(activation.shape[0]))
        strips.append({"feature": str(feature), "step": step, "values": [round(float(v), 4) for v in activation]})
    names = [str(token_labels[i]) if token_labels is not None and i < len(token_labels) else f"#{i}"
             for i in range(tokens)]
    return {"tokens": names, "strips": strips}


def circuit_refs(graph: CircuitGraph) -> list[FeatureRef]:
    """The distinct features of a circuit's feature and target nodes."""
    return list(dict.fromkeys(node.ref for node in graph.nodes if node.feature_spec is not None))


def circuit_payload(graph: CircuitGraph, atlas: Atlas | None = None) -> dict[str, Any]:
    """The circuit viewer's data: the graph as `graph_to_dict` writes it, node labels from the atlas,
    and `features`: a card per feature for the hover panel (label, confidence, top examples)."""
    refs = circuit_refs(graph)
    return {**graph_to_dict(graph, feature_labels(atlas, refs)), "features": feature_cards(atlas, refs)}


def check_viewer_files() -> list[Path]:
    """The viewer's modules in dependency order; raises DiffractError if any is missing. Cheap (a few
    small files read), so a long job that ends in a report can call it before it starts working."""
    ordered: list[str] = []
    _visit(ENTRY, ordered, set())
    return [WEB_MODULES / name for name in ordered]


def standalone_script() -> str:
    """The viewer's modules in dependency order as one module script body that mounts every
    `data-diffract-view` element of the page from its `diffract-data` JSON."""
    parts = [_EXPORT.sub("", _IMPORT.sub("", path.read_text(encoding="utf-8"))) for path in check_viewer_files()]
    script = "\n".join(parts) + "\nmountStandalone(document);\n"
    if "</script" in script.lower():
        raise DiffractError("a viewer module contains '</script', which would end the report's inline script")
    return script


def _visit(name: str, ordered: list[str], visiting: set[str]) -> None:
    if name in ordered:
        return
    if name in visiting:
        raise DiffractError(f"the viewer's modules import each other in a cycle through {name}")
    visiting.add(name)
    path = WEB_MODULES / name
    if not path.is_file():
        raise DiffractError(
            f"the viewer's script {name} is not in {WEB_MODULES}: the interactive views need the pack's web/diffract/ "
            "folder (a wheel carries it as diffract_core/web/); run from the pack's checkout, or reinstall the pack "
            "from it with pip install . (or pip install -e .)"
        )
    for match in _IMPORT.finditer(path.read_text(encoding="utf-8")):
        _visit(match["module"], ordered, visiting)
    ordered.append(name)
