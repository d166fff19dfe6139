"""Chunked fused linear path for the "native" and "torch" backends: logits for one bounded token chunk at a time.

Each chunk goes through a matmul and then the logits-path backend module (C++ or torch), so the linear path gets
whatever that backend is worth; the full [N, V] logits never exist.

Contract shared with ``triton_linear`` (rows are the kept positions; ignored ones never reach the head):
    forward(hidden[N, H], rows, weight[V, H], bias[V] | None, targets[Nk] int64, temperature, ...)
        -> (lp, ent, lse, ez), each float32 [Nk], for the rows ``rows`` (int64 [Nk], or None: every row, in order)
    backward(grad_lp[Nk], grad_ent[Nk], hidden, rows, weight, bias, targets, lse, ez, temperature, needs, ...)
        -> (d_hidden [N, H] with zero rows outside ``rows``, d_weight [V, H], d_bias [V]); an entry is None when
        ``needs`` (three bools) says it is not wanted. Gradients have their input's dtype.
"""
from __future__ import annotations

import torch

# One chunk of logits holds at most this many bytes (32 MiB: 170 rows of fp32 logits at V = 49152). It bounds the
# extra memory of both passes; rows are many enough that each chunk's matmul still runs near the full GEMM's rate.
CHUNK_BYTES = 32 << 20
_HALF = (torch.bfloat16, torch.float16)


def rows_per_chunk(V: int, dtype: torch.dtype) -> int:
    """Token rows per chunk: the logits chunk, plus its fp32 copy for half-precision dW, fit in CHUNK_BYTES."""
    per_row = V * (torch.finfo(dtype).bits // 8 + (4 if dtype in _HALF else 0))
    return max(1, CHUNK_BYTES // per_row)


def _take(hidden, rows, targets, s, e):
    """Hidden rows and targets of compact rows [s, e): a view when every row is kept, else a small gather."""
    if rows is None:
        return hidden[s:e], targets[s:e]
    return hidden.index_select(0, rows[s:e]), targets[s:e]


def _logits(h, weight, bias, out):
    """out = h @ weight.T (+ bias), written into a reused chunk buffer."""
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


def forward(hidden, rows, weight, bias, targets, temperature: float, ignore_index: int, logits_backend):
    Nk = targets.shape[0]
    V = weight.shape[0]
    dev = hidden.device
    lp = torch.empty(Nk, dtype=torch.float32, device=dev)
    ent, lse, ez = torch.empty_like(lp), torch.empty_like(lp), torch.empty_like(lp)
    step = rows_per_chunk(V, hidden.dtype)
    buf = torch.empty(min(step, Nk), V, dtype=hidden.dtype, device=dev)
    for s in range(0, Nk, step):
        e = min(s + step, Nk)
        h, t = _take(hidden, rows, targets, s, e)
        z = _logits(h, weight, bias, buf[: e - s])
        outs = logits_backend.forward(z, t, temperature, ignore_index)
        for dst, src in zip((lp, ent, lse, ez), outs):
            dst[s:e] = src
    return lp, ent, lse, ez


def backward(grad_lp, grad_ent, hidden, rows, weight, bias, targets, lse, ez, temperature: float,
             ignore_index: int, needs, logits_backend):
    need_dh, need_dw, need_db = needs
    Nk = targets.shape[0]
    V = weight.shape[0]
    dev = hidden.device
    half = hidden.dtype in _HALF
    # dW and db accumulate over chunks in fp32: into the output itself for fp32 weights, else a scratch copy
    dw = None
    if need_dw:
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=dev)
    db = torch.zeros(V, dtype=torch.float32, device=dev) if need_db else None
    dh = None
    if need_dh:
        alloc = torch.empty if rows is None else torch.zeros
        dh = alloc(hidden.shape, dtype=hidden.dtype, device=dev)
    step = rows_per_chunk(V, hidden.dtype)
    buf = torch.empty(min(step, Nk), V, dtype=hidden.dtype, device=dev)
    for s in range(0, Nk, step):
        e = min(s + step, Nk)
        h, t = _take(hidden, rows, targets, s, e)
        z = _logits(h, weight, bias, buf[: e - s])  # recompute this chunk's logits ...
        # ... and overwrite them with dZ = d(loss)/d(logits) (the backend divides by T)
        logits_backend.backward(grad_lp[s:e], grad_ent[s:e], z, t, lse[s:e], ez[s:e],
                                temperature, ignore_index, z)
        if need_dh:
            if rows is None:
                torch.mm(z, weight, out=dh[s:e])
            else:
                dh.index_copy_(0, rows[s:e], torch.mm(z, weight))
        if need_dw:
            if half:
                dw.addmm_(z.t().float(), h.float())
            else:
                dw.addmm_(z.t(), h)
        if need_db:
            db += z.sum(0, dtype=torch.float32)
    if dw is not None and dw.dtype != weight.dtype:
        dw = dw.to(weight.dtype)
    if db is not None and bias is not None and db.dtype != bias.dtype:
        db = db.to(bias.dtype)
    return dh, dw, db
