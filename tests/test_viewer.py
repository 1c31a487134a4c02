"""diffract_core.viewer: the heatmap bytes and the viewer modules joined for standalone pages."""

from __future__ import annotations

import base64

import pytest
import torch

from diffract_core import viewer
from diffract_core.errors import DiffractError


def test_token_maps_are_one_byte_per_token_clamped_to_the_unit_range() -> None:
    encoded = viewer.encode_token_map(torch.tensor([[-1.0, 0.0], [0.5, 2.0]]))
    assert list(base64.b64decode(encoded)) == [0, 0, 128, 255]


def test_the_standalone_script_inlines_every_module_once_in_import_order() -> None:
    script = viewer.standalone_script()
    assert "\nimport " not in script and "\nexport " not in script
    order = [script.index(f"class {name}") for name in ("HeatmapView", "CircuitView")]
    assert script.index("function parseCircuit") < script.index("class CircuitView")
    assert script.index("function createRoot") < min(order)
    assert script.rstrip().endswith("mountStandalone(document);")


def test_a_missing_web_folder_names_the_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(viewer, "WEB_MODULES", tmp_path / "web" / "diffract")
    with pytest.raises(DiffractError, match="pip install -e"):
        viewer.standalone_script()


def test_an_import_cycle_is_refused(monkeypatch, tmp_path) -> None:
    (tmp_path / "standalone.js").write_text('import { a } from "./a.js";\n')
    (tmp_path / "a.js").write_text('import { b } from "./standalone.js";\nexport const a = 1;\n')
    monkeypatch.setattr(viewer, "WEB_MODULES", tmp_path)
    with pytest.raises(DiffractError, match="cycle"):
        viewer.standalone_script()
