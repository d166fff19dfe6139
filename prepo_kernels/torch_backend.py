"""Plain-torch backend of the logits-path ops: the math every kernel must match, chunked over rows.

It is the fallback on any device and the readable statement of what the Triton and C++ kernels compute.

Contract shared by all backends (``triton_backend``, ``native``):
    forward(logits[N, V], targets[N] int64, temperature, ignore_index) -> (lp, ent, lse, ez), each float32 [N]
        z = logits / T;  lse = logsumexp(z);  lp = z[target] - lse;  ez = E_p[z];  ent = lse - ez
        (computed relative to the row max, so ent does not cancel when lse >> ent).
        Rows whose target is ignore_index get lp = ent = 0.
    backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, out) -> out
        dz = g_lp * (onehot - p) + g_ent * p * (ez - z);  dlogits = dz / T;  ignored rows get 0.
        ``out`` has logits' shape and dtype and may be ``logits`` itself (in-place backward).
"""
from __future__ import annotations

import torch

# Rows per chunk are chosen so one chunk holds about this many fp32 elements (16 MiB): the peak extra
# memory is a few chunk-sized temporaries, never a full float32 copy of the logits.
CHUNK_ELEMENTS = 1 << 22


def _rows_per_chunk(V: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(V, 1))


def forward(logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int):
    N, V = logits.shape
    dev = logits.device
    lp = torch.empty(N, dtype=torch.float32, device=dev)
    ent = torch.empty_like(lp)
    lse = torch.empty_like(lp)
    ez = torch.empty_like(lp)
    inv_t = 1.0 / temperature
    step = _rows_per_chunk(V)
    for s in range(0, N, step):
        e = min(s + step, N)
        z = logits[s:e].float() * inv_t
        t = targets[s:e]
        ignored = t == ignore_index
        m = z.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row: avoid -inf - -inf
        zs = z - m                                           # <= 0, -inf on masked columns
        ex = torch.exp(zs)
        s0 = ex.sum(dim=-1)
        s1 = torch.where(ex > 0, ex * zs, torch.zeros_like(zs)).sum(dim=-1)
        log_s0 = torch.log(s0)
        row_lse = m.squeeze(-1) + log_s0
        row_ent = log_s0 - s1 / s0
        safe_t = torch.where(ignored, torch.zeros_like(t), t)
        zt = z.gather(-1, safe_t.unsqueeze(-1)).squeeze(-1)
        lse[s:e] = row_lse
        ez[s:e] = row_lse - row_ent
        lp[s:e] = torch.where(ignored, torch.zeros_like(zt), zt - row_lse)
        ent[s:e] = torch.where(ignored, torch.zeros_like(row_ent), row_ent)
    return lp, ent, lse, ez


def backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature: float, ignore_index: int, out):
    N, V = logits.shape
    inv_t = 1.0 / temperature
    step = _rows_per_chunk(V)
    for s in range(0, N, step):
        e = min(s + step, N)
        z = logits[s:e].float() * inv_t
        t = targets[s:e]
        keep = (t != ignore_index).unsqueeze(-1)
        p = torch.exp(z - lse[s:e].unsqueeze(-1))
        g_lp = grad_lp[s:e].float().unsqueeze(-1)
        g_ent = grad_ent[s:e].float().unsqueeze(-1)
        # p * (ez - z), written so -inf columns (p = 0, z = -inf) give 0, not NaN
        dent = torch.where(p > 0, p * (ez[s:e].unsqueeze(-1) - z), torch.zeros_like(p))
        dz = g_ent * dent - g_lp * p
        safe_t = torch.where(keep.squeeze(-1), t, torch.zeros_like(t)).unsqueeze(-1)
        dz.scatter_add_(-1, safe_t, g_lp.expand(-1, 1).clone())
        dz = torch.where(keep, dz * inv_t, torch.zeros_like(dz))
        out[s:e].copy_(dz)
    return out
