"""Chunked ``linear_logprobs_entropy`` for the "native" and "torch" backends: logits one bounded block at a time.

Each block (a row block x a vocabulary slice) comes from a matmul and goes through the logits-path backend module
(C++ or torch), so the linear path gets whatever that backend is worth; the full [N, V] logits never exist.

Contract shared with ``linear_logprobs_entropy_triton`` (rows are the kept positions; ignored ones never reach the head):
    forward(hidden[N, H], rows, weight[V, H], bias[V] | None, targets[Nk] int64, temperature, ...)
        -> (lp, ent, lse, ez), each [Nk] float32 (float64 for float64 inputs), for the rows ``rows`` (int64 [Nk],
        or None: every row, in order); rows without a finite lse follow NON_FINITE_ROWS of logprobs_entropy_torch
    backward(grad_lp[Nk], grad_ent[Nk], hidden, rows, weight, bias, targets, lse, ez, temperature, needs, ...)
        -> (d_hidden [N, H] with zero rows outside ``rows``, d_weight [V, H], d_bias [V]); an entry is None when
        ``needs`` (three bools) says it is not wanted. Gradients have their input's dtype.

Why vocabulary slices of a whole row block, not token chunks of whole rows: the GEMMs keep M = all rows of the
block, the block's hidden states stay in cache while the weight streams through once per pass, and each slice of
dW is written by one GEMM (no read-modify-write of the whole dW per token chunk). A slice's logits carry one extra
-inf "sentinel" column; rows whose target lies in another slice point at it, so the backend's one-hot term lands
there (and is dropped) instead of needing a correction. Slices are merged with the stable rule
lse = logaddexp(lse_a, lse_b), H = w_a (H_a - log w_a) + w_b (H_b - log w_b), w_i = exp(lse_i - lse).
"""
from __future__ import annotations

import torch

from prepo_kernels._checks import compute_dtype
from prepo_kernels.logprobs_entropy_torch import finish_rows

# One block of logits (plus its fp32 copy for half-precision gradients) holds at most this many bytes: it bounds
# the extra memory of both passes. 16 MiB = 2048 rows x 2048 fp32 columns; small enough to stay in a server L3.
CHUNK_BYTES = 16 << 20
# Rows per block: the GEMMs' M. Larger blocks only add hidden-state traffic that no longer fits in cache.
ROW_BLOCK = 4096
# Row pitch of the block buffer = columns + _PAD: room for the sentinel column, rows 64-byte aligned.
_PAD = 16
_HALF = (torch.bfloat16, torch.float16)
_SENTINEL_IGNORE = -1  # never a slice-local target (those are in [0, columns]): nothing is ignored inside a block


