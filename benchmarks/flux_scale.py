"""Peak memory and time of recording and of tracing at FLUX width with random weights (hidden 3072,
24 heads, MLP 12288, F = 49152 features per transcoder, fp32), at 512 and 1024 px, against the goals:

- a 16-layer trace of 1000 nodes at 1024 px peaks at <= 12 GB, transcoders included;
- recording all 34 released sites (img and txt at layers 0-15 and 18) fits 24 GB with FLUX through
  offloading: checked as recording peak + the 34 sites' transcoders <= 24 GB (FLUX's weights offloaded);
- a 1000-node graph at 1024 px takes <= 30 s on an H100-class GPU.

`--whole` (the default with `--device cuda`) builds FLUX's 19 double blocks (and one single block,
which no transcoder covers) with transcoders at the 34 released sites, records them all and traces
16 layers: every figure is measured.

`--layers` (default 2 3 on the CPU) builds models of L double blocks with transcoders at all 2L
sites, records them, traces a target at layer L-1, and extrapolates to the goals with this model,
each line a least-squares fit over the layer counts:

- peak(L) = fixed + slope * L, for the trace (to 16 traced layers) and for the recording (to 17
  recorded layers = 34 sites). Peaks are measured above the resident model and transcoders; the
  transcoders' own bytes (sites x bytes per site, exact) are added on top.
- trace seconds = setup(L) + per_pass(L) * (passes - 1), passes = 1 + ceil(1000 / batch rows):
  setup(L) is a trace of the target alone (budget 0: building the replacement model plus the
  target's backward pass), per_pass(L) = (seconds - setup) / (backward passes - 1) of the budgeted
  trace; setup and per_pass are each a line in L.
- recording seconds(L) = fixed + slope * L: one model call, the recorded double blocks only.

A 1-layer trace has no feature below its target (one pass, no feature rows), so layer counts start
at 2. Peak memory is torch.cuda.max_memory_allocated, or RSS sampled on the CPU.

`--transcoder-dtype` stores the transcoders in fp32 (default), bf16 or fp8 (e4m3, one scale per
feature). `--transcoders-on cpu` keeps them in host memory while the model runs on the device, as
ComfyUI leaves sites it has no room for: recording and tracing then cast the rows they use per
call, so the device holds none of the transcoders' own bytes (`+transc.` adds none).

    python benchmarks/flux_scale.py                                        # CPU, extrapolated
    python benchmarks/flux_scale.py --device cuda --json flux_scale.json   # measured
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import torch
from flux_sizes import FLUX1, TRACED_STEP, flux_config, random_flux, random_inputs, random_transcoders, record_call
from timing import PeakMemory

from diffract_core.attribution import TargetSpec, TraceSettings, trace_circuit
from diffract_core.flux import Flux
from diffract_core.recording import CallInputs
from diffract_core.transcoders import TranscoderSet

MIB, GIB, GB = 2**20, 2**30, 10**9
TRACED_LAYERS = 16
RELEASED_LAYERS = (*range(16), 18)
GOAL_NODES = 1000
GOAL_PIXELS = 1024
GOAL_TRACE_BYTES = 12 * GB
GOAL_RECORDING_BYTES = 24 * GB
GOAL_TRACE_SECONDS = 30.0
RECORDED_TOP_K = 64


@dataclass(frozen=True)
class Scale:
    """A model to measure: its double blocks, the layers whose img and txt sites carry (recorded)
    transcoders, and the layers a trace crosses (its target sits in the last)."""

    label: str
    whole: bool
    double_blocks: int
    recorded_layers: tuple[int, ...]
    traced_layers: int


@dataclass(frozen=True)
class Measurement:
    scale: str
    whole: bool
    pixels: int
    recorded_sites: int
    traced_layers: int
    site_bytes: int
    recording_peak_bytes: int
    recording_seconds: float
    setup_seconds: float  # a trace of the target alone
    trace_peak_bytes: int  # above the resident model and transcoders
    trace_seconds: float
    backward_passes: int
    rows: int  # expanded: the target and the features

    transcoders_on_device: bool

    @property
    def device_site_bytes(self) -> int:
        """A site's bytes in device memory: none where the transcoders stay offloaded."""
        return self.site_bytes if self.transcoders_on_device else 0

    @property
    def traced_transcoder_bytes(self) -> int:
        return 2 * self.traced_layers * self.device_site_bytes

    @property
    def seconds_per_pass(self) -> float:
        if self.backward_passes < 2:
            raise SystemExit(f"the {self.scale} trace at {self.pixels} px expanded no feature, so it times no "
                             "feature pass; raise --nodes or the layer counts")
        return (self.trace_seconds - self.setup_seconds) / (self.backward_passes - 1)


