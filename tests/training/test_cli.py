"""The config file (TOML and YAML) and `python -m diffract_core harvest | train | evaluate | sweep`
end to end on a tiny random FLUX."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffract_core.errors import DiffractError
from diffract_core.training.config_file import load_run_config

README = Path(__file__).resolve().parents[2] / "README.md"

CONFIG = """
out = "run"
[model]
kind = "random"
flux = "tiny"
seed = 1
[encoder]
tokens = 6
[prompts]
list = [{prompts}]
validation_fraction = 0.3
[harvest]
sites = "img:0, txt:1"
latent_size = [8, 8]
prompts_per_call = 4
ram_cap_mb = 2
dtype = "float32"
[train]
d_features = 128
steps = 30
batch_size = 128
lr = 0.003
log_every = 10
checkpoint_every = 10
[evaluate]
spliced_prompts = 3
[sweep]
l1_scales = [1, 30]
sae_l1_scales = [30, 1000]
steps = 30
"""
PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green", "pink") for s in ("circle", "square", "star")]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffract_core", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, check=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(prompts=", ".join(json.dumps(p) for p in PROMPTS)))
    return path


def test_harvest_train_evaluate_sweep(config: Path) -> None:
    folder = config.parent
    trained = run_cli("train", "--config", str(config), "--until-step", "20", cwd=folder)
    assert trained.returncode == 0, trained.stderr
    assert "stopped at step 20" in trained.stdout
    assert "train" in trained.stderr and "20/30" in trained.stderr  # the progress bar
    trained = run_cli("train", "--config", str(config), cwd=folder)
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("finished")
    site_config = json.loads((folder / "run/transcoders/transcoder_img_0/config.json").read_text())
    assert site_config["training"]["steps"] == 30 and site_config["training"]["data"]["model"]["kind"] == "random"
    assert {"fvu", "l0", "dead_fraction", "fvu_by_sigma"} <= set(site_config["training"]["validation"])

    evaluated = run_cli("evaluate", "--config", str(config), cwd=folder)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((folder / "run/evaluation.json").read_text())
    assert [s["site"] for s in report["sites"]] == ["img_0", "txt_1"]
    assert report["spliced"]["prompts"] == 3 and -1 <= report["spliced"]["latent_cosine"] <= 1
    assert "spliced-in" in evaluated.stdout

    swept = run_cli("sweep", "--config", str(config), cwd=folder)
    assert swept.returncode == 0, swept.stderr
    table = (folder / "run/sweep/sweep.md").read_text().splitlines()
    assert len(table) == 2 + 8  # per kind, L1 scale and stream
    assert table[2].startswith("| transcoder | img | 1 |") and table[-1].startswith("| sae | txt | 1000 |")
    points = json.loads((folder / "run/sweep/sweep.json").read_text())
    l0 = {(p["kind"], p["l1_scale"], p["stream"]): p["l0"] for p in points}
    # stronger L1, sparser (in this 30-step run the transcoder's image site has not started to fire yet)
    assert l0["sae", 1000, "img"] < l0["sae", 30, "img"] and l0["sae", 1000, "txt"] < l0["sae", 30, "txt"]
    assert l0["transcoder", 30, "txt"] < l0["transcoder", 1, "txt"]
    swept_site = json.loads((folder / "run/sweep/sae_l1x30/transcoders/sae_img_0/config.json").read_text())
    assert swept_site["training"]["steps"] == 30  # [sweep] steps, not [train] steps
    with Image.open(folder / "run/sweep/sweep.png") as plot:
        assert plot.width > plot.height > 300  # two panels: FVU and spliced-in cosine against L0


def test_yaml_and_toml_configs_agree(config: Path) -> None:
    import tomllib
    import yaml

    data = tomllib.loads(config.read_text())
    (config.parent / "run.yaml").write_text(yaml.safe_dump(data))
    assert load_run_config(config.parent / "run.yaml") == load_run_config(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[trian]\nsteps = 1\n", r"unknown table or key\(s\) \['trian'\]"),
        ("[train]\nstep = 1\n", r"\[train\].*unknown key\(s\) \['step'\].*steps"),
        ("[harvest]\nsites = 'img:40'\n", r"double blocks 0\.\.1"),
        ("[train\n", "cannot be parsed"),
        ("[model]\nflux = 'huge'\n", "use one of"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DiffractError, match=message):
        config = load_run_config(path)
        config.model.flux_config()


def test_training_without_prompts_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[harvest]\nlatent_size = [4, 4]\n")
    done = run_cli("train", "--config", "run.toml", cwd=tmp_path)
    assert done.returncode == 2 and "[prompts] is empty" in done.stderr


def test_the_printed_defaults_are_a_complete_valid_config(tmp_path: Path) -> None:
    from dataclasses import fields

    from diffract_core.training.config_file import TABLES, RunConfig

    text = run_cli("config", cwd=tmp_path).stdout
    (tmp_path / "defaults.toml").write_text(text)
    loaded = load_run_config(tmp_path / "defaults.toml")
    defaults = {name: cls() for name, cls in TABLES}
    assert all(getattr(loaded, name) == value for name, value in defaults.items())
    assert isinstance(loaded, RunConfig) and loaded.out == tmp_path / "run"
    for name, cls in TABLES:
        table = text.split(f"[{name}]\n", 1)[1].split("\n\n", 1)[0]
        for item in fields(cls):
            line = next(line for line in table.splitlines() if line.lstrip("# ").startswith(f"{item.name} ="))
            assert "  # " in line, f"[{name}] {item.name} has no explanation"


def test_the_readme_config_is_valid(tmp_path: Path) -> None:
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.DOTALL)
    assert block is not None, "README.md shows a training config in a ```toml block"
    (tmp_path / "readme.toml").write_text(block.group(1))
    config = load_run_config(tmp_path / "readme.toml")
    assert config.train.l1_img == 3e-4 and config.prompts.split().validation


def test_the_toy_model_and_its_encoder_come_from_one_toy_file(tmp_path: Path) -> None:
    from diffract_core.toy.model import ToyModel, toy_flux_config

    toy = ToyModel.create(seed=5)
    toy.save(tmp_path / "toy.safetensors")
    (tmp_path / "toy.toml").write_text("[model]\nkind = 'toy'\nweights = 'toy.safetensors'\n[encoder]\nkind = 'toy'\n"
                                       "[harvest]\nsites = 'img:3'\n")
    config = load_run_config(tmp_path / "toy.toml")
    model = config.model.build()
    encoder = config.encoder.build(model.config, config.model)
    assert model.config == toy_flux_config() and config.harvest.sites == (("img", 3),)
    stored = (weight.to(torch.float16).float() for weight in toy.flux.state_dict().values())  # saved in fp16
    assert all(torch.equal(a.float(), b) for a, b in zip(model.state_dict().values(), stored))
    context, _pooled = encoder(["a red circle"])
    assert context.shape == (1, 8, 64) and not context.requires_grad
    (tmp_path / "bad.toml").write_text("[encoder]\nkind = 'toy'\n")
    bad = load_run_config(tmp_path / "bad.toml")
    with pytest.raises(DiffractError, match="set \\[model\\] kind = 'toy'"):
        bad.encoder.build(bad.model.flux_config(), bad.model)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nsteps = 'ten'\n", r"config \[train\]: train.steps = 'ten' is not an integer"),
        ("[train]\nsteps = 2.5\n", r"train.steps = 2.5 is not an integer"),
        ("[train]\nbatch_size = true\n", r"train.batch_size = True is not an integer"),
        ("[train]\nlr = nan\n", r"train.lr must be a positive number, got nan"),
        ("[train]\nlr = -1\n", r"train.lr must be a positive number, got -1"),
        ("[harvest]\nlatent_size = [0, -4]\n", r"harvest.latent_size must be two even sizes of at least 2.*\[0, -4\]"),
        ("[harvest]\nlatent_size = 64\n", r"harvest.latent_size = 64 is not a list of 2 integers"),
        ("[harvest]\nsites = 5\n", r"harvest.sites = 5 is not a string or a list of strings"),
        ("[prompts]\nvalidation_fraction = 1.5\n", r"prompts.validation_fraction must lie in \[0, 1\)"),
        ("[sweep]\nkinds = ['clt']\n", r"sweep.kinds must list some of"),
        ("out = 5\n", r"config out = 5 is not a folder path: write it as a string"),
        ('out = "taken.txt"\n', r"the run folder \(config `out`\) .*taken.txt is a file, not a folder"),
        ('data = "taken.txt/activations"\n',
         r"the activations folder \(config `data`\) .* cannot be created: .*taken.txt is a file"),
    ],
)
def test_config_values_are_checked_before_any_work(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "taken.txt").write_text("not a folder")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(DiffractError, match=message):
        load_run_config(tmp_path / "bad.toml")


def test_a_read_only_run_folder_is_refused_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda path, mode, *a, **k: Path(path) != tmp_path and real_access(path, mode, *a, **k))
    (tmp_path / "run.toml").write_text("[train]\nsteps = 10\n")
    with pytest.raises(DiffractError,
                       match=r"the run folder \(config `out`\) .*run cannot be written: its nearest existing folder"):
        load_run_config(tmp_path / "run.toml")


def test_the_stop_step_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[train]\nsteps = 10\n")
    done = run_cli("train", "--config", "run.toml", "--until-step", "-5", cwd=tmp_path)
    assert done.returncode == 2 and "--until-step: must be a whole number of at least 1, got '-5'" in done.stderr
    assert not (tmp_path / "run").exists()
