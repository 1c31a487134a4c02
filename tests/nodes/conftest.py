"""The pack's nodes against the fake ComfyUI surface in fake_comfyui/ (see its README).

The pack is imported as a package (`diffract_pack`, as ComfyUI imports a custom-node folder), so
tests build models and transcoders with `diffract_pack.diffract_core`, the copy the nodes use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

FAKE = Path(__file__).resolve().parent / "fake_comfyui"
PACK_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(FAKE))


def _import_pack() -> ModuleType:
    if "diffract_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "diffract_pack", PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["diffract_pack"] = module
        spec.loader.exec_module(module)
    return sys.modules["diffract_pack"]


@pytest.fixture(scope="session")
def pack() -> ModuleType:
    module = _import_pack()
    importlib.import_module("diffract_pack.nodes")
    return module


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ComfyUI models folder with the pack's `transcoders` entry registered."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", {})
    (tmp_path / "models" / "transcoders").mkdir(parents=True)
    return tmp_path / "models"


@pytest.fixture(scope="session")
def core(pack: ModuleType) -> ModuleType:
    for name in ("flux", "quickstart", "recording", "transcoders", "features", "errors"):
        importlib.import_module(f"diffract_pack.diffract_core.{name}")
    return pack.diffract_core


@pytest.fixture(scope="session")
def flux(core: ModuleType) -> torch.nn.Module:
    return core.flux.init_random_(core.flux.Flux(core.flux.FluxConfig.tiny()), seed=0, std=0.05).eval()


@pytest.fixture(scope="session")
def transcoders(core: ModuleType, flux: torch.nn.Module):
    hidden = flux.config.hidden_size
    return core.transcoders.TranscoderSet.from_transcoders(
        core.quickstart.random_transcoder(stream, layer, d_model=hidden, d_features=96, time_dim=16,
                                          seed=10 * layer + (stream == "txt"))
        for stream in ("img", "txt")
        for layer in range(flux.config.depth)
    )


SCHNELL_4 = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.fixture(scope="session")
def sampler(flux: torch.nn.Module):
    """sampler(model, cfg=1.0, sigmas=SCHNELL_4, callback=None) -> final latent, on fixed noise
    and prompts (a 8x12 latent: a 4x6 grid of image tokens, 5 text tokens)."""
    import fake_runtime

    cfg = flux.config
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(1, cfg.latent_channels, 8, 12, generator=generator)
    cond = (torch.randn(1, 5, cfg.context_in_dim, generator=generator),
            torch.randn(1, cfg.vec_in_dim, generator=generator))
    uncond = (torch.zeros_like(cond[0]), torch.zeros_like(cond[1]))

    def run(model, cfg_scale: float = 1.0, sigmas: torch.Tensor = SCHNELL_4, callback=None) -> torch.Tensor:
        with torch.no_grad():
            return fake_runtime.sample(model, noise, sigmas, cond, uncond, cfg_scale, callback)

    return run


@pytest.fixture
def patcher(flux: torch.nn.Module):
    import fake_runtime

    return fake_runtime.ModelPatcher(flux)
