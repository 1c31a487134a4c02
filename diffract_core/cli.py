"""`python -m diffract_core COMMAND`: demo (the embedded toy, end to end), convert, inspect, download,
quickstart; harvest, train, evaluate, sweep (transcoder training, each from a config file); toy-train."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DiffractError
from .transcoders.config import STREAMS, dtype_from_name


def parse_layers(text: str) -> list[int]:
    """`0-15,18` -> [0, 1, ..., 15, 18]."""
    layers: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            layers.extend(range(int(first), int(last or first) + 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"layers must look like '0-15,18', got {text!r}") from exc
    return layers


def _dtype(text: str):
    try:
        return dtype_from_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _progress(done: int, total: int, name: str) -> None:
    print(f"[{done}/{total}] {name}", file=sys.stderr, flush=True)


def cmd_convert(args: argparse.Namespace) -> None:
    from .transcoders.convert import convert_release, format_reports, inspect_path

    convert_release(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, progress=_progress)
    print(format_reports(inspect_path(args.dst)))


def cmd_inspect(args: argparse.Namespace) -> None:
    from .transcoders.convert import format_reports, inspect_path

    print(format_reports(inspect_path(args.path)))


def cmd_download(args: argparse.Namespace) -> None:
    from .hub import HubRelease, download_release
    from .transcoders.convert import format_reports, inspect_path

    release = HubRelease(repo_id=args.repo, folder=args.folder, revision=args.revision)
    download_release(
        args.dest,
        release=release,
        streams=args.streams,
        layers=args.layers,
        dtype=args.dtype,
        cache_dir=args.cache_dir,
        offline=args.offline,
        endpoint=args.endpoint,
        progress=_progress,
    )
    print(format_reports(inspect_path(args.dest)))


def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import run_quickstart

    result = run_quickstart(args.out, seed=args.seed)
    print(f"Wrote a small DifFRACT-format release to {args.out / 'release'} and converted it.\n")
    for label, report in result.reports.items():
        print(f"{args.out / f'native-{label}'}:\n{report}\n")
    print("max |converted - original| / max |original| on random activations and sigmas:")
    for label, errors in result.relative_error.items():
        worst = max(errors, key=errors.__getitem__)
        print(f"  {label}: worst {errors[worst]:.2e} ({worst}) over {len(errors)} sites")


def _load_config(args: argparse.Namespace):
    from .training.config_file import load_run_config

    return load_run_config(args.config)


class _Bar:
    """A tqdm progress bar on stderr, fed by the training callbacks."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self.description = description
        rank = int(os.environ.get("RANK", "0"))  # under torchrun, one bar (rank 0's)
        self.bar = tqdm(desc=description, unit="step", file=sys.stderr, dynamic_ncols=True, disable=rank != 0)

    def steps(self, done: int, total: int, metrics: dict[str, float], description: str | None = None) -> None:
        if done < self.bar.n or self.bar.total != total:  # a new run (sweep), a new phase or the first call
            self.bar.set_description(description or self.description, refresh=False)
            self.bar.reset(total=total)
            self.bar.update(done - 1)
        if metrics:
            self.bar.set_postfix(nmse=f"{metrics['nmse']:.4f}", l0=f"{metrics['l0']:.1f}",
                                 dead=f"{metrics['dead_fraction']:.3f}", refresh=False)
        self.bar.update(done - self.bar.n)

    def prompts(self, done: int, total: int) -> None:
        self.steps(done, total, {}, description="harvest (prompts)")

    def close(self) -> None:
        self.bar.close()


def cmd_harvest(args: argparse.Namespace) -> None:
    from .training.runs import run_harvest

    config = _load_config(args)
    bar = _Bar("harvest")
    report = run_harvest(config, progress=bar.prompts)
    bar.close()
    print(f"harvested into {config.data} in {report.seconds:.1f} s; buffers {report.reserved_bytes / 2**20:.1f} MiB "
          f"of the {report.ram_cap_bytes / 2**20:.1f} MiB cap")
    for split, rows in report.rows.items():
        print(f"  {split}: " + ", ".join(f"{site} {count} rows" for site, count in rows.items()))


