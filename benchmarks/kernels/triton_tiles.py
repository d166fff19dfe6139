"""Compile every Triton launch the package can make for sm_80 / sm_90 / sm_100 on this CPU: registers, spills, memory.

``python -m benchmarks.kernels.triton_tiles [--check] [--out PATH] [--jobs N]`` -> results/triton-tiles.md
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field

from benchmarks import RESULTS_DIR

# How: the launchers themselves (logprobs_entropy_triton, linear_logprobs_entropy_triton) run on "meta" tensors under
# triton_tiles.recording(family) for every dtype, fp32 precision and bias choice; each recorded launch gives the exact
# signature Triton would specialise, and every configuration triton_tiles.choices lists for that kernel (the table the
# launchers pick from, autotuning candidates included) is compiled with it. Registers and spills come from the log of
# Triton's own ptxas invocation, shared memory from the compiled metadata. --check exits 1 when a compilation fails,
# spills, needs more shared memory than the family allows (triton_tiles.SMEM_LIMIT), or when a launch uses a
# configuration the table does not list. Both specialisations Triton makes are compiled: hinted (16-byte aligned
# pointers, strides and sizes divisible by 16) and unhinted (the fused linear kernels' _unaligned variants; the
# logits-path kernels' jobs with their divisibility attributes dropped). The expected time of each kernel at the
# shapes benchmarks/gpu_suite.sh benchmarks (the suites' --quick CUDA grid) is its bytes and FLOPs per call against
# H100 SXM peaks.
RESULTS = os.path.join(RESULTS_DIR, "triton-tiles.md")
# H100 SXM: HBM3 bandwidth and dense bf16 tensor-core rate (TF32: half; fp32 without tensor cores: 67 TFLOP/s).
H100_BYTES_PER_S = 3.35e12
H100_FLOPS = {"bf16": 990e12, "fp16": 990e12, "tf32": 495e12, "ieee": 67e12}
# Per SM, for "blocks per SM": 64K registers on every family; threads and shared memory per SM (the block limit
# itself is triton_tiles.SMEM_LIMIT); 1 KiB of each block's shared memory is reserved by the driver.
SM_REGISTERS = 65536
SM_THREADS = {80: 2048, 90: 2048, 100: 2048}
SM_SHARED = {80: 164 * 1024, 90: 228 * 1024, 100: 228 * 1024}
SM_BLOCKS = 32
RESERVED_SMEM = 1024
GPU_NAMES = {80: "A100", 90: "H100/H200", 100: "B200"}


def _no_interpreter():
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("TRITON_INTERPRET=1: the kernels are interpreted functions and cannot be compiled; "
                           "run without it (tests/test_triton_tiles.py starts a clean subprocess)")


# --- 1. what the launchers launch ---------------------------------------------------------------------------------

def _meta(shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def _record_linear(N, H, V, dtype, bias: bool, ignored: bool, aligned: bool = True):
    import torch

    from prepo_kernels import IGNORE_INDEX, linear_logprobs_entropy_triton

    # unaligned: hidden rows H + 1 apart (a view), which the launchers send to the kernels' unhinted variant
    hidden = _meta((N, H), dtype) if aligned else _meta((N, H + 1), dtype)[:, :H]
    weight = _meta((V, H), dtype)
    b = _meta((V,), dtype) if bias else None
    rows = _meta((N - N // 4,), torch.int64) if ignored else None
    nk = N if rows is None else rows.shape[0]
    targets = _meta((nk,), torch.int64)
    _, _, lse, ez = linear_logprobs_entropy_triton.forward(hidden, rows, weight, b, targets, 1.0, IGNORE_INDEX)
    g = _meta((nk,), torch.float32)
    linear_logprobs_entropy_triton.backward(g, g, hidden, rows, weight, b, targets, lse, ez, 1.0, IGNORE_INDEX,
                                            (True, True, bias))


def _record_logits(N, V, dtype):
    import torch

    from prepo_kernels import IGNORE_INDEX, logprobs_entropy_triton

    logits, targets = _meta((N, V), dtype), _meta((N,), torch.int64)
    _, _, lse, ez = logprobs_entropy_triton.forward(logits, targets, 1.0, IGNORE_INDEX)
    g = _meta((N,), torch.float32)
    logprobs_entropy_triton.backward(g, g, logits, targets, lse, ez, 1.0, IGNORE_INDEX, _meta((N, V), dtype))


def suite_shapes() -> dict:
    """The shapes gpu_suite.sh benchmarks: the logits and linear suites' --quick CUDA grids (one point each)."""
    from benchmarks.kernels import linear_logprobs_entropy, logprobs_entropy

    lg, ln = logprobs_entropy._grid("cuda", True), linear_logprobs_entropy._grid("cuda", True)
    return {"logits": {k: lg[k][0] for k in ("N", "V", "dtype")},
            "linear": {k: ln[k][0] for k in ("N", "H", "V", "dtype")}}


