"""A one-file HTML report: images inlined as PNG data, tables, and the circuit's JSON, so it opens
offline and can be mailed around."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..render.images import png_data_uri

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .3em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 1.2em 0 .3em; }
.lead { font-size: 1.1em; } nav { font-size: .9em; color: #555; } nav a { margin-right: .8em; }
figure { display: inline-block; margin: 0 .8em .8em 0; vertical-align: top; text-align: center; }
figcaption { font-size: .85em; color: #444; max-width: 24em; margin: .3em auto 0; }
img.pixel { image-rendering: pixelated; border: 1px solid #ccc; }
.big figcaption { font-size: .95em; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
.bad { color: #b00020; } .good { color: #006d2c; } code { background: #f4f4f4; padding: 0 .2em; }
.badge { display: inline-block; padding: 0 .5em; border-radius: .8em; color: #fff; font-weight: 600; font-size: .9em; }
.badge.good { background: #1a7f37; } .badge.bad { background: #c62828; }
.facts th { background: #fafafa; width: 11em; vertical-align: top; } .facts td:nth-child(2) { white-space: nowrap; }
.side { display: flex; gap: 1.2em; align-items: flex-start; } .side figure { flex: none; }
.side figcaption { max-width: 10em; }
details { margin: .6em 0; } summary { cursor: pointer; color: #444; }
a.term { color: inherit; text-decoration: underline dotted #888; }
dl.glossary dt { font-weight: 600; margin-top: .5em; } dl.glossary dd { margin: 0 0 0 1.5em; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(124px, 1fr)); gap: 12px 8px; }
.thumbs figure { margin: 0; }
.thumbs figcaption { font-size: .75em; line-height: 1.25; }
.thumbs img { outline: 3px solid transparent; outline-offset: 2px; border-color: #888; }
.thumbs .error img, .legend .error { outline-color: #d50000; }
.thumbs .right img, .legend .right { outline-color: #1a9850; }
.mark { color: #d50000; font-weight: 600; }
.thumbs .shown img { outline-style: double; outline-width: 6px; }
.legend { list-style: none; padding: 0; } .legend li { margin: .3em 0; }
.legend i { display: inline-block; width: 1.1em; height: 1.1em; margin: 0 .6em 0 .2em; vertical-align: -.2em;
            background: #111; outline: 3px solid transparent; outline-offset: 1px; }
.legend .shown { outline: 6px double #d50000; }
"""


def anchor(text: str) -> str:
    """The id write_report gives a section of this heading."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def term_id(text: str) -> str:
    """The id of a term's entry in `glossary_html` (apart from the sections' ids)."""
    return f"term-{anchor(text)}"


def figure(image: torch.Tensor, caption: str, scale: int = 4, css_class: str = "", caption_html: str = "") -> str:
    """An image shown `scale` times its size without smoothing (the PNG keeps the image's own size;
    the browser enlarges it pixel by pixel); `caption_html`, if given, follows the escaped caption."""
    height, width = image.shape[-2:] if image.shape[0] == 3 and image.shape[-1] != 3 else image.shape[:2]
    return (
        f'<figure class="{css_class}"><img class="pixel" src="{png_data_uri(image)}" width="{width * scale}" '
        f'height="{height * scale}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}{caption_html}</figcaption></figure>"
    )


def term(text: str, glossary: Mapping[str, str]) -> str:
    """`text` escaped, as a link to its glossary entry (its definition on hover) if it has one."""
    if text not in glossary:
        return html.escape(text)
    return f'<a class="term" href="#{term_id(text)}" title="{html.escape(glossary[text])}">{html.escape(text)}</a>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], glossary: Mapping[str, str] | None = None) -> str:
    """Cells are escaped; column names that `glossary` defines link to their definition."""
    head = "".join(f"<th>{term(str(h), glossary or {})}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def glossary_html(glossary: Mapping[str, str]) -> str:
    entries = "".join(
        f'<dt id="{term_id(name)}">{html.escape(name)}</dt><dd>{html.escape(text)}</dd>'
        for name, text in glossary.items()
    )
    return f'<dl class="glossary">{entries}</dl>'


def write_report(
    path: Path,
    title: str,
    sections: Sequence[tuple[str, str]],
    data: dict[str, Any],
    script: str = "",
    *,
    lead: str = "",
) -> Path:
    """`sections`: (heading, HTML body) pairs, each heading with the id `anchor(heading)`; `lead`:
    HTML between the title and the first section; `data` is embedded as JSON (id="diffract-data")
    and `script` (the viewers, see diffract_core.viewer) runs as an inline module after it."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{lead}",
    ]
    parts += [f'<h2 id="{anchor(heading)}">{html.escape(heading)}</h2>{body}' for heading, body in sections]
    payload = json.dumps(data).replace("</", "<\\/")  # a JSON string may not close the script element
    parts.append(f'<script type="application/json" id="diffract-data">{payload}</script>')
    if script:
        parts.append(f'<script type="module">{script}</script>')
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path
