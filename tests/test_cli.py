import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffract_core.quickstart import write_example_release


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diffract_core", *args], check=False, capture_output=True, text=True, timeout=300
    )


def test_convert_and_inspect_a_release_folder(tmp_path: Path) -> None:
    write_example_release(
        tmp_path / "release" / "temporal-aware-transcoders",
        layers=(0, 12),
        kinds=("transcoder",),
        d_model=16,
        d_features=48,
    )
    write_example_release(
        tmp_path / "release" / "temporal-aware-saes", layers=(12,), kinds=("sae",), d_model=16, d_features=48
    )
    converted = run_cli("convert", str(tmp_path / "release"), str(tmp_path / "native"), "--dtype", "bf16")
    assert converted.returncode == 0, converted.stderr
    assert "[6/6] done" in converted.stderr

    inspected = run_cli("inspect", str(tmp_path / "native"))
    assert inspected.returncode == 0, inspected.stderr
    lines = inspected.stdout.splitlines()
    assert lines[0].split() == ["stream", "layer", "kind", "D", "F", "dtype", "size", "sha256", "path"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("img", "12", "sae", "16", "48", "bfloat16"),
        ("txt", "12", "sae", "16", "48", "bfloat16"),
        ("img", "0", "transcoder", "16", "48", "bfloat16"),
        ("img", "12", "transcoder", "16", "48", "bfloat16"),
        ("txt", "0", "transcoder", "16", "48", "bfloat16"),
        ("txt", "12", "transcoder", "16", "48", "bfloat16"),
    ]
    assert all("(ok)" in line for line in lines[1:])
    # a folder of native releases (ComfyUI's models/transcoders) lists every release's sites
    folder = run_cli("inspect", str(tmp_path))
    assert folder.returncode == 0, folder.stderr
    assert len(folder.stdout.splitlines()) == len(lines) and "native" in folder.stdout

    raw = run_cli("inspect", str(tmp_path / "release"))
    assert raw.returncode == 0 and "float32" in raw.stdout and "(unrecorded)" in raw.stdout


def test_inspect_flags_a_changed_weights_file(tmp_path: Path) -> None:
    write_example_release(
        tmp_path / "release", layers=(3,), streams=("img",), kinds=("transcoder",), d_model=8, d_features=16
    )
    assert run_cli("convert", str(tmp_path / "release"), str(tmp_path / "native")).returncode == 0
    weights = tmp_path / "native" / "transcoder_img_3" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "(MISMATCH)" in run_cli("inspect", str(tmp_path / "native")).stdout


def test_bad_input_exits_with_the_message(tmp_path: Path) -> None:
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "my_transcoder.pt").write_bytes(b"")
    result = run_cli("convert", str(tmp_path / "release"), str(tmp_path / "native"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: 'my_transcoder.pt' does not follow the release naming pattern")
    assert "Traceback" not in result.stderr


def test_quickstart_round_trips(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--out", str(tmp_path / "qs"))
    assert result.returncode == 0, result.stderr
    assert "fp32: worst 0.00e+00" in result.stdout
    bf16_error = float(result.stdout.split("bf16: worst ")[1].split()[0])
    assert 0 < bf16_error < 1e-2


def test_demo_is_the_main_job(tmp_path: Path) -> None:
    """README's main-job command: binding error -> circuit -> steering -> report.html."""
    result = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "binding errors traced and steered:" in result.stdout and "shown: " in result.stdout
    headings = [html.unescape(h) for h in re.findall(r"<h2[^>]*>(.*?)</h2>", report)]
    assert headings[0].startswith("The binding error, and "), "the report starts with the story"
    assert headings[1:] == [
        "What was steered, and how",
        "Which steering won",
        "The grid",
        "Why: the wrong colour's feature, step by step",
        "Its circuit",
        "The benchmark: which steering fixes binding errors?",
        "Every error the demo steered",
        "Glossary",
        "Timings",
    ]
    assert report.count("data:image/png;base64,") > 60  # 48 grid images, 12 heatmaps, before / after, the graph
    assert (tmp_path / "demo" / "circuit.json").is_file()


def test_toy_train_writes_a_loadable_toy(tmp_path: Path) -> None:
    from diffract_core.toy.model import ToyModel

    result = run_cli("toy-train", "--out", str(tmp_path / "toy.safetensors"), "--steps", "3", "--seed", "2")
    assert result.returncode == 0, result.stderr
    toy = ToyModel.load(tmp_path / "toy.safetensors")
    assert toy.info["steps_done"] == 3 and toy.info["trained"]["seed"] == 2 and len(toy.info["losses"]) == 3


def test_bad_arguments_are_refused_by_name(tmp_path: Path) -> None:
    steps = run_cli("toy-train", "--out", str(tmp_path / "toy.safetensors"), "--steps", "0")
    assert steps.returncode == 2 and "--steps: must be a whole number of at least 1, got '0'" in steps.stderr
    layers = run_cli("download", str(tmp_path / "dest"), "--layers", "5-1", "--offline")
    assert layers.returncode == 2 and "layer range '5-1' runs backwards; write it as 1-5" in layers.stderr
    assert not (tmp_path / "dest").exists()


def test_a_file_where_an_output_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("keep me")
    for command in (["demo", "--out"], ["quickstart", "--out"], ["toy-train", "--out"]):
        target = tmp_path / "README.md" if command[0] != "toy-train" else tmp_path / "README.md" / "toy.safetensors"
        result = run_cli(*command, str(target))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "README.md is a file, not a folder" in result.stderr
    assert (tmp_path / "README.md").read_text() == "keep me"


def test_demo_into_a_file_is_refused_in_one_line_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    from diffract_core.cli import main
    from diffract_core.toy import demo

    monkeypatch.setattr(demo, "run_demo", lambda *_args, **_kwargs: pytest.fail("the demo started"))
    readme = tmp_path / "README.md"
    readme.write_text("keep me")
    assert main(["demo", "--out", str(readme)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {readme} is a file, not a folder: choose a folder (a new or an existing one)\n"
    )
    (tmp_path / "demo" / "report.html").mkdir(parents=True)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'demo' / 'report.html'} is not a file" in err, err
    assert "choose another output folder" in err and readme.read_text() == "keep me"


def test_read_only_destinations_are_refused_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    import os

    from diffract_core.cli import main

    write_example_release(
        tmp_path / "release", layers=(0,), streams=("img",), kinds=("transcoder",), d_model=8, d_features=16
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, *a, **k: Path(path) != locked and real_access(path, mode, *a, **k)
    )
    for argv in (
        ["convert", str(tmp_path / "release"), str(locked / "native")],
        ["quickstart", "--out", str(locked / "qs")],
        ["toy-train", "--out", str(locked / "toy.safetensors"), "--steps", "1"],
        ["demo", "--out", str(locked / "demo")],
    ):
        assert main(argv) == 2
        assert "is read-only for this user; choose a writable folder" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_convert_names_a_malformed_manifest_field(tmp_path: Path) -> None:
    write_example_release(
        tmp_path / "release", layers=(0,), streams=("img",), kinds=("transcoder",), d_model=8, d_features=16
    )
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "manifest.json").write_text('{"format": "diffract-transcoder-release", "release": "abc"}')
    result = run_cli("convert", str(tmp_path / "release"), str(tmp_path / "native"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert '"release" must be an object of facts about the release' in result.stderr and "delete" in result.stderr
