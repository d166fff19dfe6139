"""Shared kernel-benchmark harness: suites of cases x providers, timing, peak extra memory, floors, markdown tables.

A suite module (e.g. ``benchmarks.kernels.logprobs_entropy``) only says how to build inputs and call each provider;
this file times.
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import itertools
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

OPS = ("fwd", "fwd+bwd")
# CPU timing: warm-up calls, then as many timed calls as fit in this many seconds (at least MIN_REPEATS).
CPU_BUDGET_S = 3.0
MIN_REPEATS, MAX_REPEATS = 3, 15
# GPU timing: triton.testing.do_bench's warm-up and measurement windows (ms); its median is reported.
GPU_WARMUP_MS, GPU_REP_MS = 25, 100
# Fraction of the free (host or device) memory a provider may be expected to need before it is skipped.
MEMORY_HEADROOM = 0.8


# --- what a suite declares --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One input configuration of a suite; ``params`` are free-form (N, V, dtype ...), ``nbytes`` sizes the inputs."""

    name: str
    params: dict
    nbytes: int               # bytes of the main input (the logits for the logits path)
    work_bytes: int = 0       # bytes of an fp32 tensor of the case's widest intermediate, for memory estimates


@dataclass(frozen=True)
class Provider:
    """One implementation. ``build(case, op, inputs)`` returns a zero-argument callable that runs the op once."""

    name: str
    build: Callable[[Case, str, dict], Callable[[], Any]]
    ops: tuple[str, ...] = OPS
    devices: tuple[str, ...] = ("cpu", "cuda")
    available: Callable[[str], tuple[bool, str]] = lambda device: (True, "")
    mutates_inputs: bool = False                     # the harness hands it a private copy of the inputs
    work_copies: dict = field(default_factory=dict)  # op -> extra memory in units of case.work_bytes (estimate)


@dataclass(frozen=True)
class Floor:
    """The cost that no implementation of the op can beat, in seconds, and how it was obtained."""

    seconds: float
    label: str


@dataclass(frozen=True)
class Suite:
    """A family of cases and providers. Register one with ``register``; ``benchmarks.kernels.run`` then runs it."""

    name: str
    title: str
    grid: Callable[[str, bool], dict]                  # (device, quick) -> {param: [values]}: the default cases
    make_case: Callable[[dict], Case]                  # one grid point -> Case
    make_inputs: Callable[[Case, str], dict]           # fresh inputs on the device
    providers: tuple[Provider, ...]
    floor: Callable[[Case, dict, str], Floor]          # the floor of one op ("one read of the logits", FLOPs, ...)
    floor_multiple: Callable[[str], float]             # op -> how many floors the op needs at least (for % of peak)
    baseline: str                                      # provider the "x eager" column divides by
    skip_case: Callable[[Case, str], str] = lambda case, device: ""   # a reason to skip the whole case, or ""
    notes: str = ""                                    # printed under the suite's heading
    efficiency_label: str = "% of copy BW"             # GPU column: floor_multiple x floor / time, as a percentage


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    if suite.name in SUITES:
        raise ValueError(f"suite {suite.name!r} is already registered")
    SUITES[suite.name] = suite
    return suite


