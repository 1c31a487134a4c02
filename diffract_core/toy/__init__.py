"""The embedded toy: coloured-shape scenes, their prompts, and an exact binding scorer."""

from .binding import BindingScore, DetectedObject, PromptSetScore, find_objects, score_binding, score_prompt_set
from .scenes import COLOURS, HELD_OUT, SHAPES, Scene, ShapeObject, parse_prompt, render, sample_scene

__all__ = [
    "COLOURS",
    "HELD_OUT",
    "SHAPES",
    "BindingScore",
    "DetectedObject",
    "PromptSetScore",
    "Scene",
    "ShapeObject",
    "find_objects",
    "parse_prompt",
    "render",
    "sample_scene",
    "score_binding",
    "score_prompt_set",
]
