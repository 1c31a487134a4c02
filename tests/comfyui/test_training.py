"""Harvesting from a real ComfyUI Flux during ComfyUI's own sampling (the same MLP hooks as the
reference model), then training on those rows and recording with the result in ComfyUI."""

from __future__ import annotations

from .test_nodes_sampling import SETUP


def test_harvest_in_comfyui_then_train_and_record(comfy_run, tmp_path):
    proc = comfy_run(SETUP + f"""
import importlib, pathlib, json
training = importlib.import_module(hb.PACK.__name__ + ".diffract_core.training")
harvest_mod = importlib.import_module(hb.PACK.__name__ + ".diffract_core.training.harvest")
shards_mod = importlib.import_module(hb.PACK.__name__ + ".diffract_core.training.shards")
TranscoderSet = hb.PACK.diffract_core.transcoders.TranscoderSet
root = pathlib.Path({str(tmp_path)!r})
sites = [("img", 0), ("txt", 1)]
writers = {{site: shards_mod.ShardWriter(shards_mod.site_folder(root, "train", site), site, 64, 1000,
                                         dtype=torch.float32) for site in sites}}
checks = []
diffusion_model = patcher.model.diffusion_model
def on_rows(site, x, y, sigmas):
    mlp = harvest_mod.mlp_module(diffusion_model, site)
    checks.append(float((mlp[2](mlp[1](mlp[0](x))) - y).abs().max()))  # its layers: calling mlp would re-enter the hook
    writers[site].add(x.reshape(-1, 64), y.reshape(-1, 64), sigmas.repeat_interleave(x.shape[1]),
                      torch.zeros(x.shape[0] * x.shape[1], dtype=torch.int32), 0)
comfy.model_management.load_models_gpu([patcher])
with harvest_mod.capture_mlp_io(diffusion_model, sites, on_rows):
    base = run(patcher)
for writer in writers.values():
    writer.close()
again = torch.equal(run(patcher), base)  # the hooks are gone and changed nothing
settings = training.TrainSettings(d_features=128, steps=20, batch_size=64, log_every=10, checkpoint_every=20)
result = training.train(root, root / "run", settings)
trained = TranscoderSet.open(root / "run" / "transcoders")
recorded, rec = nodes.RecordFeatures.execute(patcher, trained, sites="all", top_k=4, mode="observe", record="cond",
                                             keep_inputs_at_steps="").args
same = torch.equal(run(recorded), base)
index = shards_mod.ActivationShards(shards_mod.site_folder(root, "train", ("img", 0))).index
hb.emit(dict(checks=max(checks), calls=len(checks), again=again, finished=result.finished, sites=trained.sites,
             sigmas=index["sigmas"], rows=index["rows"], same=same, recorded=sorted({{k.site for k in rec.records}})))
""")
    r = proc.result
    assert r["checks"] == 0.0 and r["calls"] == 2 * 4  # two sites, four model calls
    assert r["sigmas"] == [1.0, 0.75, 0.5, 0.25] and r["rows"] == 4 * 8 * 12
    assert r["again"] and r["finished"] and r["same"]
    assert r["sites"] == [["img", 0], ["txt", 1]] and r["recorded"] == [["img", 0], ["txt", 1]]
