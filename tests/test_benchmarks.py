"""The benchmark scripts still run (at tiny sizes); their figures come from full-size runs."""

import json
import subprocess
import sys
from pathlib import Path

from diffract_core.quickstart import random_transcoder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_transcoder_throughput_runs_and_reports_ratios() -> None:
    args = ["--d-model", "32", "--features", "128", "--mlp-hidden", "128", "--tokens", "16", "--repeats", "1",
            "--k", "8"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "transcoder_throughput.py"), *args], capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [(d, w) for d in ("fp32", "bf16")
                                            for w in ("dense", "encode", "encode_topk", "forward")]
    assert all(r[-1].endswith("x") and float(r[-1][:-1]) > 0 for r in rows)


def test_site_loading_memory_runs_both_loaders() -> None:
    args = ["--d-model", "32", "--features", "256", "--tokens", "8"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "site_loading_memory.py"), *args], capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[2:]] == ["native", "read"]


def test_recording_overhead_runs_every_mode() -> None:
    args = ["--hidden", "32", "--heads", "2", "--depth", "2", "--single", "1", "--features", "64", "--pixels", "64",
            "--text-tokens", "4", "--steps", "2", "--k", "4", "--repeats", "1"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "recording_overhead.py"), *args], capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["plain", "recording", "recording"]
    assert lines[5].startswith("recording size:")


def test_attribution_speed_compares_both_algorithms() -> None:
    args = ["--hidden", "64", "--depth", "3", "--features", "256", "--pixels", "128", "--text-tokens", "8",
            "--nodes", "12"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attribution_speed.py"), *args], capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[2].startswith("batched transpose") and lines[3].startswith("one target per pass")
    assert lines[4].startswith("same nodes in both graphs: True")


def test_attention_transpose_compares_both_forms_and_they_agree() -> None:
    args = ["--pixels", "64", "--text-tokens", "4", "--heads", "2", "--head-dim", "8", "--rows", "1", "3",
            "--repeats", "1"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attention_transpose.py"), *args], capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["1", "3"] and all(float(r[-1]) < 1e-6 for r in rows)


def test_training_throughput_reports_rates_and_the_harvest_memory() -> None:
    args = ["--d-model", "32", "--features", "128", "--batch", "32", "--repeats", "1", "--hidden", "64", "--heads", "2",
            "--pixels", "64", "--text-tokens", "4", "--prompts", "4", "--per-call", "2", "--cap-mb", "1",
            "--threads", "1"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "training_throughput.py"), *args], capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[2].startswith("dense FLUX MLP") and lines[3].startswith("transcoder training step")
    assert float(lines[3].split()[-1][:-1]) > 0
    harvest_rows = {line.rsplit(None, 4)[0]: line.split()[-4:] for line in lines[7:9]}
    assert set(harvest_rows) == {"sampling only (baseline)", "harvest"}
    assert float(harvest_rows["harvest"][2]) <= 1.0  # the bound on its own buffers stays within the cap
    assert lines[-2].startswith("harvest: rise over the baseline")
    assert lines[-1].startswith("harvest, twice the prompts: rise over the baseline")


def test_toy_binding_runs_every_arm_and_writes_its_figures(tmp_path: Path) -> None:
    figures = tmp_path / "binding.json"
    args = ["--images", "16", "--batch", "16", "--doses", "1", "3", "--bootstrap", "20", "--per-step", "2",
            "--random-draws", "1", "--budget", "20", "--json", str(figures)]
    out = subprocess.run([sys.executable, str(BENCHMARKS / "toy_binding.py"), *args], capture_output=True, text=True,
                         timeout=900, check=False)
    assert out.returncode == 0, out.stderr
    data = json.loads(figures.read_text())
    assert data["errors"] > 0 and data["images"] == 16
    assert {"none", "re-sample", "random features", "SAE selective", "circuit"} <= set(data["arms"])
    for row in data["arms"].values():
        assert {"fixed", "ci_low", "ci_high", "change_inside", "change_outside"} <= set(row)
    assert "circuit vs SAE selective" in data["tests"]
    assert "matched dose: mean change inside the object" in out.stdout and "paired tests" in out.stdout


def test_atlas_build_reports_its_ratio_and_its_memory_against_the_cap() -> None:
    args = ["--hidden", "32", "--heads", "2", "--depth", "2", "--features", "64", "--pixels", "64",
            "--text-tokens", "4", "--steps", "2", "--prompts", "6", "--batch", "3", "--k", "4", "--cap-mb", "16",
            "--repeats", "1", "--threads", "1"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "atlas_build.py"), *args], capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[2].startswith("plain sampling (baseline)") and lines[3].startswith("atlas build")
    assert float(lines[3].split()[-1][:-1]) > 0
    assert [line.rsplit(None, 1)[0] for line in lines[7:11]] == [
        "sampling only (baseline)", "atlas build", "sampling only, twice the prompts", "atlas build, twice the prompts"]
    assert lines[-2].startswith("atlas build: rise over sampling the same prompts")
    assert lines[-1].startswith("atlas build, twice the prompts: rise over sampling the same prompts")


