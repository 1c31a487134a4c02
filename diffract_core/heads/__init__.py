"""Attention heads of FLUX's double blocks: what each head looks at (entropy per route, spatial
locality, focus on text tokens) at every kept denoising step, roles found by clustering those
profiles, and what zeroing a head does (to a transcoder feature inside a kept call, or to the
sampled result), with bootstrap intervals and permutation tests over prompts."""

from .ablation import HEADS_HELP, HeadAblation, HeadKey, parse_heads, zero_heads
from .feature_effects import FeatureEffects, feature_ablation_effects
from .metrics import METRIC_HELP, METRICS, ROUTES, LayerHeadStats, grid_distances, layer_head_stats
from .payload import heads_payload
from .profile import HeadProfile, head_profile
from .reference import ablate_reference_heads
from .roles import ROLE_FEATURES, HeadRoles, classify_heads
from .sampling_effects import final_latent_effects
from .statistics import bootstrap_interval, fdr_adjust, paired_sign_flip_test, permutation_test

__all__ = [
    "HEADS_HELP",
    "METRICS",
    "METRIC_HELP",
    "ROLE_FEATURES",
    "ROUTES",
    "FeatureEffects",
    "HeadAblation",
    "HeadKey",
    "HeadProfile",
    "HeadRoles",
    "LayerHeadStats",
    "ablate_reference_heads",
    "bootstrap_interval",
    "classify_heads",
    "fdr_adjust",
    "feature_ablation_effects",
    "final_latent_effects",
    "grid_distances",
    "head_profile",
    "heads_payload",
    "layer_head_stats",
    "paired_sign_flip_test",
    "parse_heads",
    "permutation_test",
    "zero_heads",
]