@dataclass(frozen=True)
class GoalFigures:
    """The goals' case (16 traced layers, 1000 nodes, 34 recorded sites) at one resolution."""

    how: str
    trace_peak_bytes: int
    trace_transcoder_bytes: int
    trace_setup_seconds: float
    trace_passes: int
    trace_seconds_per_pass: float
    recording_peak_bytes: int
    recording_transcoder_bytes: int
    recording_seconds: float

    @property
    def trace_seconds(self) -> float:
        return self.trace_setup_seconds + (self.trace_passes - 1) * self.trace_seconds_per_pass


def goal_passes(batch_size: int) -> int:
    return 1 + math.ceil(GOAL_NODES / batch_size)


def fitted(layers: list[int], values: list[float], at: int) -> float:
    slope, intercept = statistics.linear_regression(layers, values)
    return intercept + slope * at


def extrapolated_goals(measured: list[Measurement], batch_size: int) -> GoalFigures:
    traced = [m.traced_layers for m in measured]
    recorded = [m.recorded_sites // 2 for m in measured]
    return GoalFigures(
        how=f"extrapolated from {', '.join(m.scale for m in measured)}",
        trace_peak_bytes=round(fitted(traced, [m.trace_peak_bytes for m in measured], TRACED_LAYERS)),
        trace_transcoder_bytes=2 * TRACED_LAYERS * measured[0].device_site_bytes,
        trace_setup_seconds=fitted(traced, [m.setup_seconds for m in measured], TRACED_LAYERS),
        trace_passes=goal_passes(batch_size),
        trace_seconds_per_pass=fitted(traced, [m.seconds_per_pass for m in measured], TRACED_LAYERS),
        recording_peak_bytes=round(fitted(recorded, [m.recording_peak_bytes for m in measured], len(RELEASED_LAYERS))),
        recording_transcoder_bytes=2 * len(RELEASED_LAYERS) * measured[0].device_site_bytes,
        recording_seconds=fitted(recorded, [m.recording_seconds for m in measured], len(RELEASED_LAYERS)),
    )


def measured_goals(whole: Measurement, batch_size: int, nodes: int) -> GoalFigures:
    """The whole model's figures; its trace time is modelled to 1000 nodes only if it ran another budget."""
    at_goal = nodes == GOAL_NODES
    return GoalFigures(
        how="measured" if at_goal else f"measured, trace time modelled from {nodes} nodes",
        trace_peak_bytes=whole.trace_peak_bytes,
        trace_transcoder_bytes=whole.traced_transcoder_bytes,
        trace_setup_seconds=whole.setup_seconds,
        trace_passes=whole.backward_passes if at_goal else goal_passes(batch_size),
        trace_seconds_per_pass=whole.seconds_per_pass,
        recording_peak_bytes=whole.recording_peak_bytes,
        recording_transcoder_bytes=whole.recorded_sites * whole.device_site_bytes,
        recording_seconds=whole.recording_seconds,
    )


def planned_scales(args: argparse.Namespace) -> list[Scale]:
    scales = [Scale(f"{layers} layers", False, layers, tuple(range(layers)), layers) for layers in args.layers]
    if args.whole:
        scales.append(Scale(f"whole ({FLUX1['depth']} blocks)", True, FLUX1["depth"], RELEASED_LAYERS, TRACED_LAYERS))
    return scales


def stored_transcoders(layers: tuple[int, ...], args: argparse.Namespace, device: torch.device) -> TranscoderSet:
    """Random transcoders at `layers`, stored as `--transcoder-dtype` says where `--transcoders-on` says."""
    where = device if args.transcoders_on == "device" else torch.device("cpu")
    transcoders = random_transcoders(layers, args.hidden, args.features, where)
    for transcoder in transcoders.values():
        if args.transcoder_dtype == "bf16":
            transcoder.cast_parameters(torch.bfloat16)
        elif args.transcoder_dtype == "fp8":
            transcoder.quantise_fp8()
        transcoder.placement_managed = args.transcoders_on == "cpu"  # computed where it is, never moved
    return transcoders


def site_bytes(transcoders: TranscoderSet) -> int:
    transcoder = next(iter(transcoders.values()))
    return sum(t.nbytes for t in chain(transcoder.parameters(), transcoder.buffers()))


def return_freed_heap() -> None:
    """glibc keeps freed heap pages mapped, so RSS would hide the next block's reuse of them."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def seconds_since(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure_recording(
    model: Flux, transcoders: TranscoderSet, inputs: dict[str, torch.Tensor], device: torch.device
) -> tuple[CallInputs, int, float]:
    """The call kept for tracing, and the recording's peak bytes and seconds."""
    if device.type == "cuda":
        record_call(model, transcoders, inputs, RECORDED_TOP_K)  # warm-up: CUDA and cuBLAS initialise lazily
    return_freed_heap()
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        recording = record_call(model, transcoders, inputs, RECORDED_TOP_K)
        seconds = seconds_since(started, device)
    return recording.call_inputs(TRACED_STEP), memory.peak, seconds


def measure(
    scale: Scale, model: Flux, transcoders: TranscoderSet, pixels: int, args: argparse.Namespace,
    device: torch.device,
) -> Measurement:
    inputs = random_inputs(model.config, pixels, args.text_tokens, device)
    call, recording_peak, recording_seconds = measure_recording(model, transcoders, inputs, device)
    target = TargetSpec("img", scale.traced_layers - 1, 0, "argmax")

    def trace(nodes: int) -> tuple[int, float, int, int]:
        """Peak bytes, seconds, backward passes and expanded rows of a trace with this budget."""
        return_freed_heap()
        settings = TraceSettings(max_feature_nodes=nodes, batch_size=args.batch_size)
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            graph = trace_circuit(model.double_blocks, transcoders, call, target, step=TRACED_STEP,
                                  settings=settings, device=device)
            seconds = seconds_since(started, device)
        meta = graph.require_metadata()
        assert meta.passes is not None
        return memory.peak, seconds, meta.passes.backward, meta.rows

    _, setup_seconds, _, _ = trace(0)
    trace_peak, trace_seconds, passes, rows = trace(args.nodes)
    return Measurement(
        scale=scale.label, whole=scale.whole, pixels=pixels, recorded_sites=2 * len(scale.recorded_layers),
        traced_layers=scale.traced_layers, site_bytes=site_bytes(transcoders), recording_peak_bytes=recording_peak,
        recording_seconds=recording_seconds, setup_seconds=setup_seconds, trace_peak_bytes=trace_peak,
        trace_seconds=trace_seconds, backward_passes=passes, rows=rows,
        transcoders_on_device=args.transcoders_on == "device" or device.type == "cpu",
    )


def measure_scale(scale: Scale, args: argparse.Namespace, device: torch.device) -> list[Measurement]:
    """One model and its transcoders, built once, measured at every resolution."""
    config = flux_config(args.hidden, args.heads, scale.double_blocks, single=1, mlp_ratio=args.mlp / args.hidden)
    model = random_flux(config, device)
    transcoders = stored_transcoders(scale.recorded_layers, args, device)
    measured = []
    for pixels in args.pixels:
        measured.append(measure(scale, model, transcoders, pixels, args, device))
        print_row(measured[-1])
    return measured


TABLE = (f"{'px':>5} {'scale':18} {'sites':>5} {'transcoders':>11} {'rec peak':>9} {'rec s':>8} {'trace peak':>10} "
         f"{'+transc.':>9} {'trace s':>8} {'setup s':>8} {'passes':>6} {'rows':>5}")


def print_row(m: Measurement) -> None:
    print(f"{m.pixels:5d} {m.scale:18} {m.recorded_sites:5d} {m.recorded_sites * m.site_bytes / MIB:11.1f} "
          f"{m.recording_peak_bytes / MIB:9.1f} {m.recording_seconds:8.2f} {m.trace_peak_bytes / MIB:10.1f} "
          f"{(m.trace_peak_bytes + m.traced_transcoder_bytes) / MIB:9.1f} {m.trace_seconds:8.2f} "
          f"{m.setup_seconds:8.2f} {m.backward_passes:6d} {m.rows:5d}", flush=True)


def verdict(met: bool, pixels: int) -> str:
    if pixels != GOAL_PIXELS:
        return f"goal stated at {GOAL_PIXELS} px"
    return "met" if met else "MISSED"


def time_verdict(seconds: float, pixels: int, device: torch.device) -> str:
    if device.type != "cuda":
        return "not checkable on the CPU"
    return f"{verdict(seconds <= GOAL_TRACE_SECONDS, pixels)} on {torch.cuda.get_device_name(device)}"


def print_goals(pixels: int, goals: GoalFigures, device: torch.device) -> None:
    trace_total = goals.trace_peak_bytes + goals.trace_transcoder_bytes
    recording_total = goals.recording_peak_bytes + goals.recording_transcoder_bytes
    print(f"{pixels} px, {TRACED_LAYERS}-layer trace of {GOAL_NODES} nodes, {2 * len(RELEASED_LAYERS)}-site "
          f"recording ({goals.how}):")
    print(f"  trace peak: {goals.trace_peak_bytes / GIB:.2f} GiB + transcoders "
          f"{goals.trace_transcoder_bytes / GIB:.2f} GiB = {trace_total / GIB:.2f} GiB; "
          f"goal <= {GOAL_TRACE_BYTES // GB} GB: {verdict(trace_total <= GOAL_TRACE_BYTES, pixels)}")
    print(f"  trace time: {goals.trace_setup_seconds:.1f} s setup + {goals.trace_passes - 1} passes x "
          f"{goals.trace_seconds_per_pass:.2f} s = {goals.trace_seconds:.1f} s; goal <= {GOAL_TRACE_SECONDS:.0f} s "
          f"on an H100-class GPU: {time_verdict(goals.trace_seconds, pixels, device)}")
    print(f"  recording peak: {goals.recording_peak_bytes / GIB:.2f} GiB + transcoders "
          f"{goals.recording_transcoder_bytes / GIB:.2f} GiB = {recording_total / GIB:.2f} GiB; goal: fits "
          f"{GOAL_RECORDING_BYTES // GB} GB with FLUX offloaded: "
          f"{verdict(recording_total <= GOAL_RECORDING_BYTES, pixels)}")
    print(f"  recording time: {goals.recording_seconds:.2f} s per model call (recorded double blocks only)")


def goals_by_resolution(
    measured: list[Measurement], args: argparse.Namespace
) -> dict[int, dict[str, GoalFigures]]:
    goals: dict[int, dict[str, GoalFigures]] = {}
    for pixels in args.pixels:
        partial = [m for m in measured if m.pixels == pixels and not m.whole]
        whole = [m for m in measured if m.pixels == pixels and m.whole]
        goals[pixels] = {}
        if partial:
            goals[pixels]["extrapolated"] = extrapolated_goals(partial, args.batch_size)
        if whole:
            goals[pixels]["measured"] = measured_goals(whole[0], args.batch_size, args.nodes)
    return goals


def figures(measured: list[Measurement], goals: dict[int, dict[str, GoalFigures]], args: argparse.Namespace,
            device: torch.device) -> dict[str, object]:
    return {
        "settings": {name: value for name, value in vars(args).items() if name != "json"} | {
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "dtype": "float32", "recorded_top_k": RECORDED_TOP_K},
        "goals": {"traced_layers": TRACED_LAYERS, "nodes": GOAL_NODES, "recorded_sites": 2 * len(RELEASED_LAYERS),
                  "pixels": GOAL_PIXELS, "trace_peak_bytes": GOAL_TRACE_BYTES, "recording_bytes": GOAL_RECORDING_BYTES,
                  "trace_seconds": GOAL_TRACE_SECONDS},
        "measured": [asdict(m) for m in measured],
        "at_goals": {str(pixels): {how: asdict(g) | {"trace_seconds": g.trace_seconds} for how, g in by_how.items()}
                     for pixels, by_how in goals.items()},
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--layers", type=int, nargs="*", help="double-block counts to extrapolate from "
                        "(default: 2 3 on the CPU, none on cuda)")
    parser.add_argument("--whole", action=argparse.BooleanOptionalAction,
                        help=f"also measure the whole model: {FLUX1['depth']} double blocks, 34 sites, a "
                        f"{TRACED_LAYERS}-layer trace (default: on with cuda)")
    parser.add_argument("--pixels", type=int, nargs="+", help="image sides (default: 512 on the CPU, 512 1024 on cuda)")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--nodes", type=int, help=f"feature budget per trace (default: 16 on the CPU, {GOAL_NODES})")
    parser.add_argument("--batch-size", type=int, help="target rows per backward pass (default: 8 on the CPU, 64)")
    parser.add_argument("--hidden", type=int, default=FLUX1["hidden"])
    parser.add_argument("--heads", type=int, default=FLUX1["heads"])
    parser.add_argument("--mlp", type=int, default=4 * FLUX1["hidden"], help="MLP hidden width")
    parser.add_argument("--features", type=int, default=FLUX1["features"], help="features per transcoder")
    parser.add_argument("--transcoder-dtype", choices=("fp32", "bf16", "fp8"), default="fp32",
                        help="how the transcoders are stored")
    parser.add_argument("--transcoders-on", choices=("device", "cpu"), default="device",
                        help="where the transcoders are stored (cpu: offloaded, rows cast per call)")
    parser.add_argument("--json", type=Path, help="write the figures (bytes and seconds) to this file")
    args = parser.parse_args()
    on_cpu = args.device == "cpu"
    defaults = {"layers": [2, 3] if on_cpu else [], "whole": not on_cpu, "pixels": [512] if on_cpu else [512, 1024],
                "nodes": 16 if on_cpu else GOAL_NODES, "batch_size": 8 if on_cpu else 64}
    vars(args).update({name: value for name, value in defaults.items() if getattr(args, name) is None})
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: this PyTorch sees no CUDA device")
    if not args.layers and not args.whole:
        parser.error("nothing to measure: give --layers or --whole")
    if args.layers and (len(set(args.layers)) < 2 or min(args.layers) < 2):
        parser.error(f"--layers needs two or more different counts of at least 2 to fit a line (a 1-layer trace "
                     f"has no feature below its target), got {args.layers}")
    if any(pixels < 16 or pixels % 16 for pixels in args.pixels):
        parser.error(f"--pixels must be positive multiples of 16 (2x2 patches of 8x latents), got {args.pixels}")
    for name in ("text_tokens", "nodes", "batch_size", "hidden", "heads", "mlp", "features"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} fp32 hidden={args.hidden} heads={args.heads} "
          f"mlp={args.mlp} F={args.features} text tokens={args.text_tokens} nodes={args.nodes} "
          f"batch rows={args.batch_size} record k={RECORDED_TOP_K} transcoders {args.transcoder_dtype} "
          f"on {args.transcoders_on}")
    print(TABLE + "   (memory in MiB; peaks above the resident model and transcoders)", flush=True)
    measured = [m for scale in planned_scales(args) for m in measure_scale(scale, args, device)]
    goals = goals_by_resolution(measured, args)
    if args.layers:
        print("model: peak(L) = fixed + slope*L; trace s = setup(L) + per_pass(L) * (passes - 1) with passes = "
              f"1 + ceil({GOAL_NODES} / batch rows); recording s(L) = fixed + slope*L; least squares over L")
    for pixels, by_how in goals.items():
        for goal_figures in by_how.values():
            print_goals(pixels, goal_figures, device)
    if args.json is not None:
        args.json.write_text(json.dumps(figures(measured, goals, args, device), indent=2, default=str))


if __name__ == "__main__":
    main()
