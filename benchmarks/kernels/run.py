"""Kernel microbenchmarks: ``python -m benchmarks.kernels.run [--quick] [--suite logits] [--N 2048 --V 49152]``.

Prints one table per case (median time, x eager torch, x the floor, peak extra memory) and can save them as markdown.

Adding a suite: write ``benchmarks/kernels/<op>.py`` that builds a ``harness.Suite`` (cases, inputs, providers,
floor) and calls ``harness.register`` at import, then add the module's name to SUITE_MODULES.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from benchmarks import RESULTS_DIR
from benchmarks.kernels import harness

# Modules that register their suites when imported.
SUITE_MODULES = ("benchmarks.kernels.logprobs_entropy", "benchmarks.kernels.linear_logprobs_entropy",
                 "benchmarks.kernels.sequence_perplexity")


def load_suites() -> dict[str, harness.Suite]:
    for name in SUITE_MODULES:
        importlib.import_module(name)
    return harness.SUITES


def select_cases(suite: harness.Suite, device: str, quick: bool, overrides: dict) -> list[harness.Case]:
    """The suite's default grid for this device, with any parameter replaced by the values given on the command line."""
    grid = dict(suite.grid(device, quick))
    for key, values in overrides.items():
        if key in grid:
            grid[key] = values
    return [suite.make_case(p) for p in harness.expand_grid(grid)]


def select_providers(suite: harness.Suite, names: list[str] | None) -> list[harness.Provider]:
    if not names:
        return list(suite.providers)
    picked = [p for p in suite.providers if any(n.lower() in p.name.lower() for n in names)]
    if not picked:
        raise SystemExit(f"--providers {names} matches none of: {', '.join(p.name for p in suite.providers)}")
    # the baseline is always measured: every ratio divides by it
    base = [p for p in suite.providers if p.name == suite.baseline and p not in picked]
    return base + picked


def _parse_overrides(args) -> dict:
    overrides = {}
    for item in args.param or []:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--param wants NAME=v1,v2, got {item!r}")
        overrides[key] = [int(v) if v.isdigit() else v for v in values.split(",")]
    for key in ("N", "V", "dtype"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    return overrides


def main(argv=None) -> int:
    suites = load_suites()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", nargs="+", choices=sorted(suites), default=["logits"])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="one representative case per suite")
    ap.add_argument("--N", type=int, nargs="+", help="rows (overrides the default grid)")
    ap.add_argument("--V", type=int, nargs="+", help="vocabulary sizes")
    ap.add_argument("--dtype", nargs="+", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--param", action="append", help="any other grid parameter: NAME=v1,v2 (repeatable)")
    ap.add_argument("--providers", nargs="+", help="substrings of provider names to run (the baseline always runs)")
    ap.add_argument("--ops", nargs="+", choices=harness.OPS, default=list(harness.OPS))
    ap.add_argument("--compile", choices=("static", "dynamic"), default="static",
                    help="torch.compile per shape, or once with dynamic shapes (faster to run)")
    ap.add_argument("--budget", type=float, default=harness.CPU_BUDGET_S, help="CPU seconds per measurement")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--out", help="write the markdown tables here")
    ap.add_argument("--save", action="store_true", help="write to results/<device>.md")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    os.environ["PREPO_BENCH_COMPILE"] = args.compile
    out = os.path.join(RESULTS_DIR, harness.results_filename(args.device)) if args.save else args.out
    overrides = _parse_overrides(args)

    lines = harness.header(args.device)
    given = argv if argv is not None else sys.argv[1:]
    lines.append(f"- command: `python -m benchmarks.kernels.run {' '.join(given)}`")
    lines.append("")
    print("\n".join(lines), flush=True)
    for name in args.suite:
        suite = suites[name]
        head = [f"## {suite.title}", "", suite.notes, ""] if suite.notes else [f"## {suite.title}", ""]
        lines += head
        print("\n".join(head), flush=True)
        providers = select_providers(suite, args.providers)
        for case in select_cases(suite, args.device, args.quick, overrides):
            reason = suite.skip_case(case, args.device)
            if reason:
                lines += [f"### {case.name}", "", f"skipped: {reason}", ""]
                continue
            floor, results = harness.run_case(suite, case, args.device, providers, args.ops,
                                              measure_memory=not args.no_memory, budget_s=args.budget,
                                              log=lambda s: print(s, file=sys.stderr, flush=True))
            table = harness.case_table(suite, floor, results, args.device)
            print("\n".join(table), flush=True)
            lines += table
            if out:  # rewritten after every case: a run cut short keeps what it measured
                os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
                with open(out, "w") as f:
                    f.write("\n".join(lines) + "\n")
    if hasattr(os, "getloadavg"):
        lines.append("load average at the end (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
