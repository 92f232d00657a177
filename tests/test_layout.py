"""The package's layout rules (README "Architecture", docs/architecture.md), checked on its own imports: no import
circle between its files, nothing outside `unip_hf.cli` imports the command line, the remote-code files import only
each other, and no source file is longer than 800 lines. Imports inside functions count like the others."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unip_hf"
MAX_LINES = 800


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules that `path` imports anywhere (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "unip_hf":
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = [p for p in PACKAGE.rglob("*.py") if "space_template" not in p.parts]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def test_no_import_circle():
    edges = graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles between package files: {circles}"


def test_nothing_imports_the_command_line():
    upward = sorted(f"{module} -> {target}" for module, targets in graph().items()
                    if not module.startswith("unip_hf.cli") for target in targets if target.startswith("unip_hf.cli"))
    assert not upward, f"library modules import the command line (the CLI imports the library, never the reverse): {upward}"


def test_remote_code_files_import_only_each_other():
    from unip_hf.models.configuration_unip import REMOTE_CODE_FILES

    remote = {f"unip_hf.models.{name[:-3]}" for name in REMOTE_CODE_FILES}
    edges = graph()
    outside = sorted(f"{module} -> {target}" for module in remote for target in edges[module] if target not in remote)
    assert not outside, f"remote-code files must import only torch, transformers and each other: {outside}"


def test_no_source_file_over_the_limit():
    long = sorted(f"{p.relative_to(PACKAGE)}: {n}" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"


def test_no_circle_between_subpackages():
    """Subpackages form layers (models and data at the bottom, cli on top): no two of them import each other, directly
    or through others."""
    def room(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 else module  # top-level modules are rooms of their own

    rooms: dict[str, set[str]] = {}
    for module, targets in graph().items():
        for target in targets:
            if room(module) != room(target) and target != f"unip_hf.{room(module)}":
                rooms.setdefault(room(module), set()).add(room(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in rooms.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = sorted({tuple(sorted((a, b))) for a in rooms for b in rooms[a] if reaches(b, a, {b})})
    assert not circles, f"subpackages that import each other (directly or through others): {circles}"