def record(fam: int, shapes: dict | None = None) -> list:
    """Every launch the launchers make for GPU family ``fam``: all dtypes, both fp32 precisions, with and without
    bias and ignored positions, aligned and unaligned hidden states, forward and backward (``triton_tiles.Launch``
    records, in call order)."""
    import torch

    from prepo_kernels import triton_tiles

    _no_interpreter()
    shapes = shapes or suite_shapes()
    lg, ln = shapes["logits"], shapes["linear"]
    tf32 = torch.backends.cuda.matmul.allow_tf32
    with triton_tiles.recording(fam) as launches:
        try:
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                _record_logits(lg["N"], lg["V"], dtype)
                for allow in ((True, False) if dtype == torch.float32 else (tf32,)):
                    torch.backends.cuda.matmul.allow_tf32 = allow
                    for bias in (False, True):
                        for aligned in (True, False):
                            _record_linear(ln["N"], ln["H"], ln["V"], dtype, bias, ignored=bias, aligned=aligned)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return launches


# --- 2. compile -----------------------------------------------------------------------------------------------------

@dataclass
class Result:
    kernel: str
    arch: int
    dtype: str                 # the main input's dtype (logits / hidden)
    variant: str               # fixed constexprs (precision, bias)
    tiles: str
    num_warps: int
    hints: str = "aligned"     # "aligned": Triton's divisibility hints on the tensors / strides; "unaligned": none
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    shared: int = 0
    blocks_per_sm: int = 0
    seconds: float = 0.0
    same_cubin: bool = True
    error: str = ""
    problems: list = field(default_factory=list)


def _binder(launch, fam):
    """Triton's own argument binder for ``launch.kernel`` on ``fam``: it specialises arguments as a real launch would
    (dtypes, 16-divisibility, integers equal to 1), so each distinct result is one compilation the GPU would make."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(GPUTarget("cuda", fam, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    return binder, backend


def _compile_job(job: dict) -> dict:
    """Runs in a worker: compile one kernel configuration with Triton's ptxas log printed (rerun on a cache hit)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import importlib

    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend

    kernel = getattr(importlib.import_module(job["module"]), job["name"])
    target = GPUTarget("cuda", job["arch"], 32)
    backend = make_backend(target)
    out = {"error": ""}
    t0 = time.perf_counter()
    try:
        constexprs = {tuple(k): v for k, v in job["constexprs"]}
        attrs = {tuple(k): v for k, v in job["attrs"]}
        log = io.StringIO()
        before = knobs.nvidia.dump_ptxas_log
        knobs.nvidia.dump_ptxas_log = True  # Triton prints its own ptxas log when it compiles (not on a cache hit)
        try:
            with contextlib.redirect_stdout(log):
                ck = compile(ASTSource(kernel, job["signature"], constexprs, attrs), target=target,
                             options=job["options"])
                fresh = "Used " in log.getvalue()
                if not fresh:  # a cached kernel: rerun Triton's ptxas step on its PTX for the log
                    cubin = backend.make_cubin(ck.asm["ptx"], {}, backend.parse_options(job["options"]),
                                               job["arch"])
        finally:
            knobs.nvidia.dump_ptxas_log = before
        text = log.getvalue()
        regs = re.search(r"Used (\d+) registers", text)
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
        if not regs or not frame:
            raise RuntimeError(f"cannot read registers / spills from the ptxas log: {text[-500:]!r}")
        out.update(registers=int(regs.group(1)), stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
                   spill_loads=int(frame.group(3)), shared=int(ck.metadata.shared))
        # a rerun must describe Triton's own cubin: byte-identical, or (ptxas for sm_100 is not always
        # deterministic) the same registers and stack frame in that cubin's resource usage
        out["same_cubin"] = fresh or cubin == ck.asm["cubin"] or \
            _cubin_usage(ck.asm["cubin"]) == (out["registers"], out["stack"])
    except Exception as exc:  # reported per configuration; --check fails on it
        out["error"] = f"{type(exc).__name__}: {str(exc).strip()[-400:]}"
    out["seconds"] = time.perf_counter() - t0
    return out


