"""The public surface of unip_hf: each module's `__all__` names exist, and what it exports is what the README
documents, so the surface cannot grow silently (issue 10, item 9). Names a module uses from another stay importable
without being listed in `__all__`."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "unip_hf"
README_WORDS = set(re.findall(r"\w+", " ".join(page.read_text() for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])))
# The two `evaluate` metric modules load standalone by path; their `__all__` is the metric's own, not the package's.
STANDALONE = {"unip_hf.evaluation.metrics.irstd.irstd", "unip_hf.evaluation.metrics.mean_iou.mean_iou"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _declared_all(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            return [element.value for element in node.value.elts]
    return None


EXPORTING = {
    _module_name(path): names
    for path in sorted(PACKAGE.rglob("*.py"))
    if "space_template" not in path.parts and (names := _declared_all(path)) is not None
}


def test_the_package_declares_exports():
    assert "unip_hf" in EXPORTING and EXPORTING["unip_hf"], "unip_hf/__init__.py has no __all__"


@pytest.mark.parametrize("module_name", sorted(EXPORTING))
def test_all_names_exist_once(module_name):
    names = EXPORTING[module_name]
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name: {names}"
    module = importlib.import_module(module_name)
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what the module does not define: {missing}"


@pytest.mark.parametrize("module_name", sorted(set(EXPORTING) - STANDALONE))
def test_exported_names_are_documented_in_the_readme(module_name):
    undocumented = [name for name in EXPORTING[module_name]
                    if not (name.startswith("__") and name.endswith("__")) and name not in README_WORDS]
    assert not undocumented, (
        f"{module_name}.__all__ exports names the README does not mention: {undocumented}; document them in "
        "README.md or a docs/ page, or drop them from __all__ (they stay importable)"
    )


def test_top_level_api():
    import unip_hf

    assert set(unip_hf.__all__) == {
        "UnipConfig", "UnipPreTrainedModel", "UnipViTModel", "UnipForSemanticSegmentation", "UnipBackbone",
        "UnipImageProcessor", "UnipImageSegmentationPipeline", "AttentionTeacher", "nmi_had_loss", "run_pretraining",
        "__version__",
        "UnipSmallTargetConfig", "UnipForSmallTargetSegmentation",  # issue 11: the small-target model
    }
    namespace: dict = {}
    exec("from unip_hf import *", namespace)
    assert set(unip_hf.__all__) <= set(namespace)
