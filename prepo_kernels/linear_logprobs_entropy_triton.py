"""Triton kernels of the ``linear_logprobs_entropy`` op: logits tiles from tl.dot, used in registers, never stored.

Forward: split-vocabulary online softmax statistics + a merge kernel. Backward: dZ for one bounded vocabulary slice
at a time (recomputed), then GEMMs for dHidden, dW, db.
Same contract as ``linear_logprobs_entropy_chunked`` (read it first).
"""
from __future__ import annotations

import torch

from prepo_kernels import logprobs_entropy_triton, triton_tiles
from prepo_kernels.linear_logprobs_entropy_chunked import acc_mm

HAVE_TRITON = logprobs_entropy_triton.HAVE_TRITON
if HAVE_TRITON:
    import triton
    import triton.language as tl

# Tile shapes live in triton_tiles (per GPU family and dtype; the resource report compiles every one of them).
# GROUP_R: programs are ordered in groups of GROUP_R row blocks x all vocabulary blocks, so the programs running at
# once share a few hidden-state blocks and a few weight blocks in L2 (rather than one row block each).
_INTERPRET_TILES = triton_tiles.LINEAR_INTERPRET  # the same dict: tests may change an entry
# Forward: enough (row block x vocabulary split) programs to fill a GPU several times over, and at least
# _MIN_SPLITS splits so that grouped programs share weight tiles; splits are merged after. Splits and backward
# slices are sized with the largest tile offered, so they hold whole tiles of whichever configuration autotuning picks
# (the largest BLOCK_V is a multiple of the others). At most triton_tiles.MAX_SPLITS (the merge kernel's widest).
# The interpreter runs programs one by one: 2 splits there keep the merge kernel exercised at little cost.
_TARGET_PROGRAMS = 1024
_MIN_SPLITS = 16
_INTERPRET_SPLITS = 2
# Where triton_tiles offers several configurations, autotuning measures them once per key; launches of fewer
# multiply-adds than this (about 10 us of tensor-core work: tests, tiny heads) just take the first.
_TUNE_MIN_MACS = 1 << 32
# Backward: one vocabulary slice of dZ holds at most this many elements (64 Mi: 128 MiB in bf16).
BWD_SLICE_ELEMENTS = 1 << 26
_BWD_SLICE_ELEMENTS_INTERPRET = 1 << 12


def _options(kernel: str, hidden: torch.Tensor, precision: str, is_aligned: bool) -> tuple:
    """The tile configurations this launch may use: the interpreter's, or the GPU family's (see triton_tiles)."""
    if logprobs_entropy_triton.interpret_mode():
        t = dict(_INTERPRET_TILES)
        return (triton_tiles.Tiles.of(t.pop("num_warps"), t.pop("num_stages"), **t),)
    return triton_tiles.linear_tiles(kernel, triton_tiles.device_family(hidden.device), hidden.dtype, precision,
                                     aligned=is_aligned)


def _largest(options, name: str) -> int:
    return max(t.meta()[name] for t in options)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own matmul setting (TF32 only when the caller allowed it for torch matmuls too)
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    if dtype == torch.bfloat16 and logprobs_entropy_triton.interpret_mode():
        return "upcast"  # the CPU interpreter's tl.dot multiplies raw bf16 bits: feed it fp32 tiles (exact)
    return "tf32"


# Triton specialises a kernel on its launch arguments (pointers 16-byte aligned, integers divisible by 16 or equal to
# 1) and compiles one kernel per combination; an unaligned launch (a row stride or H not a multiple of 16, a non-unit
# inner stride) gets no hints, loads element by element and needs more registers. So each kernel comes in two
# variants, both compiled and checked by benchmarks.kernels.triton_tiles: the aligned one, hinted on hidden / weight /
# bias / dZ, their strides and H but never on what changes from call to call (row counts, vocabulary ends, splits,
# the per-row vectors), launched when ``aligned()`` holds; and the unaligned one, hinted on nothing, with its own
# tiles (triton_tiles.LINEAR_FWD_UNALIGNED: the aligned tiles spill there on sm_90 / sm_100).


