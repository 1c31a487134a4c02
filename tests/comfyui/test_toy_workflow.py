"""The embedded toy in real ComfyUI: example_workflows/toy_trace_and_steer.json, turned into an API
prompt as the frontend does, runs end to end on a CPU-only server with every pack node in it, and
the toy that ComfyUI samples draws what the library's toy draws."""

from __future__ import annotations

import io
import json
import urllib.parse

import numpy as np
import torch
from PIL import Image

from diffract_core.toy.embedded import load_toy
from diffract_core.toy.generate import generate, toy_noise

from .test_server_workflow import FRONTEND_ONLY, _post, _wait

WIDGET_TYPES = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}
MUTED = 2  # LiteGraph's "never" mode: the frontend leaves such nodes out of the prompt


def api_prompt(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt of a UI-format workflow: widget values matched to the widget inputs in
    /object_info's order (a seed's control_after_generate value skipped), links to [node, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["mode"] == MUTED or node["type"] in FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]["input"]
        values = iter(node["widgets_values"])
        inputs = {}
        for section in ("required", "optional"):
            for name, spec in info.get(section, {}).items():
                kind, options = spec[0], spec[1] if len(spec) > 1 else {}
                if isinstance(kind, list) or kind in WIDGET_TYPES:
                    inputs[name] = next(values)
                    if options.get("control_after_generate"):
                        next(values)
        for entry in node["inputs"]:
            if entry["link"] is not None:
                _, source, slot, *_ = links[entry["link"]]
                inputs[entry["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _preview(server, image: dict) -> torch.Tensor:
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                    "type": image["type"]})
    status, body = server.get(f"/view?{query}")
    assert status == 200
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).copy()).float() / 255


def test_the_toy_workflows_run_end_to_end_with_every_pack_node(comfy_server, pack_dir):
    workflow = json.loads((pack_dir / "example_workflows" / "toy_trace_and_steer.json").read_text())
    object_info = comfy_server.get_json("/object_info")
    ours = {name for name in object_info if name.startswith("Diffract") and not name.startswith("DiffractTest")}
    toys = [json.loads(path.read_text())["nodes"] for path in (pack_dir / "example_workflows").glob("toy_*.json")]
    assert ours == {node["type"] for nodes in toys for node in nodes if node["type"].startswith("Diffract")}

    entry = _wait(comfy_server, _post(comfy_server, api_prompt(workflow, object_info)), timeout=300)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    outputs = entry["outputs"]
    titles = {node.get("title"): str(node["id"]) for node in workflow["nodes"]}
    before = _preview(comfy_server, outputs[titles["Before"]]["images"][0])
    after = _preview(comfy_server, outputs[titles["After steering"]]["images"][0])
    assert before.shape == after.shape == (32, 32, 3)
    assert len(outputs[titles["Heatmaps per step"]]["images"]) == 12 * len(
        next(n for n in workflow["nodes"] if n["type"] == "DiffractFeatureHeatmaps")["widgets_values"][0].split())
    assert (comfy_server.run_dir / "output" / "diffract").is_dir()

    # ComfyUI's sampler on the toy: KSampler's seed-0 noise is the library's toy_noise([0]); the
    # simple scheduler rounds FLUX's linear sigmas to 1/1000, hence a tolerance.
    prompt = next(n for n in workflow["nodes"] if n["type"] == "DiffractToyTextEncode")["widgets_values"][0]
    expected = generate(load_toy(), [prompt], toy_noise([0]))[0].permute(1, 2, 0)
    assert float((before - expected).abs().mean()) < 0.01


