"""Every `prepo.*` / `prepo_kernels.*` / `pk.*` name, repository path and `python -m` module the README, docs and
configs mention exists in the code (stale words fail); module paths in the code's own usage lines are checked too.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# where commands are written down: docstrings and usage lines of the benchmarks, the Makefile, the GPU script
COMMANDS = [*DOCS, *CONFIGS, *sorted((ROOT / "benchmarks").rglob("*.py")), *sorted((ROOT / "prepo").rglob("*.py")),
            *sorted((ROOT / "prepo_kernels").glob("*.py")),
            *sorted(f for f in (ROOT / "tests").glob("*.py") if f.name != Path(__file__).name),
            ROOT / "Makefile", *sorted((ROOT / "benchmarks").rglob("*.sh"))]
# a dotted name in backticks or in running text: prepo.selection.pace_update, pk.logprobs_and_entropy, prepo_kernels.hf
NAME = re.compile(r"(?<![\w/.-])((?:prepo_kernels|prepo|pk)(?:\.[A-Za-z_]\w*)+)")


def mentioned() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for name in sorted(set(NAME.findall(doc.read_text()))):
            out.append((doc.name, name.rstrip(".")))
    return out


def resolve(name: str):
    """Import the longest module prefix of ``name`` and walk the rest as attributes."""
    parts = name.replace("pk.", "prepo_kernels.", 1).split(".") if name.startswith("pk.") else name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("doc, name", mentioned())
def test_named_thing_exists(doc, name):
    if name.endswith((".py", ".yaml", ".md")) or name in ("prepo.yaml",):
        pytest.skip("a file name")
    try:
        resolve(name)
    except (AttributeError, ModuleNotFoundError) as exc:
        pytest.fail(f"{doc} mentions {name}, which does not exist ({exc})")


PATH = re.compile(r"(?<![\w/.-])((?:prepo|prepo_kernels|benchmarks|results|tests|configs|csrc|docs|examples)/"
                  r"[\w/.-]*\w\.(?:py|yaml|md|cpp|h|sh|json|png))")


def paths() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS + CONFIGS:
        text = doc.read_text()
        for path in sorted(set(PATH.findall(text))):
            out.append((doc.name, path))
    return out


@pytest.mark.parametrize("doc, path", paths())
def test_named_file_exists(doc, path):
    here = ROOT / path
    beside = (ROOT / "docs" / path) if doc != "README.md" else here
    assert here.exists() or beside.exists(), f"{doc} mentions {path}, which does not exist"


# `python -m benchmarks.rl.rollout_efficiency`, `-m prepo`, and the ["-m", "benchmarks.x"] of a subprocess call
MODULE = re.compile(r"""-m["']?,?\s+["']?((?:benchmarks|prepo_kernels|prepo)(?:\.\w+)*)\b""")


def modules() -> list[tuple[str, str]]:
    out = []
    for doc in COMMANDS:
        for module in sorted(set(MODULE.findall(doc.read_text()))):
            out.append((str(doc.relative_to(ROOT)), module))
    return out


@pytest.mark.parametrize("doc, module", modules())
def test_named_module_runs(doc, module):
    """The module exists and runs as ``python -m`` (a package needs a ``__main__``)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{doc} runs `python -m {module}`, which does not exist"
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(module + ".__main__") is not None, \
            f"{doc} runs `python -m {module}`, a package without __main__"
