"""The built distributions: the wheel (built from the sdist, as pip builds it from an index) carries
every library module and the viewers' ES modules, and diffract_core.viewer finds them there with no
checkout anywhere near."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "diffract_core", "web")


def _build(backend_call: str, source: Path, out: Path) -> Path:
    code = f"import sys; from setuptools import build_meta; print(build_meta.{backend_call}(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True,
                          timeout=300, check=True)
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from an sdist of a copy of the checkout (the build writes build/ and *.egg-info
    into its source folder, which must not be the checkout)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "checkout"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    sdist = _build("build_sdist", source, work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    return _build("build_wheel", unpacked, work / "dist")


def test_the_wheel_carries_every_library_module_and_the_viewer_modules(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "diffract_core").rglob("*.py")}
    assert modules - names == set(), "a subpackage is missing from [tool.setuptools] packages in pyproject.toml"
    viewer_files = {f"diffract_core/web/{path.name}" for path in (ROOT / "web" / "diffract").glob("*.js")}
    assert viewer_files and viewer_files <= names
    assert not any(name.startswith("web/") for name in names), "no top-level web/ in site-packages"


def test_the_viewer_finds_its_modules_in_an_unpacked_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import diffract_core, diffract_core.viewer as v; "
             "print(diffract_core.__file__); print(v.check_viewer_files()[-1]); print(len(v.standalone_script()))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    package, entry, length = done.stdout.strip().splitlines()[-3:]
    assert Path(package).is_relative_to(site), f"imported {package}, not the unpacked wheel"
    assert Path(entry) == site / "diffract_core" / "web" / "standalone.js"
    assert int(length) > 1000


def test_the_demo_runs_to_a_report_from_an_unpacked_wheel(wheel: Path, tmp_path: Path) -> None:
    """What a `pip install` of the wheel gives a user: the toy, its release and the viewers all come
    from site-packages, and the demo writes its offline report."""
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", "diffract_core", "demo", "--out", str(tmp_path / "demo")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "mountStandalone(document)" in report and 'data-diffract-view="circuit"' in report
    assert (tmp_path / "demo" / "circuit.json").stat().st_size > 1000