def _two_variants(fn, name: str, varying: tuple[str, ...]):
    """(aligned, unaligned) JIT kernels of ``fn``: no specialisation on ``varying`` / on any runtime argument."""
    import inspect

    runtime = [n for n, p in inspect.signature(fn).parameters.items() if "constexpr" not in str(p.annotation)]
    kernels = (triton.jit(fn, do_not_specialize=list(varying)), triton.jit(fn, do_not_specialize=runtime))
    for kernel, label in zip(kernels, (name, name + "_unaligned")):
        if not logprobs_entropy_triton.interpret_mode():
            kernel.__name__ = label  # the resource report and the autotuner's cache name kernels by it
    return kernels


if HAVE_TRITON:

    @triton.jit
    def _grouped(pid, row_blocks, col_blocks, GROUP_R: tl.constexpr):
        """(row block, column block) of a 1-D program id, row blocks fastest within groups of GROUP_R of them."""
        width = GROUP_R * col_blocks
        first = (pid // width) * GROUP_R
        size = tl.minimum(row_blocks - first, GROUP_R)
        return first + (pid % width) % size, (pid % width) // size

    @triton.jit
    def _logits_tile(h_ptr, rows, row_mask, w_ptr, b_ptr, cols, col_mask, H, stride_hn, stride_hh,
                     stride_wv, stride_wh, inv_temp,
                     HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
        """z = (hidden[rows] @ weight[cols].T + bias[cols]) / T as an fp32 [BLOCK_N, BLOCK_V] tile; pads are -inf."""
        acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_mask = ks < H
            a = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :] * stride_hh,
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(w_ptr + cols[None, :] * stride_wv + ks[:, None] * stride_wh,
                        mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            if PRECISION == "upcast":
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        # padded vocabulary columns are -inf, never 0: a 0 would add e^(0 - m) to the softmax sum
        return tl.where(col_mask[None, :], acc * inv_temp, float("-inf"))

    def _linear_fwd(
        h_ptr, rows_ptr, w_ptr, b_ptr, t_ptr, m_ptr, s0_ptr, s1_ptr, zt_ptr,
        Nk, V, H, v_per_split, splits, stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
        HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_R: tl.constexpr,
    ):
        pid_n, split = _grouped(tl.program_id(0), tl.cdiv(Nk, BLOCK_N), splits, GROUP_R)
        offs = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # int64 offsets throughout
        row_mask = offs < Nk
        rows = tl.load(rows_ptr + offs, mask=row_mask, other=0)
        tgt = tl.load(t_ptr + offs, mask=row_mask, other=-1)
        v_start = split.to(tl.int64) * v_per_split
        v_end = tl.minimum(v_start + v_per_split, V)
        neg_inf = float("-inf")
        # per row: running max m, S0 = sum e^(z-m), S1 = sum (z-m) e^(z-m), and the target logit
        m = tl.full([BLOCK_N], neg_inf, tl.float32)
        s0 = tl.zeros([BLOCK_N], tl.float32)
        s1 = tl.zeros([BLOCK_N], tl.float32)
        zt = tl.zeros([BLOCK_N], tl.float32)
        for v0 in range(v_start, v_end, BLOCK_V):
            cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
            z = _logits_tile(h_ptr, rows, row_mask, w_ptr, b_ptr, cols, cols < v_end, H, stride_hn, stride_hh,
                             stride_wv, stride_wh, inv_temp, HAS_BIAS, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
            zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
            m_new = tl.maximum(m, tl.max(z, axis=1))
            m_ref = tl.where(m_new == neg_inf, 0.0, m_new)       # keep arithmetic finite on empty rows
            e = tl.exp(z - m_ref[:, None])                        # the one exp per logit
            zs = tl.where(e > 0, z - m_ref[:, None], 0.0)         # 0 * -inf guard on padded columns
            alpha = tl.exp(m - m_ref)                             # rescale of the old sums (0 on the first tile)
            shift = tl.where(s0 > 0, m - m_ref, 0.0)             # never -inf * 0
            s1 = (s1 + shift * s0) * alpha + tl.sum(e * zs, axis=1)
            s0 = s0 * alpha + tl.sum(e, axis=1)
            m = m_new
        stat = split.to(tl.int64) * Nk + offs
        tl.store(m_ptr + stat, m, mask=row_mask)
        tl.store(s0_ptr + stat, s0, mask=row_mask)
        tl.store(s1_ptr + stat, s1, mask=row_mask)
        # exactly one split holds each target column: only it writes the target logit
        tl.store(zt_ptr + offs, zt, mask=row_mask & (tgt >= v_start) & (tgt < v_end))

    @triton.jit
    def _linear_merge_kernel(
        m_ptr, s0_ptr, s1_ptr, zt_ptr, lp_ptr, ent_ptr, lse_ptr, ez_ptr, Nk, SPLITS,
        BLOCK_S: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        sp = tl.arange(0, BLOCK_S)
        smask = sp < SPLITS
        idx = sp.to(tl.int64) * Nk + row
        m = tl.load(m_ptr + idx, mask=smask, other=float("-inf"))
        s0 = tl.load(s0_ptr + idx, mask=smask, other=0.0)
        s1 = tl.load(s1_ptr + idx, mask=smask, other=0.0)
        big = tl.max(m, axis=0)
        alpha = tl.where(s0 > 0, tl.exp(m - big), 0.0)
        # shift each split's S1 from its own max to the global one: (z - big) = (z - m) + (m - big)
        t0 = tl.sum(s0 * alpha, axis=0)
        t1 = tl.sum((s1 + tl.where(s0 > 0, m - big, 0.0) * s0) * alpha, axis=0)
        log_s0 = tl.log(t0)
        lse = big + log_s0
        ent = log_s0 - t1 / t0
        tl.store(lse_ptr + row, lse)
        tl.store(ez_ptr + row, lse - ent)
        tl.store(ent_ptr + row, ent)
        tl.store(lp_ptr + row, tl.load(zt_ptr + row) - lse)

    def _linear_dz(
        h_ptr, rows_ptr, w_ptr, b_ptr, t_ptr, glp_ptr, gent_ptr, lse_ptr, ez_ptr, dz_ptr,
        Nk, V, H, v_begin, stride_hn, stride_hh, stride_wv, stride_wh, stride_dz, inv_temp,
        HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_R: tl.constexpr,
    ):
        """dZ[:, j] for vocabulary columns v_begin + j: recompute z, then g_lp (onehot - p)/T + g_H p (E[z] - z)/T."""
        pid_n, pid_v = _grouped(tl.program_id(0), tl.cdiv(Nk, BLOCK_N), tl.cdiv(V - v_begin, BLOCK_V), GROUP_R)
        offs = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        local = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
        cols = v_begin + local
        row_mask = offs < Nk
        col_mask = cols < V
        rows = tl.load(rows_ptr + offs, mask=row_mask, other=0)
        z = _logits_tile(h_ptr, rows, row_mask, w_ptr, b_ptr, cols, col_mask, H, stride_hn, stride_hh,
                         stride_wv, stride_wh, inv_temp, HAS_BIAS, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        tgt = tl.load(t_ptr + offs, mask=row_mask, other=-1)
        g_lp = tl.load(glp_ptr + offs, mask=row_mask, other=0.0)
        g_ent = tl.load(gent_ptr + offs, mask=row_mask, other=0.0)
        lse = tl.load(lse_ptr + offs, mask=row_mask, other=0.0)
        ez = tl.load(ez_ptr + offs, mask=row_mask, other=0.0)
        p = tl.exp(z - lse[:, None])
        gap = tl.where(p > 0, ez[:, None] - z, 0.0)  # padded columns: p = 0 and z = -inf, so never 0 * inf
        dz = g_ent[:, None] * p * gap - g_lp[:, None] * p
        dz = tl.where(cols[None, :] == tgt[:, None], dz + g_lp[:, None], dz)  # formed in fp32, rounded once
        dz = tl.where(row_mask[:, None], dz * inv_temp, 0.0)
        tl.store(dz_ptr + offs[:, None] * stride_dz + local[None, :], dz.to(dz_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])

    _linear_fwd_kernel, _linear_fwd_kernel_unaligned = _two_variants(_linear_fwd, "_linear_fwd_kernel", (
        "rows_ptr", "t_ptr", "m_ptr", "s0_ptr", "s1_ptr", "zt_ptr", "Nk", "V", "v_per_split", "splits"))
    _linear_dz_kernel, _linear_dz_kernel_unaligned = _two_variants(_linear_dz, "_linear_dz_kernel", (
        "rows_ptr", "t_ptr", "glp_ptr", "gent_ptr", "lse_ptr", "ez_ptr", "Nk", "V", "v_begin"))


def aligned(hidden: torch.Tensor, weight: torch.Tensor, bias) -> bool:
    """Whether a launch takes the hinted kernels: hidden / weight / bias 16-byte aligned, unit inner strides, row
    strides and H multiples of 16 elements (what Triton's divisibility hints on those arguments assume)."""
    tensors = [hidden, weight] + ([bias] if bias is not None else [])
    return (hidden.shape[1] % 16 == 0 and hidden.stride(1) == 1 and weight.stride(1) == 1
            and hidden.stride(0) % 16 == 0 and weight.stride(0) % 16 == 0
            and all(t.data_ptr() % 16 == 0 for t in tensors))


def _kernel(name: str, is_aligned: bool):
    return globals()[f"_linear_{name}_kernel" + ("" if is_aligned else "_unaligned")]


def _all_rows(hidden, rows):
    return torch.arange(hidden.shape[0], device=hidden.device) if rows is None else rows


def _common(hidden, weight):
    return (hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1))


def forward(hidden, rows, weight, bias, targets, temperature: float, ignore_index: int):
    """Per kept row: (lp, ent, lse, ez) float32 (``ignore_index`` is unused: ``rows`` already excludes those)."""
    Nk = targets.shape[0]
    V, H = weight.shape
    dev = hidden.device
    lp = torch.empty(Nk, dtype=torch.float32, device=dev)
    ent, lse, ez = torch.empty_like(lp), torch.empty_like(lp), torch.empty_like(lp)
    if Nk == 0:
        return lp, ent, lse, ez
    precision = _precision(hidden.dtype)
    is_aligned = aligned(hidden, weight, bias)
    options = _options("fwd", hidden, precision, is_aligned)
    bn, bv = _largest(options, "BLOCK_N"), _largest(options, "BLOCK_V")
    v_tiles = triton.cdiv(V, bv)
    if logprobs_entropy_triton.interpret_mode():
        splits = _INTERPRET_SPLITS
    else:
        splits = max(_MIN_SPLITS, triton.cdiv(_TARGET_PROGRAMS, triton.cdiv(Nk, bn)))
    splits = max(1, min(splits, v_tiles, triton_tiles.MAX_SPLITS))
    v_per_split = triton.cdiv(v_tiles, splits) * bv
    splits = triton.cdiv(V, v_per_split)  # no empty split
    stats = torch.empty(3, splits, Nk, dtype=torch.float32, device=dev)
    zt = torch.empty(Nk, dtype=torch.float32, device=dev)
    rows = _all_rows(hidden, rows)
    triton_tiles.launch(
        _kernel("fwd", is_aligned), lambda meta: (triton.cdiv(Nk, meta["BLOCK_N"]) * splits,),
        (hidden, rows, weight, bias if bias is not None else weight, targets, stats[0], stats[1], stats[2], zt,
         Nk, V, H, v_per_split, splits, *_common(hidden, weight), 1.0 / temperature),
        dict(HAS_BIAS=bias is not None, PRECISION=precision), options, tune_key=("V", "H", "PRECISION"),
        tune=Nk * V * H >= _TUNE_MIN_MACS,
    )
    triton_tiles.launch(_linear_merge_kernel, lambda meta: (Nk,),
                        (stats[0], stats[1], stats[2], zt, lp, ent, lse, ez, Nk, splits), {},
                        (triton_tiles.merge_tiles(splits),))
    return lp, ent, lse, ez


def backward(grad_lp, grad_ent, hidden, rows, weight, bias, targets, lse, ez, temperature: float,
             ignore_index: int, needs):
    need_dh, need_dw, need_db = needs
    Nk = targets.shape[0]
    V, H = weight.shape
    dev = hidden.device
    dw = torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_dw else None
    db = torch.zeros(V, dtype=bias.dtype if bias is not None else torch.float32, device=dev) if need_db else None
    if Nk == 0:
        dh = torch.zeros_like(hidden, memory_format=torch.contiguous_format) if need_dh else None
        return dh, dw, db
    precision = _precision(hidden.dtype)
    is_aligned = aligned(hidden, weight, bias)
    options = _options("dz", hidden, precision, is_aligned)
    bv = _largest(options, "BLOCK_V")
    slice_elements = _BWD_SLICE_ELEMENTS_INTERPRET if logprobs_entropy_triton.interpret_mode() else BWD_SLICE_ELEMENTS
    vs = max(bv, (slice_elements // max(Nk, 1)) // bv * bv)  # columns per slice, whole vocabulary tiles
    vs = min(vs, triton.cdiv(V, bv) * bv)
    all_rows = _all_rows(hidden, rows)
    h_kept = hidden if rows is None else hidden.index_select(0, rows)  # [Nk, H] for the dW GEMM
    dh32 = torch.zeros(Nk, H, dtype=torch.float32, device=dev) if need_dh else None
    dz = torch.empty(Nk, vs, dtype=hidden.dtype, device=dev)
    g_lp = grad_lp.float().contiguous()
    g_ent = grad_ent.float().contiguous()
    # autotuned per (H, precision, dtype): the kernel's V is each slice's end, a key that would retune every slice
    for v0 in range(0, V, vs):
        v1 = min(v0 + vs, V)
        triton_tiles.launch(
            _kernel("dz", is_aligned),
            lambda meta, w=v1 - v0: (triton.cdiv(Nk, meta["BLOCK_N"]) * triton.cdiv(w, meta["BLOCK_V"]),),
            (hidden, all_rows, weight, bias if bias is not None else weight, targets, g_lp, g_ent, lse, ez, dz,
             Nk, v1, H, v0, *_common(hidden, weight), dz.stride(0), 1.0 / temperature),
            dict(HAS_BIAS=bias is not None, PRECISION=precision), options, tune_key=("H", "PRECISION"),
            tune=Nk * vs * H >= _TUNE_MIN_MACS,
        )
        d = dz[:, : v1 - v0]
        if need_dh:
            acc_mm(dh32, d, weight[v0:v1])
        if need_dw:
            torch.mm(d.t(), h_kept, out=dw[v0:v1])  # one GEMM over all rows: fp32 accumulation inside
        if need_db:
            db[v0:v1] = d.sum(0, dtype=torch.float32)
    dh = None
    if need_dh:
        if rows is None:
            dh = dh32.to(hidden.dtype)
        else:
            dh = torch.zeros(hidden.shape, dtype=hidden.dtype, device=dev)
            dh.index_copy_(0, rows, dh32.to(hidden.dtype))
    return dh, dw, db
