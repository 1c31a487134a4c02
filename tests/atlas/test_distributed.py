"""`torchrun` with 2 CPU processes on the gloo backend: the prompts' batches are dealt out to the
ranks, and rank 0 merges their statistics into exactly the atlas one process builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .tiny_world import atlas_files

SCRIPT = Path(__file__).with_name("distributed_build.py")


def build(release: Path, out: Path, processes: int) -> None:
    command = [sys.executable, str(SCRIPT), str(release), str(out)]
    if processes > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads per process both ways: the same float sums
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_gloo_processes_build_the_one_process_atlas(release: Path, tmp_path: Path) -> None:
    build(release, tmp_path / "one", 1)
    build(release, tmp_path / "two", 2)
    assert json.loads((tmp_path / "two" / "atlas.json").read_text())["build"]["ranks"] == 2
    assert not list(tmp_path.glob(".*.build"))
    one, two = atlas_files(tmp_path / "one"), atlas_files(tmp_path / "two")
    assert set(one) == set(two) and "crops-000.jpg" in one
    for name in one:
        assert one[name] == two[name], name
