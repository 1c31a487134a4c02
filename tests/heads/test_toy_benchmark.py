"""benchmarks/toy_attention_heads.py still runs (at a tiny size) and reports every part; its figures
come from the full-size run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "toy_attention_heads.py"


def test_toy_attention_heads_benchmark_runs_and_reports_every_part(tmp_path: Path) -> None:
    figures, image = tmp_path / "heads.json", tmp_path / "heads.png"
    args = ["--prompts", "3", "--eval-prompts", "3", "--random-sets", "2", "--steps", "2", "--json", str(figures),
            "--image", str(image)]
    out = subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(figures.read_text())
    assert len(result["colour_focus"]["training"]) == 4 and len(result["colour_focus"]["training"][0]) == 2
    ablation = result["ablation"]
    assert len(ablation["colour_heads"]) == 2 and len(ablation["random_sets"]) == 2
    assert set(ablation) >= {"binding_error", "all_right", "colour_wrong", "shape_lost"}
    assert len(ablation["binding_error"]["single_heads"]) == 8
    assert set(result["training_vs_held_out"]) == {"entropy", "entropy_img_txt", "text_focus"}
    assert result["roles"]["roles"] and image.stat().st_size > 0
    assert "colour heads:" in out.stdout and "roles:" in out.stdout
