"""Our nodes inside real ComfyUI, on a tiny random FLUX sampled by ComfyUI's own sampler."""

from __future__ import annotations

SETUP = """
import torch, tiny_flux, harness_boot as hb
import comfy.model_management, comfy.sample
nodes = hb.PACK.nodes
patcher = tiny_flux.build(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=1, context_in_dim=32, vec_in_dim=16)
tcs = tiny_flux.transcoders(hb.PACK, patcher)
latent = torch.zeros(1, 16, 16, 24)  # 128x192 px: an 8x12 grid of image tokens

def run(model, steps=4, cfg=1.0, callback=None):
    pos = tiny_flux.conditioning(model, seed=1)
    neg = tiny_flux.conditioning(model, seed=2)
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=0,
                               disable_pbar=True, callback=callback)

def trajectory(model, **kw):
    seen = []
    run(model, callback=lambda step, x0, x, total: seen.append(x0.clone()), **kw)  # x0: the step's prediction
    return seen

def record(**kw):
    settings = dict(sites="all", top_k=8, mode="observe", record="cond", keep_inputs_at_steps="")
    settings.update(kw)
    return nodes.RecordFeatures.execute(patcher, tcs, **settings).args

def steer(model, **kw):
    settings = dict(features="img:0:3 img:1:5 img:1:40", mode="ablate", strength=1.0, start_percent=0.0,
                    end_percent=1.0, apply_to="cond+uncond")
    settings.update(kw)
    return nodes.SteerFeature.execute(model, tcs, **settings).args[0]
"""


def test_record_modes_and_sigma_keys(comfy_run):
    """observe is bit-identical, replace equal within 1e-5, replace_without_error visibly not; a
    4-step schnell run is keyed by its sigmas; the unpatched model afterwards gives the original."""
    proc = comfy_run(SETUP + """
base = run(patcher)
observed, rec = record()
same = torch.equal(run(observed), base)
replaced, _ = record(mode="replace")
spliced, _ = record(mode="replace_without_error")
rel = float((run(replaced) - base).abs().max() / base.abs().max())
spliced_diff = float((run(spliced) - base).abs().max())
again = torch.equal(run(patcher), base)
both_model, both = record(record="cond+uncond")
run(both_model, cfg=2.0)
hb.emit(dict(same=same, rel=rel, spliced=spliced_diff, again=again, complete=rec.complete, steps=rec.steps,
             sigmas=sorted({k.sigma for k in rec.records}), schedule=list(rec.schedule), grid=list(rec.image_grid),
             text=rec.text_tokens, chunks=sorted({k.chunk for k in both.records}),
             calls=len(both.records[next(iter(both.records))])))
""")
    r = proc.result
    assert r["same"] and r["again"] and r["complete"]
    assert r["rel"] <= 1e-5 and r["spliced"] > 1e-3
    assert r["schedule"] == [1.0, 0.75, 0.5, 0.25, 0.0] and r["sigmas"] == [0.25, 0.5, 0.75, 1.0]
    assert r["steps"] == [0, 1, 2, 3] and r["grid"] == [8, 12] and r["text"] == 8
    assert r["chunks"] == [0, 1] and r["calls"] == 1


def test_steering_window_mask_and_chaining(comfy_run):
    proc = comfy_run(SETUP + """
base = trajectory(patcher)
base_out = run(patcher)
late = trajectory(steer(patcher, mode="scale", strength=8.0, start_percent=0.5))
unmasked = run(steer(patcher))
nothing = run(steer(patcher, mask=torch.zeros(1, 128, 192)))
everything = run(steer(patcher, mask=torch.ones(1, 128, 192)))
left = torch.zeros(1, 128, 192); left[..., :96] = 1
masked_model = steer(patcher, mode="scale", strength=8.0, mask=left)
first = trajectory(masked_model)[0]
ref_first = base[0]
changed = (first - ref_first).abs().amax(dim=(0, 1))  # [16, 24] latent pixels
chained = run(steer(steer(patcher, features="img:0:3"), features="img:1:5 img:1:40"))
hb.emit(dict(before_window=[torch.equal(late[i], base[i]) for i in range(4)],
             unmasked=not torch.equal(unmasked, base_out),
             nothing=torch.equal(nothing, base_out), everything=torch.equal(everything, unmasked),
             left=float(changed[:, :12].max()), right=float(changed[:, 12:].max()),
             chained=float((chained - unmasked).abs().max())))
""")
    r = proc.result
    assert r["before_window"] == [True, True, False, False], "only steps with sigma <= 0.5 are steered"
    assert r["unmasked"] and r["nothing"] and r["everything"]
    assert r["chained"] <= 1e-5
    assert r["left"] > 0 and r["left"] > 10 * r["right"], r