def test_the_toys_sae_baseline_steers_comfyuis_sampler_like_the_library(comfy_run):
    """Load Transcoders with kind = sae opens the toy's SAEs; Steer Feature on an SAE feature
    changes what ComfyUI's own sampler draws, exactly as the library's SAE steering does, and
    scale 1 changes nothing."""
    proc = comfy_run("""
import torch, harness_boot as hb
import comfy.sample
nodes = hb.PACK.nodes
core = hb.PACK.diffract_core
import importlib
toy_nodes = importlib.import_module(hb.PACK.__name__ + ".nodes.toy_nodes")
embedded = importlib.import_module(hb.PACK.__name__ + ".diffract_core.toy.embedded")
generate = importlib.import_module(hb.PACK.__name__ + ".diffract_core.toy.generate")
recording_mod = importlib.import_module(hb.PACK.__name__ + ".diffract_core.recording")
features_mod = importlib.import_module(hb.PACK.__name__ + ".diffract_core.features")
codec = importlib.import_module(hb.PACK.__name__ + ".diffract_core.toy.codec")
nodes.transcoder_folders.register_transcoder_folder()
(saes,) = nodes.LoadTranscoders.execute("diffract-toy", "img+txt", "all", "auto", "sae").args
model, encoder = toy_nodes.ToyModelLoader.execute("diffract-toy (embedded)").args
prompt = "a blue circle and a red square"
(cond,) = toy_nodes.ToyTextEncode.execute(encoder, prompt).args
latent = torch.zeros(1, 16, 16, 16)

def run(m):
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(m, noise, 12, 1.0, "euler", "simple", cond, cond, latent, seed=0, disable_pbar=True)

toy = embedded.load_toy()
rec = recording_mod.FeatureRecording(sites=(("img", 2),), k=4)
with torch.no_grad():
    generate.generate(toy, [prompt], generate.toy_noise([0]), transcoders=saes, recording=rec)
feature = int(rec.codes(("img", 2), 2).indices[0, :, 0].mode().values)
steer = lambda s: nodes.SteerFeature.execute(model, saes, f"img:2:{feature}", "scale", s, 0.0, 1.0,
                                             "cond+uncond").args[0]
plain = run(model)
same = torch.equal(run(steer(1.0)), plain)
ablated = codec.decode(run(steer(0.0)), raw=True)
spec = recording_mod.SteeringSpec((features_mod.FeatureRef("img", 2, feature),), "ablate")
with torch.no_grad():
    library = generate.generate(toy, [prompt], generate.toy_noise([0]), transcoders=saes, steering=[spec])
    unsteered = generate.generate(toy, [prompt], generate.toy_noise([0]))
hb.emit(dict(kinds=sorted({saes.config(s).kind for s in saes}), sites=len(saes.sites), same=same,
             changed=float((ablated - unsteered).abs().max()), gap=float((ablated - library).abs().mean())))
""")
    r = proc.result
    assert r["kinds"] == ["sae"] and r["sites"] == 8 and r["same"]
    assert r["changed"] > 1e-3
    assert r["gap"] < 0.01  # ComfyUI's simple scheduler rounds the sigmas to 1/1000


def test_the_circuit_analysis_workflow_simplifies_connects_and_reads_heads_through_the_server(comfy_server, pack_dir):
    """example_workflows/toy_circuit_analysis.json posted to a real server: Simplify Circuit, Feature
    Connections and Attention Heads run on the toy and say what they found."""
    workflow = json.loads((pack_dir / "example_workflows" / "toy_circuit_analysis.json").read_text())
    entry = _wait(comfy_server, _post(comfy_server, api_prompt(workflow, comfy_server.get_json("/object_info"))),
                  timeout=300)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    outputs = entry["outputs"]
    ids = {node["type"]: str(node["id"]) for node in workflow["nodes"]}
    (simplified,) = outputs[ids["DiffractSimplifyCircuit"]]["diffract_circuit"]
    preservation = simplified["preservation"]
    assert 1 <= preservation["features"] <= 30 < preservation["traced_features"]
    assert abs(1 - preservation["score"]) <= 0.1  # the node's tolerance
    assert comfy_server.get_json(simplified["url"])["format"] == "diffract-circuit"
    connections = outputs[ids["DiffractFeatureConnections"]]
    (table,) = connections["text"]
    assert "img:3:731" in table and len(connections["images"]) == 1
    assert _preview(comfy_server, connections["images"][0]).shape[-1] == 3
    heads = outputs[ids["DiffractAttentionHeads"]]
    assert len(heads["images"]) == 1
