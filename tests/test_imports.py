"""No import circles in prepo, prepo_kernels and benchmarks (every import counts, those inside functions too), and every
module imports on its own in a fresh interpreter, in a topological order of the import graph (what it imports first).
"""
from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prepo", "prepo_kernels", "benchmarks")
# packages of pyproject's optional extras (or of no extra: verl): a module that needs one is skipped where it is absent
OPTIONAL = {"verl", "vllm", "trl", "triton", "flash_attn", "liger_kernel", "tensorboard", "wandb", "datasets",
            "pyarrow"}


def modules() -> dict[str, Path]:
    """{dotted module name: file} for every .py file of PACKAGES (a package by its __init__.py) and every compiled
    extension (``prepo_kernels/_C.<abi>.so``: a leaf, no imports read)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".so", ".pyd") or "__pycache__" in path.parts:
                continue
            parts = path.relative_to(ROOT).parts
            parts = parts[:-1] + (parts[-1].split(".")[0],)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _known(name: str, known: dict) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``prepo.tasks.arith.make_arith`` → the module)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        if ".".join(parts[:cut]) in known:
            return ".".join(parts[:cut])
    return None


def imports(name: str, path: Path, known: dict) -> tuple[set[str], set[str]]:
    """(our modules that ``name`` imports anywhere in its file, the third-party top-level packages it imports at
    module level). ``from package import x`` counts as an import of the submodule ``package.x`` when there is one."""
    tree = ast.parse(path.read_text(), str(path))
    ours: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package (a package's own __init__ is its package)
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        ours |= {m for m in map(lambda t: _known(t, known), targets) if m is not None and m != name}
    third_party = set()
    for node in tree.body:  # what importing the module runs (try/if blocks at module level included)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                third_party |= {a.name.split(".")[0] for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and not sub.level and sub.module:
                third_party.add(sub.module.split(".")[0])
            elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
    return ours, {t for t in third_party if t not in PACKAGES}


def import_graph() -> tuple[dict[str, set[str]], set[str]]:
    known = modules()
    graph, third_party = {}, set()
    for name, path in known.items():
        graph[name], more = imports(name, path, known) if path.suffix == ".py" else (set(), set())
        third_party |= more
    return graph, third_party


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_function_level_and_relative_imports():
    graph, _ = import_graph()
    assert "prepo.rollout" in graph["prepo.rollout_fast"]                 # from .rollout import ...
    assert "prepo.distributed" in graph["prepo.rollout"]                  # inside fast_engine_supports
    assert "prepo.tasks.tiny_arith" in graph["prepo.tasks.registry"]      # from prepo.tasks import tiny_arith
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    graph, _ = import_graph()
    found = circles(graph)
    lines = [" <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
             for c in found]
    assert not found, "import circles:\n" + "\n".join(lines)


# Each module is imported by a child forked from an interpreter that holds the third-party packages our modules import
# at module level but none of our modules: a fresh interpreter as far as our imports go, without paying for torch's
# import once per module.
_RUNNER = r"""
import importlib, json, os, sys, traceback
order, preload, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2]), tuple(json.loads(sys.argv[3]))
for name in preload:
    try:
        importlib.import_module(name)
    except Exception:
        pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ours)
assert not loaded, f"preloading third-party packages imported {loaded}"
report = {}
for name in order:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            out = ""
        except ModuleNotFoundError as exc:
            out = ("missing " + exc.name) if exc.name and exc.name.split(".")[0] not in ours else traceback.format_exc()
        except BaseException:
            out = traceback.format_exc()
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        out = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    report[name] = out if status == 0 else f"exit status {status} {out}"
print(json.dumps(report))
"""


def test_every_module_imports_alone_in_topological_order():
    graph, third_party = import_graph()
    order = list(graphlib.TopologicalSorter(graph).static_order())   # what a module imports comes before it
    assert set(order) == set(graph)
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(order), json.dumps(sorted(third_party)),
                           json.dumps(PACKAGES)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {m: r for m, r in report.items()
              if r and not (r.startswith("missing ") and r.removeprefix("missing ").split(".")[0] in OPTIONAL)}
    assert not failed, "\n\n".join(f"{m} (after {order[:order.index(m)][-3:]}):\n{r}" for m, r in failed.items())
