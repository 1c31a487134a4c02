"""Attribution inside real ComfyUI: the graph traced on ComfyUI's own Flux modules equals the one
traced on the library's reference model with the same weights, and circuits steer the sampler."""

from __future__ import annotations

from .test_nodes_sampling import SETUP

CIRCUIT_SETUP = SETUP + """
import importlib
att = importlib.import_module(hb.PACK.__name__ + ".diffract_core.attribution")
flux_lib = importlib.import_module(hb.PACK.__name__ + ".diffract_core.flux")
circuit_nodes = importlib.import_module(hb.PACK.__name__ + ".nodes.circuit_nodes")
recorded, rec = record(keep_inputs_at_steps="1")
run(recorded)
call = rec.call_inputs(1)
comfy.model_management.load_models_gpu([recorded])
blocks = recorded.get_model_object("diffusion_model").double_blocks
settings = att.TraceSettings(max_feature_nodes=40, batch_size=16)
checked = att.TraceSettings(max_feature_nodes=40, batch_size=16, faithfulness_checks=5)
"""


def test_graph_from_comfyui_modules_equals_the_reference_models(comfy_run):
    proc = comfy_run(CIRCUIT_SETUP + """
spec = att.TargetSpec("img", 1, 5)
from_comfy = att.trace_circuit(blocks, tcs, call, spec, step=1, settings=checked,
                               read_linear=circuit_nodes.read_comfy_linear)
cfg = patcher.model.model_config.unet_config
reference = flux_lib.Flux(flux_lib.FluxConfig(in_channels=64, out_channels=16, vec_in_dim=16, context_in_dim=32,
                                              hidden_size=64, num_heads=2, depth=2, depth_single_blocks=1,
                                              axes_dim=tuple(cfg["axes_dim"])))
missing, unexpected = reference.load_state_dict(patcher.model.diffusion_model.state_dict(), strict=False)
from_reference = att.trace_circuit(reference.double_blocks, tcs, call, spec, step=1, settings=settings)
order = lambda g: torch.argsort(g.edge_targets * 100000 + g.edge_sources)
a, b = from_comfy.edge_weights[order(from_comfy)], from_reference.edge_weights[order(from_reference)]
# the replay matches what ComfyUI's own run recorded at that step
lrm = att.ReplacementModel(blocks, tcs, call, last_layer=1, keep_inputs_of=[0, 1],
                           read_linear=circuit_nodes.read_comfy_linear)
top = tcs[("img", 1)].encode_topk(lrm.mlp_inputs[("img", 1)], call.sigma, 8)
kept = rec.codes(("img", 1), 1)
hb.emit(dict(missing=missing, unexpected=unexpected,
             same_ids=[n.id for n in from_comfy.nodes] == [n.id for n in from_reference.nodes],
             max_diff=float((a - b).abs().max()), scale=float(a.abs().max()),
             residual=from_comfy.metadata.to_dict()["conservation"],
             residual_ref=from_reference.metadata.conservation.max_relative_residual,
             features=len(from_comfy.features()), passes=from_comfy.metadata.to_dict()["passes"],
             faithfulness=from_comfy.metadata.faithfulness.spearman,
             codes_match=bool(torch.equal(top.indices.int(), kept.indices)),
             values_diff=float((top.values.half() - kept.values).abs().max())))
""")
    r = proc.result
    assert r["missing"] == [] and r["unexpected"] == []
    assert r["same_ids"] and r["features"] == 40
    assert r["max_diff"] <= 1e-5 * max(1.0, r["scale"])
    assert r["residual"]["max_relative_residual"] < 1e-5 and r["residual_ref"] < 1e-5
    # the clean replay; the backward passes give the bias; rows in batches of 16 (memory is plentiful)
    assert r["passes"] == {"forward": 1, "backward": 4, "rows_per_pass": 16}
    assert r["codes_match"] and r["values_diff"] < 1e-2
    assert r["faithfulness"] is not None and r["faithfulness"] > 0


def test_steer_circuit_in_comfyuis_sampler(comfy_run):
    proc = comfy_run(CIRCUIT_SETUP + """
graph = att.trace_circuit(blocks, tcs, call, att.TargetSpec("img", 1, 5), step=1, settings=settings,
                          read_linear=circuit_nodes.read_comfy_linear)
trajectory_base = trajectory(patcher)
def steered(**kw):
    options = dict(mode="scale", strength=1.0, nodes="all", steps="traced step", apply_to="cond+uncond")
    options.update(kw)
    return nodes.SteerCircuit.execute(patcher, tcs, graph, **options).args[0]
same = trajectory(steered())
ablated = trajectory(steered(mode="ablate", nodes="top 5"))
hb.emit(dict(same=all(torch.equal(a, b) for a, b in zip(same, trajectory_base)),
             step0=float((ablated[0] - trajectory_base[0]).abs().max()),
             step1=float((ablated[1] - trajectory_base[1]).abs().max())))
""")
    r = proc.result
    assert r["same"]
    assert r["step0"] == 0.0 and r["step1"] > 1e-4  # only the traced step (1) is steered
