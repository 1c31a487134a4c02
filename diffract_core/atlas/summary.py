"""From a site's merged build statistics to what the atlas stores for it: rows for the features
that fired at least once (dead features have none), as small dtypes.

Word association is the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi and
Quinn 2008, "Fightin' Words"), as a z-score: the feature's "corpus" is the words of the prompts it
fired in, each prompt weighted by the feature's peak there relative to its strongest prompt, against
the words of every other prompt; the prior is the whole prompt set's word frequencies times
`prior_strength`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .colours import COLOUR_NAMES
from .statistics import Layout, SiteStatistics, from_fixed, to_fixed


@dataclass(frozen=True)
class SummaryShape:
    """The sizes of one site's stored arrays (all but `features`, the live-feature count)."""

    buckets: int
    top_n: int
    vocabulary: int  # tracked prompt words
    words_per_feature: int
    cells: int  # region cells per side
    crops: int  # crop tiles per image feature

    @property
    def words_kept(self) -> int:
        return min(self.words_per_feature, self.vocabulary)

    @property
    def tokens_kept(self) -> int:
        return min(self.words_per_feature, self.vocabulary + 2)

    def layout(self, stream: str, features: int) -> Layout:
        a, b, n = features, self.buckets, self.top_n
        f16, f32, i16, i32, i64 = torch.float16, torch.float32, torch.int16, torch.int32, torch.int64
        layout: Layout = {
            "features": ((a,), i32),  # the live features' indices, ascending
            "tokens": ((b,), i64),  # token positions seen per sigma bucket
            "fired": ((a, b), i64),  # tokens where each feature fired, per bucket
            "mean": ((a, b), f32),  # its mean activation where it fired
            "max": ((a, b), f16),
            "prompts_fired": ((a,), i32),
            "top_value": ((a, n), f16),  # -1: no example
            "top_prompt": ((a, n), i32),  # -1: no example
            "top_step": ((a, n), i16),
            "top_token": ((a, n), i32),
            "word_ids": ((a, self.words_kept), i16),  # most associated prompt words, best first (-1: none)
            "word_z": ((a, self.words_kept), f16),  # their log-odds z-scores
            "word_share": ((a, self.words_kept), f16),  # peak-weighted share of its prompts containing the word
            "word_base": ((self.vocabulary,), f32),  # share of all prompts containing each word
        }
        if stream == "txt":
            layout["token_ids"] = ((a, self.tokens_kept), i16)  # text strings it fires on most, best first
            layout["token_share"] = ((a, self.tokens_kept), f16)  # share of its activation on each
            layout["token_base"] = ((self.vocabulary + 2,), f32)  # share of all text positions with each string
        else:
            c, r = len(COLOUR_NAMES), self.cells**2
            layout["colour_share"] = ((a, c), f16)  # share of its activation on tokens of each colour
            layout["colour_base"] = ((c,), f32)  # share of all image tokens of each colour (zeros: no images)
            layout["cell_share"] = ((a, r), f16)  # share of its activation in each region cell
            layout["cell_base"] = ((r,), f32)  # share of all image tokens in each cell
            layout["crop_tiles"] = ((a, self.crops), i32)  # crop tile of each of its best examples (-1: none)
        return layout


def _shares(mass: torch.Tensor) -> torch.Tensor:
    total = mass.sum(-1, keepdim=True)
    return mass.double() / total.clamp(min=1)


def _ranked(scores: torch.Tensor, keep: int, valid: torch.Tensor) -> torch.Tensor:
    """long [rows, keep]: the columns of the highest scores (ties: lower column first), -1 where invalid."""
    order = torch.argsort(-scores, dim=1, stable=True)[:, :keep]
    return torch.where(valid.gather(1, order), order, -1)


def log_odds_z(word_mass: torch.Tensor, strongest: torch.Tensor, word_prompts: torch.Tensor,
               prior_strength: float) -> torch.Tensor:
    """float64 [features, words]: each word's log-odds z-score for each feature's prompts against
    the other prompts. word_mass and strongest (the feature's highest peak) are fixed point."""
    ours = word_mass.double() / strongest.double().clamp(min=1)[:, None]
    everyone = word_prompts.double()[None, :]
    theirs = (everyone - ours).clamp(min=0)
    alpha = prior_strength * everyone / everyone.sum().clamp(min=1)

    def log_odds(counts: torch.Tensor) -> torch.Tensor:
        total = counts.sum(1, keepdim=True)
        return torch.log(counts + alpha) - torch.log((total + prior_strength - counts - alpha).clamp(min=1e-12))

    delta = log_odds(ours) - log_odds(theirs)
    variance = 1 / (ours + alpha) + 1 / (theirs + alpha)
    return delta / variance.sqrt()


def summarise_site(stats: SiteStatistics, shape: SummaryShape, prior_strength: float) -> dict[str, torch.Tensor]:
    """The stored arrays of one site; `crop_tiles` starts at -1 (the crops are cut afterwards)."""
    a = stats.arrays
    alive = torch.nonzero(a["prompts_fired"] > 0).squeeze(-1)
    fired = a["fired"][alive]
    mean = torch.where(fired > 0, from_fixed(a["mass"][alive]) / fired.clamp(min=1), 0.0)
    strongest = to_fixed(a["top_value"][alive, 0].clamp(min=0))
    z = log_odds_z(a["word_mass"][alive], strongest, a["word_prompts"], prior_strength)
    word_share = a["word_mass"][alive].double() / a["prompt_mass"][alive, None].double().clamp(min=1)
    words = _ranked(z, shape.words_kept, torch.ones_like(z, dtype=torch.bool))
    out = {
        "features": alive.to(torch.int32),
        "tokens": a["tokens"].clone(),
        "fired": fired,
        "mean": mean.float(),
        "max": a["peak"][alive].half(),
        "prompts_fired": a["prompts_fired"][alive].to(torch.int32),
        "top_value": a["top_value"][alive].half(),
        "top_prompt": a["top_prompt"][alive],
        "top_step": a["top_step"][alive].to(torch.int16),
        "top_token": a["top_token"][alive],
        "word_ids": words.to(torch.int16),
        "word_z": z.gather(1, words.clamp(min=0)).half(),
        "word_share": word_share.gather(1, words.clamp(min=0)).half(),
        "word_base": (a["word_prompts"].double() / a["prompts"].double().clamp(min=1)).float(),
    }
    if stats.stream == "txt":
        token_share = _shares(a["token_mass"][alive])
        tokens = _ranked(token_share, shape.tokens_kept, token_share > 0)
        out["token_ids"] = tokens.to(torch.int16)
        out["token_share"] = token_share.gather(1, tokens.clamp(min=0)).where(tokens >= 0, 0.0).half()
        out["token_base"] = _shares(a["token_count"]).float()
    else:
        out["colour_share"] = _shares(a["colour_mass"][alive]).half()
        out["colour_base"] = _shares(a["colour_count"]).float()
        out["cell_share"] = _shares(a["cell_mass"][alive]).half()
        out["cell_base"] = _shares(a["cell_count"]).float()
        out["crop_tiles"] = torch.full((len(alive), shape.crops), -1, dtype=torch.int32)
    return out
