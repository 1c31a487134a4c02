"""Fuzzing the loaders of files that come from strangers: a circuit file, a site's config.json and a
release's manifest.json. Any byte string, and any JSON value (valid documents with random parts
replaced or deleted), either loads or raises a DiffractError, within a time and memory bound."""

from __future__ import annotations

import copy
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffract_core.attribution.graph import CircuitGraph, CircuitNode, edge_list
from diffract_core.attribution.metadata import CircuitMetadata, TargetInfo
from diffract_core.attribution.serialize import graph_from_dict, graph_to_dict, load_graph
from diffract_core.errors import DiffractError
from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders.config import TranscoderConfig
from diffract_core.transcoders.native import CONFIG_FILE, MANIFEST_FILE, read_manifest, read_site_config

SECONDS_PER_CASE = 2.0
PYTHON_BYTES_PER_CASE = 32 * 2**20
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _circuit() -> dict[str, Any]:
    nodes = [
        CircuitNode("feature", 0, "img", 0, 3, 2.0, torch.tensor([0, 2]), torch.tensor([1.0, 1.0])),
        CircuitNode("error", 0, "txt", 0, positions=torch.tensor([1]), activations=torch.tensor([0.5])),
        CircuitNode("input", 0, "img"),
        CircuitNode("bias", 0),
        CircuitNode("target", 0, "img", 1, 7, 3.0, torch.tensor([3]), torch.tensor([1.0]), "a label"),
    ]
    graph = CircuitGraph(nodes, *edge_list([(2, 0, 2.0), (0, 4, 2.5), (1, 4, 0.5), (3, 4, 0.1)]))
    graph.metadata = CircuitMetadata(step=0, sigma=0.5, image_grid=(2, 2), text_tokens=("a", "b"), image_tokens=4,
                                     target=TargetInfo("img:1:7", "argmax", "a label", 3.0))
    return graph_to_dict(graph)


CIRCUIT = _circuit()
CONFIG = random_transcoder("img", 2, d_model=8, d_features=16, time_dim=4).config.to_dict()
MANIFEST = {"format": "diffract-transcoder-release", "format_version": 1, "release": {"hub_repo": "a/b"},
            "sites": [{"folder": "transcoder_img_2", "kind": "transcoder", "stream": "img", "layer": 2}]}


def _slots(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON document, found without recursion."""
    slots, pending = [], [document]
    while pending:
        container = pending.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            slots.append((container, key))
            if isinstance(container[key], (dict, list)):
                pending.append(container[key])
    return slots


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    """`document` with one to three parts replaced by arbitrary JSON values or deleted."""
    result = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(result)
        if not slots:
            break
        container, key = slots[draw(st.integers(0, len(slots) - 1))]
        if draw(st.booleans()):
            container[key] = draw(JSON_VALUES)
        elif isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    return result


def _spoiled_text(document: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """The document's JSON text with bytes replaced, inserted or cut."""
    text = json.dumps(document).encode()

    @st.composite
    def spoil(draw: st.DrawFn) -> bytes:
        data = bytearray(text)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data)))
            how = draw(st.sampled_from(["replace", "insert", "cut"]))
            piece = draw(st.binary(min_size=1, max_size=3))
            if how == "replace":
                data[at : at + len(piece)] = piece
            elif how == "insert":
                data[at:at] = piece
            else:
                del data[at:]
        return bytes(data)

    return spoil()


def loads_or_refuses(load: Callable[[], object]) -> None:
    """The property: `load()` returns, or raises a DiffractError, within the time and memory bound."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load()
    except DiffractError:
        pass
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < SECONDS_PER_CASE, f"took {elapsed:.2f} s"
    assert peak < PYTHON_BYTES_PER_CASE, f"allocated {peak / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_the_valid_documents_load(folder: Path) -> None:
    graph = graph_from_dict(copy.deepcopy(CIRCUIT))
    assert len(graph.nodes) == 5 and graph.prune().node_mask.any()
    assert TranscoderConfig.from_dict(copy.deepcopy(CONFIG)).d_features == 16
    (folder / MANIFEST_FILE).write_text(json.dumps(MANIFEST))
    assert read_manifest(folder)["release"] == {"hub_repo": "a/b"}


@FUZZ
@given(st.one_of(st.binary(max_size=3000), _spoiled_text(CIRCUIT)))
def test_circuit_files(folder: Path, data: bytes) -> None:
    path = folder / "circuit.json"
    path.write_bytes(data)
    loads_or_refuses(lambda: load_graph(path))


@FUZZ
@given(st.one_of(mutated(CIRCUIT), JSON_VALUES))
def test_circuit_documents(document: Any) -> None:
    def load_and_use() -> None:
        graph = graph_from_dict(document)
        graph.prune()
        graph.scores()

    loads_or_refuses(load_and_use)


@FUZZ
@given(st.one_of(st.binary(max_size=2000), _spoiled_text(CONFIG)))
def test_site_config_files(folder: Path, data: bytes) -> None:
    site = folder / "transcoder_img_2"
    site.mkdir(exist_ok=True)
    (site / CONFIG_FILE).write_bytes(data)
    loads_or_refuses(lambda: read_site_config(site))


@FUZZ
@given(st.one_of(mutated(CONFIG), JSON_VALUES))
def test_site_config_documents(document: Any) -> None:
    loads_or_refuses(lambda: TranscoderConfig.from_json(json.dumps(document)))


@FUZZ
@given(st.one_of(st.binary(max_size=2000), _spoiled_text(MANIFEST),
                 mutated(MANIFEST).map(lambda d: json.dumps(d).encode())))
def test_manifest_files(folder: Path, data: bytes) -> None:
    root = folder / "release"
    root.mkdir(exist_ok=True)
    (root / MANIFEST_FILE).write_bytes(data)
    loads_or_refuses(lambda: read_manifest(root))