def cmd_train(args: argparse.Namespace) -> None:
    from .training.runs import run_train

    config = _load_config(args)
    bar = _Bar("train")
    result = run_train(config, resume=not args.no_resume, until_step=args.until_step, progress=bar.steps,
                       harvest_progress=bar.prompts)
    bar.close()
    state = "finished" if result.finished else f"stopped at step {result.step} (resume with the same command)"
    print(f"{state}: {result.out}; {result.rows_per_second:,.0f} token rows/s per site")
    for site, metrics in result.metrics.items():
        print(f"  {site}: nmse {metrics['nmse']:.4f}  L0 {metrics['l0']:.1f}  dead {metrics['dead_fraction']:.3f}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .training.runs import format_evaluation, run_evaluate

    print(format_evaluation(run_evaluate(_load_config(args), args.transcoders)))


def cmd_config(_args: argparse.Namespace) -> None:
    from .training.config_file import default_config_text

    print(default_config_text(), end="")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .training.runs import run_sweep

    config = _load_config(args)
    bar = _Bar("sweep")
    run_sweep(config, progress=bar.steps)
    bar.close()
    print((config.out / "sweep" / "sweep.md").read_text())
    print(f"plot: {config.out / 'sweep' / 'sweep.png'}")


def cmd_toy_train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .toy.model import ToyTrainSettings, train_toy

    settings = ToyTrainSettings(steps=args.steps, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=settings.steps, desc="toy-train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, _total: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(done - bar.n)

    def save(model) -> None:
        partial = args.out.with_name(args.out.name + ".partial")
        model.save(partial)
        os.replace(partial, args.out)

    model, _ = train_toy(settings, progress=progress, snapshot=save, snapshot_every=args.snapshot_every)
    bar.close()
    save(model)
    print(f"wrote {args.out}: {settings.steps} steps, seed {settings.seed}, mean loss of the last 100 steps "
          f"{model.info['final_loss']:.4f}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .toy.demo import DemoSettings, run_demo, summary

    print(summary(run_demo(args.out, DemoSettings(seed=args.seed))))


def build_parser() -> argparse.ArgumentParser:
    from .hub import DEFAULT_REPO_ID, TRANSCODER_FOLDER
    from .toy.model import ToyTrainSettings

    parser = argparse.ArgumentParser(prog="python -m diffract_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a folder of released .pt files to the native format")
    convert.add_argument("src", type=Path, help="a .pt file or a folder holding transcoder_*.pt / sae_*.pt")
    convert.add_argument("dst", type=Path, help="the native release folder to write")
    convert.add_argument("--dtype", type=_dtype, default=None, help="bf16, fp16 or fp32 (default: keep the source's)")
    convert.add_argument("--overwrite", action="store_true", help="re-convert sites that already exist in DST")
    convert.set_defaults(run=cmd_convert)

    inspect = commands.add_parser("inspect", help="list the sites of a native folder or of .pt files")
    inspect.add_argument("path", type=Path)
    inspect.set_defaults(run=cmd_inspect)

    download = commands.add_parser("download", help="download released transcoders from the Hub and convert them")
    download.add_argument("dest", type=Path, help="destination folder (ComfyUI: models/transcoders/<name>)")
    download.add_argument("--repo", default=DEFAULT_REPO_ID)
    download.add_argument("--folder", default=TRANSCODER_FOLDER, help="folder inside the repo")
    download.add_argument("--revision", default=None)
    download.add_argument("--streams", nargs="+", choices=STREAMS, default=list(STREAMS))
    download.add_argument("--layers", type=parse_layers, default=None, help="e.g. 0-15,18 (default: all released)")
    download.add_argument("--dtype", type=_dtype, default=None, help="bf16, fp16 or fp32 (default: keep fp32)")
    download.add_argument("--cache-dir", type=Path, default=None, help="a Hugging Face cache to reuse (kept as is)")
    download.add_argument("--offline", action="store_true", help="use only files already in the cache")
    download.add_argument("--endpoint", default=None, help="a Hub mirror's URL")
    download.set_defaults(run=cmd_download)

    quickstart = commands.add_parser("quickstart", help="make a small release, convert, inspect and check it")
    quickstart.add_argument("--out", type=Path, required=True)
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.set_defaults(run=cmd_quickstart)

    config_help = "a TOML (or .yaml) run config; `python -m diffract_core config` prints every key with its default"
    config = commands.add_parser("config", help="print every training config key with its default and meaning")
    config.set_defaults(run=cmd_config)

    harvest = commands.add_parser("harvest", help="sample prompts and store MLP activations for training")
    harvest.add_argument("--config", type=Path, required=True, help=config_help)
    harvest.set_defaults(run=cmd_harvest)

    train = commands.add_parser("train", help="train transcoders (or SAEs); harvests first if needed; torchrun-able")
    train.add_argument("--config", type=Path, required=True, help=config_help)
    train.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in the run folder and start over")
    train.add_argument("--until-step", type=int, default=None, help="checkpoint and stop at this step")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="FVU, L0, dead features and the spliced-in generation test")
    evaluate.add_argument("--config", type=Path, required=True, help=config_help)
    evaluate.add_argument("--transcoders", type=Path, default=None, help="a native release (default: the run's)")
    evaluate.set_defaults(run=cmd_evaluate)

    sweep = commands.add_parser("sweep", help="transcoders against SAEs across L1 strengths: table and PNG plot")
    sweep.add_argument("--config", type=Path, required=True, help=config_help)
    sweep.set_defaults(run=cmd_sweep)

    demo = commands.add_parser("demo", help="the whole pipeline on the embedded toy: binding error -> circuit -> steer")
    demo.add_argument("--out", type=Path, required=True, help="the folder for report.html and circuit.json")
    demo.add_argument("--seed", type=int, default=0, help="which held-out prompts and noise the grid uses")
    demo.set_defaults(run=cmd_demo)

    toy_train = commands.add_parser("toy-train", help="train the embedded toy FLUX on coloured-shape scenes")
    toy_train.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    toy_train.add_argument("--seed", type=int, default=0)
    toy_train.add_argument("--steps", type=int, default=ToyTrainSettings.steps)
    toy_train.add_argument("--snapshot-every", type=int, default=500, help="also save the weights every N steps")
    toy_train.set_defaults(run=cmd_toy_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DiffractError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
