"""Simplify Circuit through the fake ComfyUI surface: a traced circuit in, a smaller one out with its
measured preservation and supernodes, served to the widget; a call the circuit does not fit refused."""

from __future__ import annotations

from dataclasses import replace

import pytest


@pytest.fixture(scope="module")
def traced(pack, flux, transcoders, sampler):
    import fake_runtime

    patcher = fake_runtime.ModelPatcher(flux)
    model, recording = fake_runtime.run_node(
        pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders, keep_inputs_at_steps="1"
    ).args
    latent = sampler(model)
    graph, _ = fake_runtime.run_node(
        pack.nodes.TraceCircuit, model=model, recording=recording, transcoders=transcoders,
        samples={"samples": latent}, target="img:1:7", step=1, max_feature_nodes=40, faithfulness_checks=0,
    ).args
    return model, recording, graph


def test_simplify_circuit_keeps_few_features_measures_them_and_serves_the_groups(pack, core, traced,
                                                                                  transcoders) -> None:
    import fake_runtime

    model, recording, graph = traced
    output = fake_runtime.run_node(pack.nodes.SimplifyCircuit, model=model, recording=recording,
                                   transcoders=transcoders, circuit=graph, max_features=8, method="influence")
    simplified, picture, preservation = output.args
    metadata = simplified.metadata
    assert metadata.preservation.score == preservation and metadata.preservation.method == "influence"
    assert len(simplified.features()) == metadata.preservation.features <= 8
    assert metadata.preservation.traced_features == len(graph.features())
    assert [size for size, _ in metadata.preservation.curve] == list(range(1, 9))
    assert float(simplified.conservation().max()) < 1e-5 and metadata.supernodes
    assert picture.shape == (1, 768, 1024, 3)
    (payload,) = output.ui["diffract_circuit"]
    assert payload["preservation"]["features"] == metadata.preservation.features
    status, body = pack.nodes.circuit_store.lookup(payload["id"])
    assert status == 200 and body["metadata"]["supernodes"][0]["members"]
    assert body["metadata"]["preservation"]["score"] == pytest.approx(preservation)


def test_a_circuit_of_another_call_is_refused(pack, core, traced, transcoders) -> None:
    import fake_runtime

    model, recording, graph = traced
    with pytest.raises(core.errors.DiffractError, match="batch_index 3 is out of range"):
        fake_runtime.run_node(pack.nodes.SimplifyCircuit, model=model, recording=recording, transcoders=transcoders,
                              circuit=graph, batch_index=3)
    elsewhere = core.attribution.CircuitGraph(graph.nodes, graph.edge_sources, graph.edge_targets,
                                              graph.edge_weights, replace(graph.metadata, step=2))
    with pytest.raises(core.errors.DiffractError, match="did not keep the model inputs of step 2"):
        fake_runtime.run_node(pack.nodes.SimplifyCircuit, model=model, recording=recording, transcoders=transcoders,
                              circuit=elsewhere)
