"""What Record Features keeps: the top-k features of every token, per site, sigma and cond chunk.

Records live on the CPU as sparse codes (indices + values per token). One sampler step can call
the model several times (cond and uncond chunks, second-order samplers), so records are keyed by
sigma and chunk, and sigmas map to step indices through the run's own sigma schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import DiffractError, SiteNotLoadedError
from ..features import FeatureRef
from ..transcoders.transcoder import SparseCodes
from ..transcoders.transcoder_set import SiteKey, describe_sites

if TYPE_CHECKING:
    from .call_inputs import CallInputs

COND, UNCOND = 0, 1
CHUNK_NAMES: dict[int, str] = {COND: "cond", UNCOND: "uncond"}  # ComfyUI's cond_or_uncond labels


@dataclass(frozen=True, order=True)
class RecordKey:
    stream: str
    layer: int
    sigma: float
    chunk: int  # 0 = cond, 1 = uncond (ComfyUI's cond_or_uncond labels)

    @property
    def site(self) -> SiteKey:
        return (self.stream, self.layer)  # type: ignore[return-value]


@dataclass
class FeatureRecording:
    """Sparse feature activations of one sampling run."""

    sites: tuple[SiteKey, ...]
    k: int
    chunks: frozenset[int] = frozenset({COND})
    schedule: tuple[float, ...] = ()  # the run's sigmas, first to last (the final 0 included)
    image_grid: tuple[int, int] | None = None  # (rows, cols) of image tokens
    text_tokens: int | None = None
    keep_input_steps: frozenset[int] = frozenset()  # steps whose model-call inputs are kept for tracing
    records: dict[RecordKey, list[SparseCodes]] = field(default_factory=dict)
    calls: dict[tuple[float, int], CallInputs] = field(default_factory=dict)  # (sigma, chunk) -> inputs
    skipped: str | None = None  # why the last run's call inputs could not be kept
    complete: bool = False  # the last run finished (False while it runs and after an interrupt)
    runs: int = 0  # sampling runs started so far

    def start_run(self, schedule: torch.Tensor | tuple[float, ...]) -> None:
        """Forget the last run's records and take the new run's sigma schedule."""
        self.schedule = tuple(float(s) for s in torch.as_tensor(schedule).flatten().tolist())
        self.records.clear()
        self.calls.clear()
        self.skipped = None
        self.complete = False
        self.runs += 1

    def finish_run(self) -> None:
        self.complete = True

    def note_layout(self, image_grid: tuple[int, int] | None, text_tokens: int | None) -> None:
        """Take the token layout of the model call being recorded."""
        if image_grid is not None:
            self.image_grid = image_grid
        if text_tokens is not None:
            self.text_tokens = text_tokens

    def add(self, key: RecordKey, codes: SparseCodes) -> None:
        """Store one model call's codes ([batch, tokens, k]) on the CPU."""
        cpu = SparseCodes(
            indices=codes.indices.to("cpu", torch.int32),
            values=codes.values.to("cpu", torch.float16),
            d_features=codes.d_features,
        )
        self.records.setdefault(key, []).append(cpu)

    def step_of(self, sigma: float) -> int:
        """Index of the step whose sigma this is (the nearest sigma of the schedule)."""
        if not self.schedule:
            raise DiffractError("this recording has no sigma schedule yet: run the sampler first")
        distances = [abs(s - sigma) for s in self.schedule[:-1] or self.schedule]
        return min(range(len(distances)), key=distances.__getitem__)

    @property
    def steps(self) -> list[int]:
        return sorted({self.step_of(key.sigma) for key in self.records})

    def codes(self, site: SiteKey, step: int, chunk: int = COND) -> SparseCodes:
        """The first model call's codes at a step (a step may call the model more than once)."""
        if site not in self.sites:
            raise SiteNotLoadedError(
                f"site {site[0]}:{site[1]} was not recorded; this recording holds [{describe_sites(self.sites)}]"
            )
        for key in sorted(self.records, key=lambda k: -k.sigma):
            if key.site == site and key.chunk == chunk and self.step_of(key.sigma) == step:
                return self.records[key][0]
        recorded = ", ".join(str(s) for s in self.steps) or "none"
        raise DiffractError(
            f"no record of {site[0]}:{site[1]} at step {step} for the {CHUNK_NAMES.get(chunk, chunk)} chunk; "
            f"recorded steps: {recorded}"
        )

    def feature_map(self, feature: FeatureRef, step: int, chunk: int = COND) -> torch.Tensor:
        """Activation of one feature at every token, [batch, tokens] (0 where it was not in the top k)."""
        codes = self.codes(feature.site, step, chunk)
        hits = codes.indices == feature.index
        return torch.where(hits, codes.values.float(), torch.zeros((), dtype=torch.float32)).sum(-1)

    @property
    def nbytes(self) -> int:
        total = sum(c.indices.nbytes + c.values.nbytes for calls in self.records.values() for c in calls)
        return total + sum(call.nbytes for call in self.calls.values())

    def call_inputs(self, step: int, chunk: int = COND) -> CallInputs:
        """The kept inputs of the model call at `step` for `chunk` (the first call of that step)."""
        for sigma, kept_chunk in sorted(self.calls, key=lambda key: -key[0]):
            if kept_chunk == chunk and self.step_of(sigma) == step:
                return self.calls[(sigma, kept_chunk)]
        kept = sorted({self.step_of(sigma) for sigma, c in self.calls if c == chunk})
        label = CHUNK_NAMES.get(chunk, str(chunk))
        if not self.runs:
            raise DiffractError("this recording has not seen a sampling run yet: "
                                "sample with the MODEL of Record Features first")
        if self.skipped is not None:
            raise DiffractError(f"Record Features could not keep the model inputs: {self.skipped}")
        if step not in self.keep_input_steps:
            raise DiffractError(
                f"Record Features did not keep the model inputs of step {step}: add {step} to its keep_inputs_at_steps "
                f"(now: {', '.join(map(str, sorted(self.keep_input_steps))) or 'empty'}) and sample again"
            )
        raise DiffractError(
            f"no kept inputs for step {step} of the {label} chunk (kept: {', '.join(map(str, kept)) or 'none'}): "
            f"record the {label} chunk, and let the sampler reach step {step}"
        )

    def __deepcopy__(self, memo: dict[int, object]) -> FeatureRecording:
        # Shared between ComfyUI clones of a patched model: the run writes to this very object.
        return self