def _cubin_usage(cubin: bytes) -> tuple[int, int] | None:
    """(registers, stack bytes) of a cubin's one kernel, from the cuobjdump in the Triton wheel (None if absent)."""
    import subprocess
    import tempfile

    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _dtype_name(dtype) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def _main_dtype(launch):
    import torch

    for a in launch.args:
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() == 2:
            return _dtype_name(a.dtype)
    return "fp32"


def _variant(fixed: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in fixed.items()) or "-"


def jobs_for(fam: int, launches) -> tuple[list[dict], list[Result], list[str]]:
    """One compile job per distinct (kernel, specialised signature, configuration) on ``fam``; plus the problems of
    launches whose configuration the table in triton_tiles does not list."""
    from prepo_kernels import triton_tiles

    seen, jobs, results, drift = set(), [], [], []
    for launch in launches:
        kernel = launch.kernel
        name = kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__
        dtype = _main_dtype(launch)
        listed = triton_tiles.choices(name, fam, dtype, launch.fixed)
        for t in launch.options:
            if t not in listed:
                drift.append(f"sm_{fam} {name} {dtype} {_variant(launch.fixed)}: launched {t.label()}, "
                             "which triton_tiles.choices does not list")
        binder, backend = _binder(launch, fam)
        for t in listed:
            bound, spec, opts = binder(*launch.args, **launch.fixed, **t.kwargs())
            options, signature, constexprs, attrs = kernel._pack_args(backend, {**launch.fixed, **t.kwargs()}, bound,
                                                                      spec, opts)
            key = (name, repr(sorted(signature.items())), repr(sorted(constexprs.items())), repr(sorted(attrs.items())),
                   repr(sorted(options.__dict__.items())))
            if key in seen:
                continue
            seen.add(key)
            forms = [attrs]
            if _hinted(attrs) and not hasattr(sys.modules[kernel.__module__], name + "_unaligned"):
                forms.append({k: [a for a in v if a[0] != "tt.divisibility"] for k, v in attrs.items()})
            for form in forms:  # a kernel without an unhinted variant runs unhinted on unaligned inputs
                jobs.append({"module": kernel.__module__, "name": name, "arch": fam, "signature": signature,
                             "constexprs": [[list(k), v] for k, v in constexprs.items()],
                             "attrs": [[list(k), v] for k, v in form.items()], "options": dict(options.__dict__)})
                results.append(Result(name, fam, dtype, _variant(launch.fixed), t.label(), t.num_warps,
                                      hints="aligned" if _hinted(form) else "unaligned"))
    return jobs, results, drift


def _hinted(attrs: dict) -> bool:
    """Whether a specialisation carries any of Triton's divisibility hints."""
    return any(a[0] == "tt.divisibility" for v in attrs.values() for a in v)


