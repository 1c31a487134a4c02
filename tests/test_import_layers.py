"""diffract_core's import layers, read from the source with `ast`: the graph of which top-level
package or module imports which (lazy and type-checking imports included) has no cycle, and no
module, while it loads, loads a module that loads it back. The few imports that point up the layers
are listed in BACK_EDGES with the reason; an entry no longer needed fails the test too."""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "diffract_core"

DEMO = "the toy demo is an application over the whole library, as cli.py is"
# (file under diffract_core/, the top-level package or module it imports): why it may point up
BACK_EDGES = {
    ("transcoders/transcoder_set.py", "atlas"): "TranscoderSet.atlas opens the atlas beside its release, lazily",
    ("toy/demo.py", "atlas"): DEMO,
    ("toy/demo.py", "viewer"): DEMO,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = CORE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, module of diffract_core imported, whether the import runs while `path` loads) for each
    import in `path`; `from package import name` counts `package.name` where that is a module."""
    package = module_name(path).split(".")[: None if path.name == "__init__.py" else -1]

    def visit(node: ast.AST, loading: bool) -> Iterator[tuple[int, str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from ((child.lineno, alias.name, loading) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = ".".join(package[: len(package) + 1 - child.level] if child.level else [])
                module = ".".join(filter(None, [base, child.module]))
                yield child.lineno, module, loading
                for alias in child.names:
                    if is_module(f"{module}.{alias.name}"):
                        yield child.lineno, f"{module}.{alias.name}", loading
            else:
                # a function body runs later; `if TYPE_CHECKING:` never runs
                later = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
                    isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
                yield from visit(child, loading and not later)

    for line, module, loading in visit(ast.parse(path.read_text()), True):
        if module.split(".")[0] == "diffract_core":
            yield line, module, loading


def top_level(module: str) -> str | None:
    """`atlas` for diffract_core.atlas.cards; None for the root package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """A cycle of `graph` as the nodes along it (first node repeated at the end), or [] if there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if cycle := visit(successor):
                return cycle
        path.pop()
        done.add(node)
        return []

    return next((cycle for node in sorted(graph) if (cycle := visit(node))), [])


def library_imports() -> list[tuple[Path, int, str, bool]]:
    return [(path, *found) for path in sorted(CORE.rglob("*.py")) for found in imports(path)]


def allowed(path: Path, module: str) -> bool:
    return (path.relative_to(CORE).as_posix(), top_level(module)) in BACK_EDGES


def describe(cycle: list[str], where: Mapping[tuple[str, str], list[str]]) -> str:
    return " -> ".join(cycle) + "\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(dict.fromkeys(where[a, b]))}" for a, b in itertools.pairwise(cycle))


def test_the_top_level_packages_and_modules_import_each_other_one_way_only() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen = set()
    for path, line, module, _ in library_imports():
        source, target = top_level(module_name(path)), top_level(module)
        seen.add((path.relative_to(CORE).as_posix(), target))
        if source and target and source != target and not allowed(path, module):
            graph[source].add(target)
            where[source, target].append(f"{path.relative_to(CORE.parent)}:{line}")
    stale = sorted(set(BACK_EDGES) - seen)
    assert not stale, f"BACK_EDGES lists imports that are gone, remove them: {stale}"
    cycle = find_cycle(graph)
    assert not cycle, "an import cycle between diffract_core's top-level packages:\n" + describe(cycle, where)


def test_no_module_loads_a_module_that_loads_it_back() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path, line, module, loading in library_imports():
        importer = module_name(path)
        if not loading or allowed(path, module):
            continue
        parts = module.split(".")
        # importing a.b.c loads a and a.b first; the importer's own packages are loading already
        for loaded in (".".join(parts[:n]) for n in range(1, len(parts) + 1)):
            if loaded != importer and not importer.startswith(loaded + "."):
                graph[importer].add(loaded)
                where[importer, loaded].append(f"{path.relative_to(CORE.parent)}:{line}")
    cycle = find_cycle(graph)
    assert not cycle, "an import loop while modules load:\n" + describe(cycle, where)


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
