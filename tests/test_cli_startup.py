"""The `unip` command starts light (issue 15, item 2): building its parser, or importing any module that registers
commands, loads none of torch, transformers, datasets, accelerate (nor numpy or PIL); the package's exported names
load on first use; a plain `import unip_hf` is light too, and the Auto classes and pipeline task are registered as
soon as transformers' Auto modules are imported, in either order (issue 21). Correctness checks (what is in
`sys.modules`), not timings: `benchmarks/bench_cli_startup.py` measures the time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unip_hf import cli

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "datasets", "accelerate", "numpy", "PIL", "matplotlib", "scipy")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH")] if p)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    return json.loads(_python(code).strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_package():
    assert _loaded_after("import unip_hf.cli\nunip_hf.cli.build_parser()") == []


@pytest.mark.parametrize("module_name", cli.COMMAND_MODULES)
def test_each_command_module_is_light(module_name):
    assert _loaded_after(f"import {module_name}") == [], f"{module_name} imports a heavy package at module level"


def test_help_and_version_run_without_torch():
    code = ("import sys, contextlib, io\nfrom unip_hf.cli import main\n"
            "for argv in (['--help'], ['finetune', '--help'], ['predict', '--help'], ['--version']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert _python(code).split() == ["False", "False"]


def test_version(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    import unip_hf

    assert capsys.readouterr().out.startswith(f"unip {unip_hf.__version__} ")


def test_import_unip_hf_registers_the_auto_classes():
    code = ("import unip_hf\nfrom transformers import CONFIG_MAPPING\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
            "print('unip' in CONFIG_MAPPING, 'infrared-image-segmentation' in PIPELINE_REGISTRY.supported_tasks)")
    assert _python(code).split() == ["True", "True"]


def test_import_unip_hf_imports_no_heavy_package():
    assert _loaded_after("import unip_hf") == []


AUTO_CHECK = (
    "from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation, AutoBackbone, "
    "AutoImageProcessor\n"
    "from transformers.pipelines import PIPELINE_REGISTRY\n"
    "from unip_hf.models.configuration_unip import UnipConfig, UnipSmallTargetConfig\n"
    "config = UnipConfig.from_preset('unip-tiny', num_hidden_layers=2)\n"
    "print(type(AutoModel.from_config(config)).__name__, type(AutoBackbone.from_config(config)).__name__,\n"
    "      type(AutoModelForSemanticSegmentation.from_config(config)).__name__,\n"
    "      AutoConfig.for_model('unip_small_target').__class__.__name__,\n"
    "      'infrared-image-segmentation' in PIPELINE_REGISTRY.supported_tasks)\n"
)
AUTO_EXPECTED = ["UnipViTModel", "UnipBackbone", "UnipForSemanticSegmentation", "UnipSmallTargetConfig", "True"]


@pytest.mark.parametrize("first", [
    "import unip_hf",  # the package first, transformers' Auto modules later
    "from transformers import AutoModel, AutoConfig, pipeline\nimport unip_hf",  # transformers first
    "import unip_hf\nfrom unip_hf import UnipViTModel",  # an exported name first (imports modeling_utils)
    "import transformers.modeling_utils\nimport unip_hf",  # modeling_utils first (it imports AutoModel itself)
])
def test_auto_classes_are_registered_in_either_import_order(first):
    assert _python(first + "\n" + AUTO_CHECK).split()[-5:] == AUTO_EXPECTED


def test_register_auto_classes_registers_everything_at_once():
    code = ("import sys, unip_hf\nunip_hf.register_auto_classes()\n"
            "from unip_hf import auto_registration\n"
            "print(auto_registration.is_registered(), auto_registration._finder in sys.meta_path)")
    assert _python(code).split() == ["True", "False"]


def test_exported_names_load_on_first_use():
    code = ("import sys, unip_hf.cli\nimport unip_hf\nprint('unip_hf.models.modeling_unip' in sys.modules)\n"
            "from unip_hf import UnipForSemanticSegmentation\n"
            "from transformers import CONFIG_MAPPING\n"
            "print(UnipForSemanticSegmentation.__module__, 'unip' in CONFIG_MAPPING)")
    lines = _python(code).split()
    assert lines == ["False", "unip_hf.models.modeling_unip_segmentation", "True"]


def test_unknown_attribute_is_an_attribute_error():
    import unip_hf

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        unip_hf.nope  # noqa: B018