def blocks_per_sm(fam: int, registers: int, num_warps: int, shared: int) -> int:
    per_warp = -(-registers * 32 // 256) * 256  # registers are allocated per warp in units of 256
    by_regs = (SM_REGISTERS // per_warp) // num_warps if per_warp else SM_BLOCKS
    by_smem = SM_SHARED[fam] // (shared + RESERVED_SMEM)
    return min(by_regs, by_smem, SM_THREADS[fam] // (32 * num_warps), SM_BLOCKS)


def collect(archs=None, jobs: int | None = None, log=print) -> tuple[list[Result], list[str]]:
    """Compile everything for ``archs`` (default triton_tiles.ARCHS) in ``jobs`` processes; (results, drift)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from prepo_kernels import triton_tiles

    archs = archs or triton_tiles.ARCHS
    all_jobs, results, drift = [], [], []
    for fam in archs:
        j, r, d = jobs_for(fam, record(fam))
        all_jobs += j
        results += r
        drift += d
    log(f"{len(all_jobs)} compilations for {', '.join(f'sm_{a}' for a in archs)} in {jobs or os.cpu_count()} processes")
    with ProcessPoolExecutor(jobs or os.cpu_count(), mp_context=mp.get_context("spawn")) as pool:
        for res, out in zip(results, pool.map(_compile_job, all_jobs)):
            for k, v in out.items():
                setattr(res, k, v)
            limit = triton_tiles.SMEM_LIMIT[res.arch]
            if res.error:
                res.problems.append(f"compilation failed: {res.error}")
            else:
                res.blocks_per_sm = blocks_per_sm(res.arch, res.registers, res.num_warps, res.shared)
                if res.spill_stores or res.spill_loads:
                    res.problems.append(f"spills {res.spill_stores} B stores / {res.spill_loads} B loads")
                if res.shared > limit:
                    res.problems.append(f"{res.shared} B of shared memory > the {limit} B allowed per block")
                if not res.same_cubin:
                    res.problems.append("the ptxas -v rerun does not match Triton's cubin (registers / stack differ)")
    return results, drift


# --- 3. expected times at the gpu_suite shapes ----------------------------------------------------------------------

def _arg(launch, name):
    kernel = launch.kernel
    return launch.args[list(kernel.arg_names).index(name)]


def _elem(launch, name) -> int:
    return _arg(launch, name).element_size()


def launch_cost(launch, tiles) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of one launch with ``tiles``: tensor-core FLOPs, and DRAM bytes if every input is read
    once and every output written once (tile re-reads are assumed to hit L2: a lower bound on traffic)."""
    name = launch.kernel.__name__
    if name == "_logprobs_entropy_fwd_kernel":
        N, V = _arg(launch, "logits_ptr").shape
        return 0.0, N * V * _elem(launch, "logits_ptr") + N * 24, "reads the logits once"
    if name == "_logprobs_entropy_bwd_kernel":
        N, V = _arg(launch, "logits_ptr").shape
        return 0.0, N * V * (_elem(launch, "logits_ptr") + _elem(launch, "out_ptr")) + N * 32, \
            "reads the logits, writes the gradient"
    if name in ("_linear_fwd_kernel", "_linear_dz_kernel"):
        Nk, H = _arg(launch, "Nk"), _arg(launch, "H")
        e = _elem(launch, "h_ptr")
        if name == "_linear_fwd_kernel":
            V = _arg(launch, "V")
            splits = _arg(launch, "splits")
            return 2.0 * Nk * V * H, (Nk + V) * H * e + 3 * splits * Nk * 4 + Nk * 20, "hidden @ weight.T, all V"
        width = _arg(launch, "V") - _arg(launch, "v_begin")
        return 2.0 * Nk * width * H, (Nk + width) * H * e + Nk * width * e + Nk * 24, "recomputes a slice, writes dZ"
    if name == "_linear_merge_kernel":
        Nk, splits = _arg(launch, "Nk"), _arg(launch, "SPLITS")
        return 0.0, 3 * splits * Nk * 4 + Nk * 24, f"merges {splits} splits"
    raise KeyError(f"no cost model for kernel {name}")


def expected_times(fam: int = 90) -> list[dict]:
    """Per kernel at the gpu_suite shapes (bf16 / the suite's dtype): FLOPs, bytes, and the H100 time they imply."""
    import torch

    from prepo_kernels import triton_tiles

    shapes = suite_shapes()
    rows = []
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    with triton_tiles.recording(fam) as launches:
        _record_logits(shapes["logits"]["N"], shapes["logits"]["V"], dtypes[shapes["logits"]["dtype"]])
    with triton_tiles.recording(fam) as lin:
        ln = shapes["linear"]
        _record_linear(ln["N"], ln["H"], ln["V"], dtypes[ln["dtype"]], bias=False, ignored=False)
    groups = {}
    for op, recs in (("logits", launches), ("linear", lin)):
        for launch in recs:
            flops, nbytes, note = launch_cost(launch, launch.options[0])
            key = (op, launch.kernel.__name__)
            g = groups.setdefault(key, {"op": op, "kernel": launch.kernel.__name__, "calls": 0, "flops": 0.0,
                                        "bytes": 0.0, "note": note, "dtype": _main_dtype(launch)})
            if launch.kernel.__name__ == "_linear_dz_kernel":
                g["note"] = "recomputes the logits of one vocabulary slice per call, writes dZ"
            g["calls"] += 1
            g["flops"] += flops
            g["bytes"] += nbytes
    for g in groups.values():
        peak = H100_FLOPS.get(g["dtype"], H100_FLOPS["bf16"])
        t_mem, t_flop = g["bytes"] / H100_BYTES_PER_S, g["flops"] / peak
        g.update(seconds=max(t_mem, t_flop), bound="FLOPs" if t_flop > t_mem else "bytes")
        rows.append(g)
    # the backward's dH and dW GEMMs of the fused linear path run in torch (cuBLAS), not Triton: 2 x 2 N V H FLOPs
    N, H, V, e = ln["N"], ln["H"], ln["V"], dtypes[ln["dtype"]].itemsize
    flops = 2 * 2.0 * N * V * H
    rows.append({"op": "linear", "kernel": "torch dH += dZ @ W, dW = dZ.T @ h (cuBLAS)", "calls": 0, "flops": flops,
                 "bytes": 2 * (N * V * e + (N + V) * H * e), "note": "per dZ slice, outside Triton",
                 "dtype": ln["dtype"], "seconds": flops / H100_FLOPS[ln["dtype"]], "bound": "FLOPs"})
    return rows


# --- 4. the report --------------------------------------------------------------------------------------------------

def _versions() -> str:
    import torch
    import triton

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = []
    for fam in (80, 100):
        try:
            ver = get_ptxas(fam).version
            ptxas.append(f"sm_{fam}: ptxas {ver}")
        except Exception:  # version lookup differs across Triton versions: informative only
            pass
    return f"torch {torch.__version__}, triton {triton.__version__}" + (f" ({'; '.join(ptxas)})" if ptxas else "")


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def report(results: list[Result], drift: list[str], times: list[dict], wall: float, cpu: float) -> str:
    from prepo_kernels import triton_tiles

    lines = ["# Triton kernels compiled for NVIDIA targets (on CPU, no GPU)", "",
             f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; {_versions()}",
             f"- command: `python -m benchmarks.kernels.triton_tiles` ({len(results)} compilations, {wall:.0f} s wall, "
             f"{cpu:.0f} s CPU in the worker processes; cached compilations are faster)",
             "- what: every launch the launchers make (`triton_tiles.recording`: each dtype, fp32 precision, bias, "
             "aligned and unaligned hidden states, forward and backward) compiled at every configuration "
             "`triton_tiles.choices` lists for it (autotuning candidates included), for sm_80, sm_90a and sm_100a; "
             "hints: `aligned` is Triton's specialisation with divisibility hints, `unaligned` the one without "
             "(the fused linear kernels' `_unaligned` variants, which unaligned launches run with their own tiles; "
             "the logits-path kernels compiled both ways)",
             "- registers / spills: the log of Triton's own ptxas invocation (on a cache hit: that step rerun, checked "
             "against Triton's cubin: byte-identical, or the same registers and stack frame in `cuobjdump -res-usage`: "
             f"{'yes' if all(r.same_cubin for r in results) else 'NO, see problems'}); shared memory from the "
             "compiled metadata; blocks/SM from 64K registers, the SM's shared memory and 2048 threads",
             "- limits checked by `tests/test_triton_tiles.py`: no compilation error, no spill, shared memory "
             "per block <= " + ", ".join(f"sm_{a} {v // 1024} KiB" for a, v in triton_tiles.SMEM_LIMIT.items()) +
             " (family 80 at sm_86/89/120's 99 KiB; A100 itself allows 163 KiB)",
             "- other Triton versions and the tiles used before: `results/triton-tiles-*.md`", ""]
    problems = [f"sm_{r.arch} {r.kernel} {r.dtype} {r.variant} {r.hints} {r.tiles}: {p}" for r in results
                for p in r.problems]
    problems += drift
    lines += ["## Problems", ""] + ([f"- {p}" for p in problems] or ["none"]) + [""]
    for fam in sorted({r.arch for r in results}):
        lines += [f"## sm_{fam} ({GPU_NAMES.get(fam, '')})", "",
                  "| kernel | dtype | variant | hints | tiles | regs | spill st/ld B | stack B | shared KiB "
                  "| blocks/SM |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in (r for r in results if r.arch == fam):
            if r.error:
                lines.append(f"| {r.kernel} | {r.dtype} | {r.variant} | {r.hints} | {r.tiles} | failed | | | | |")
                continue
            lines.append(f"| {r.kernel} | {r.dtype} | {r.variant} | {r.hints} | {r.tiles} | {r.registers} | "
                         f"{r.spill_stores}/{r.spill_loads} | {r.stack} | {r.shared / 1024:.1f} | {r.blocks_per_sm} |")
        lines.append("")
    shapes = suite_shapes()
    lines += ["## Expected time per call on H100 at the gpu_suite.sh shapes", "",
              f"Shapes: logits path N={shapes['logits']['N']} V={shapes['logits']['V']} {shapes['logits']['dtype']}; "
              f"fused linear path N={shapes['linear']['N']} H={shapes['linear']['H']} V={shapes['linear']['V']} "
              f"{shapes['linear']['dtype']}, no ignored position. Time = max(bytes / {H100_BYTES_PER_S / 1e12:.2f} TB/s, "
              f"FLOPs / {H100_FLOPS['bf16'] / 1e12:.0f} TFLOP/s dense bf16): bytes count each input read once and "
              "each output written once (tile re-reads assumed to hit L2), so this is the floor a kernel can reach; "
              "the fused linear path's target is >= 60% of the matmul rate (time <= floor / 0.6).", "",
              "| path | kernel | calls | FLOPs | bytes | bound | expected ms | at 60% ms |",
              "|---|---|---:|---:|---:|---|---:|---:|"]
    for g in times:
        lines.append(f"| {g['op']} | {g['kernel']} ({g['note']}) | {g['calls'] or '-'} | {g['flops']:.3g} | "
                     f"{_fmt_bytes(g['bytes'])} | {g['bound']} | {g['seconds'] * 1e3:.3f} | "
                     f"{g['seconds'] / 0.6 * 1e3:.3f} |")
    for op in ("logits", "linear"):
        fwd = sum(g["seconds"] for g in times if g["op"] == op and ("fwd" in g["kernel"] or "merge" in g["kernel"]))
        tot = sum(g["seconds"] for g in times if g["op"] == op)
        lines.append(f"\n{op} path: forward {fwd * 1e3:.3f} ms, forward + backward {tot * 1e3:.3f} ms (floor).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=RESULTS, help="markdown report path ('' to skip writing)")
    ap.add_argument("--check", action="store_true", help="exit 1 on any failure, spill, shared-memory overflow or "
                    "configuration missing from triton_tiles")
    ap.add_argument("--jobs", type=int, default=None, help="compile processes (default: all CPUs)")
    ap.add_argument("--arch", type=int, nargs="+", help="families to compile (default: triton_tiles.ARCHS)")
    ap.add_argument("--json", help="also write the per-compilation results here")
    args = ap.parse_args(argv)
    from prepo_kernels import triton_tiles

    if args.jobs is not None and args.jobs < 1:
        ap.error(f"--jobs: expected >= 1, got {args.jobs}")
    if args.arch and set(args.arch) - set(triton_tiles.ARCHS):
        ap.error(f"--arch: expected some of {triton_tiles.ARCHS}, got {args.arch}")
    _no_interpreter()
    t0, c0 = time.perf_counter(), os.times()
    results, drift = collect(args.arch, args.jobs)
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    times = expected_times()
    text = report(results, drift, times, wall, cpu)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    bad = [p for r in results for p in r.problems] + drift
    for r in results:
        for p in r.problems:
            print(f"PROBLEM sm_{r.arch} {r.kernel} {r.dtype} {r.variant} {r.hints} {r.tiles}: {p}", file=sys.stderr)
    for d in drift:
        print(f"PROBLEM {d}", file=sys.stderr)
    print(f"{len(results)} compilations, {len(bad)} problems, {wall:.0f} s")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
