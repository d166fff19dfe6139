"""The ``logprobs_entropy`` op's CPU paths side by side in one run: one read and one in-place read+write of the logits,
the native loops (AVX-512, AVX2, scalar) forward and fwd+bwd in place, eager and compiled torch; issue #20's targets.

``python -m benchmarks.kernels.logprobs_entropy_cpu_paths [--N 2048] [--V 49152] [--dtype fp32 bf16] [--save]``
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from typing import NamedTuple

# Idle OpenMP workers sleep instead of spinning (read when torch loads libgomp, so before `import torch`): on a shared
# machine the spinning workers take the cores from the threads they wait for (at load 13, a 0.1 ms call took 24 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks import RESULTS_DIR  # noqa: E402
from benchmarks.kernels import harness  # noqa: E402
from benchmarks.kernels.logprobs_entropy import (DTYPES, _make_case, _make_inputs, _runner, eager_logprobs_entropy,
                                         with_cpu_capability)

OUT = os.path.join(RESULTS_DIR, "cpu-paths.md")
# The CPU flags that decide which loops can run (csrc/cpu_capability.cpp), and AMX for the record.
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_bf16")
# (target, limit): each is a ratio of two rows of one table (measured in the same run).
TARGETS = {
    "fp32": [("forward / one read", 1.5)],
    "bf16": [("forward / one read", 2.0)],
    "all": [("fwd+bwd in place / forward", 2.0), ("eager fwd+bwd / fwd+bwd in place", 8.0),
            ("torch.compile fwd+bwd / fwd+bwd in place", 3.0)],
}
READ = "one read (logits.sum())"
# The least an in-place backward can cost: it reads N*V logits and writes N*V gradients over them.
READ_WRITE = "in-place read+write (mul_(1), bytes as fp32)"
# Not a target: the least fwd+bwd in place can take, in forwards, given the forward measured (fwd + READ_WRITE).
FLOOR = "floor: (forward + in-place read+write) / forward"


class Row:
    """One row of a table: ``fn`` timed call by call, wall clock and CPU time of the process (all threads); ``reset``
    runs untimed before each call (restores logits an in-place backward overwrote)."""

    def __init__(self, what: str, path: str, fn, reset=None):
        self.what, self.path, self.fn, self.reset, self.times, self.cpu = what, path, fn, reset, [], []

    def call(self) -> float:
        if self.reset:
            self.reset()
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        del out
        self.last_cpu = cpu
        return seconds


class Timing(NamedTuple):
    """One measured row: seconds of wall clock and of CPU time (all threads), min and median over `calls`."""
    what: str
    path: str
    wall: tuple[float, float]
    cpu: tuple[float, float]
    calls: int


def time_rows(rows: list[Row], rounds: int, slow_s: float, log) -> None:
    """One warm-up call per row, then ``rounds`` rounds that call every row once in turn (3 rounds for rows slower
    than ``slow_s``): on a shared machine every row then sees the same stretches of load, and ratios of rows compare
    like with like."""
    first = {id(r): r.call() for r in rows}
    for k in range(rounds):
        for r in rows:
            if k < 3 or first[id(r)] < slow_s:
                r.times.append(r.call())
                r.cpu.append(r.last_cpu)
    for r in rows:
        log(f"  {r.what:44s} | {r.path:11s} | min {min(r.times) * 1e3:9.1f} ms | "
            f"median {statistics.median(r.times) * 1e3:9.1f} ms | cpu min {min(r.cpu) * 1e3:9.1f} ms | "
            f"{len(r.times)} calls")


def read_write(x: torch.Tensor) -> torch.Tensor:
    """x.mul_(1) over x's bytes seen as fp32 (torch's bf16 / fp16 mul_ converts and is compute-bound; this is not)."""
    flat = x.view(-1)
    if flat.element_size() < 4 and flat.numel() * flat.element_size() % 4 == 0:
        flat = flat.view(torch.float32)
    return flat.mul_(1.0)


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            have = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return []
    return [f for f in FLAGS if f in have]


def measure(N: int, V: int, dtype: str, paths: list[str], rounds: int, slow_s: float, log) -> list[Timing]:
    """The rows of one case."""
    import prepo_kernels as pk

    case = _make_case({"N": N, "V": V, "dtype": dtype})
    log(case.name)
    inp = _make_inputs(case, "cpu")
    x, t = inp["logits"], inp["targets"]
    saved = x.clone()

    def restore():
        x.copy_(saved)

    def fused(op: str, path: str, inplace: bool):
        run = _runner(op, x, lambda xl: pk.logprobs_and_entropy(xl, t, backend="native", inplace_backward=inplace))
        return with_cpu_capability(path, run)

    torch._dynamo.reset()
    compiled = torch.compile(eager_logprobs_entropy)
    # every row that leaves x overwritten restores it before the next row's call
    rows = ([Row(READ, "", lambda: x.sum()), Row(READ_WRITE, "", lambda: read_write(x))]
            + [Row("forward", p, fused("fwd", p, False)) for p in paths]
            + [Row("fwd+bwd in place", p, fused("fwd+bwd", p, True), reset=restore) for p in paths]
            + [Row("fwd+bwd, new gradient buffer", paths[0], fused("fwd+bwd", paths[0], False), reset=restore),
               Row("eager fwd+bwd", "", _runner("fwd+bwd", x, lambda xl: eager_logprobs_entropy(xl, t)), reset=restore),
               Row("torch.compile fwd+bwd", "", _runner("fwd+bwd", x, lambda xl: compiled(xl, t)), reset=restore)])
    rows[0].reset = rows[1].reset = restore  # the same cache state as the rows that restore x (its tail in L3)
    time_rows(rows, rounds, slow_s, log)
    return [Timing(r.what, r.path, (min(r.times), statistics.median(r.times)), (min(r.cpu), statistics.median(r.cpu)),
                   len(r.times)) for r in rows]


def _pick(rows, what, path=""):
    return [r for r in rows if r.what == what and r.path == path]


def case_table(rows: list[Timing]) -> list[str]:
    (read,) = [r.wall[0] for r in _pick(rows, READ)]
    fwd = {r.path: r.wall[0] for r in rows if r.what == "forward"}
    lines = ["| what | loops | min ms | median ms | CPU min ms | CPU median ms | calls | x one read (min) | "
             "x its forward (min) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo = r.wall[0]
        own = f"{lo / fwd[r.path]:.2f}" if r.path in fwd and r.what != "forward" else ""
        lines.append(f"| {r.what} | {r.path or '-'} | {lo * 1e3:.1f} | {r.wall[1] * 1e3:.1f} | {r.cpu[0] * 1e3:.1f} | "
                     f"{r.cpu[1] * 1e3:.1f} | {r.calls} | {lo / read:.2f} | {own} |")
    return lines


def ratios(rows: list[Timing], path: str, clock: str) -> dict[str, tuple[float, float]]:
    """Each target's ratio for one path, from the min times and from the medians of `clock` ("wall" or "cpu")."""
    def get(what, p=""):
        (r,) = _pick(rows, what, p)
        return getattr(r, clock)

    read, rw = get(READ), get(READ_WRITE)
    fwd, inplace = get("forward", path), get("fwd+bwd in place", path)
    eager, compiled = get("eager fwd+bwd"), get("torch.compile fwd+bwd")
    return {
        "forward / one read": (fwd[0] / read[0], fwd[1] / read[1]),
        FLOOR: ((fwd[0] + rw[0]) / fwd[0], (fwd[1] + rw[1]) / fwd[1]),
        "fwd+bwd in place / forward": (inplace[0] / fwd[0], inplace[1] / fwd[1]),
        "eager fwd+bwd / fwd+bwd in place": (eager[0] / inplace[0], eager[1] / inplace[1]),
        "torch.compile fwd+bwd / fwd+bwd in place": (compiled[0] / inplace[0], compiled[1] / inplace[1]),
    }


