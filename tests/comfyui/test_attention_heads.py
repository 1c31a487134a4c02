"""Attention Heads inside real ComfyUI: the node's statistics equal those of the queries and keys
ComfyUI's own attention received, and its replayed ablation of a head equals zeroing that head in
ComfyUI's sampler through transformer_options["optimized_attention_override"] (the mechanism
ComfyUI offers for attention, comfy/ldm/modules/attention.py `wrap_attn`)."""

from __future__ import annotations

from .test_nodes_sampling import SETUP

HEADS_SETUP = SETUP + """
import importlib, json
heads_lib = importlib.import_module(hb.PACK.__name__ + ".diffract_core.heads")
features_lib = importlib.import_module(hb.PACK.__name__ + ".diffract_core.features")
node = nodes.AttentionHeads.PREPARE_CLASS_CLONE(None)  # as ComfyUI's executor calls a node, without a node id

def with_override(model, override):
    clone = model.clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    return clone
"""


def test_statistics_equal_those_of_the_attention_comfyui_ran(comfy_run):
    proc = comfy_run(HEADS_SETUP + """
ran = []
def spy(func, *args, **kwargs):  # (ComfyUI's attention function, its arguments): q, k after RoPE, [B, H, L, d]
    options = kwargs["transformer_options"]
    if options.get("block_type") == "double":
        ran.append((float(options["sigmas"][0]), options["block_index"], args[0].clone(), args[1].clone()))
    return func(*args, **kwargs)
recorded, rec = record(keep_inputs_at_steps="1, 2")
out = run(with_override(recorded, spy))
data = json.loads(node.execute(recorded, rec, {"samples": out}, metric="entropy", steps="all", chunk="cond",
                               batch_index=0).args[1])
worst = 0.0
for s, sigma in enumerate(data["sigmas"]):
    for _, layer, q, k in [r for r in ran if r[0] == sigma]:
        expected = heads_lib.layer_head_stats(q.float(), k.float(), 8, (8, 12))
        for name in heads_lib.METRICS:
            got = torch.tensor(data["metrics"][name][s][layer], dtype=torch.float64)
            scale = expected.values[name].abs().clamp(min=1e-3)
            worst = max(worst, float(((got - expected.values[name]).abs() / scale).max()))
hb.emit(dict(steps=data["steps"], sigmas=data["sigmas"], calls=len(ran), worst=worst))
""")
    r = proc.result
    assert r["steps"] == [1, 2] and r["sigmas"] == [0.75, 0.5] and r["calls"] == 8  # 4 steps x 2 double blocks
    assert r["worst"] < 1e-4


def test_replayed_ablation_equals_zeroing_the_head_in_comfyuis_sampler(comfy_run):
    proc = comfy_run(HEADS_SETUP + """
def zeroing(layer, head):  # an override that zeroes one head at the step of sigma 0.75 only
    def zero_head(func, *args, **kwargs):
        out = func(*args, **kwargs)
        options = kwargs["transformer_options"]
        if (options.get("block_type") == "double" and options["block_index"] == layer
                and float(options["sigmas"][0]) == 0.75):
            out = out.clone()
            width = out.shape[-1] // 2
            out[..., head * width : (head + 1) * width] = 0
        return out
    return zero_head

def feature_total(model):  # the feature summed over the image tokens of the step-1 call (sigma 0.75), in fp32;
    # measured before any patched clone loads, so the hooked MLP is FLUX's own
    inputs = []
    mlp = patcher.model.diffusion_model.double_blocks[1].img_mlp
    hook = mlp.register_forward_pre_hook(lambda _module, args: inputs.append(args[0].detach().clone()))
    try:
        run(model)
    finally:
        hook.remove()
    with torch.no_grad():
        return float(tcs[("img", 1)].feature_activation(inputs[1].float(), 0.75, [5]).double().sum())

clean = feature_total(patcher.clone())
ablated = {(layer, head): feature_total(with_override(patcher, zeroing(layer, head))) for layer in (0, 1)
           for head in (0, 1)}
recorded, rec = record(keep_inputs_at_steps="1")
out = run(recorded)
data = json.loads(node.execute(recorded, rec, {"samples": out}, metric="feature_effect", steps="1", chunk="cond",
                               batch_index=0, feature="img:1:5", transcoders=tcs).args[1])
step = data["feature_ablation"]["steps"][0]
hb.emit(dict(clean=clean, node_clean=step["clean"], effects={f"{a}:{b}": v - clean for (a, b), v in ablated.items()},
             node_effects={f"{a}:{b}": step["effect"][a][b] for a in (0, 1) for b in (0, 1)}))
""")
    r = proc.result
    scale = max(1.0, abs(r["clean"]))
    assert abs(r["node_clean"] - r["clean"]) <= 1e-5 * scale
    assert max(abs(effect) for effect in r["effects"].values()) > 1e-2, "some head matters to the feature"
    for head, effect in r["effects"].items():
        assert abs(r["node_effects"][head] - effect) <= 1e-5 * scale, head