def test_interrupt_leaves_everything_clean(comfy_run):
    proc = comfy_run(SETUP + """
base = run(patcher)
model, rec = record()
def interrupt(step, x0, x, total):
    if step == 1:
        comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()
try:
    run(model, callback=interrupt)
    raised = False
except comfy.model_management.InterruptProcessingException:
    raised = True
state = model.model_options["transformer_options"]["diffract"]
after = torch.equal(run(patcher), base)
mlp = patcher.model.diffusion_model.double_blocks[0].img_mlp
hb.emit(dict(raised=raised, complete=rec.complete, steps=rec.steps, sigmas_cleared=state.context.sigmas is None,
             after=after, original_mlp=type(mlp).__name__, rerun_same=torch.equal(run(model), base),
             complete_after_rerun=rec.complete))
""")
    r = proc.result
    assert r["raised"] and not r["complete"] and r["steps"] == [0, 1] and r["sigmas_cleared"]
    assert r["after"] and r["original_mlp"] == "Sequential"
    assert r["rerun_same"] and r["complete_after_rerun"]


def test_lora_patched_and_low_precision_models(comfy_run):
    """A LoRA-style weight patch on a patched MLP still applies (the patch keeps the parameter
    names), and bf16, fp16 and fp8 (bf16 compute) FLUX weights record bit-identically and steer."""
    proc = comfy_run(SETUP + """
import comfy.model_patcher, comfy.supported_models
lora = patcher.clone()
w = lora.model.diffusion_model.double_blocks[1].img_mlp[0].weight
lora.add_patches({"diffusion_model.double_blocks.1.img_mlp.0.weight": (torch.randn_like(w) * 0.05,)}, 1.0)
plain, with_lora = run(patcher), run(lora)
observed = nodes.RecordFeatures.execute(lora, tcs, "all", 8, "observe", "cond", "").args[0]
replaced = nodes.RecordFeatures.execute(lora, tcs, "all", 8, "replace", "cond", "").args[0]
out = dict(lora_changes=not torch.equal(plain, with_lora), lora_observe=torch.equal(run(observed), with_lora),
           lora_replace=float((run(replaced) - with_lora).abs().max() / with_lora.abs().max()))
for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp8", torch.float8_e4m3fn)):
    model_config = comfy.supported_models.FluxSchnell(patcher.model.model_config.unet_config)
    model_config.set_inference_dtype(dtype, torch.bfloat16 if name == "fp8" else None)
    model = model_config.get_model({})
    model.load_model_weights({k: v.float() for k, v in patcher.model.diffusion_model.state_dict().items()}, "")
    low = comfy.model_patcher.ModelPatcher(model, load_device=patcher.load_device,
                                           offload_device=patcher.offload_device)
    base = run(low)
    recorded, rec = nodes.RecordFeatures.execute(low, tcs, "all", 8, "observe", "cond", "").args
    same = torch.equal(run(recorded), base)
    steered = nodes.SteerFeature.execute(low, tcs, "img:1:5 img:0:3", "scale", 4.0, 0.0, 1.0, "cond+uncond").args[0]
    out[name] = dict(same=same, complete=rec.complete, steered=not torch.equal(run(steered), base),
                     weights=str(model.diffusion_model.double_blocks[0].img_mlp[0].weight.dtype))
hb.emit(out)
""")
    r = proc.result
    assert r["lora_changes"] and r["lora_observe"] and r["lora_replace"] <= 1e-5
    for name, dtype in (("bf16", "torch.bfloat16"), ("fp16", "torch.float16"), ("fp8", "torch.float8_e4m3fn")):
        assert r[name] == {"same": True, "complete": True, "steered": True, "weights": dtype}, (name, r[name])


def test_transcoders_are_comfyui_managed_models(comfy_run):
    """After sampling, ComfyUI's loaded-model list holds the recorded sites' transcoders (counted in its
    memory figures); unloading every model (what `/free` with unload_models does) releases them; a second
    run loads them again and records bit-identically."""
    proc = comfy_run(SETUP + """
mm = comfy.model_management
mm.unload_all_models()
def transcoder_sites():
    return sorted("{}:{}".format(*m.model.model.transcoder.config.site.key) for m in mm.current_loaded_models
                  if type(m.model.model).__name__ == "TranscoderSite")
base = run(patcher)
observed, first = record(sites="img:0-1 txt:1")
run_one = run(observed)
after_run = transcoder_sites()
sizes = sorted(m.model.model_size() for m in mm.current_loaded_models
               if type(m.model.model).__name__ == "TranscoderSite")
expected = sorted(sum(p.numel() * p.element_size() for p in tcs[s].parameters())
                  for s in (("img", 0), ("img", 1), ("txt", 1)))
mm.unload_all_models()
after_free = transcoder_sites()
observed_again, second = record(sites="img:0-1 txt:1")
run_two = run(observed_again)
codes_same = all(torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
                 for key in first.records for a, b in zip(first.records[key], second.records[key]))
hb.emit(dict(after_run=after_run, after_free=after_free, reloaded=transcoder_sites(), sizes=sizes, expected=expected,
             same=torch.equal(run_one, base) and torch.equal(run_two, base), codes_same=codes_same,
             keys_same=sorted(map(str, first.records)) == sorted(map(str, second.records))))
""")
    r = proc.result
    sites = ["img:0", "img:1", "txt:1"]
    assert r["after_run"] == sites and r["after_free"] == [] and r["reloaded"] == sites
    assert r["sizes"] == r["expected"]
    assert r["same"] and r["codes_same"] and r["keys_same"]