def expand_grid(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


# --- timing -----------------------------------------------------------------------------------------------------

def median_seconds(fn: Callable[[], Any], device: str, budget_s: float = CPU_BUDGET_S) -> tuple[float, int]:
    """(median seconds of one call, number of timed calls). GPU: do_bench's median; CPU: after one warm-up call."""
    if device == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=GPU_WARMUP_MS, rep=GPU_REP_MS, return_mode="median")
        return ms / 1e3, 0
    t0 = time.perf_counter()
    fn()  # warm-up: lazy initialisation, compilation, page cache
    first = time.perf_counter() - t0
    repeats = int(min(MAX_REPEATS, max(MIN_REPEATS, budget_s // max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times), repeats


# --- peak extra memory ------------------------------------------------------------------------------------------

def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Hand freed heap pages back to the OS and reset the kernel's peak-RSS mark (VmHWM); False where impossible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], Any], device: str) -> int | None:
    """Memory the call needs on top of its inputs, its outputs included, or None where it cannot be measured.

    GPU: torch.cuda.max_memory_allocated above the allocation before the call. CPU: torch has no host-allocator
    statistics, so the process's resident set is used: freed heap pages are returned (malloc_trim), the peak-RSS
    mark is reset (/proc/self/clear_refs), and the peak (VmHWM) minus the RSS before the call is the answer. Every
    page the call touches counts, its own temporaries and the result it returns (e.g. the gradient buffer).
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        del out
        return extra
    if not _reset_peak_rss():
        return None
    base = _status_kib("VmRSS")
    out = fn()
    extra = (_status_kib("VmHWM") - base) * 1024
    del out
    return max(extra, 0)


def free_memory_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


# --- floors -----------------------------------------------------------------------------------------------------

_COPY_BW: dict[str, float] = {}


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (bytes read + bytes written per second), cached."""
    if device not in _COPY_BW:
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
        dst = torch.empty_like(src)
        seconds, _ = median_seconds(lambda: dst.copy_(src), device)
        _COPY_BW[device] = 2 * nbytes / seconds
        del src, dst
    return _COPY_BW[device]


def read_floor(x: torch.Tensor, device: str) -> Floor:
    """One read of ``x``: the time of x.sum() on CPU; bytes / measured copy bandwidth on GPU."""
    if device == "cuda":
        bw = copy_bandwidth(device)
        return Floor(x.numel() * x.element_size() / bw, f"bytes / copy bandwidth ({bw / 1e9:.0f} GB/s)")
    seconds, _ = median_seconds(lambda: x.sum(), device)
    return Floor(seconds, "time of logits.sum()")


# --- running --------------------------------------------------------------------------------------------------

@dataclass
class Result:
    case: Case
    provider: str
    op: str
    seconds: float | None = None
    repeats: int = 0
    extra_bytes: int | None = None
    skipped: str = ""


def prepare(suite: Suite, case: Case, provider: Provider, op: str, inputs: dict) -> Callable[[], Any]:
    """The callable that runs ``provider``'s ``op`` once on ``inputs`` (a private copy if the provider mutates them)."""
    if provider.mutates_inputs:
        inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return provider.build(case, op, inputs)


def why_skip(suite: Suite, case: Case, provider: Provider, op: str, device: str) -> str:
    if op not in provider.ops or device not in provider.devices:
        return "-"  # not a row of this table at all
    ok, why = provider.available(device)
    if not ok:
        return why
    need = provider.work_copies.get(op, 0) * case.work_bytes
    if need > MEMORY_HEADROOM * free_memory_bytes(device):
        return f"needs ~{need / 2**30:.0f} GiB"
    return ""


def run_case(suite: Suite, case: Case, device: str, providers: list[Provider], ops=OPS,
             measure_memory: bool = True, budget_s: float = CPU_BUDGET_S, log=print) -> tuple[Floor, list[Result]]:
    inputs = suite.make_inputs(case, device)
    floor = suite.floor(case, inputs, device)
    results = []
    for provider, op in itertools.product(providers, ops):
        res = Result(case, provider.name, op, skipped=why_skip(suite, case, provider, op, device))
        if not res.skipped:
            try:
                fn = prepare(suite, case, provider, op, inputs)
                res.seconds, res.repeats = median_seconds(fn, device, budget_s)
                if measure_memory:
                    res.extra_bytes = peak_extra_bytes(fn, device)
                del fn
            except Exception as exc:  # one provider failing (OOM, missing feature) must not end the table
                res.seconds, res.skipped = None, f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        if res.skipped != "-":
            log(f"  {case.name} | {op:7s} | {provider.name:24s} | "
                + (f"{res.seconds * 1e3:10.2f} ms" if res.seconds is not None else res.skipped))
        results.append(res)
    # the floor again after the providers, the lower of the two kept: on a shared machine a floor measured in a
    # busy moment would flatter every ratio
    again = suite.floor(case, inputs, device)
    return (again if again.seconds < floor.seconds else floor), results


# --- reporting ------------------------------------------------------------------------------------------------

def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def cpu_model_line() -> str:
    """lscpu's 'Model name' line (or /proc/cpuinfo's), as the tables quote it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return " ".join(line.split())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "Model name: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "Model name: " + (platform.processor() or "unknown")


def results_filename(device: str) -> str:
    name = device_name(device)
    return "cpu.md" if device == "cpu" else re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".md"


def header(device: str) -> list[str]:
    lines = [f"# Kernel benchmarks: {device_name(device)}", "",
             f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
             f"- {cpu_model_line()}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB; measured copy bandwidth "
                     f"{copy_bandwidth(device) / 1e9:.0f} GB/s (read + write)")
    versions = [f"torch {torch.__version__}"]
    try:
        import triton

        versions.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    lines.append("- " + ", ".join(versions))
    if hasattr(os, "getloadavg"):
        lines.append("- load average at the start (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    if device == "cpu":
        lines.append(f"- timing: median of {MIN_REPEATS}-{MAX_REPEATS} calls after one warm-up call (about "
                     f"{CPU_BUDGET_S:.0f} s per measurement); the machine may be shared, so ratios within one table "
                     "are what to compare")
        lines.append("- peak extra memory: peak RSS during one call minus RSS before it, freed heap pages returned "
                     "and the peak mark reset first (see benchmarks/kernels/harness.py: peak_extra_bytes)")
    else:
        lines.append(f"- timing: triton.testing.do_bench median ({GPU_WARMUP_MS} ms warm-up, {GPU_REP_MS} ms of "
                     "calls); peak extra memory: torch.cuda.max_memory_allocated above the memory before the call")
    return lines


def _fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def case_table(suite: Suite, floor: Floor, results: list[Result], device: str) -> list[str]:
    case = results[0].case if results else None
    base = {r.op: r.seconds for r in results if r.provider == suite.baseline and r.seconds}
    cols = ["op", "implementation", "median ms", "x eager", "x floor", "peak extra MiB"]
    if device == "cuda":
        cols.append(suite.efficiency_label)
    lines = [f"### {case.name}" if case else "###", "",
             f"floor = {_fmt_ms(floor.seconds)} ms ({floor.label}); x eager = time / {suite.baseline}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        if r.skipped == "-":
            continue
        if r.seconds is None:
            lines.append(f"| {r.op} | {r.provider} | {r.skipped} |" + " |" * (len(cols) - 3))
            continue
        eager = base.get(r.op)
        cells = [r.op, r.provider, _fmt_ms(r.seconds), f"{r.seconds / eager:.2f}" if eager else "",
                 f"{r.seconds / floor.seconds:.1f}",
                 "n/a" if r.extra_bytes is None else f"{r.extra_bytes / 2**20:.0f}"]
        if device == "cuda":
            cells.append(f"{100 * suite.floor_multiple(r.op) * floor.seconds / r.seconds:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]

