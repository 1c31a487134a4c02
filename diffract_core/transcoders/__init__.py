"""Timestep-conditioned transcoders: the module, its formats and sets of them."""

from .config import KINDS, STREAMS, Site, SiteSpec, TimeEmbeddingSpec, TranscoderConfig, dtype_from_name
from .convert import convert_file, convert_release, format_reports, inspect_path
from .native import CONFIG_FILE, MANIFEST_FILE, load_site, save_site, site_folders
from .release import load_release_state_dict, parse_release_name, release_state_dict
from .time_embedding import sinusoidal_embedding
from .transcoder import SparseCodes, Transcoder
from .transcoder_set import SiteKey, TranscoderSet, describe_sites

__all__ = [
    "CONFIG_FILE",
    "KINDS",
    "MANIFEST_FILE",
    "STREAMS",
    "Site",
    "SiteKey",
    "SiteSpec",
    "SparseCodes",
    "TimeEmbeddingSpec",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderSet",
    "convert_file",
    "convert_release",
    "describe_sites",
    "dtype_from_name",
    "format_reports",
    "inspect_path",
    "load_release_state_dict",
    "load_site",
    "parse_release_name",
    "release_state_dict",
    "save_site",
    "sinusoidal_embedding",
    "site_folders",
]
