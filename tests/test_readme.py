"""The documentation's code blocks run: every ```bash / ```python block of `README.md` and of the `docs/` pages carries
a marker on the line before its fence, and the blocks marked runnable are run offline, in one temporary project
folder, in reading order: `README.md` first, then the pages in the order `docs/README.md` lists them (later pages use
what earlier ones saved, as a reader following the docs would; see docs/cli.md "Code blocks in the documentation").

Markers (HTML comments, visible in the README source, invisible once rendered):
- `<!-- runnable -->`: run as written.
- `<!-- runnable: tiny A => B | C => D -->`: run with each text `A` replaced by `B` (smaller settings), to keep this
  test short; every `A` must occur in the block.
- `<!-- runnable: slow -->` (or `runnable: slow tiny A => B`): takes a CLI start-up or more (seconds to minutes on a
  busy machine): run only with `UNIP_README_SLOW=1`, in the same order, after the blocks before it.
- `<!-- not run: REASON -->`: a template with placeholders (after a runnable version), an install command, or what
  needs network, a GPU or several machines.

Python blocks run in one interpreter, each in a fresh namespace (the imports are paid once); bash blocks run with
`bash -euo pipefail`. The temporary folder holds links to `recipes/` and `benchmarks/`, and `../shared/data` points
to the shared data, so the blocks' relative paths work as they do from a checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS_INDEX = REPO / "docs" / "README.md"
PAGE_LINK = re.compile(r"\]\(([\w\-]+\.md)\)")


def pages() -> list[Path]:
    """`README.md`, then every page `docs/README.md` links to, in its order (each once)."""
    found = [README]
    if DOCS_INDEX.is_file():
        for name in PAGE_LINK.findall(DOCS_INDEX.read_text(encoding="utf-8")):
            page = DOCS_INDEX.parent / name
            if page not in found:
                found.append(page)
    return found
MARKER = re.compile(r"^<!--\s*(runnable|not run)\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
LANGUAGES = ("bash", "python")

DRIVER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time, traceback
    blocks = json.load(open(sys.argv[1]))
    for block in blocks:
        start = time.perf_counter()
        where = f"{block['page']}:{block['line']}"
        print(f"=== block {where} ({block['language']})", flush=True)
        if block["language"] == "python":
            try:
                exec(compile(block["code"], where, "exec"), {"__name__": "__main__"})
            except BaseException:
                traceback.print_exc()
                print(f"FAILED: {where}", flush=True)
                sys.exit(1)
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]])
            if done.returncode:
                print(f"FAILED: {where} (exit {done.returncode})", flush=True)
                sys.exit(1)
        print(f"=== {time.perf_counter() - start:.1f} s", flush=True)
    """
)


def readme_blocks(text: str | None = None, page: Path = README) -> list[dict]:
    """Every fenced block of `page` (or of `text`): its page, language, first code line (1-based), code and marker
    (kind, argument) or None."""
    lines = (page.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.match(lines[i - 1]) if i else None
        blocks.append({"page": str(page.relative_to(REPO)), "language": opening.group(1), "line": i + 2,
                       "code": "\n".join(lines[i + 1:end]) + "\n",
                       "marker": (marker.group(1), marker.group(2) or "") if marker else None})
        i = end + 1
    return blocks


def parse_argument(argument: str, line: int) -> tuple[bool, list[tuple[str, str]]]:
    """`[slow] [tiny A => B | C => D]` -> (slow, replacements)."""
    rest = argument.strip()
    slow = rest == "slow" or rest.startswith("slow ")
    if slow:
        rest = rest[len("slow"):].strip()
    replacements = []
    if rest.startswith("tiny"):
        for pair in rest[len("tiny"):].split(" | "):
            if pair.strip():
                assert " => " in pair, f"README line {line}: a tiny replacement is `OLD => NEW`, got {pair!r}"
                old, new = (part.strip() for part in pair.split(" => "))
                replacements.append((old, new))
    else:
        assert not rest, f"README line {line}: unknown runnable marker argument {argument!r}"
    return slow, replacements


def apply_marker(block: dict) -> str:
    """The code to run for a runnable block: as written, or with its `tiny` replacements."""
    code = block["code"]
    for old, new in parse_argument(block["marker"][1], block["line"])[1]:
        assert old in code, f"README line {block['line']}: the tiny replacement {old!r} is not in the block"
        code = code.replace(old, new)
    return code


def all_blocks() -> list[dict]:
    return [block for page in pages() for block in readme_blocks(page=page)]


def to_run(slow: bool) -> list[dict]:
    chosen = []
    for block in all_blocks():
        if block["language"] not in LANGUAGES or block["marker"] is None or block["marker"][0] != "runnable":
            continue
        if parse_argument(block["marker"][1], block["line"])[0] and not slow:
            continue
        chosen.append({"page": block["page"], "line": block["line"], "language": block["language"],
                       "code": apply_marker(block)})
    return chosen


def test_every_bash_and_python_block_is_marked():
    unmarked = [f"{b['page']}:{b['line']}" for b in all_blocks() if b["language"] in LANGUAGES and b["marker"] is None]
    assert not unmarked, (
        f"code blocks without a marker on the line before the fence ({unmarked}): add "
        "`<!-- runnable -->` (checked by tests/test_readme.py; `runnable: tiny A => B` for smaller settings, "
        "`runnable: slow` for minutes) or `<!-- not run: REASON -->` for templates, installs, network or GPUs")
    reasons = [f"{b['page']}:{b['line']}" for b in all_blocks() if b["marker"] and b["marker"][0] == "not run"
               and not b["marker"][1]]
    assert not reasons, f"{reasons}: `not run` needs a reason"


def test_every_docs_page_is_listed_in_the_index():
    """A page under docs/ that docs/README.md does not list would never be read in order, nor its blocks run."""
    listed = {page.name for page in pages()[1:]}
    on_disk = {page.name for page in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert on_disk <= listed, f"docs pages missing from docs/README.md: {sorted(on_disk - listed)}"


def test_marker_parsing_and_tiny_replacements():
    text = "<!-- runnable: tiny --max_steps 40 => --max_steps 2 | 1341 => 50 -->\n```bash\necho --max_steps 40 1341\n```\n"
    (block,) = readme_blocks(text)
    assert block["page"] == "README.md"
    assert block["marker"] == ("runnable", "tiny --max_steps 40 => --max_steps 2 | 1341 => 50") and block["line"] == 3
    assert apply_marker(block) == "echo --max_steps 2 50\n"
    block["code"] = "echo nothing to replace\n"
    with pytest.raises(AssertionError, match="not in the block"):
        apply_marker(block)
    assert parse_argument("slow tiny a => b", 1) == (True, [("a", "b")]) and parse_argument("", 1) == (False, [])
    with pytest.raises(AssertionError, match="unknown runnable marker"):
        parse_argument("fast", 1)


def test_runnable_blocks_run(tmp_path):
    if not DATA_DIR.is_dir():
        pytest.skip(f"the README's examples read the shared data, not found at {DATA_DIR} (set UNIP_DATA_DIR)")
    slow = os.environ.get("UNIP_README_SLOW") == "1"
    blocks = to_run(slow)
    assert blocks, "no runnable block in the README or docs/"
    project = tmp_path / "project"
    project.mkdir()
    for name in ("recipes", "benchmarks"):
        (project / name).symlink_to(REPO / name)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(DATA_DIR.resolve())
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "blocks.json")], cwd=project,
                          env=env, capture_output=True, text=True, timeout=1800 if slow else 600)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert done.stdout.count("=== block ") == len(blocks)
