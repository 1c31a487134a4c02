"""The feature atlas of a release: per feature, statistics per sigma bucket, its top activating
prompts (with image crops or text context), the prompt words most associated with it, and an
automatic label, and a feature's dashboard. Built from a prompt set with `build_atlas` (or
`python -m diffract_core atlas`), stored beside the release in `atlas/`, read back with `Atlas.open`."""

from .builder import AtlasBuild, build_atlas
from .cards import feature_cards, feature_labels
from .dashboard import EXAMPLES, describe_feature, render_dashboard
from .labels import Attribute, FeatureLabel, LabelRule, label_site
from .sampling import ImageDecoder
from .settings import AtlasSettings
from .storage import Atlas, Example, FeatureStats, atlas_folder

__all__ = [
    "EXAMPLES",
    "Atlas",
    "AtlasBuild",
    "AtlasSettings",
    "Attribute",
    "Example",
    "FeatureLabel",
    "FeatureStats",
    "ImageDecoder",
    "LabelRule",
    "atlas_folder",
    "build_atlas",
    "describe_feature",
    "feature_cards",
    "feature_labels",
    "label_site",
    "render_dashboard",
]
