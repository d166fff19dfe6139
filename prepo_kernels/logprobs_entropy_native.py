"""C++ CPU backend of the ``logprobs_entropy`` op: loads ``prepo_kernels._C`` (built from csrc/ by setup.py).

Same contract as ``logprobs_entropy_torch``; importing prepo_kernels never requires the extension.
"""
from __future__ import annotations

try:
    from prepo_kernels import _C  # type: ignore[attr-defined]

    _ERROR = ""
except Exception as exc:  # no compiler at install time, or a source checkout used without building
    _C = None
    _ERROR = f"prepo_kernels._C could not be imported ({type(exc).__name__}: {exc})"


def native_available() -> tuple[bool, str]:
    """(True, "") when the C++ CPU kernels are built and importable, else (False, the reason)."""
    if _C is None:
        return False, _ERROR
    return True, ""


def forward(logits, targets, temperature: float, ignore_index: int):
    return tuple(_C.logprobs_entropy_fwd(logits, targets, float(temperature), int(ignore_index)))


def backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature: float, ignore_index: int, out):
    _C.logprobs_entropy_bwd(
        grad_lp.to(lse.dtype).contiguous(), grad_ent.to(lse.dtype).contiguous(), logits, targets, lse, ez,
        float(temperature), int(ignore_index), out,
    )
    return out
