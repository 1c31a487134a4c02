"""The pack's entry point, loaded the way ComfyUI loads a custom-node folder."""

import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def test_importing_the_pack_is_cheap_and_comfy_free() -> None:
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("diffract_pack", {str(PACK / "__init__.py")!r},
                                              submodule_search_locations=[{str(PACK)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["diffract_pack"] = module
spec.loader.exec_module(module)
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "comfy", "comfy_api", "safetensors"))
print(module.WEB_DIRECTORY, callable(module.comfy_entrypoint), heavy)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["./web", "True", "[]"]


def test_library_never_imports_comfy() -> None:
    offenders = [
        str(path.relative_to(PACK))
        for path in (PACK / "diffract_core").rglob("*.py")
        if any(line.lstrip().startswith(("import comfy", "from comfy")) for line in path.read_text().splitlines())
    ]
    assert offenders == []
