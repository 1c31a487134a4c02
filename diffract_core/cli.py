"""`python -m diffract_core COMMAND`: demo (the embedded toy, end to end), convert, inspect, download,
quickstart; harvest, train, evaluate, sweep (transcoder training, each from a config file); toy-train;
atlas (a release's feature atlas)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DestinationError, DiffractError
from .file_writing import prepare_destination, replace_atomically
from .transcoders.config import STREAMS, dtype_from_name


def parse_layers(text: str) -> list[int] | None:
    """`0-15,18` -> [0, 1, ..., 15, 18]; `all` -> None (every released layer)."""
    from .sites import parse_layers as parse_layer_list

    try:
        return parse_layer_list(text)
    except DiffractError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _dtype(text: str):
    try:
        return dtype_from_name(text)
    except DiffractError as exc:
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
    if args.out.is_dir():
        raise DestinationError(f"--out {args.out} is a folder: name the .safetensors file to write")
    prepare_destination(args.out.parent, "the folder of --out")
    bar = tqdm(total=settings.steps, desc="toy-train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, _total: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(done - bar.n)

    def save(model) -> None:
        replace_atomically(args.out, model.save)

    model, _ = train_toy(settings, progress=progress, snapshot=save, snapshot_every=args.snapshot_every)
    bar.close()
    save(model)
    print(f"wrote {args.out}: {settings.steps} steps, seed {settings.seed}, mean loss of the last 100 steps "
          f"{model.info['final_loss']:.4f}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .toy.demo import DemoSettings, prepare_report_folder, run_demo, summary

    prepare_report_folder(args.out, "--out")
    print(summary(run_demo(args.out, DemoSettings(seed=args.seed))))


def cmd_atlas(args: argparse.Namespace) -> None:
    from .atlas import Atlas, AtlasSettings, build_atlas
    from .atlas.prompts import read_prompts
    from .atlas.sampling import decoder_for
    from .atlas.storage import atlas_folder
    from .file_writing import check_destination
    from .sites import parse_sites
    from .toy.generate import IMAGE_SIZE, STEPS
    from .training.config_file import EncoderSpec, ModelSpec
    from .training.harvest import HarvestSettings
    from .transcoders import TranscoderSet

    transcoders = TranscoderSet.open(args.release, kind=args.kind)
    model_spec = ModelSpec(kind=args.model, weights=args.weights, flux=args.flux, device=args.device)
    toy = args.model == "toy"
    encoder_spec = EncoderSpec(kind=args.encoder or ("toy" if toy else "hashing"))
    toy_latent = IMAGE_SIZE // 2
    sampling = HarvestSettings(steps=args.steps or (STEPS if toy else HarvestSettings.steps),
                               latent_size=tuple(args.latent_size or ((toy_latent, toy_latent) if toy else (64, 64))),
                               prompts_per_call=args.batch, seed=args.seed)
    sites = parse_sites(args.sites, transcoders.sites) if args.sites else None
    settings = AtlasSettings(sampling=sampling, sites=sites, k=args.k, sigma_buckets=args.buckets, top_n=args.top_n,
                             vocabulary_size=args.vocabulary, crops_per_feature=args.crops, cap_mb=args.cap_mb,
                             checkpoint_every=args.checkpoint_every)
    prompts = read_prompts(args.prompts)
    out = check_destination(args.out or atlas_folder(args.release, args.kind), "--out")
    model = model_spec.build()
    encoder = encoder_spec.build(model.config, model_spec)
    bars: list[_Bar] = []  # opened with the first progress report: a prompt file refused before sampling shows none

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(_Bar("atlas"))
        bars[0].steps(done, total, {}, "atlas (prompts)")

    try:
        result = build_atlas(model, encoder, transcoders, prompts, out, settings, decode=decoder_for(model_spec),
                             resume=not args.no_resume, progress=progress, model_info=model_spec.describe(),
                             prompt_source=args.prompts)
    finally:
        for bar in bars:
            bar.close()
    if not result.written:
        return
    atlas = Atlas.load(out, {site: transcoders.config(site) for site in transcoders.sites})
    labels = [label for site in atlas.sites for label in atlas.labels(site).values()]
    named = sum(label.confidence > 0 for label in labels)
    size = sum(path.stat().st_size for path in Path(out).iterdir())
    print(f"wrote {out}: {result.prompts} prompts, {len(atlas.sites)} sites, {len(labels)} features fired, "
          f"{named} labelled, {size / 2**20:.2f} MiB, {result.seconds:.1f} s ({result.resumed_batches} of "
          f"{result.batches} batches resumed)")


def build_parser() -> argparse.ArgumentParser:
    from .atlas import AtlasSettings
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
    train.add_argument("--until-step", type=_positive_int, default=None, help="checkpoint and stop at this step")
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
    toy_train.add_argument("--steps", type=_positive_int, default=ToyTrainSettings.steps)
    toy_train.add_argument("--snapshot-every", type=_positive_int, default=500,
                           help="also save the weights every N steps")
    toy_train.set_defaults(run=cmd_toy_train)

    atlas = commands.add_parser("atlas", help="a release's feature atlas: statistics, top examples and a label per "
                                "feature; torchrun-able")
    atlas.add_argument("--release", type=Path, required=True, help="the native release folder")
    atlas.add_argument("--prompts", type=Path, required=True, help="one prompt per line ('#' starts a comment line)")
    atlas.add_argument("--out", type=Path, default=None,
                       help="the atlas folder (default: RELEASE/atlas, atlas-sae for SAEs)")
    atlas.add_argument("--kind", choices=("transcoder", "sae"), default="transcoder")
    atlas.add_argument("--model", choices=("toy", "random", "reference"), default="toy",
                       help="toy: the embedded toy FLUX; reference: --weights; random: seeded random weights")
    atlas.add_argument("--weights", default=None, help="reference: FLUX safetensors (BFL names); toy: a toy-train file")
    atlas.add_argument("--flux", default="tiny", help="reference / random: schnell, dev or tiny")
    atlas.add_argument("--encoder", choices=("toy", "hashing"), default=None,
                       help="default: toy for the toy, else hashing")
    atlas.add_argument("--device", default="cpu")
    atlas.add_argument("--sites", default=None, help="e.g. 'img:0-3 txt:0' (default: every site of the release)")
    atlas.add_argument("--steps", type=int, default=None, help="sampling steps (default: the toy's 12, else 4)")
    atlas.add_argument("--latent-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="latent height and width (default: the toy's 16 16, else 64 64)")
    atlas.add_argument("--batch", type=int, default=8, help="prompts sampled together")
    atlas.add_argument("--seed", type=int, default=0, help="the noise's seed")
    atlas.add_argument("--k", type=int, default=AtlasSettings.k, help="features recorded per token")
    atlas.add_argument("--buckets", type=int, default=AtlasSettings.sigma_buckets,
                       help="sigma buckets of the statistics")
    atlas.add_argument("--top-n", type=int, default=AtlasSettings.top_n, help="top activating prompts kept per feature")
    atlas.add_argument("--crops", type=int, default=AtlasSettings.crops_per_feature,
                       help="image crops kept per feature")
    atlas.add_argument("--vocabulary", type=int, default=AtlasSettings.vocabulary_size, help="prompt words tracked")
    atlas.add_argument("--cap-mb", type=float, default=AtlasSettings.cap_mb, help="the build's own memory cap")
    atlas.add_argument("--checkpoint-every", type=int, default=AtlasSettings.checkpoint_every,
                       help="batches between saves")
    atlas.add_argument("--no-resume", action="store_true",
                       help="ignore a stopped build of the same atlas and start over")
    atlas.set_defaults(run=cmd_atlas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DiffractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
