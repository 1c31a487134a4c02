"""Train and evaluate timestep-conditioned transcoders (and the SAE baseline).

harvest (model -> activation shards) -> train (shards -> native release) -> evaluate / sweep.
Command line: `python -m diffract_core harvest | train | evaluate | sweep --config FILE`.
"""

from .evaluation import SiteMetrics, SplicedFidelity, site_metrics, spliced_fidelity
from .harvest import HarvestReport, HarvestSettings, capture_mlp_io, harvest
from .prompts import HashingPromptEncoder, PromptEncoder, PromptSplit, split_prompts
from .settings import TrainSettings
from .shards import ActivationShards, ShardWriter
from .trainer import TrainResult, train

__all__ = [
    "ActivationShards",
    "HarvestReport",
    "HarvestSettings",
    "HashingPromptEncoder",
    "PromptEncoder",
    "PromptSplit",
    "ShardWriter",
    "SiteMetrics",
    "SplicedFidelity",
    "TrainResult",
    "TrainSettings",
    "capture_mlp_io",
    "harvest",
    "site_metrics",
    "spliced_fidelity",
    "split_prompts",
    "train",
]
