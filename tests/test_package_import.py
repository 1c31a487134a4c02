"""Importing diffract_core before torch makes OpenMP threads wait passively (two torch processes on
the same cores otherwise slow each other 5-20x); a host that loaded torch first is left alone."""

import os
import subprocess
import sys


def _policy_after(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c",
                          code + "\nimport os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    return out.stdout.strip()


def test_the_cli_and_scripts_wait_passively_and_a_host_with_torch_loaded_is_untouched() -> None:
    assert _policy_after("import diffract_core") == "PASSIVE"
    assert _policy_after("import torch, diffract_core") == "unset"
