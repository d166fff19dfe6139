"""Op ``logprobs_entropy`` (public): per-token log-probs and entropies from logits, autograd and torch.compile.

Registered as torch.library custom ops (fake kernels + autograd) that dispatch to the torch, Triton or C++ backend.
"""
from __future__ import annotations

import torch

from prepo_kernels import _checks, dispatch

_NS = "prepo_kernels"


# --- custom ops: 2-D logits [N, V] (unit stride along V), int64 targets [N] --------------------------------------

@torch.library.custom_op(f"{_NS}::logprobs_entropy_fwd", mutates_args=())
def _fwd_op(logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.check_temperature(temperature)  # under torch.compile only here: the value is concrete in the op
    _checks.check_target_range(targets, logits.shape[-1], ignore_index)
    return tuple(dispatch.module(backend).forward(logits, targets, temperature, ignore_index))


@_fwd_op.register_fake
def _(logits, targets, temperature, ignore_index, backend):
    n = logits.shape[0]
    return tuple(logits.new_empty((n,), dtype=_checks.compute_dtype(logits.dtype)) for _ in range(4))


@torch.library.custom_op(f"{_NS}::logprobs_entropy_bwd", mutates_args=())
def _bwd_op(grad_lp: torch.Tensor, grad_ent: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
            lse: torch.Tensor, ez: torch.Tensor, temperature: float, ignore_index: int,
            backend: str) -> torch.Tensor:
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    return dispatch.module(backend).backward(grad_lp, grad_ent, logits, targets, lse, ez,
                                             temperature, ignore_index, out)


@_bwd_op.register_fake
def _(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{_NS}::logprobs_entropy_bwd_", mutates_args=("logits",))
def _bwd_inplace_op(grad_lp: torch.Tensor, grad_ent: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    lse: torch.Tensor, ez: torch.Tensor, temperature: float, ignore_index: int,
                    backend: str) -> None:
    dispatch.module(backend).backward(grad_lp, grad_ent, logits, targets, lse, ez,
                                      temperature, ignore_index, logits)


def _setup_context(ctx, inputs, output):
    logits, targets, temperature, ignore_index, backend = inputs
    _, _, lse, ez = output
    ctx.save_for_backward(logits, targets, lse, ez)
    ctx.temperature = temperature
    ctx.ignore_index = ignore_index
    ctx.backend = backend
    ctx.inplace = False


def _backward(ctx, grad_lp, grad_ent, _g_lse, _g_ez):
    logits, targets, lse, ez = ctx.saved_tensors
    if grad_lp is None:
        grad_lp = torch.zeros_like(lse)
    if grad_ent is None:
        grad_ent = torch.zeros_like(lse)
    dlogits = _bwd_op(grad_lp, grad_ent, logits, targets, lse, ez, ctx.temperature, ctx.ignore_index, ctx.backend)
    return dlogits, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _InplaceBackward(torch.autograd.Function):
    """Eager-only path for ``inplace_backward=True``: the gradient overwrites the logits buffer."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, ignore_index, backend):
        lp, ent, lse, ez = _fwd_op(logits, targets, temperature, ignore_index, backend)
        ctx.save_for_backward(logits, targets, lse, ez)
        ctx.args = (temperature, ignore_index, backend)
        ctx.mark_non_differentiable(lse, ez)
        return lp, ent, lse, ez

    @staticmethod
    def backward(ctx, grad_lp, grad_ent, _g_lse, _g_ez):
        logits, targets, lse, ez = ctx.saved_tensors
        temperature, ignore_index, backend = ctx.args
        if grad_lp is None:
            grad_lp = torch.zeros_like(lse)
        if grad_ent is None:
            grad_ent = torch.zeros_like(lse)
        _bwd_inplace_op(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, backend)
        return logits, None, None, None, None


# --- public functions ----------------------------------------------------------------------------------------------

def _prepare(logits, targets, temperature, ignore_index, backend):
    """Validate, flatten to [N, V] with unit stride along V, and resolve the backend."""
    V = _checks.check_logits(logits, targets)
    temperature = _checks.check_temperature(temperature)
    ignore_index = _checks.check_ignore_index(ignore_index)
    name = dispatch.resolve(backend, logits.device, logits.dtype, "logits")
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    x2 = x.reshape(-1, V)
    t1 = targets.reshape(-1).to(torch.int64).contiguous()
    return x2, t1, temperature, ignore_index, name


def _run(logits, targets, temperature, ignore_index, backend, inplace_backward):
    lead = logits.shape[:-1]
    x2, t1, temperature, ignore_index, name = _prepare(logits, targets, temperature, ignore_index, backend)
    if inplace_backward and x2.requires_grad:
        if torch.compiler.is_compiling():
            raise RuntimeError("inplace_backward=True is eager-only; drop it inside torch.compile")
        if x2.data_ptr() != logits.data_ptr() or not x2.is_contiguous():
            raise ValueError("inplace_backward=True needs contiguous logits (the gradient reuses their buffer)")
        lp, ent, _, _ = _InplaceBackward.apply(x2, t1, temperature, ignore_index, name)
    else:
        lp, ent, _, _ = _fwd_op(x2, t1, temperature, ignore_index, name)
    return lp.reshape(lead), ent.reshape(lead)


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                         ignore_index: int = _checks.IGNORE_INDEX, backend: str = "auto",
                         inplace_backward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of ``targets`` and entropy of softmax(logits / temperature), in one pass.

    Args:
        logits: (..., V) float32, bfloat16, float16 or float64 (CPU backends and "torch"; not "triton"), any strides.
        targets: (...) int64 or int32; entries equal to ``ignore_index`` give 0 in both outputs and no gradient.
        temperature: > 0; the distribution is softmax(logits / temperature).
        backend: "auto", "triton", "native" or "torch" (see ``prepo_kernels.dispatch``).
        inplace_backward: write the gradient into the logits buffer (saves one logits-sized allocation;
            the logits are destroyed by backward, eager mode only).
    Returns:
        (logprobs, entropy), each of shape (...), float32 (float64 for float64 logits), differentiable w.r.t. logits.
        A row whose logits / T hold NaN or +inf, or are all -inf, gives NaN in both and a NaN gradient row
        (unless its target is ignore_index): garbage in is flagged, never a silent finite number (the reasons are
        in ``prepo_kernels.logprobs_entropy_torch``).
    """
    return _run(logits, targets, temperature, ignore_index, backend, inplace_backward)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                   ignore_index: int = _checks.IGNORE_INDEX, backend: str = "auto", inplace_backward: bool = False) -> torch.Tensor:
    """Per-token log-probs log softmax(logits / T)[target] of shape (...). See ``logprobs_and_entropy``."""
    return _run(logits, targets, temperature, ignore_index, backend, inplace_backward)[0]


def token_entropy(logits: torch.Tensor, *, temperature: float = 1.0, backend: str = "auto",
                  inplace_backward: bool = False) -> torch.Tensor:
    """Per-position entropy of softmax(logits / T) of shape (...). See ``logprobs_and_entropy``."""
    _checks.check_logits(logits)
    targets = torch.zeros(logits.shape[:-1], dtype=torch.int64, device=logits.device)
    return _run(logits, targets, temperature, _checks.IGNORE_INDEX, backend, inplace_backward)[1]
