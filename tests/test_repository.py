"""House rules of the UNIP repository checked on its sources: every test skip says why, no import guard hides a
sibling module of the package, and the files and `unip_hf.*` names that the README and the docstrings mention
exist."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "unip_hf").rglob("*.py"))
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")),
             *SOURCES, *sorted((ROOT / "src" / "unip_hf" / "hub" / "card_templates").glob("*.md"))]
#: Repository paths written in prose: `src/...`, `tests/...`, `recipes/...`, `benchmarks/...`, `hub_cards/...`.
PATH_PATTERN = re.compile(r"(?<![\w/.])((?:src|tests|recipes|benchmarks|hub_cards)/[\w./-]*\w)")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            yield name, node


def test_every_skip_gives_a_reason():
    missing = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            keywords = {keyword.arg for keyword in call.keywords}
            if name == "skip" and not call.args and "reason" not in keywords:
                missing.append(f"{path.name}:{call.lineno} pytest.skip()")
            elif name == "skipif" and "reason" not in keywords:
                missing.append(f"{path.name}:{call.lineno} pytest.mark.skipif")
            elif name == "importorskip" and "reason" not in keywords:
                missing.append(f"{path.name}:{call.lineno} pytest.importorskip({ast.unparse(call.args[0])})")
    assert not missing, missing


def test_no_import_guard_around_a_sibling_module():
    guarded = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Try):
                continue
            catches_import_error = any(
                "ImportError" in ast.unparse(handler.type) for handler in node.handlers if handler.type is not None
            )
            relative = [statement for statement in node.body if isinstance(statement, ast.ImportFrom)
                        and (statement.level > 0 or (statement.module or "").startswith("unip_hf"))]
            if catches_import_error and relative:
                guarded.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not guarded, guarded


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_mentioned_files_and_names_exist(document):
    text = document.read_text()
    missing = [path for path in PATH_PATTERN.findall(text) if not (ROOT / path).exists()]
    assert not missing, f"{document.relative_to(ROOT)} names files that do not exist: {missing}"
    unknown = []
    for dotted in sorted(set(re.findall(r"\bunip_hf(?:\.\w+)+", text))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                target = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            break
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                unknown.append(dotted)
                break
            target = getattr(target, attribute)
    assert not unknown, f"{document.relative_to(ROOT)} names what unip_hf does not have: {unknown}"
