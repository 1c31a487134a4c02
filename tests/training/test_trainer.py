"""The trainer on a synthetic MLP with a known sparse dictionary: it converges, resampling revives
dead features, a resumed run is bit-identical, and settings are checked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffract_core.errors import CorruptFileError, DiffractError, UnsafeCheckpointError
from diffract_core.training.distributed import SiteGroup
from diffract_core.training.shards import ActivationShards, site_folder
from diffract_core.training.site_trainer import SiteTrainer
from diffract_core.training.trainer import train
from diffract_core.transcoders import TranscoderSet

from .conftest import SITE, quick_settings


def weights(run: Path, site: str = "img_0", kind: str = "transcoder") -> dict[str, torch.Tensor]:
    return load_file(run / "transcoders" / f"{kind}_{site}" / "weights.safetensors")


def test_a_transcoder_recovers_a_sparse_mlp(synthetic_data: Path, tmp_path: Path) -> None:
    settings = quick_settings(d_features=256, steps=800, batch_size=512, lr=4e-3, l1_img=1e-3, log_every=100,
                              checkpoint_every=800, dead_after_steps=100, resample_every=100, resample_until=0.7)
    result = train(synthetic_data, tmp_path / "run", settings, sites=[SITE])
    assert result.finished and result.step == 800
    config = json.loads((tmp_path / "run/transcoders/transcoder_img_0/config.json").read_text())
    validation = config["training"]["validation"]
    assert validation["rows"] == 8192
    assert validation["fvu"] < 0.2
    assert validation["l0"] < 0.1 * 256
    assert set(validation["fvu_by_sigma"]) == {"[0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1]"}
    assert config["training"]["settings"]["l1_img"] == 1e-3
    # The saved release opens as transcoders and agrees with the validation metric it carries.
    transcoder = TranscoderSet.open(tmp_path / "run/transcoders")[SITE]
    parts = list(ActivationShards(site_folder(synthetic_data, "validation", SITE)).sequential(3000))
    x, y, sigma = (torch.cat([getattr(p, name) for p in parts]) for name in ("x", "y", "sigma"))
    fvu = (y - transcoder(x, sigma)).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert float(fvu) == pytest.approx(validation["fvu"], rel=1e-4)
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(100, 801, 100))
    assert lines[-1]["nmse"] < lines[0]["nmse"] / 3


def test_resampling_revives_dead_features(synthetic_data: Path) -> None:
    shards = ActivationShards(site_folder(synthetic_data, "train", SITE))
    batches = shards.batches(256, seed=0)

    def kill_and_train(resample_every: int) -> SiteTrainer:
        trainer = SiteTrainer(SITE, 64, quick_settings(resample_every=resample_every), SiteGroup((0,), 0))
        with torch.no_grad():
            trainer.transcoder.b_enc[:64] = -1e4  # half the dictionary can never fire
        for _ in range(30):
            trainer.train_step(next(batches))
        return trainer

    without = kill_and_train(0)
    assert bool(without.dead[:64].all())
    revived = kill_and_train(10)
    assert revived.resampled >= 64
    batch = next(batches)
    fires = {name: (t.transcoder.encode(batch.x, batch.sigma)[0][:, :64] > 0).any(0) for name, t in
             (("without", without), ("revived", revived))}
    assert not bool(fires["without"].any())
    assert int(fires["revived"].sum()) >= 16  # on one batch of 256 rows
    assert float(revived.transcoder.b_enc[:64].detach().max()) > -1.0


def test_a_resumed_run_is_bit_identical(synthetic_data: Path, tmp_path: Path) -> None:
    settings = quick_settings(steps=40, checkpoint_every=20)
    straight = train(synthetic_data, tmp_path / "straight", settings, sites=[SITE, ("txt", 0)])
    first = train(synthetic_data, tmp_path / "resumed", settings, sites=[SITE, ("txt", 0)], until_step=25)
    assert not first.finished and first.step == 25
    assert json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())["step"] == 25
    second = train(synthetic_data, tmp_path / "resumed", settings, sites=[SITE, ("txt", 0)])
    assert second.finished and straight.finished
    for site in ("img_0", "txt_0"):
        a, b = weights(tmp_path / "straight", site), weights(tmp_path / "resumed", site)
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert straight.metrics == second.metrics  # the log windows straddling the stop agree too
    assert (tmp_path / "straight/metrics.jsonl").read_text() == (tmp_path / "resumed/metrics.jsonl").read_text()


def test_resuming_with_other_settings_is_refused(synthetic_data: Path, tmp_path: Path) -> None:
    train(synthetic_data, tmp_path / "run", quick_settings(), sites=[SITE], until_step=20)
    with pytest.raises(DiffractError, match=r"lr: 0.003 -> 0.001.*new folder"):
        train(synthetic_data, tmp_path / "run", quick_settings(lr=1e-3), sites=[SITE])

    def crash(step: int, _total: int, _metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # starting over, then stopped before the first checkpoint
        train(synthetic_data, tmp_path / "run", quick_settings(lr=1e-3), sites=[SITE], resume=False, progress=crash)
    assert not (tmp_path / "run/checkpoint").exists()
    restarted = train(synthetic_data, tmp_path / "run", quick_settings(lr=1e-3), sites=[SITE])
    assert restarted.finished
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # the abandoned run's lines are gone


def test_the_sae_learns_y_from_y(synthetic_data: Path, tmp_path: Path) -> None:
    train(synthetic_data, tmp_path / "run", quick_settings(kind="sae", steps=60), sites=[SITE])
    config = json.loads((tmp_path / "run/transcoders/sae_img_0/config.json").read_text())
    assert config["kind"] == "sae" and config["input"] == "mlp_out"
    assert config["training"]["validation"]["kind"] == "sae"
    assert TranscoderSet.open(tmp_path / "run/transcoders", kind="sae").sites == [SITE]


def test_the_release_can_be_stored_in_half_precision(synthetic_data: Path, tmp_path: Path) -> None:
    train(synthetic_data, tmp_path / "full", quick_settings(steps=20), sites=[SITE])
    train(synthetic_data, tmp_path / "half", quick_settings(steps=20, export_dtype="float16"), sites=[SITE])
    full, half = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert {t.dtype for t in half.values()} == {torch.float16}
    for name, tensor in full.items():
        assert torch.equal(half[name], tensor.half()), name  # the same training, only stored smaller
    config = json.loads((tmp_path / "half/transcoders/transcoder_img_0/config.json").read_text())
    assert config["dtype"] == "float16"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        quick_settings(export_dtype="float8")


def test_decoder_rows_stay_unit_norm_and_schedules_apply(synthetic_data: Path) -> None:
    settings = quick_settings(l1_warmup_steps=20, lr_warmup_steps=5, lr_final_fraction=0.1)
    trainer = SiteTrainer(SITE, 64, settings, SiteGroup((0,), 0))
    batches = ActivationShards(site_folder(synthetic_data, "train", SITE)).batches(256, seed=0)
    for _ in range(12):
        trainer.train_step(next(batches))
    norms = trainer.transcoder.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert settings.l1_at("img", 0) == pytest.approx(3e-4 / 20)
    assert settings.l1_at("img", 19) == pytest.approx(3e-4)
    assert settings.l1_at("txt", 30) == pytest.approx(5e-5)
    assert settings.lr_at(0) == pytest.approx(3e-3 / 5)
    assert settings.lr_at(40) == pytest.approx(3e-4)
    assert 3e-4 < settings.lr_at(39) < settings.lr_at(20) < 3e-3
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(settings.lr_at(11))


def test_unknown_settings_are_named() -> None:
    from diffract_core.training.settings import TrainSettings

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['l1'\].*l1_img"):
        TrainSettings.from_dict({"l1": 1.0})
    with pytest.raises(ValueError, match="train.kind"):
        TrainSettings(kind="clt")


def test_the_topk_variant_trains_at_fixed_sparsity(synthetic_data: Path, tmp_path: Path) -> None:
    settings = quick_settings(activation="topk", topk=8, d_features=256, steps=800, batch_size=512, lr=4e-3,
                              log_every=100, checkpoint_every=800, dead_after_steps=100, resample_every=100,
                              resample_until=0.7)
    assert settings.l1_at("img", 100) == 0.0
    train(synthetic_data, tmp_path / "run", settings, sites=[SITE])
    transcoder = TranscoderSet.open(tmp_path / "run/transcoders")[SITE]
    assert transcoder.config.activation == "topk" and transcoder.config.topk == 8
    validation = transcoder.config.training["validation"]
    assert validation["l0"] <= 8 and validation["fvu"] < 0.2


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("true",))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


RESUME_DAMAGE = {
    "truncated checkpoint": ("checkpoint/img_0.pt", _truncate, CorruptFileError,
                             r"img_0.pt cannot be read as a torch checkpoint"),
    "malicious checkpoint": ("checkpoint/img_0.pt", lambda p: torch.save({"transcoder": _RunsCodeWhenUnpickled()}, p),
                             UnsafeCheckpointError,
                             r"img_0.pt holds objects other than tensors \(it imports \w+.system"),
    "checkpoint of something else": ("checkpoint/img_0.pt", lambda p: torch.save({"weights": torch.zeros(2)}, p),
                                     CorruptFileError, r"img_0.pt is not a checkpoint of this run \(KeyError"),
    "state without settings": ("checkpoint/state.json", lambda p: p.write_text('{"step": 20}'),
                               CorruptFileError, r'state.json lacks "step" \(an integer >= 0\) or "settings"'),
    "broken state": ("checkpoint/state.json", lambda p: p.write_text('{"step": 2'),
                     CorruptFileError, r"state.json is not valid JSON"),
    "broken metrics line": ("metrics.jsonl", lambda p: p.write_text(p.read_text() + '{"site": "img_0", "st\n'),
                            CorruptFileError, r"metrics.jsonl line 3 is not valid JSON"),
}


@pytest.fixture(scope="module")
def stopped_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("stopped") / "run"
    train(synthetic_data, run, quick_settings(), sites=[SITE], until_step=20)
    return run


@pytest.mark.parametrize("damage", RESUME_DAMAGE)
def test_damaged_resume_files_are_named_with_the_way_out(synthetic_data: Path, stopped_run: Path, tmp_path: Path,
                                                         damage: str) -> None:
    relative, spoil, error, message = RESUME_DAMAGE[damage]
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    spoil(run / relative)
    with pytest.raises(error, match=message) as refused:
        train(synthetic_data, run, quick_settings(), sites=[SITE])
    assert "--no-resume" in str(refused.value)
    assert train(synthetic_data, run, quick_settings(), sites=[SITE], resume=False).finished


def test_checkpoints_leave_no_temporary_files_and_the_stop_step_must_be_positive(synthetic_data: Path,
                                                                                  stopped_run: Path) -> None:
    assert sorted(p.name for p in (stopped_run / "checkpoint").iterdir()) == ["img_0.pt", "state.json"]
    with pytest.raises(DiffractError, match="until_step must be at least 1, got -5"):
        train(synthetic_data, stopped_run, quick_settings(), sites=[SITE], until_step=-5)
