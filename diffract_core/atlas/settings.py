"""What an atlas build samples, keeps per feature, and how much memory it may use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import SettingsError
from ..training.harvest import HarvestSettings
from ..transcoders.transcoder_set import SiteKey

MAX_PROMPTS_PER_BATCH = 4096  # keeps the exact fixed-point word sums inside float64's integer range


@dataclass(frozen=True)
class AtlasSettings:
    # How prompts are sampled: steps, shift, latent_size, prompts_per_call (one batch), guidance and
    # seed (the noise). The harvest's other fields (sites, keep_steps, ram_cap_mb, dtype) are not read.
    sampling: HarvestSettings = field(default_factory=HarvestSettings)
    sites: tuple[SiteKey, ...] | None = None  # None: every site of the release
    k: int = 32  # features recorded per token (the recording's top k); statistics see only these
    sigma_buckets: int = 4  # statistics per sigma bucket: [0, 0.25], (0.25, 0.5], ... for 4
    top_n: int = 8  # top activating prompts kept per feature
    words_per_feature: int = 4  # associated prompt words (and text token strings) stored per feature
    vocabulary_size: int = 64  # the prompt set's most common words, which the word statistics track
    prior_strength: float = 10.0  # alpha_0 of the log-odds' informative Dirichlet prior (Monroe et al. 2008)
    region_cells: int = 4  # image positions are pooled onto this many cells per side
    crops_per_feature: int = 2  # image crops stored per image feature (of its best examples)
    crop_tokens: int = 4  # a crop's window spans at least this many image tokens per side
    crop_size: int = 16  # a crop's side in pixels, as stored
    preview_size: int = 256  # final images are kept (on disk, until the build ends) at most this many pixels a side
    cap_mb: float = 1024.0  # the build's own memory: statistics, checkpoint copy and one batch
    checkpoint_every: int = 1  # batches between saved states (a stopped build resumes from the last one)

    def __post_init__(self) -> None:
        for name in ("k", "sigma_buckets", "top_n", "words_per_feature", "vocabulary_size", "region_cells",
                     "crop_tokens", "crop_size", "preview_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SettingsError(f"atlas {name} must be at least 1, got {getattr(self, name)}")
        if self.crops_per_feature < 0 or self.crops_per_feature > self.top_n:
            raise SettingsError(f"atlas crops_per_feature must lie in 0..top_n ({self.top_n}), "
                                f"got {self.crops_per_feature}")
        if self.prior_strength <= 0 or self.cap_mb <= 0:
            raise SettingsError("atlas prior_strength and cap_mb must be positive")
        if self.sampling.prompts_per_call > MAX_PROMPTS_PER_BATCH:
            raise SettingsError(f"atlas batches hold at most {MAX_PROMPTS_PER_BATCH} prompts, "
                                f"got {self.sampling.prompts_per_call}")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["sampling"] = {key: value for key, value in asdict(self.sampling).items()
                            if key in ("steps", "shift", "latent_size", "prompts_per_call", "guidance", "seed")}
        data["sites"] = None if self.sites is None else [f"{s}:{layer}" for s, layer in self.sites]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasSettings:
        values = dict(data)
        sampling = dict(values.pop("sampling"))
        sampling["latent_size"] = tuple(sampling["latent_size"])
        sites = values.pop("sites")
        parsed = None if sites is None else tuple((s.split(":")[0], int(s.split(":")[1])) for s in sites)
        return cls(sampling=HarvestSettings(**sampling), sites=parsed, **values)  # type: ignore[arg-type]
