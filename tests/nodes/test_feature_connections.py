"""Feature Connections through the fake ComfyUI surface: the library's virtual weights as a table
and a chart, vec from the conditioning, atlas labels on the toy, and refusals."""

from __future__ import annotations

import importlib

import pytest
import torch


@pytest.fixture(scope="module")
def connections_module(pack):
    return importlib.import_module("diffract_pack.nodes.feature_connections")


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()[3:]]


def test_the_table_holds_the_librarys_strongest_weights_for_the_conditionings_vec(
        connections_module, core, patcher, transcoders, flux) -> None:
    import fake_runtime

    modulation_module = importlib.import_module("diffract_pack.diffract_core.attribution.modulation")
    connections = importlib.import_module("diffract_pack.diffract_core.attribution.connections")
    pooled = torch.randn(1, flux.config.vec_in_dim, generator=torch.Generator().manual_seed(5))
    conditioning = [[torch.zeros(1, 5, flux.config.context_in_dim), {"pooled_output": pooled}]]
    output = fake_runtime.run_node(connections_module.FeatureConnections, transcoders=transcoders, model=patcher,
                                   feature="img:0:5", sigma=0.5, top_k=4, conditioning=conditioning)
    table, chart = output.args
    vec = modulation_module.conditioning_vector(flux, 0.5, pooled)
    modulation = modulation_module.ResidualModulation.from_blocks(flux.double_blocks, vec)
    source = core.features.FeatureRef("img", 0, 5)
    expected = connections.VirtualWeights(transcoders, modulation, 0.5).strongest(source, 4)
    assert not expected.upstream and len(expected.downstream) == 4
    assert _rows(table) == [["downstream", str(c.target), f"{c.weight:+.4g}"] for c in expected.downstream]
    assert table.splitlines()[0].startswith("virtual weights of img:0:5 at sigma 0.5")
    assert output.ui["text"] == [table] and len(output.ui["images"]) == 1
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and 0.0 <= float(chart.min()) < float(chart.max()) <= 1.0
    unconditioned = fake_runtime.run_node(connections_module.FeatureConnections, transcoders=transcoders, model=patcher,
                                          feature="img:0:5", sigma=0.5, top_k=4).args[0]
    assert _rows(unconditioned) != _rows(table), "the pooled vector moves vec, and so the gates and scales"


def test_on_the_toy_both_sides_are_listed_with_atlas_labels(connections_module, core) -> None:
    import fake_runtime

    model, _ = fake_runtime.run_node(importlib.import_module("diffract_pack.nodes.toy_nodes").ToyModelLoader).args
    transcoders = importlib.import_module("diffract_pack.diffract_core.toy.embedded").open_toy_transcoders()
    atlas = transcoders.atlas
    labelled = next(index for index, label in atlas.labels(("img", 2)).items() if label.describes)
    table, chart = fake_runtime.run_node(connections_module.FeatureConnections, transcoders=transcoders, model=model,
                                         feature=f"img:2:{labelled}", sigma=0.75, top_k=6).args
    lines = table.splitlines()
    assert lines[1].split() == ["direction", "feature", "virtual", "weight", "label"]
    rows = [line.split() for line in lines[3:]]
    assert [row[0] for row in rows] == ["upstream"] * 6 + ["downstream"] * 6
    assert {row[1].rsplit(":", 1)[0] for row in rows[:6]} <= {"img:0", "img:1"}
    assert {row[1].rsplit(":", 1)[0] for row in rows[6:]} == {"img:3"}
    weights = [abs(float(row[2])) for row in rows]
    assert weights[:6] == sorted(weights[:6], reverse=True) and weights[6:] == sorted(weights[6:], reverse=True)
    refs = [core.features.FeatureRef(*_ref(row[1])) for row in rows]
    labels = importlib.import_module("diffract_pack.diffract_core.atlas").feature_labels(atlas, refs)
    assert len(labels) >= 3, "the toy's atlas labels most of its features"
    for line, row in zip(lines[3:], rows):
        assert line.endswith(labels.get(row[1], "-"))
    assert chart.shape[1] > 12 * 6 and chart.shape[2] == 720


def _ref(spec: str) -> tuple[str, int, int]:
    stream, layer, index = spec.split(":")
    return stream, int(layer), int(index)


def test_one_feature_of_a_held_site_is_asked_for(connections_module, core, patcher, transcoders) -> None:
    import fake_runtime

    run = lambda feature: fake_runtime.run_node(connections_module.FeatureConnections, transcoders=transcoders,
                                                model=patcher, feature=feature, sigma=0.5, top_k=3)
    with pytest.raises(core.errors.FeatureSpecError, match="give one feature, not 2"):
        run("img:0:1 img:1:2")
    with pytest.raises(core.errors.FeatureIndexError, match="img:0:96 is out of range"):
        run("img:0:96")
    with pytest.raises(core.errors.SiteNotLoadedError, match="no transcoder for site img:5"):
        run("img:5:0")
