"""The end of a build: merged statistics -> stored arrays, labels and crops -> the atlas folder."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..spatial import Grid
from ..transcoders.config import TranscoderConfig
from ..transcoders.transcoder_set import SiteKey
from .checkpoint import load_images
from .colours import COLOUR_NAMES
from .crops import TileStore, crop_window, cut_crops
from .labels import LabelRule, label_site
from .prompts import PromptSet
from .settings import AtlasSettings
from .statistics import SiteStatistics
from .storage import ATLAS_FORMAT, ATLAS_VERSION, write_atlas
from .summary import SummaryShape, summarise_site


@dataclass(frozen=True)
class BuildFacts:
    """What the sampling established, for the atlas's index."""

    schedule: tuple[float, ...]
    image_grid: Grid | None
    text_tokens: int | None
    batches: int
    images: bool  # final images were kept for crops
    ranks: int
    seconds: float


def assemble_atlas(out: Path, work: Path, merged: Mapping[SiteKey, SiteStatistics],
                   configs: Mapping[SiteKey, TranscoderConfig], prompt_set: PromptSet, settings: AtlasSettings,
                   facts: BuildFacts, rule: LabelRule, model_info: Mapping[str, Any] | None) -> Path:
    shape = SummaryShape(settings.sigma_buckets, settings.top_n, len(prompt_set.vocabulary),
                         settings.words_per_feature, settings.region_cells, settings.crops_per_feature)
    arrays = {site: summarise_site(stats, shape, settings.prior_strength) for site, stats in sorted(merged.items())}
    labels = {site: label_site(site[0], site_arrays, vocabulary=prompt_set.vocabulary, schedule=facts.schedule,
                               cells=settings.region_cells, rule=rule) for site, site_arrays in arrays.items()}
    tiles = _cut_crops(work, merged, arrays, settings, facts) if facts.images and facts.image_grid else None
    kind = next(iter(configs.values())).kind
    info = {
        "format": ATLAS_FORMAT,
        "format_version": ATLAS_VERSION,
        "release": {"kind": kind, "sites": [
            {"stream": s, "layer": layer, "d_model": configs[(s, layer)].d_model,
             "d_features": configs[(s, layer)].d_features,
             "weights_sha256": configs[(s, layer)].provenance.get("weights_sha256")} for s, layer in sorted(merged)]},
        "model": dict(model_info or {}),
        "settings": settings.to_dict(),
        "label_rule": asdict(rule),
        "prompts": len(prompt_set.prompts),
        "vocabulary": list(prompt_set.vocabulary),
        "colour_names": list(COLOUR_NAMES),
        "schedule": list(facts.schedule),
        "image_grid": list(facts.image_grid) if facts.image_grid else None,
        "text_tokens": facts.text_tokens,
        "shape": asdict(shape),
        "crop_size": settings.crop_size,
        "build": {"batches": facts.batches, "ranks": facts.ranks, "seconds": round(facts.seconds, 1)},
    }
    return write_atlas(out, info, prompt_set.prompts, arrays, labels, tiles)


def _cut_crops(work: Path, merged: Mapping[SiteKey, SiteStatistics], arrays: Mapping[SiteKey, dict],
               settings: AtlasSettings, facts: BuildFacts) -> TileStore:
    """Number the crops (sites, then features, then examples, in order), then cut them in one pass
    over the kept images, filling each site's `crop_tiles`."""
    assert facts.image_grid is not None
    wanted: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = defaultdict(list)  # prompt -> (tile, box)
    count = 0
    for site, site_arrays in arrays.items():
        if site[0] != "img":
            continue
        boxes = merged[site].arrays["top_box"]
        for row, feature in enumerate(site_arrays["features"].tolist()):
            for rank in range(settings.crops_per_feature):
                prompt = int(site_arrays["top_prompt"][row, rank])
                if prompt < 0:
                    break
                site_arrays["crop_tiles"][row, rank] = count
                wanted[prompt].append((count, tuple(boxes[feature, rank].tolist())))
                count += 1
    tiles = TileStore(work / "tiles.npy", count, settings.crop_size)
    for batch in range(facts.batches):
        prompt_ids, images = load_images(work, batch)
        for position, prompt in enumerate(prompt_ids):
            if prompt not in wanted:
                continue
            image = images[position]
            windows = [crop_window(box, facts.image_grid, image.shape[-2], image.shape[-1], settings.crop_tokens)
                       for _, box in wanted[prompt]]
            tiles.tiles[[tile for tile, _ in wanted[prompt]]] = cut_crops(image, windows, settings.crop_size).numpy()
    return tiles
