"""pytest-benchmark view of the kernel suites: ``pytest benchmarks/kernels/test_bench_kernels.py`` (not make test).

Same registry as ``python -m benchmarks.kernels.run``: its --quick cases, or the full grid with PREPO_BENCH_FULL=1.
"""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks.kernels import harness, run

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = os.environ.get("PREPO_BENCH_FULL", "0") == "1"
ROUNDS = 20 if DEVICE == "cuda" else 3


def _params():
    for suite in run.load_suites().values():
        for case in run.select_cases(suite, DEVICE, quick=not FULL, overrides={}):
            for provider in suite.providers:
                for op in harness.OPS:
                    reason = harness.why_skip(suite, case, provider, op, DEVICE)
                    if reason == "-":
                        continue
                    yield pytest.param(suite, case, provider, op, id=f"{suite.name}|{case.name}|{provider.name}|{op}",
                                       marks=[pytest.mark.skip(reason=reason)] if reason else [])


_CACHE: dict = {}


def _inputs_and_floor(suite, case):
    """One case's inputs at a time (tests of a case run together), and its floor, measured once."""
    key = (suite.name, case.name)
    if key not in _CACHE:
        _CACHE.clear()
        inputs = suite.make_inputs(case, DEVICE)
        _CACHE[key] = (inputs, suite.floor(case, inputs, DEVICE))
    return _CACHE[key]


@pytest.mark.parametrize("suite,case,provider,op", list(_params()))
def test_kernel(benchmark, suite, case, provider, op):
    inputs, floor = _inputs_and_floor(suite, case)
    fn = harness.prepare(suite, case, provider, op, inputs)
    if DEVICE == "cuda":
        inner = fn

        def fn():
            out = inner()
            torch.cuda.synchronize()
            return out
    benchmark.group = f"{suite.name} {case.name} {op}"
    benchmark.extra_info.update(floor_ms=floor.seconds * 1e3, floor=floor.label, device=harness.device_name(DEVICE))
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)