def test_flux_scale_measures_both_ways_and_writes_its_figures(tmp_path: Path) -> None:
    figures = tmp_path / "flux_scale.json"
    args = ["--hidden", "32", "--heads", "2", "--mlp", "64", "--features", "64", "--pixels", "64", "--text-tokens",
            "4", "--nodes", "4", "--batch-size", "2", "--layers", "2", "3", "--whole", "--json", str(figures)]
    out = subprocess.run([sys.executable, str(BENCHMARKS / "flux_scale.py"), *args], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[1] for line in lines[2:5]] == ["2", "3", "whole"]
    assert lines[5].startswith("model: peak(L) = fixed + slope*L")
    assert "(extrapolated from 2 layers, 3 layers)" in lines[6] and "(measured, trace time modelled" in lines[11]
    data = json.loads(figures.read_text())
    assert [m["recorded_sites"] for m in data["measured"]] == [4, 6, 34]
    assert all(m["backward_passes"] >= 2 and m["rows"] == 5 for m in data["measured"])
    assert set(data["at_goals"]["64"]) == {"extrapolated", "measured"}
    measured = data["at_goals"]["64"]["measured"]
    assert measured["trace_transcoder_bytes"] == 32 * data["measured"][0]["site_bytes"]
    assert measured["trace_passes"] == 501 and measured["trace_seconds"] > 0


def test_flux_scale_stores_transcoders_in_fp8_and_counts_their_bytes(tmp_path: Path) -> None:
    figures = tmp_path / "flux_scale.json"
    args = ["--hidden", "32", "--heads", "2", "--mlp", "64", "--features", "64", "--pixels", "64", "--text-tokens",
            "4", "--nodes", "4", "--batch-size", "2", "--layers", "2", "3", "--transcoder-dtype", "fp8",
            "--transcoders-on", "cpu", "--json", str(figures)]
    out = subprocess.run([sys.executable, str(BENCHMARKS / "flux_scale.py"), *args], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "transcoders fp8 on cpu" in out.stdout.splitlines()[0]
    measured = json.loads(figures.read_text())["measured"]
    fp32 = random_transcoder("img", 0, d_model=32, d_features=64)
    fp32_bytes = sum(t.nbytes for t in fp32.parameters())
    # W_enc and W_dec: 64 x 32 one-byte codes and 64 fp32 scales each instead of fp32 values; the rest as it was
    fp8_bytes = fp32_bytes - 2 * 64 * 32 * 4 + 2 * (64 * 32 + 64 * 4)
    assert all(m["site_bytes"] == fp8_bytes and m["backward_passes"] >= 2 for m in measured)


def test_graph_analysis_compares_every_operation_with_its_dense_baseline_and_they_agree() -> None:
    args = ["--nodes", "120", "--edges", "3000", "--layers", "3", "--positions", "2", "--repeats", "1",
            "--threads", "1"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "graph_analysis.py"), *args], capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line.rsplit(None, 10) for line in lines[2:7]]
    assert [r[0] for r in rows] == ["influence", "prune", "scores", "predicted ablations", "save JSON"]
    assert all(r[-1] == "yes" and r[3].endswith("x") and r[6].endswith("x") for r in rows)
    assert lines[7].startswith("goal influence:") and lines[8].startswith("goal prune:")


def test_toy_connections_splits_the_circuits_and_shows_an_example() -> None:
    args = ["--images", "8", "--errors", "2", "--budget", "6", "--top", "3"]
    out = subprocess.run([sys.executable, str(BENCHMARKS / "toy_connections.py"), *args], capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("2 binding-error circuits")
    feature_rows = [line.split() for line in lines[lines.index("edges from features: direct share of |weight| per "
                                                               "graph (mean over graphs)") + 2:]]
    img_rows = [row for row in feature_rows[:3] if row[0] == "img->img"]
    assert img_rows and all(0.0 < float(row[4]) <= 1.0 for row in img_rows)
    example = lines.index(next(line for line in lines if line.startswith("virtual weights of img:3:")))
    assert [line.split()[0] for line in lines[example + 3 : example + 6]] == ["upstream"] * 3


def test_toy_circuit_preservation_measures_every_method_and_writes_its_figures(tmp_path: Path) -> None:
    args = ["--errors", "2", "--images", "6", "--budget", "20", "--max-features", "4", "--steps", "20", "--rounds",
            "0", "--json", str(tmp_path / "figures.json")]
    out = subprocess.run([sys.executable, str(BENCHMARKS / "toy_circuit_preservation.py"), *args],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert set(figures["preservation"]) == {"search", "top_k", "prefix", "random"}
    assert figures["errors"] + len(figures["skipped"]) == 2
    for row in figures["rows"]:
        assert 1 <= row["search_size"] <= 4 and 1 <= row["prefix_size"] <= 4
        assert row["features_traced"] == 20 and abs(row["influence_curve"]["20"] - 1.0) < 1e-6  # the full graph
    assert "similarity, same error, steps 2 and 4" in out.stdout
