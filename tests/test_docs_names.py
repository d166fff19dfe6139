"""Every `prepo.*` / `prepo_kernels.*` / `pk.*` name the README and docs mention exists in the code (stale words fail)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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


PATH = re.compile(r"(?<![\w/.-])((?:prepo|prepo_kernels|benchmarks|tests|configs|csrc|docs|examples)/[\w/.-]*\w\.(?:py|yaml|md|cpp|h|sh|json))")


def paths() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for path in sorted(set(PATH.findall(text))):
            out.append((doc.name, path))
    return out


@pytest.mark.parametrize("doc, path", paths())
def test_named_file_exists(doc, path):
    here = ROOT / path
    beside = (ROOT / "docs" / path) if doc != "README.md" else here
    assert here.exists() or beside.exists(), f"{doc} mentions {path}, which does not exist"
