"""A one-file HTML report: images inlined as PNG data, tables, and the circuit's JSON, so it opens
offline and can be mailed around."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..render.images import png_data_uri

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { display: inline-block; margin: 0 .6em .8em 0; vertical-align: top; text-align: center; }
figcaption { font-size: .8em; color: #555; max-width: 16em; }
img.pixel { image-rendering: pixelated; border: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
.bad { color: #b00020; } .good { color: #006d2c; } code { background: #f4f4f4; padding: 0 .2em; }
"""


def figure(image: torch.Tensor, caption: str, scale: int = 4) -> str:
    return (f'<figure><img class="pixel" src="{png_data_uri(image, scale)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(path: Path, title: str, sections: Sequence[tuple[str, str]], data: dict[str, Any], script: str = "") -> Path:
    """`sections`: (heading, HTML body) pairs; `data` is embedded as JSON (id="diffract-data") and
    `script` (the viewers, see diffract_core.viewer) runs as an inline module after it."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in sections]
    payload = json.dumps(data).replace("</", "<\\/")  # a JSON string may not close the script element
    parts.append(f'<script type="application/json" id="diffract-data">{payload}</script>')
    if script:
        parts.append(f'<script type="module">{script}</script>')
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path
