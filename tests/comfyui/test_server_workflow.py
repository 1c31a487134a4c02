"""An API-format workflow posted to a real ComfyUI server runs our nodes end to end; a bad input
stops with a message that says what to change, and the server keeps serving."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from diffract_core.quickstart import write_example_release
from diffract_core.transcoders.convert import convert_release

FRONTEND_ONLY = {"Note"}  # the templates' stage notes: the frontend draws them, the server never sees them


def _workflow(features: str) -> dict:
    return {
        "1": {"class_type": "DiffractTestTinyFlux", "inputs": {"seed": 0}},
        "2": {"class_type": "DiffractLoadTranscoders",
              "inputs": {"release": "tiny", "streams": "img+txt", "layers": "all", "dtype": "auto",
                         "kind": "transcoder"}},
        "3": {"class_type": "DiffractRecordFeatures",
              "inputs": {"model": ["1", 0], "transcoders": ["2", 0], "sites": "all", "top_k": 8, "mode": "observe",
                         "record": "cond", "keep_inputs_at_steps": ""}},
        "4": {"class_type": "DiffractSteerFeature",
              "inputs": {"model": ["3", 0], "transcoders": ["2", 0], "features": features, "mode": "scale",
                         "strength": 2.0, "start_percent": 0.0, "end_percent": 1.0, "apply_to": "cond+uncond"}},
        "5": {"class_type": "DiffractTestConditioning", "inputs": {"seed": 1, "tokens": 8}},
        "6": {"class_type": "DiffractTestConditioning", "inputs": {"seed": 2, "tokens": 8}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["4", 0], "seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                         "scheduler": "simple", "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0],
                         "denoise": 1.0}},
        "9": {"class_type": "DiffractTestLatentToImage", "inputs": {"samples": ["8", 0]}},
        "10": {"class_type": "DiffractFeatureHeatmaps",
               "inputs": {"recording": ["3", 1], "image": ["9", 0], "features": "img:1:3 img:0:5", "steps": "all",
                          "opacity": 0.6, "normalize": "per_feature", "chunk": "cond", "batch_index": 0}},
        "11": {"class_type": "DiffractTopFeatures",
               "inputs": {"recording": ["3", 1], "samples": ["8", 0], "streams": "img+txt", "layers": "all",
                          "steps": "all", "rows": 10, "chunk": "cond", "batch_index": 0}},
    }


def _post(server, prompt: dict) -> str:
    body = json.dumps({"prompt": prompt, "client_id": "diffract-tests"}).encode()
    request = urllib.request.Request(server.url + "/prompt", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["prompt_id"]


def _wait(server, prompt_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get_json(f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        if prompt_id in history and history[prompt_id].get("status", {}).get("status_str") == "error":
            return history[prompt_id]
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout}s\n{server.log()[-4000:]}")


@pytest.fixture(scope="module")
def tiny_release(comfy_server, tmp_path_factory) -> Path:
    made = tmp_path_factory.mktemp("release")
    write_example_release(made, layers=(0, 1), kinds=("transcoder",), d_model=64, d_features=64)
    dest = comfy_server.models_dir / "transcoders" / "tiny"
    convert_release(made, dest)
    return dest


def test_api_workflow_runs_our_nodes_end_to_end(comfy_server, tiny_release):
    entry = _wait(comfy_server, _post(comfy_server, _workflow("img:1:3")))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    outputs = entry["outputs"]
    heatmaps = outputs["10"]
    assert len(heatmaps["diffract_heatmaps"][0]["viewer"]["maps"]) == 8  # 2 features x 4 steps
    assert heatmaps["diffract_heatmaps"][0]["sigmas"] == [1.0, 0.75, 0.5, 0.25]
    top = outputs["11"]
    rows = top["diffract_top_features"][0]["rows"]
    assert len(rows) == 10 and top["text"][0].startswith("feature")
    assert {row["feature"].split(":")[0] for row in rows} <= {"img", "txt"}


def test_a_bad_feature_stops_the_node_with_the_fix_and_the_server_keeps_serving(comfy_server, tiny_release):
    entry = _wait(comfy_server, _post(comfy_server, _workflow("img:1:64")))
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "DiffractSteerFeature"
    assert "feature img:1:64 is out of range" in error["exception_message"]
    assert "0..63" in error["exception_message"]
    assert comfy_server.alive() and "KSampler" in comfy_server.get_json("/object_info")
    again = _wait(comfy_server, _post(comfy_server, _workflow("img:1:4")))
    assert again["status"]["status_str"] == "success"


def test_example_workflows_are_templates_that_fit_the_servers_nodes(comfy_server, pack_dir):
    """Every template is listed by /workflow_templates, and each node's widget values fit the
    server's own /object_info (core nodes included), so the template opens without errors."""
    templates = comfy_server.get_json("/workflow_templates")
    names = sorted(p.stem for p in (pack_dir / "example_workflows").glob("*.json"))
    assert sorted(templates["diffract_comfyui"]) == names
    object_info = comfy_server.get_json("/object_info")
    widget_types = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}
    for name in names:
        workflow = json.loads((pack_dir / "example_workflows" / f"{name}.json").read_text())
        for node in workflow["nodes"]:
            if node["type"] in FRONTEND_ONLY:
                continue
            info = object_info[node["type"]]["input"]
            count = 0
            for section in ("required", "optional"):
                for spec in info.get(section, {}).values():
                    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
                    if isinstance(kind, list) or kind in widget_types:
                        count += 1 + bool(options.get("control_after_generate"))
            assert len(node["widgets_values"]) == count, (name, node["type"])


