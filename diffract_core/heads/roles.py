"""Heads grouped into functional roles by their attention profiles.

Each head is described by how sharp its image-to-image attention is (entropy_img_img), how far it
looks (locality) and how much image queries read the text (text_focus), each averaged over images
per step, so a head's whole course over the denoising steps counts. The columns are z-scored and
clustered with k-means (k-means++ starts, best of several); the number of roles is the k of 2..6
with the largest mean silhouette, and one role only when no k reaches a silhouette of 0.25 (Kaufman
and Rousseeuw's line below which a clustering shows no substantial structure).

A role is named by its centre's most distinctive trait, in units of the heads' spread, each trait
given to one role: "text-reading" (reads the text most), "local" (sharp and near: the edge-like
heads of the paper), "diffuse" (broad and far: texture and global layout), otherwise "mixed". The
names describe what was measured; they do not prove a function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidDataError, SettingsError
from .ablation import HeadKey
from .profile import HeadProfile

ROLE_FEATURES = ("entropy_img_img", "locality", "text_focus")
MIN_SILHOUETTE = 0.25
DISTINCT = 0.5  # a trait names a role when its centre sits this many standard deviations from the mean


@dataclass(frozen=True)
class HeadRoles:
    heads: tuple[HeadKey, ...]  # (layer, head), layer-major
    assignment: torch.Tensor  # [heads] role index of each head
    names: tuple[str, ...]  # per role
    centres: torch.Tensor  # [roles, len(ROLE_FEATURES)]: the role's mean profile, averaged over steps
    silhouettes: dict[int, float]  # k -> mean silhouette of the best k-means clustering

    def role_of(self, head: HeadKey) -> str:
        return self.names[int(self.assignment[self.heads.index(head)])]

    def to_dict(self) -> dict[str, object]:
        return {
            "features": list(ROLE_FEATURES),
            "roles": [{"name": name, "centre": dict(zip(ROLE_FEATURES, self.centres[r].tolist())),
                       "heads": [f"{layer}:{head}" for (layer, head), at in zip(self.heads, self.assignment.tolist())
                                 if at == r]}
                      for r, name in enumerate(self.names)],
            "silhouettes": {str(k): v for k, v in self.silhouettes.items()},
        }


def _kmeans(points: torch.Tensor, k: int, generator: torch.Generator, restarts: int,
            iterations: int = 100) -> torch.Tensor:
    """The assignment [n] of the restart with the least within-cluster sum of squares."""
    best, best_cost = None, float("inf")
    for _ in range(restarts):
        centres = points[torch.randint(len(points), (1,), generator=generator)]
        for _ in range(1, k):  # k-means++: far points are likelier starts
            nearest = torch.cdist(points, centres).min(1).values.square()
            if float(nearest.sum()) == 0:
                break
            centres = torch.cat((centres, points[torch.multinomial(nearest, 1, generator=generator)]))
        assignment = torch.cdist(points, centres).argmin(1)
        for _ in range(iterations):
            centres = torch.stack([points[assignment == c].mean(0) if bool((assignment == c).any()) else centres[c]
                                   for c in range(len(centres))])
            updated = torch.cdist(points, centres).argmin(1)
            if torch.equal(updated, assignment):
                break
            assignment = updated
        cost = float(sum(((points[assignment == c] - centres[c]) ** 2).sum() for c in range(len(centres))))
        if cost < best_cost:
            best, best_cost = assignment, cost
    assert best is not None
    return best


def silhouette(points: torch.Tensor, assignment: torch.Tensor) -> float:
    """Mean silhouette (Rousseeuw 1987); a point alone in its cluster scores 0."""
    distances = torch.cdist(points, points)
    clusters = assignment.unique()
    if len(clusters) < 2:
        return 0.0
    scores = []
    for i in range(len(points)):
        own = assignment == assignment[i]
        if int(own.sum()) == 1:
            scores.append(0.0)
            continue
        within = float(distances[i, own].sum()) / (int(own.sum()) - 1)
        between = min(float(distances[i, assignment == c].mean()) for c in clusters if c != assignment[i])
        scores.append((between - within) / max(within, between) if max(within, between) > 0 else 0.0)
    return sum(scores) / len(scores)


def _names(centres_z: torch.Tensor) -> tuple[str, ...]:
    """Each role's most distinctive trait, each trait given once, to the role that shows it most
    (roles left over, or with no trait DISTINCT enough, are "mixed", numbered when repeated)."""
    entropy, locality, text = centres_z.unbind(-1)
    traits = {"text-reading": text, "local": -(entropy + locality) / 2, "diffuse": (entropy + locality) / 2}
    pairs = sorted(((float(score[r]), trait, r) for trait, score in traits.items() for r in range(len(centres_z))),
                   reverse=True)
    names: dict[int, str] = {}
    for score, trait, role in pairs:
        if score >= DISTINCT and role not in names and trait not in names.values():
            names[role] = trait
    mixed = [r for r in range(len(centres_z)) if r not in names]
    names |= {r: "mixed" if len(mixed) == 1 else f"mixed {i + 1}" for i, r in enumerate(mixed)}
    return tuple(names[r] for r in range(len(centres_z)))


def classify_heads(profile: HeadProfile, *, max_roles: int = 6, restarts: int = 10, seed: int = 0) -> HeadRoles:
    """Roles of the profile's heads (see the module docstring for how many and why)."""
    if max_roles < 1:
        raise SettingsError(f"max_roles must be at least 1, got {max_roles}")
    per_step = torch.stack([profile.metric(name).mean(0) for name in ROLE_FEATURES], dim=-1)  # [steps, L, H, F]
    if not bool(torch.isfinite(per_step).all()):
        raise InvalidDataError("the head profile holds non-finite values; classify a profile of finite statistics")
    heads = tuple((layer, head) for layer in range(profile.layers) for head in range(profile.heads))
    vectors = per_step.permute(1, 2, 0, 3).reshape(len(heads), -1)  # each head's course over the steps
    spread = vectors.std(0, unbiased=False)
    points = torch.where(spread > 0, (vectors - vectors.mean(0)) / spread.clamp(min=1e-12), torch.zeros_like(vectors))
    generator = torch.Generator().manual_seed(seed)
    silhouettes: dict[int, float] = {}
    assignments: dict[int, torch.Tensor] = {1: torch.zeros(len(heads), dtype=torch.long)}
    for k in range(2, min(max_roles, len(heads) - 1) + 1):
        assignments[k] = _kmeans(points.float(), k, generator, restarts)
        silhouettes[k] = silhouette(points.float(), assignments[k])
    best = max(silhouettes, key=lambda k: silhouettes[k], default=1)
    chosen = best if silhouettes.get(best, 0.0) >= MIN_SILHOUETTE else 1
    _, assignment = assignments[chosen].unique(return_inverse=True)  # roles numbered 0..k-1 without gaps
    traits = per_step.mean(0).reshape(len(heads), -1)  # averaged over steps: [heads, F]
    traits_z = (traits - traits.mean(0)) / traits.std(0, unbiased=False).clamp(min=1e-12)
    roles = int(assignment.max()) + 1
    centres = torch.stack([traits[assignment == r].mean(0) for r in range(roles)])
    names = _names(torch.stack([traits_z[assignment == r].mean(0) for r in range(roles)])) if roles > 1 else (
        "undifferentiated",)
    return HeadRoles(heads, assignment, names, centres, silhouettes)

