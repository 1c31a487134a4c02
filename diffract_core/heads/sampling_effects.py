"""What head ablations do to the sampled result: the same noise and prompts sampled clean and with
each ablation in place (the reference FLUX, Euler), compared on the final latent."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import SettingsError
from ..flux.model import Flux
from ..flux.sampling import euler_sample
from .ablation import HeadAblation
from .profile import Progress
from .reference import ablate_reference_heads


@torch.no_grad()
def final_latent_effects(
    model: Flux,
    noise: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    sigmas: torch.Tensor,
    ablations: Sequence[HeadAblation],
    *,
    progress: Progress | None = None,
) -> torch.Tensor:
    """[ablations, images]: ||x_ablated - x_clean|| / ||x_clean|| of each image's final latent."""
    if not ablations:
        raise SettingsError("no head ablation to compare with the clean run")
    clean = euler_sample(model, noise, context, pooled, sigmas).flatten(1).double()
    effects = []
    for done, ablation in enumerate(ablations, start=1):
        with ablate_reference_heads(model, ablation):
            ablated = euler_sample(model, noise, context, pooled, sigmas).flatten(1).double()
        effects.append((ablated - clean).norm(dim=1) / clean.norm(dim=1))
        if progress is not None:
            progress(done, len(ablations))
    return torch.stack(effects)