def _circuit_workflow() -> dict:
    workflow = _workflow("img:1:3")
    workflow["3"]["inputs"]["keep_inputs_at_steps"] = "1"
    workflow["12"] = {"class_type": "DiffractTraceCircuit",
                      "inputs": {"model": ["3", 0], "recording": ["3", 1], "transcoders": ["2", 0], "samples": ["8", 0],
                                 "target": "img:1:3", "target_mode": "argmax", "position": 0, "step": 1,
                                 "chunk": "cond", "batch_index": 0, "max_feature_nodes": 20, "node_threshold": 0.8,
                                 "edge_threshold": 0.98, "batch_size": 16, "max_active": 32, "faithfulness_checks": 3,
                                 "prompt": ""}}
    workflow["13"] = {"class_type": "DiffractSaveCircuit",
                      "inputs": {"circuit": ["12", 0], "filename_prefix": "diffract/test", "format": "diffract"}}
    workflow["14"] = {"class_type": "DiffractSteerCircuit",
                      "inputs": {"model": ["3", 0], "transcoders": ["2", 0], "circuit": ["12", 0], "mode": "ablate",
                                 "strength": 0.0, "nodes": "top 5", "steps": "traced step", "apply_to": "cond+uncond"}}
    workflow["15"] = dict(workflow["8"], inputs=dict(workflow["8"]["inputs"], model=["14", 0]))
    workflow["16"] = {"class_type": "DiffractTestLatentToImage", "inputs": {"samples": ["15", 0]}}
    return workflow


def test_trace_save_and_steer_a_circuit_through_the_server(comfy_server, tiny_release):
    entry = _wait(comfy_server, _post(comfy_server, _circuit_workflow()))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    outputs = entry["outputs"]
    (payload,) = outputs["12"]["diffract_circuit"]
    assert payload["target"]["feature"] == "img:1:3" and payload["features"] <= 20
    assert payload["conservation"]["max_relative_residual"] < 1e-5
    assert "images" not in outputs["12"], "no in-node preview: the widget shows the circuit, the picture is an output"
    graph = comfy_server.get_json(payload["url"])
    assert graph["format"] == "diffract-circuit" and len(graph["nodes"]) == payload["nodes"]
    (saved,) = outputs["13"]["text"]
    assert saved.startswith("diffract/test_") and (comfy_server.run_dir / "output" / saved).is_file()
    assert comfy_server.get("/diffract/circuit/" + "0" * 32)[0] == 404
    assert comfy_server.get("/diffract/circuit/not-an-id")[0] == 400
    assert comfy_server.get("/diffract/circuit/..%2F..%2Fetc%2Fpasswd")[0] in (400, 404)
    assert comfy_server.alive()


def _post_free(server, **flags: bool) -> None:
    request = urllib.request.Request(server.url + "/free", json.dumps(flags).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _sites_loaded_by(server, workflow: dict) -> int:
    """Run a workflow; how many transcoder sites ComfyUI's model management loaded for it (its log
    says "Requested to load TranscoderSite" once per site it had to load)."""
    before = server.log().count("Requested to load TranscoderSite")
    entry = _wait(server, _post(server, workflow))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    return server.log().count("Requested to load TranscoderSite") - before


def test_free_with_unload_releases_the_transcoders_and_the_next_run_loads_them_again(comfy_server, tiny_release):
    """The transcoders are ComfyUI-managed models: loaded with the sampler's model, kept loaded between
    runs, released by the server's /free route with unload_models, and loaded again by the next run."""
    workflow = _workflow("img:1:3")
    runs = []
    for seed in (11, 12):  # a new seed each run, so ComfyUI samples again instead of reusing its cache
        workflow["8"]["inputs"]["seed"] = seed
        runs.append(_sites_loaded_by(comfy_server, workflow))
    _post_free(comfy_server, unload_models=True)
    workflow["8"]["inputs"]["seed"] = 13
    runs.append(_sites_loaded_by(comfy_server, workflow))
    sites = 4  # img and txt at layers 0 and 1
    assert runs in ([sites, 0, sites], [0, 0, sites]), runs  # the first run may find them loaded by an earlier test
