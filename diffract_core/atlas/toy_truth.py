"""How many features of a toy atlas are monosemantic, and how often their labels say what for.

The toy world tells what every token shows. The atlas's prompts are sampled again exactly as its
build sampled them (the same batches, noise, sites and k, hence the same codes), and each token gets
its ground-truth attributes:
- an image token covered at least half by a detected object (`toy.binding.find_objects` on the
  generated image): that object's ("colour", c), ("shape", s) and ("slot", left / right / centre);
  any other image token: ("background", "");
- a text position: ("word", w), its word (PAD for padding).
A feature's precision for an attribute is the share of its activation on tokens that have it; it is
monosemantic when one attribute has precision >= `precision`. Its label is right when it names one
of those attributes: a colour term names the toy colours (and the background) it is the nearest
term of, a region names the slots inside it, a prompt word or token string names that word (and the
colour or shape it is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..spatial import Grid, mask_to_token_weights
from ..toy import codec
from ..toy.binding import find_objects
from ..toy.model import ToyModel
from ..toy.scenes import BACKGROUND, COLOURS, SHAPES, parse_prompt
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .colours import colour_term
from .labels import Attribute
from .prompts import PAD, PromptSet
from .sampling import batch_count, batch_prompt_ids, sample_recorded, site_calls
from .storage import Atlas

TruthAttribute = tuple[str, str]
SLOT_REGIONS: dict[str, frozenset[str]] = {
    "left": frozenset({"left half", "top-left", "bottom-left"}),
    "right": frozenset({"right half", "top-right", "bottom-right"}),
    "centre": frozenset({"centre"}),
}


def truth_attributes(vocabulary: tuple[str, ...]) -> list[TruthAttribute]:
    words = [("word", word) for word in (*vocabulary, PAD)]
    return ([("colour", c) for c in COLOURS] + [("shape", s) for s in SHAPES] + [("slot", s) for s in SLOT_REGIONS]
            + [("background", "")] + words)


def named_by(attribute: Attribute) -> set[TruthAttribute]:
    """The ground-truth attributes a label attribute names."""
    if attribute.kind == "colour":
        named = {("colour", c) for c, rgb in COLOURS.items() if colour_term(rgb) == attribute.value}
        return named | ({("background", "")} if colour_term(BACKGROUND) == attribute.value else set())
    if attribute.kind == "region":
        return {("slot", slot) for slot, names in SLOT_REGIONS.items() if attribute.value in names}
    word = attribute.value
    shape = {("shape", word)} if word in SHAPES else set()
    return {("word", word)} | shape | ({("colour", word)} if word in COLOURS else set())


def _image_truth(images: torch.Tensor, prompts: list[str], grid: Grid,
                 attributes: list[TruthAttribute]) -> torch.Tensor:
    """bool [P, image tokens, attributes]."""
    index = {a: i for i, a in enumerate(attributes)}
    truth = torch.zeros(len(prompts), grid[0] * grid[1], len(attributes), dtype=torch.bool)
    for row, (image, prompt) in enumerate(zip(images, prompts)):
        covered = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
        for found in find_objects(image, len(parse_prompt(prompt))):
            if not found.area:
                continue
            tokens = mask_to_token_weights(found.mask.float(), grid) >= 0.5
            covered |= tokens
            for attribute in (("colour", found.colour), ("shape", found.shape), ("slot", found.slot)):
                if attribute in index:
                    truth[row, tokens, index[attribute]] = True
        truth[row, ~covered, index[("background", "")]] = True
    return truth


def _text_truth(prompt_set: PromptSet, ids: list[int], tokens: int, attributes: list[TruthAttribute]) -> torch.Tensor:
    index = {a: i for i, a in enumerate(attributes)}
    truth = torch.zeros(len(ids), tokens, len(attributes), dtype=torch.bool)
    for row, prompt in enumerate(ids):
        for position, word in enumerate(prompt_set.token_strings(prompt, tokens)):
            if ("word", word) in index:
                truth[row, position, index[("word", word)]] = True
    return truth


@dataclass
class StreamScore:
    features: int = 0  # live features with activation in the re-run
    monosemantic: int = 0  # precision >= the threshold for one attribute
    labelled: int = 0  # label other than "unclear"
    labelled_monosemantic: int = 0
    correct: int = 0  # labelled monosemantic features whose label names one of their attributes
    label_precision_sum: float = 0.0  # over labelled features: precision of what the first attribute names

    @property
    def monosemantic_share(self) -> float:
        return self.monosemantic / max(self.features, 1)

    @property
    def label_accuracy(self) -> float:
        return self.correct / max(self.labelled_monosemantic, 1)

    @property
    def coverage(self) -> float:
        """Share of the monosemantic features that got a label."""
        return self.labelled_monosemantic / max(self.monosemantic, 1)

    @property
    def label_precision(self) -> float:
        return self.label_precision_sum / max(self.labelled, 1)


@dataclass
class ToyAtlasEvaluation:
    precision: float
    streams: dict[str, StreamScore] = field(default_factory=dict)
    by_attribute: dict[str, int] = field(default_factory=dict)  # monosemantic features per kind of attribute

    @property
    def total(self) -> StreamScore:
        total = StreamScore()
        for score in self.streams.values():
            for name in ("features", "monosemantic", "labelled", "labelled_monosemantic", "correct",
                         "label_precision_sum"):
                setattr(total, name, getattr(total, name) + getattr(score, name))
        return total

    def to_dict(self) -> dict[str, Any]:
        def scored(score: StreamScore) -> dict[str, Any]:
            return {**asdict(score), "monosemantic_share": score.monosemantic_share,
                    "label_accuracy": score.label_accuracy, "coverage": score.coverage,
                    "label_precision": score.label_precision}

        return {"precision": self.precision, "total": scored(self.total), "by_attribute": self.by_attribute,
                "streams": {name: scored(score) for name, score in self.streams.items()}}


@torch.no_grad()
def evaluate_toy_atlas(atlas: Atlas, model: ToyModel, transcoders: TranscoderSet, *, precision: float = 0.9,
                       progress: Callable[[int, int], None] | None = None) -> ToyAtlasEvaluation:
    """Score a toy atlas against the toy world's ground truth (the atlas of `transcoders`, sampled
    with `model`)."""
    settings, sites = atlas.settings, atlas.sites
    prompt_set = atlas.prompt_set
    attributes = truth_attributes(prompt_set.vocabulary)
    # One column per attribute, and a last one for the feature's whole activation.
    mass = {site: torch.zeros(transcoders.config(site).d_features, len(attributes) + 1, dtype=torch.float64)
            for site in sites}
    batches = batch_count(len(prompt_set.prompts), settings)
    for batch in range(batches):
        ids = batch_prompt_ids(batch, len(prompt_set.prompts), settings)
        prompts = [prompt_set.prompts[i] for i in ids]
        recording, images = sample_recorded(model.flux, model.text_encoder, transcoders, prompts, sites, settings,
                                            codec.decode)
        assert images is not None and recording.image_grid is not None and recording.text_tokens is not None
        truth = {"img": _image_truth(images, prompts, recording.image_grid, attributes),
                 "txt": _text_truth(prompt_set, ids, recording.text_tokens, attributes)}
        for site in sites:
            for _step, _bucket, codes in site_calls(recording, site, settings.sigma_buckets):
                _add_mass(mass[site], codes.indices.long(), codes.values.double(), truth[site[0]])
        if progress is not None:
            progress(batch + 1, batches)
    return _score(atlas, mass, attributes, precision)


def _add_mass(mass: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, truth: torch.Tensor) -> None:
    p, t, j = torch.nonzero(values > 0, as_tuple=True)
    columns = torch.cat([truth[p, t].double(), torch.ones(len(p), 1, dtype=torch.float64)], 1)
    mass.index_add_(0, indices[p, t, j], values[p, t, j, None] * columns)


def _score(atlas: Atlas, mass: dict[SiteKey, torch.Tensor], attributes: list[TruthAttribute],
           precision: float) -> ToyAtlasEvaluation:
    evaluation = ToyAtlasEvaluation(precision)
    index = {a: i for i, a in enumerate(attributes)}
    for site, site_mass in mass.items():
        score = evaluation.streams.setdefault(site[0], StreamScore())
        for feature, label in atlas.labels(site).items():
            total = float(site_mass[feature, -1])
            if total <= 0:
                continue
            shares = site_mass[feature, :-1] / total
            score.features += 1
            pure = {attributes[i] for i in torch.nonzero(shares >= precision).flatten().tolist()}
            if pure:
                score.monosemantic += 1
                kinds = sorted({kind for kind, _ in pure})
                for kind in kinds:
                    evaluation.by_attribute[kind] = evaluation.by_attribute.get(kind, 0) + 1
            if label.confidence == 0:  # unclear, or broad: nothing stands out to be right or wrong about
                continue
            score.labelled += 1
            first = [index[a] for a in named_by(label.attributes[0]) if a in index]
            score.label_precision_sum += float(shares[first].max()) if first else 0.0
            if pure:
                score.labelled_monosemantic += 1
                named = set().union(*(named_by(a) for a in label.attributes))
                score.correct += bool(named & pure)
    return evaluation
