"""The tiny atlas world (tiny_world.py) and one atlas built from it, shared by the package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffract_core.atlas import Atlas, build_atlas
from diffract_core.flux import Flux
from diffract_core.transcoders import TranscoderSet

from .tiny_world import PROMPTS, SETTINGS, decode, encoder, tiny_model, write_release


@pytest.fixture(scope="package")
def model() -> Flux:
    return tiny_model()


@pytest.fixture(scope="package")
def release(tmp_path_factory: pytest.TempPathFactory, model: Flux) -> Path:
    return write_release(tmp_path_factory.mktemp("atlas-world") / "release", model)


@pytest.fixture(scope="package")
def transcoders(release: Path) -> TranscoderSet:
    return TranscoderSet.open(release)


@pytest.fixture(scope="package")
def atlas(model: Flux, transcoders: TranscoderSet, release: Path) -> Atlas:
    """The atlas of the whole release, beside it."""
    build_atlas(model, encoder(model), transcoders, PROMPTS, release / "atlas", SETTINGS, decode=decode)
    return Atlas.open(release)
