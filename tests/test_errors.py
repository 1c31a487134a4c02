"""The error contract of diffract_core/errors.py: on bad input the library and the nodes raise only
its typed errors, all defined there and all deriving from DiffractError, never a bare built-in."""

from __future__ import annotations

import ast
import builtins
import inspect
from collections.abc import Iterator
from pathlib import Path

from diffract_core import errors
from diffract_core.errors import DiffractError

ROOT = Path(__file__).resolve().parents[1]
ERRORS_FILE = "diffract_core/errors.py"
BUILTIN_EXCEPTIONS = frozenset(
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
)

# (file, enclosing function, exception) -> why that raise of a built-in is allowed. Functions rather
# than lines, so that edits elsewhere in a file leave the list valid; an entry that no longer
# matches a raise fails the test, so the list only shrinks.
ALLOWED: dict[tuple[str, str, str], str] = {
    # An internal signal, not an error shown to anyone: `download` catches it with the Hub's own
    # failures and raises HubUnavailableError with the instructions to download by hand.
    ("diffract_core/hub.py", "_check_answers", "TimeoutError"): "caught in download",
}


def _sources() -> list[Path]:
    return sorted(path for folder in ("diffract_core", "nodes") for path in (ROOT / folder).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _raises(tree: ast.AST, scope: str = "") -> Iterator[tuple[str, ast.Raise]]:
    """Every `raise` with the qualified name of the function or class it is in."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from _raises(node, f"{scope}.{node.name}" if scope else node.name)
        else:
            if isinstance(node, ast.Raise):
                yield scope, node
            yield from _raises(node, scope)


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return exc.id if isinstance(exc, ast.Name) else None


def test_no_builtin_exception_is_raised() -> None:
    found, used = [], set()
    for path in _sources():
        for scope, node in _raises(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            name = _raised_name(node)
            if name not in BUILTIN_EXCEPTIONS:
                continue
            key = (_name(path), scope, name)
            if key in ALLOWED:
                used.add(key)
            else:
                found.append(f"{_name(path)}:{node.lineno} raises {name} (in {scope or 'the module'})")
    assert not found, ("raise a DiffractError subclass from diffract_core/errors.py (one that also derives from "
                       "the built-in where callers catch it), or assert an internal invariant:\n" + "\n".join(found))
    assert not set(ALLOWED) - used, f"allowed raises that no longer exist: drop them {sorted(set(ALLOWED) - used)}"


def test_every_error_class_derives_from_diffract_error() -> None:
    classes = [value for value in vars(errors).values()
               if inspect.isclass(value) and value.__module__ == errors.__name__]
    assert len(classes) > 1
    assert [cls.__name__ for cls in classes if not issubclass(cls, DiffractError)] == []


def test_every_error_class_is_defined_in_errors_py() -> None:
    error_classes = {
        node.name for node in ast.parse((ROOT / ERRORS_FILE).read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
    }
    elsewhere = []
    for path in _sources():
        if _name(path) == ERRORS_FILE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        local = {  # names the module binds to the error classes, aliases included
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("errors")
            for alias in node.names
            if alias.name in error_classes
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(base, ast.Name) and base.id in local)
                or (isinstance(base, ast.Attribute) and base.attr in error_classes)
                for base in node.bases
            ):
                elsewhere.append(f"{_name(path)}:{node.lineno} defines {node.name}")
    assert not elsewhere, "define every error class in diffract_core/errors.py:\n" + "\n".join(elsewhere)