def targets_table(results: dict, paths: list[str], clock: str) -> list[str]:
    shown = [p for p in paths if p != "scalar"]
    lines = ["| case | target | " + " | ".join(f"{p} (min; median)" for p in shown)
             + f" | met by {shown[0]} (min; median) |", "|---|---|" + "---|" * len(shown) + "---|"]
    for dtype, rows in results.items():
        per_path = {p: ratios(rows, p, clock) for p in shown}
        for name, limit in TARGETS.get(dtype, []) + TARGETS["all"]:
            upper = name.startswith("forward") or name.startswith("fwd+bwd in place")
            cells = [f"{per_path[p][name][0]:.2f}x; {per_path[p][name][1]:.2f}x" for p in shown]
            met = ["yes" if (v <= limit if upper else v >= limit) else "no" for v in per_path[shown[0]][name]]
            bound = f"<= {limit:g}x" if upper else f">= {limit:g}x"
            lines.append(f"| {dtype} | {name} {bound} | " + " | ".join(cells) + f" | {'; '.join(met)} |")
            if name == "fwd+bwd in place / forward":
                cells = [f"{per_path[p][FLOOR][0]:.2f}x; {per_path[p][FLOOR][1]:.2f}x" for p in shown]
                lines.append(f"| {dtype} | {FLOOR} (not a target) | " + " | ".join(cells) + " | - |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=int, default=2048)
    ap.add_argument("--V", type=int, default=49152)
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=9, help="timed calls per row (3 for rows slower than --slow)")
    ap.add_argument("--slow", type=float, default=1.0, help="seconds: a row this slow gets 3 timed calls")
    ap.add_argument("--save", action="store_true", help=f"write the tables to {os.path.relpath(OUT)}")
    args = ap.parse_args(argv)
    from prepo_kernels import logprobs_entropy_native as native

    if not native.native_available()[0]:
        raise SystemExit(f"the native kernels are not built: {native.native_available()[1]}")
    if os.environ.get(native.CAPABILITY_ENV):
        raise SystemExit(f"unset {native.CAPABILITY_ENV}: this benchmark forces each path itself")
    paths = native.supported_cpu_capabilities()
    if "avx512" in paths and "avx512_bf16" in paths:
        paths.remove("avx512")  # differs from avx512_bf16 only in the bf16 backward's rounding instruction
    load0 = os.getloadavg()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = {d: measure(args.N, args.V, d, paths, args.rounds, args.slow, log) for d in args.dtype}
    load1 = os.getloadavg()
    lines = [f"# CPU paths of the logits op: N={args.N} V={args.V}", "",
             f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
             f"- {harness.cpu_model_line()}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
             f"- CPU flags: {' '.join(cpu_flags())}; torch's own capability: {torch.backends.cpu.get_cpu_capability()}",
             f"- the native loops by default here: {native.cpu_capability()}; compared: {', '.join(paths)}",
             f"- torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
             "- load average (1, 5, 15 min) at the start: " + ", ".join(f"{v:.1f}" for v in load0)
             + "; at the end: " + ", ".join(f"{v:.1f}" for v in load1),
             f"- timing: wall clock and CPU time of the process (all threads), min and median of {args.rounds} calls (3 for rows slower than {args.slow:g} s) after "
             "one warm-up call; the rows take turns, one call each per round, so that all see the same load; logits "
             "that an in-place backward overwrote are restored untimed; fwd+bwd = the gradient of sum(lp) + "
             "sum(entropy), temperature 1",
             f"- floor: an in-place backward reads the N*V logits and writes N*V gradients over them, so it takes at "
             f"least one in-place read+write pass (row '{READ_WRITE}'); '{FLOOR}' is the least the 'fwd+bwd in place / "
             "forward' ratio can be here, given the forward measured",
             f"- command: `python -m benchmarks.kernels.logprobs_entropy_cpu_paths {' '.join(argv or sys.argv[1:])}`".rstrip()]
    for dtype, rows in results.items():
        lines += ["", f"## {dtype}", ""] + case_table(rows)
    lines += ["", "## Targets (issue #20), ratios of rows in the same table: wall clock", ""]
    lines += targets_table(results, paths, "wall")
    lines += ["", "## The same ratios from CPU time (all threads of the process)", "",
              "What the wall clock of a quiet machine would show: on a loaded one a call's wall clock counts the time its "
              "threads wait for a core (in scheduler ticks), its CPU time does not.", ""]
    lines += targets_table(results, paths, "cpu")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.save:
        with open(OUT, "w") as f:
            f.write(text)
        log(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
