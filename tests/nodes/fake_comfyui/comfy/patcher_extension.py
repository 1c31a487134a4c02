"""Fake of comfy/patcher_extension.py: wrapper types and the executor chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    DIFFUSION_MODEL = "diffusion_model"


class WrapperExecutor:
    """Calls the wrappers outermost first; each continues the chain with executor(*args, **kwargs)."""

    def __init__(self, original: Callable[..., Any], class_obj: Any, wrappers: list[Callable[..., Any]],
                 index: int = 0):
        self.original, self.class_obj, self.wrappers, self.index = original, class_obj, wrappers, index

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.index == len(self.wrappers):
            return self.original(*args, **kwargs)
        nxt = WrapperExecutor(self.original, self.class_obj, self.wrappers, self.index + 1)
        return self.wrappers[self.index](nxt, *args, **kwargs)

    execute = __call__