def _bytes_per_element(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8 + (4 if dtype in _HALF else 0)


def plan(Nk: int, V: int, H: int, dtype: torch.dtype) -> tuple[int, int]:
    """(rows per block, vocabulary columns per slice) for Nk kept rows."""
    elem = _bytes_per_element(dtype)
    rows = max(1, min(Nk, ROW_BLOCK, max(64, CHUNK_BYTES // (H * elem))))
    cols = CHUNK_BYTES // (rows * elem) - _PAD
    cols = max(16, cols // 16 * 16)
    return rows, min(cols, V)


def _block(hidden, rows, targets, r0, r1):
    """Hidden rows and targets of compact rows [r0, r1): a view when every row is kept, else a gather."""
    if rows is None:
        return hidden[r0:r1], targets[r0:r1]
    return hidden.index_select(0, rows[r0:r1]), targets[r0:r1]


def _slice_logits(h, weight, bias, v0, v1, buf):
    """Raw logits h @ weight[v0:v1].T (+ bias) into the reused buffer, then the -inf sentinel column."""
    n, c = h.shape[0], v1 - v0
    z = buf[:n, : c + 1]
    if bias is None:
        torch.mm(h, weight[v0:v1].t(), out=z[:, :c])
    else:
        torch.addmm(bias[v0:v1], h, weight[v0:v1].t(), out=z[:, :c])
    z[:, c].fill_(float("-inf"))
    return z


def _local_targets(t, v0, c):
    """Targets relative to the slice; those in another slice point at the sentinel column c."""
    local = t - v0
    inside = (local >= 0) & (local < c)
    return torch.where(inside, local, torch.full_like(local, c)), inside


def _new_buffer(n, cols, dtype, device):
    return torch.empty(n, cols + _PAD, dtype=dtype, device=device)


def _weighted(lse, ent, new):
    """w (H - log w) with w = exp(lse - new): one slice's share of the merged entropy; 0 for a slice that is all
    -inf (no mass: its entropy is NaN by the flagged-row contract), NaN for a poisoned one (lse NaN)."""
    share = torch.exp(lse - new) * (ent + (new - lse))
    return torch.where(lse == float("-inf"), torch.zeros_like(share), share)


def forward(hidden, rows, weight, bias, targets, temperature: float, ignore_index: int, logits_backend):
    Nk = targets.shape[0]
    V, H = weight.shape
    dev = hidden.device
    acc = compute_dtype(hidden.dtype)
    lp = torch.empty(Nk, dtype=acc, device=dev)
    ent, lse, ez = torch.empty_like(lp), torch.empty_like(lp), torch.empty_like(lp)
    if Nk == 0:
        return lp, ent, lse, ez
    R, cols = plan(Nk, V, H, hidden.dtype)
    buf = _new_buffer(R, cols, hidden.dtype, dev)
    for r0 in range(0, Nk, R):
        r1 = min(r0 + R, Nk)
        h, t = _block(hidden, rows, targets, r0, r1)
        zt = torch.zeros(r1 - r0, dtype=acc, device=dev)  # target logit / T
        for v0 in range(0, V, cols):
            v1 = min(v0 + cols, V)
            z = _slice_logits(h, weight, bias, v0, v1, buf)
            local, inside = _local_targets(t, v0, v1 - v0)
            s_lp, s_ent, s_lse, _ = logits_backend.forward(z, local, temperature, _SENTINEL_IGNORE)
            # the target logit; in a slice that is all -inf it is -inf (the slice's lp is NaN there)
            zt = torch.where(inside, torch.where(s_lse == float("-inf"), s_lse, s_lp + s_lse), zt)
            if v0 == 0:
                run_lse, run_ent = s_lse, s_ent
            else:  # merge this slice into the running (lse, entropy)
                new = torch.logaddexp(run_lse, s_lse)
                run_ent = _weighted(run_lse, run_ent, new) + _weighted(s_lse, s_ent, new)
                run_lse = new
        lp[r0:r1], ent[r0:r1], lse[r0:r1], ez[r0:r1] = finish_rows(run_lse, run_ent, zt)
    return lp, ent, lse, ez


def acc_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b, without rounding the product to a's dtype where the device allows it."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if a.device.type == "cuda":
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (RuntimeError, TypeError):  # a torch without mixed-dtype GEMMs
            pass
    acc.addmm_(a.float(), b.float())  # upcast copies, never a product rounded to bf16 (that biases the sums)


def backward(grad_lp, grad_ent, hidden, rows, weight, bias, targets, lse, ez, temperature: float,
             ignore_index: int, needs, logits_backend):
    need_dh, need_dw, need_db = needs
    Nk = targets.shape[0]
    V, H = weight.shape
    dev = hidden.device
    f32 = compute_dtype(hidden.dtype)  # the accumulation dtype: float32, or float64 for float64 inputs
    dh = dw = db = None
    if need_dh:
        dh = (torch.empty if rows is None else torch.zeros)(hidden.shape, dtype=hidden.dtype, device=dev)
    if Nk == 0:
        return dh, (torch.zeros_like(weight) if need_dw else None), \
            (torch.zeros(V, dtype=bias.dtype, device=dev) if need_db else None)
    R, cols = plan(Nk, V, H, hidden.dtype)
    one_block = R >= Nk
    if need_dw:  # one row block: each dW slice is written once by one GEMM; else accumulated in fp32
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format) if one_block else \
            torch.zeros(weight.shape, dtype=f32, device=dev)
    if need_db:
        db = torch.zeros(V, dtype=f32, device=dev)
    buf = _new_buffer(R, cols, hidden.dtype, dev)
    g_lp = grad_lp.to(f32).contiguous()
    g_ent = grad_ent.to(f32).contiguous()
    for r0 in range(0, Nk, R):
        r1 = min(r0 + R, Nk)
        h, t = _block(hidden, rows, targets, r0, r1)
        h_acc = h.to(f32) if need_dw and not one_block else h  # upcast once per block, not once per slice
        direct = need_dh and rows is None and hidden.dtype == f32  # accumulate straight into the output rows
        dh_acc = dh[r0:r1] if direct else torch.zeros(r1 - r0, H, dtype=f32, device=dev) if need_dh else None
        for v0 in range(0, V, cols):
            v1 = min(v0 + cols, V)
            z = _slice_logits(h, weight, bias, v0, v1, buf)  # recompute this block's logits ...
            local, _ = _local_targets(t, v0, v1 - v0)
            # ... and overwrite them in place with dZ = d(loss)/d(logits) (the backend divides by T)
            logits_backend.backward(g_lp[r0:r1], g_ent[r0:r1], z, local, lse[r0:r1], ez[r0:r1], temperature,
                                    _SENTINEL_IGNORE, z)
            d = z[:, : v1 - v0]
            if need_dh:
                if direct and v0 == 0:
                    torch.mm(d, weight[v0:v1], out=dh_acc)
                else:
                    acc_mm(dh_acc, d, weight[v0:v1])
            if need_dw:
                if one_block:
                    torch.mm(d.t(), h, out=dw[v0:v1])
                else:
                    acc_mm(dw[v0:v1], d.t(), h_acc)
            if need_db:
                db[v0:v1] += d.sum(0, dtype=f32)
        if need_dh and not direct:
            if rows is None:
                dh[r0:r1] = dh_acc
            else:
                dh.index_copy_(0, rows[r0:r1], dh_acc.to(hidden.dtype))
    if dw is not None and dw.dtype != weight.dtype:
        dw = dw.to(weight.dtype)
    if db is not None and db.dtype != bias.dtype:
        db = db.to(bias.dtype)
    return dh, dw, db
