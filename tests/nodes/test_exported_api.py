"""The nodes use only the library's exported API: an import of `diffract_core` reaches at most one
level below it (`diffract_core.<subpackage or module>`), and every name imported from a package is
one its `__init__` lists in `__all__`. Read from the source with `ast`, so no node is imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "diffract_core"


def exported(package: Path) -> set[str]:
    """The names a package's `__init__.py` lists in `__all__`."""
    for node in ast.parse((package / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def is_top_level(name: str) -> bool:
    """Whether `diffract_core.<name>` is a module or subpackage directly under the library."""
    return (CORE / f"{name}.py").is_file() or (CORE / name / "__init__.py").is_file()


def violations(source: str) -> Iterator[tuple[int, str]]:
    """(line, what is wrong) for each import of `diffract_core` in a file of nodes/ past its exported API."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported = [(alias.name.split("."), []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level in (0, 2):
            # nodes/ sits one level below the pack root, so the library is `..diffract_core`
            imported = [(node.module.split("."), [alias.name for alias in node.names])]
        else:
            continue
        for module, names in imported:
            if module[0] != "diffract_core":
                continue
            if len(module) > 2:
                yield node.lineno, f"imports {'.'.join(module)}, more than one level below diffract_core"
                continue
            package = CORE.joinpath(*module[1:])
            if not (package / "__init__.py").is_file():
                continue  # a top-level module such as diffract_core.errors
            # the root package may also name its top-level modules: `from ..diffract_core import errors`
            missing = [name for name in names
                       if name not in exported(package) and not (package == CORE and is_top_level(name))]
            if missing:
                yield node.lineno, f"{'.'.join(module)}.__all__ does not list {', '.join(missing)}"


def test_the_nodes_import_only_what_the_library_exports() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {what}"
             for path in sorted((ROOT / "nodes").glob("*.py")) for line, what in violations(path.read_text())]
    assert not found, "imports past diffract_core's exported API:\n" + "\n".join(found)


def test_the_check_sees_deep_imports_and_unexported_names() -> None:
    source = ("from ..diffract_core.atlas.cards import feature_cards\n"
              "from ..diffract_core.render import png_data_uri\n"
              "import diffract_core.toy.codec\n"
              "from ..diffract_core.errors import DiffractError\n"
              "from ..diffract_core.toy import codec\n"
              "from ..diffract_core import errors, DiffractError\n"
              "from .node_types import CATEGORY\n")
    assert list(violations(source)) == [
        (1, "imports diffract_core.atlas.cards, more than one level below diffract_core"),
        (2, "diffract_core.render.__all__ does not list png_data_uri"),
        (3, "imports diffract_core.toy.codec, more than one level below diffract_core"),
    ]
