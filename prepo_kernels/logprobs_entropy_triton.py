"""Triton kernels of the ``logprobs_entropy`` op: one streaming pass per row forward, one fused pass backward.

Same contract as ``logprobs_entropy_torch`` (read it for the math); runs on CUDA, or on CPU under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - triton is optional
    triton = None
    tl = None
    HAVE_TRITON = False

from prepo_kernels import triton_tiles  # noqa: E402  (the GPU launch configurations, per GPU family)

# Vocabulary tile per loop iteration on a GPU: triton_tiles.LOGITS. The interpreter (CPU tests) runs numpy per tile,
# so a smaller tile there keeps small-V tests fast.
BLOCK_V_INTERPRET = 256


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable_on(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton backend can run on tensors of this device, and why not."""
    if not HAVE_TRITON:
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and interpret_mode():
        return True, ""
    return False, (
        f"the triton backend needs CUDA tensors (got {device.type}); on CPU it runs only under "
        "TRITON_INTERPRET=1 (set before importing triton)"
    )


def _tiles(x: torch.Tensor, V: int) -> tuple:
    if interpret_mode():
        return (triton_tiles.Tiles.of(1, 1, BLOCK_V=min(BLOCK_V_INTERPRET, triton.next_power_of_2(V))),)
    return (triton_tiles.logits_tiles(triton_tiles.device_family(x.device)),)


if HAVE_TRITON:

    @triton.jit
    def _logprobs_entropy_fwd_kernel(
        logits_ptr, targets_ptr, lp_ptr, ent_ptr, lse_ptr, ez_ptr,
        stride_row, V, inv_temp, ignore_index,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 at 32k x 152k
        row_ptr = logits_ptr + row * stride_row
        offs = tl.arange(0, BLOCK_V)
        neg_inf = float("-inf")
        # running max m, S0 = sum e^(z-m), S1 = sum (z-m) e^(z-m)  (scalars, fp32)
        m = tl.max(tl.full([BLOCK_V], neg_inf, tl.float32), axis=0)
        s0 = tl.sum(tl.zeros([BLOCK_V], tl.float32), axis=0)
        s1 = tl.sum(tl.zeros([BLOCK_V], tl.float32), axis=0)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            # padded columns load as -inf, never 0: a 0 would add e^(0-m) to the sum
            z = tl.load(row_ptr + cols, mask=cols < V, other=neg_inf).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, axis=0))
            m_ref = tl.where(m_new == neg_inf, 0.0, m_new)  # all -inf so far: keep arithmetic finite
            e = tl.exp(z - m_ref)                            # the one exp per element
            zs = tl.where(e > 0, z - m_ref, 0.0)             # 0 * -inf guard for masked columns
            alpha = tl.exp(m - m_ref)                        # rescale of the old sums (0 on the first tile)
            shift = tl.where(s0 > 0, m - m_ref, 0.0)         # (z-m) -> (z-m') for the old terms
            s1 = (s1 + shift * s0) * alpha + tl.sum(e * zs, axis=0)
            s0 = s0 * alpha + tl.sum(e, axis=0)
            m = m_new
        m_ref = tl.where(m == neg_inf, 0.0, m)
        log_s0 = tl.log(s0)
        lse = m_ref + log_s0
        ent = log_s0 - s1 / s0
        tgt = tl.load(targets_ptr + row)
        ignored = tgt == ignore_index
        safe_t = tl.where(ignored, 0, tgt)                   # never gather at ignore_index
        zt = tl.load(row_ptr + safe_t).to(tl.float32) * inv_temp
        flagged = ~(tl.abs(lse) < float("inf"))             # NaN / +inf in z, or all -inf: NON_FINITE_ROWS, NaN out
        tl.store(lse_ptr + row, lse)
        tl.store(ez_ptr + row, lse - ent)
        tl.store(lp_ptr + row, tl.where(ignored, 0.0, tl.where(flagged, float("nan"), zt - lse)))
        tl.store(ent_ptr + row, tl.where(ignored, 0.0, tl.where(flagged, float("nan"), ent)))

    @triton.jit
    def _logprobs_entropy_bwd_kernel(
        grad_lp_ptr, grad_ent_ptr, logits_ptr, targets_ptr, lse_ptr, ez_ptr, out_ptr,
        stride_row, stride_out_row, V, inv_temp, ignore_index,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride_row
        out_row = out_ptr + row * stride_out_row
        offs = tl.arange(0, BLOCK_V)
        tgt = tl.load(targets_ptr + row)
        keep = tgt != ignore_index
        # ignored rows: scale both upstream gradients to 0 so the row is written as zeros
        g_lp = tl.where(keep, tl.load(grad_lp_ptr + row).to(tl.float32), 0.0)
        g_ent = tl.where(keep, tl.load(grad_ent_ptr + row).to(tl.float32), 0.0)
        lse = tl.load(lse_ptr + row)
        ez = tl.load(ez_ptr + row)
        flagged = ~(tl.abs(lse) < float("inf"))             # NON_FINITE_ROWS: a NaN gradient row, unless ignored
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            valid = cols < V
            z = tl.load(row_ptr + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
            p = tl.exp(z - lse)
            gap = tl.where(p > 0, ez - z, 0.0)               # -inf columns: p = 0, keep 0 * inf out
            dz = g_ent * p * gap - g_lp * p
            dz = tl.where(cols == tgt, dz + g_lp, dz)
            dz = tl.where(keep, tl.where(flagged, float("nan"), dz * inv_temp), 0.0)  # NaN * 0 must not leak
            tl.store(out_row + cols, dz.to(out_ptr.dtype.element_ty), mask=valid)


def forward(logits, targets, temperature: float, ignore_index: int):
    N, V = logits.shape
    dev = logits.device
    lp = torch.empty(N, dtype=torch.float32, device=dev)
    ent = torch.empty_like(lp)
    lse = torch.empty_like(lp)
    ez = torch.empty_like(lp)
    if N == 0:
        return lp, ent, lse, ez
    triton_tiles.launch(_logprobs_entropy_fwd_kernel, lambda meta: (N,),
                        (logits, targets, lp, ent, lse, ez, logits.stride(0), V, 1.0 / temperature, ignore_index),
                        {}, _tiles(logits, V))
    return lp, ent, lse, ez


def backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature: float, ignore_index: int, out):
    N, V = logits.shape
    if N == 0:
        return out
    triton_tiles.launch(_logprobs_entropy_bwd_kernel, lambda meta: (N,),
                        (grad_lp.float().contiguous(), grad_ent.float().contiguous(), logits, targets, lse, ez, out,
                         logits.stride(0), out.stride(0), V, 1.0 / temperature, ignore_index),
                        {}, _tiles(logits, V))
    return out
