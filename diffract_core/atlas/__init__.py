"""The feature atlas of a release: per feature, statistics per sigma bucket, its top activating
prompts (with image crops or text context), the prompt words most associated with it, and an
automatic label. Built from a prompt set with `build_atlas` (or `python -m diffract_core atlas`),
stored beside the release in `atlas/`, read back with `Atlas.open`."""

from .builder import AtlasBuild, build_atlas
from .labels import Attribute, FeatureLabel, LabelRule, label_site
from .settings import AtlasSettings
from .storage import Atlas, Example, FeatureStats, atlas_folder

__all__ = [
    "Atlas",
    "AtlasBuild",
    "AtlasSettings",
    "Attribute",
    "Example",
    "FeatureLabel",
    "FeatureStats",
    "LabelRule",
    "atlas_folder",
    "build_atlas",
    "label_site",
]
