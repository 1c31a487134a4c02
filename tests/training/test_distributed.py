"""`torchrun` with 2 CPU processes on the gloo backend gives the result of one process on the
same shards: data-parallel within one site, and two sites sharded across the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffract_core.training.distributed import SiteGroup, assign_sites
from diffract_core.training.trainer import train

from .conftest import quick_settings

SETTINGS = {"steps": 30, "batch_size": 256, "checkpoint_every": 15, "log_every": 10, "dead_after_steps": 5,
            "resample_every": 10}


def write_config(folder: Path, data: Path, sites: str) -> Path:
    train_table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in
                            {**quick_settings(**SETTINGS).to_dict(), "d_features": 128}.items() if value is not None)
    path = folder / "run.toml"
    path.write_text(f'out = "run"\ndata = {json.dumps(str(data))}\n'
                    f'[harvest]\nsites = "{sites}"\n[train]\n{train_table}\n')
    return path


def torchrun(config: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "diffract_core", "train", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=config.parent, env=env, capture_output=True, text=True, timeout=300, check=False)


def final_weights(run: Path, site: str) -> dict[str, torch.Tensor]:
    return load_file(run / "transcoders" / f"transcoder_{site}" / "weights.safetensors")


@pytest.mark.parametrize("sites", [["img_0"], ["img_0", "txt_0"]], ids=["data-parallel", "sites-sharded"])
def test_two_gloo_processes_match_one(synthetic_data: Path, tmp_path: Path, sites: list[str]) -> None:
    keys = [(s.split("_")[0], int(s.split("_")[1])) for s in sites]
    config = write_config(tmp_path, synthetic_data, ", ".join(f"{s}:{layer}" for s, layer in keys))
    done = torchrun(config)
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(synthetic_data, tmp_path / "single", quick_settings(**SETTINGS), sites=keys)
    assert single.finished
    for site in sites:
        a, b = final_weights(tmp_path / "run", site), final_weights(tmp_path / "single", site)
        for key in a:
            # Sums run in another order (two ranks of one thread against one process of two threads); the
            # steps right after resampling amplify that float noise to about 3e-5 at most.
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=f"{site} {key}")
    logged = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert (sorted((line["site"], line["step"]) for line in logged)
            == sorted((s, n) for s in sites for n in (10, 20, 30)))
    for line in logged:
        expected = single.metrics[line["site"]] if line["step"] == 30 else None
        if expected is not None:
            assert line["resampled"] == expected["resampled"] > 0  # resampling ran, identically on both ranks
            assert line["nmse"] == pytest.approx(expected["nmse"], rel=1e-3)
            assert line["l0"] == pytest.approx(expected["l0"], rel=1e-3)


def test_site_assignment() -> None:
    sites = [("img", 0), ("txt", 0), ("img", 1)]
    assert assign_sites(sites, 2) == {("img", 0): (0,), ("txt", 0): (1,), ("img", 1): (0,)}
    assert assign_sites(sites[:2], 4) == {("img", 0): (0, 1), ("txt", 0): (2, 3)}
    with pytest.raises(Exception, match="multiple of 3"):
        assign_sites(sites, 4)
    group = SiteGroup((2, 3, 4), 3)
    assert [SiteGroup((2, 3, 4), r).part(10) for r in (2, 3, 4)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert not group.is_leader and group.size == 3
