"""C++ CPU backend of the ``logprobs_entropy`` op: loads ``prepo_kernels._C`` (built from csrc/ by setup.py).

Same contract as ``logprobs_entropy_torch``; importing prepo_kernels never requires the extension.
"""
from __future__ import annotations

import os

try:
    from prepo_kernels import _C  # type: ignore[attr-defined]

    _ERROR = ""
except Exception as exc:  # no compiler at install time, or a source checkout used without building
    _C = None
    _ERROR = f"prepo_kernels._C could not be imported ({type(exc).__name__}: {exc})"

# Names the inner loops to run instead of the best the CPU has: auto, avx512_bf16, avx512, avx2 or scalar. Read at
# every call (tests and benchmarks switch it in one process); a name the CPU lacks raises when a kernel runs.
CAPABILITY_ENV = "PREPO_CPU_CAPABILITY"


def native_available() -> tuple[bool, str]:
    """(True, "") when the C++ CPU kernels are built and importable, else (False, the reason)."""
    if _C is None:
        return False, _ERROR
    return True, ""


def _requested() -> str:
    return os.environ.get(CAPABILITY_ENV, "")


def cpu_capability() -> str | None:
    """The inner loops the C++ CPU kernels run now: "avx512_bf16" (AVX-512 with its bf16 conversion), "avx512", "avx2"
    or "scalar"; the best this CPU supports unless ``PREPO_CPU_CAPABILITY`` names one. None without the extension.

    Raises ValueError for an unknown ``PREPO_CPU_CAPABILITY`` and RuntimeError for one this CPU lacks.
    """
    if _C is None:
        return None
    return _C.cpu_capability(_requested())


def supported_cpu_capabilities() -> list[str]:
    """The capabilities this CPU supports, best first ([] without the extension)."""
    return [] if _C is None else list(_C.supported_capabilities())


def forward(logits, targets, temperature: float, ignore_index: int):
    return tuple(_C.logprobs_entropy_fwd(logits, targets, float(temperature), int(ignore_index), _requested()))


def backward(grad_lp, grad_ent, logits, targets, lse, ez, temperature: float, ignore_index: int, out):
    _C.logprobs_entropy_bwd(
        grad_lp.to(lse.dtype).contiguous(), grad_ent.to(lse.dtype).contiguous(), logits, targets, lse, ez,
        float(temperature), int(ignore_index), out, _requested(),
    )
    return out
