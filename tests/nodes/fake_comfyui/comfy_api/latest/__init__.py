"""Fake of comfy_api.latest: the V3 schema classes the pack's nodes use, with their signatures."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from types import SimpleNamespace
from typing import Any


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list[type]:
        return []


@dataclass
class Input:
    id: str
    io_type: str
    display_name: str | None = None
    optional: bool = False
    tooltip: str | None = None
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: list[str] | None = None
    multiline: bool = False


@dataclass
class Output:
    io_type: str
    id: str | None = None
    display_name: str | None = None
    tooltip: str | None = None


def _socket(io_type: str) -> type:
    class Socket:
        Type = Any

        @staticmethod
        def Input(id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                  **extra: Any) -> Input:
            return Input(id, io_type, display_name, optional, tooltip, **extra)

        @staticmethod
        def Output(id: str | None = None, display_name: str | None = None, tooltip: str | None = None) -> Output:
            return Output(io_type, id, display_name, tooltip)

    Socket.__name__ = io_type
    return Socket


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False


class ComfyNode:
    """Subclasses define the classmethods define_schema() and execute(**inputs)."""

    hidden: Any = None


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None) -> None:
        self.args = args
        self.ui = ui


def _custom(io_type: str) -> type:
    return _socket(io_type)


class _PreviewImage:
    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        self.values = [{"filename": f"preview_{i}.png", "subfolder": "", "type": "temp"} for i in range(image.shape[0])]

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (False,)}


io = SimpleNamespace(
    ComfyNode=ComfyNode,
    Schema=Schema,
    NodeOutput=NodeOutput,
    Hidden=Hidden,
    Custom=_custom,
    **{name: _socket(tag) for name, tag in [
        ("Model", "MODEL"), ("Image", "IMAGE"), ("Mask", "MASK"), ("Latent", "LATENT"), ("Clip", "CLIP"),
        ("Conditioning", "CONDITIONING"), ("Vae", "VAE"),
        ("String", "STRING"), ("Int", "INT"), ("Float", "FLOAT"), ("Boolean", "BOOLEAN"), ("Combo", "COMBO"),
    ]},
)
ui = SimpleNamespace(PreviewImage=_PreviewImage)
