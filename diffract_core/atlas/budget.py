"""The memory an atlas build needs beyond plain sampling, fixed before it starts: the statistics of
every site (sized by the features, not by the prompt count), a second copy of them while a
checkpoint is written or another rank's statistics are merged, and one batch in flight (its
recording, the recording's dense encoder chunk or the update of the statistics, and its images).

The bound is of memory in use. glibc's malloc keeps much of what a model call or a batch frees
instead of giving it back (`memory.py`), so the build trims it after each of them
(`memory.release_freed_memory`); otherwise its resident memory would grow with the number of batches
although what it holds does not."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import DiffractError
from ..transcoders.transcoder import Transcoder
from ..transcoders.transcoder_set import SiteKey
from .sampling import preview_shape
from .settings import AtlasSettings
from .statistics import Dimensions

MIB = 2**20
RECORDED_BYTES = 6  # per kept code: an int32 index and an fp16 value
ENCODE_BYTES = 12  # per (row, feature) of one recording chunk: pre-activations, codes and the top-k pass, fp32
ENCODE_CHUNK_ROWS = inspect.signature(Transcoder.encode_topk).parameters["chunk_rows"].default
ENTRY_BYTES = 96  # per positive code while a batch is added: its prompt, token, feature, value, step, key, ...
PROMPT_FEATURE_BYTES = 112  # per (prompt, feature) while a batch is added: peak, first position, box, candidates
TOP_ENTRY_BYTES = 48  # per (feature, candidate) while the top lists merge: five fields and two sort orders
DECODED_BYTES = 12  # per decoded pixel: float32 RGB
PREVIEW_BYTES = 3  # per kept pixel: uint8 RGB
COLOUR_PASS_BYTES = 200  # per kept pixel of one image: CIELAB, distances to the colour terms, one-hot shares


@dataclass(frozen=True)
class MemoryBudget:
    state_bytes: int
    batch_bytes: int
    cap_bytes: int

    @property
    def bound_bytes(self) -> int:
        return 2 * self.state_bytes + self.batch_bytes

    def check(self) -> None:
        if self.bound_bytes > self.cap_bytes:
            raise DiffractError(
                f"the atlas build needs about {self.bound_bytes / MIB:.1f} MiB of its own (statistics "
                f"{self.state_bytes / MIB:.1f} MiB, twice while a checkpoint is written; one batch "
                f"{self.batch_bytes / MIB:.1f} MiB) but its cap is {self.cap_bytes / MIB:.1f} MiB: raise the cap "
                "(--cap-mb), or lower --top-n, --vocabulary, --k or the prompts per batch, or build fewer --sites "
                "at a time"
            )


def memory_budget(
    d_features: Mapping[SiteKey, int],
    settings: AtlasSettings,
    *,
    vocabulary: int,
    image_tokens: int,
    text_tokens: int,
    image_size: tuple[int, int] | None,
) -> MemoryBudget:
    """The bound for these sites (site -> d_features), token counts per image and prompt, and
    decoded image size (None: no decoder)."""
    steps, prompts = settings.sampling.steps, settings.sampling.prompts_per_call
    state = 0
    recorded = 0
    largest_update = 0
    for (stream, _layer), features in d_features.items():
        dimensions = Dimensions(features, settings.sigma_buckets, settings.top_n, vocabulary, settings.region_cells)
        state += dimensions.state_bytes(stream)
        tokens = image_tokens if stream == "img" else text_tokens
        codes = prompts * steps * tokens * min(settings.k, features)
        recorded += codes * RECORDED_BYTES
        update = max(min(prompts * tokens, ENCODE_CHUNK_ROWS) * features * ENCODE_BYTES,  # while sampling
                     codes * ENTRY_BYTES + prompts * features * PROMPT_FEATURE_BYTES  # while the batch is added
                     + features * (settings.top_n + prompts) * TOP_ENTRY_BYTES)
        largest_update = max(largest_update, update)
    images = 0
    if image_size is not None:
        kept = preview_shape(*image_size, settings.preview_size)
        images = (prompts * (image_size[0] * image_size[1] * DECODED_BYTES + kept[0] * kept[1] * PREVIEW_BYTES)
                  + kept[0] * kept[1] * COLOUR_PASS_BYTES)
    batch = recorded + largest_update + images
    return MemoryBudget(state, batch, int(settings.cap_mb * MIB))
