"""Plain-torch backend of the ``logprobs_entropy`` op: the math every kernel must match, chunked over rows.

It is the fallback on any device and the readable statement of what the Triton and C++ kernels compute.

Contract shared by all backends (``logprobs_entropy_triton``, ``logprobs_entropy_native``):
    forward(logits[N, V], targets[N] int64, temperature, ignore_index) -> (lp, ent, lse, ez), each [N] in the
    compute dtype (float64 for float64 logits, else float32)
        z = logits / T;  lse = logsumexp(z);  lp = z[target] - lse;  ez = E_p[z];  ent = lse - ez
        (computed relative to the row max, so ent does not cancel when lse >> ent).
        Rows whose target is ignore_index get lp = ent = 0.
    backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, out) -> out
        dz = g_lp * (onehot - p) + g_ent * p * (ez - z);  dlogits = dz / T;  ignored rows get 0.
        ``out`` has logits' shape and dtype and may be ``logits`` itself (in-place backward).

Rows without a finite log-sum-exp are flagged, never given a number (NON_FINITE_ROWS, the same on every backend and
on the linear path): z holds NaN or +inf (a +inf logit, or logits / T overflowing), or every z is -inf. Such a row
gets lp = ent = ez = NaN and a gradient row of NaN; lse is NaN, or -inf for an all -inf row (the linear path merges
vocabulary slices and must tell an empty slice from a poisoned one). Ignored rows still get 0 and a zero gradient.
Why not the limit (the +inf tokens sharing all the mass, lp = -log k): a +inf logit does not come from a healthy
model but from an overflow (an fp16 head, a tiny temperature) or corrupted input, and a finite -log k would let
training go on over it silently; NaN reaches the loss, where it is seen (prepo's selection window refuses a NaN
perplexity). It is also what log_softmax gives for an all -inf row, and what entropy(softmax) gives for a +inf one.
"""
from __future__ import annotations

import torch

from prepo_kernels._checks import compute_dtype

# Rows per chunk are chosen so one chunk holds about this many fp32 elements (16 MiB): the peak extra
# memory is a few chunk-sized temporaries, never a full float32 copy of the logits.
CHUNK_ELEMENTS = 1 << 22


def _rows_per_chunk(V: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(V, 1))


def finish_rows(lse: torch.Tensor, ent: torch.Tensor, zt: torch.Tensor):
    """(lp, ent, lse, ez) of rows from their log-sum-exp, entropy and target logit z[target], with the contract for
    rows without a finite lse (see the module docstring): NaN lp, ent and ez; lse NaN, or -inf for all -inf rows."""
    nan = torch.full_like(lse, float("nan"))
    lse = torch.where(lse == float("inf"), nan, lse)
    bad = ~torch.isfinite(lse)
    ent = torch.where(bad, nan, ent)
    return torch.where(bad, nan, zt - lse), ent, lse, lse - ent


def _row_chunks(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """(start, end, z = logits/T in the compute dtype, targets) for each bounded block of rows."""
    N, V = logits.shape
    acc = compute_dtype(logits.dtype)
    step = _rows_per_chunk(V)
    for s in range(0, N, step):
        e = min(s + step, N)
        yield s, e, logits[s:e].to(acc) * (1.0 / temperature), targets[s:e]


def forward(logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int):
    lp = torch.empty(logits.shape[0], dtype=compute_dtype(logits.dtype), device=logits.device)
    ent = torch.empty_like(lp)
    lse = torch.empty_like(lp)
    ez = torch.empty_like(lp)
    for s, e, z, t in _row_chunks(logits, targets, temperature):
        ignored = t == ignore_index
        m = z.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row: avoid -inf - -inf
        zs = z - m                                           # <= 0, -inf on masked columns
        ex = torch.exp(zs)
        s0 = ex.sum(dim=-1)
        s1 = torch.where(ex > 0, ex * zs, torch.zeros_like(zs)).sum(dim=-1)
        log_s0 = torch.log(s0)
        safe_t = torch.where(ignored, torch.zeros_like(t), t)
        zt = z.gather(-1, safe_t.unsqueeze(-1)).squeeze(-1)
        row_lp, row_ent, lse[s:e], ez[s:e] = finish_rows(m.squeeze(-1) + log_s0, log_s0 - s1 / s0, zt)
        lp[s:e] = torch.where(ignored, torch.zeros_like(row_lp), row_lp)
        ent[s:e] = torch.where(ignored, torch.zeros_like(row_ent), row_ent)
    return lp, ent, lse, ez


def backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature: float, ignore_index: int, out):
    acc = compute_dtype(logits.dtype)
    inv_t = 1.0 / temperature
    for s, e, z, t in _row_chunks(logits, targets, temperature):
        keep = (t != ignore_index).unsqueeze(-1)
        row_lse = lse[s:e].unsqueeze(-1)
        p = torch.exp(z - row_lse)
        g_lp = grad_lp[s:e].to(acc).unsqueeze(-1)
        g_ent = grad_ent[s:e].to(acc).unsqueeze(-1)
        # p * (ez - z), written so -inf columns (p = 0, z = -inf) give 0, not NaN
        dent = torch.where(p > 0, p * (ez[s:e].unsqueeze(-1) - z), torch.zeros_like(p))
        dz = g_ent * dent - g_lp * p
        safe_t = torch.where(keep.squeeze(-1), t, torch.zeros_like(t)).unsqueeze(-1)
        dz.scatter_add_(-1, safe_t, g_lp.expand(-1, 1).clone())
        dz = torch.where(torch.isfinite(row_lse), dz * inv_t, torch.full_like(dz, float("nan")))  # flagged rows
        dz = torch.where(keep, dz, torch.zeros_like(dz))
        out[s:e].copy_(dz)
    return out
