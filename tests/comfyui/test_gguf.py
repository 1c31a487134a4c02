"""Our nodes on a FLUX loaded by city96's ComfyUI-GGUF, whose ops dequantise Q8_0 weights on the fly.

Opt-in twice over: besides COMFYUI_DIR/COMFYUI_PYTHON, COMFYUI_GGUF_DIR must name a ComfyUI-GGUF
source tree, and its `gguf` package must be installed in COMFYUI_PYTHON's environment (README.md here).
The tiny FLUX of test_nodes_sampling.py is written as a GGUF file the way ComfyUI-GGUF's
tools/convert.py writes one (arch "flux"; 1-D and small tensors F32), with the 2-D weights quantised
to Q8_0, then loaded by ComfyUI-GGUF's own Unet Loader (GGUF) node from a models folder registered
for the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .test_nodes_sampling import SETUP

GGUF_DIR = os.path.abspath(os.environ["COMFYUI_GGUF_DIR"]) if os.environ.get("COMFYUI_GGUF_DIR") else ""

pytestmark = pytest.mark.skipif(
    not GGUF_DIR,
    reason="GGUF tests are opt-in: set COMFYUI_GGUF_DIR to a ComfyUI-GGUF source tree (tests/comfyui/README.md)",
)

GGUF_SETUP = SETUP + """
import asyncio, os, sys, traceback
import gguf, comfy.model_detection, comfy.model_patcher, comfy.supported_models, folder_paths
import nodes as comfy_nodes

GGUF_DIR, MODELS = os.environ["COMFYUI_GGUF_DIR"], os.environ["GGUF_MODELS_DIR"]
FILE = "tiny_flux_q8_0.gguf"
Q = gguf.GGMLQuantizationType

def quant_type(weight):
    # tools/convert.py keeps 1-D and small (<= 1024 values) tensors in F32; Q8_0 needs rows of whole blocks
    if weight.ndim == 1 or weight.numel() <= 1024:
        return Q.F32
    return Q.Q8_0 if weight.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0 else Q.F16

