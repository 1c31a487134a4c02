"""The embedded toy: coloured-shape scenes, their prompts, and an exact binding scorer."""

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
from .scenes import COLOURS, SHAPES, Scene, ShapeObject, is_held_out, parse_prompt, render, sample_scene, scene_for

__all__ = [
    "COLOURS",
    "SHAPES",
    "BindingScore",
    "DetectedObject",
    "ObjectScore",
    "PromptSetScore",
    "Scene",
    "ShapeObject",
    "find_objects",
    "is_held_out",
    "parse_prompt",
    "render",
    "sample_scene",
    "scene_for",
    "score_binding",
    "score_prompt_set",
    "shuffled_label_binding_errors",
]
