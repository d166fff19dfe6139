"""CPU-time view of the ``linear_logprobs_entropy`` suite, for a shared CPU where wall time measures the neighbours.

``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.kernels.linear_logprobs_entropy_cpu_time``: process CPU seconds per
call, median.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from benchmarks.kernels import harness, linear_logprobs_entropy


def cpu_and_wall(fn, repeats: int) -> tuple[float, float]:
    """Median (process CPU seconds, wall seconds) of one call, after a warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        del out
    return statistics.median(cpu), statistics.median(wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--N", type=int, default=2048)
    ap.add_argument("--H", type=int, default=576)
    ap.add_argument("--V", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--providers", nargs="+", help="substrings of provider names (default: all on CPU)")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: without OMP_WAIT_POLICY=PASSIVE, threads spinning at barriers count as CPU time", file=sys.stderr)
    case = linear_logprobs_entropy._make_case({"N": args.N, "H": args.H, "V": args.V, "dtype": "fp32"})
    inputs = linear_logprobs_entropy._make_inputs(case, "cpu")
    h, w = inputs["hidden"], inputs["weight"]
    base_cpu, base_wall = cpu_and_wall(lambda: h @ w.T, args.repeats)
    lines = [f"CPU time, {case.name}, {harness.cpu_model_line()}, {torch.get_num_threads()} threads, "
             f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, median of {args.repeats}; "
             f"bare hidden @ weight.T: {base_cpu:.3f} s CPU ({base_wall:.3f} s wall)", "",
             "| op | implementation | CPU s | x matmul (CPU) | wall s | x matmul (wall) |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for provider in linear_logprobs_entropy.PROVIDERS:
        if "cpu" not in provider.devices or not provider.available("cpu")[0]:
            continue
        if args.providers and not any(p.lower() in provider.name.lower() for p in args.providers):
            continue
        for op in provider.ops:
            c, wl = cpu_and_wall(provider.build(case, op, inputs), args.repeats)
            row = f"| {op} | {provider.name} | {c:.3f} | {c / base_cpu:.2f} | {wl:.3f} | {wl / base_wall:.2f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