def write_gguf(state_dict, path):
    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    counts = {}
    for key, weight in state_dict.items():
        kind = quant_type(weight)
        writer.add_tensor(key, gguf.quants.quantize(weight.float().numpy(), kind), raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts

detect_unet_config = comfy.model_detection.detect_unet_config

def tiny_detect(*args, **kwargs):
    # ComfyUI's FLUX detection hard-codes FLUX.1's 24 heads of 128 channels; the rest it reads from the file
    config = detect_unet_config(*args, **kwargs)
    heads = patcher.model.model_config.unet_config["num_heads"]
    config.update(num_heads=heads, axes_dim=tiny_flux.default_axes_dim(config["hidden_size"] // heads))
    return config

comfy.model_detection.detect_unet_config = tiny_detect
quant_counts = write_gguf(patcher.model.diffusion_model.state_dict(), os.path.join(MODELS, FILE))
folder_paths.add_model_folder_path("diffusion_models", MODELS)
if not asyncio.run(comfy_nodes.load_custom_node(GGUF_DIR, set(comfy_nodes.NODE_CLASS_MAPPINGS))):
    sys.exit(f"ComfyUI-GGUF at {GGUF_DIR} failed to load (see the log above)")
gguf_pack = sys.modules[GGUF_DIR.replace(".", "_x_")]
plain = patcher
(patcher,) = comfy_nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(FILE)  # record() and steer() use it

def dequantised_twin():
    # a plain ComfyUI FLUX holding the GGUF file's weights as ComfyUI-GGUF dequantises them
    weights = {k: gguf_pack.dequant.dequantize_tensor(v, torch.float32)
               for k, v in gguf_pack.loader.gguf_sd_loader(os.path.join(MODELS, FILE)).items()}
    config = comfy.supported_models.FluxSchnell(patcher.model.model_config.unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    model.load_model_weights(weights, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=patcher.load_device,
                                            offload_device=patcher.offload_device)
"""


@pytest.fixture
def gguf_run(comfy_run, tmp_path):
    """comfy_run for snippets that start from GGUF_SETUP's GGUF-loaded tiny FLUX (`patcher`)."""
    if not Path(GGUF_DIR, "nodes.py").is_file() or not Path(GGUF_DIR, "loader.py").is_file():
        pytest.fail(f"COMFYUI_GGUF_DIR={GGUF_DIR!r} is not a ComfyUI-GGUF source tree (no nodes.py/loader.py)")

    def run(snippet: str):
        return comfy_run(GGUF_SETUP + snippet, env={"COMFYUI_GGUF_DIR": GGUF_DIR, "GGUF_MODELS_DIR": str(tmp_path)})
    return run


def test_record_and_steer_through_gguf_ops(gguf_run):
    """The GGUF model really computes with dequantised Q8_0 MLPs; observe mode records bit-identically,
    replace mode equals it within 1e-5, the unpatched GGUF model is untouched afterwards, and steering
    works in delta form (scale 1 bit-identical, ablation changes the image)."""
    proc = gguf_run("""
base = run(patcher)
observed, rec = record()
replaced, _ = record(mode="replace")
mlp_weight = patcher.model.diffusion_model.double_blocks[1].img_mlp[0].weight
hb.emit(dict(counts=quant_counts, patcher=type(patcher).__name__,
             mlp_weight=[type(mlp_weight).__name__, mlp_weight.tensor_type.name],
             quantised=float((run(plain) - base).abs().max()),
             same=torch.equal(run(observed), base), complete=rec.complete, steps=rec.steps,
             sites=sorted("{}:{}".format(*site) for site in rec.sites), records=len(rec.records),
             rel=float((run(replaced) - base).abs().max() / base.abs().max()),
             again=torch.equal(run(patcher), base),
             unit=torch.equal(run(steer(patcher, mode="scale", strength=1.0)), base),
             ablated=float((run(steer(patcher)) - base).abs().max())))
""")
    r = proc.result
    assert r["patcher"] == "GGUFModelPatcher" and r["mlp_weight"] == ["GGMLTensor", "Q8_0"]
    assert r["counts"]["Q8_0"] > 0 and r["counts"]["F32"] > 0, r["counts"]
    assert r["quantised"] > 0, "the GGUF model samples exactly like the fp32 one: nothing was quantised"
    assert r["same"] and r["again"] and r["complete"] and r["steps"] == [0, 1, 2, 3]
    assert r["sites"] == ["img:0", "img:1", "txt:0", "txt:1"] and r["records"] == 16
    assert r["rel"] <= 1e-5
    assert r["unit"] and r["ablated"] > 1e-3


def test_trace_circuit_through_gguf_ops(gguf_run):
    """Trace Circuit on the GGUF model traces the graph of its dequantised twin (a plain FLUX with
    the weights ComfyUI-GGUF computes with), conserving as the non-GGUF graph does."""
    proc = gguf_run("""
import importlib
att = importlib.import_module(hb.PACK.__name__ + ".diffract_core.attribution")
circuit_nodes = importlib.import_module(hb.PACK.__name__ + ".nodes.circuit_nodes")
recorded, rec = record(keep_inputs_at_steps="1")
base = run(recorded)
twin = dequantised_twin()
result = dict(twin_same=torch.equal(run(twin), base))
trace = nodes.TraceCircuit.PREPARE_CLASS_CLONE(None)  # as ComfyUI's executor calls a node, without a node id
try:
    graph = trace.execute(recorded, rec, tcs, {"samples": base}, target="img:1:5", target_mode="argmax", position=0,
                          step=1, chunk="cond", batch_index=0, max_feature_nodes=40, node_threshold=0.8,
                          edge_threshold=0.98, batch_size=16, max_active=128, faithfulness_checks=5).args[0]
except Exception as exc:
    frame = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(hb.PACK_PATH)][-1]
    result.update(error=f"{type(exc).__name__}: {exc}", where=f"{frame.filename}:{frame.lineno} {frame.name}")
else:
    reference = att.trace_circuit(twin.model.diffusion_model.double_blocks, tcs, rec.call_inputs(1).row(0),
                                  att.TargetSpec("img", 1, 5), step=1,
                                  settings=att.TraceSettings(max_feature_nodes=40, batch_size=16),
                                  read_linear=circuit_nodes.read_comfy_linear)
    order = lambda g: torch.argsort(g.edge_targets * 100000 + g.edge_sources)
    a, b = graph.edge_weights[order(graph)], reference.edge_weights[order(reference)]
    result.update(same_ids=[n.id for n in graph.nodes] == [n.id for n in reference.nodes],
                  max_diff=float((a - b).abs().max()), scale=float(a.abs().max()),
                  residual=graph.require_metadata().conservation.max_relative_residual,
                  residual_ref=reference.require_metadata().conservation.max_relative_residual)
hb.emit(result)
""")
    r = proc.result
    assert r["twin_same"], "the dequantised twin does not sample like the GGUF model: the reference is wrong"
    assert "error" not in r, f"Trace Circuit failed at {r['where']}: {r['error']}"
    assert r["same_ids"] and r["max_diff"] <= 1e-5 * max(1.0, r["scale"]), r
    assert r["residual"] < 1e-5 and r["residual_ref"] < 1e-5, r
