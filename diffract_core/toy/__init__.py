"""The embedded toy: the toy FLUX (`load_toy`) with its text encoder and latent codec,
coloured-shape scenes, their prompts, and an exact binding scorer."""

from . import codec
from .binding import (
    BindingScore,
    DetectedObject,
    ObjectScore,
    PromptSetScore,
    find_objects,
    score_binding,
    score_prompt_set,
    shuffled_label_binding_errors,
)
from .embedded import ASSETS, load_toy
from .model import ToyModel
from .scenes import COLOURS, SHAPES, Scene, ShapeObject, is_held_out, parse_prompt, render, sample_scene, scene_for
from .text_encoder import VOCABULARY, ToyTextEncoder

__all__ = [
    "ASSETS",
    "COLOURS",
    "SHAPES",
    "VOCABULARY",
    "BindingScore",
    "DetectedObject",
    "ObjectScore",
    "PromptSetScore",
    "Scene",
    "ShapeObject",
    "ToyModel",
    "ToyTextEncoder",
    "codec",
    "find_objects",
    "is_held_out",
    "load_toy",
    "parse_prompt",
    "render",
    "sample_scene",
    "scene_for",
    "score_binding",
    "score_prompt_set",
    "shuffled_label_binding_errors",
]
