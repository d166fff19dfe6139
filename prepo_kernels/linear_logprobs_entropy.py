"""Op ``linear_logprobs_entropy`` (public): per-token log-probs and entropies from hidden states and the lm_head.

No full logits: torch.library custom ops (fake kernels + autograd); Triton tiles on CUDA, token chunks elsewhere.
"""
from __future__ import annotations

from typing import Optional

import torch

from prepo_kernels import _checks, dispatch, linear_logprobs_entropy_chunked, linear_logprobs_entropy_triton
from prepo_kernels.sequence_perplexity import reduce_perplexity

_NS = "prepo_kernels"


def _kept_rows(targets: torch.Tensor, ignore_index: int):
    """(rows, compact targets): rows is None when no position is ignored (no gather needed at all)."""
    keep = targets != ignore_index
    if bool(keep.all()):
        return None, targets
    rows = keep.nonzero().squeeze(1)
    return rows, targets.index_select(0, rows)


def _take(x: torch.Tensor, rows):
    return x if rows is None else x.index_select(0, rows)


def _scatter(x: torch.Tensor, rows, n: int) -> torch.Tensor:
    """Compact per-row values back to all n rows, 0 at ignored ones."""
    if rows is None:
        return x
    return x.new_zeros(n).index_copy_(0, rows, x)


def _run_forward(backend, hidden, rows, weight, bias, targets, temperature, ignore_index):
    if backend == "triton":
        return linear_logprobs_entropy_triton.forward(hidden, rows, weight, bias, targets, temperature, ignore_index)
    return linear_logprobs_entropy_chunked.forward(hidden, rows, weight, bias, targets, temperature, ignore_index,
                                  dispatch.module(backend))


def _run_backward(backend, *args):
    if backend == "triton":
        return linear_logprobs_entropy_triton.backward(*args)
    return linear_logprobs_entropy_chunked.backward(*args, dispatch.module(backend))


# --- custom ops: hidden [N, H], weight [V, H], bias [V] or None, int64 targets [N] ----------------------------------

@torch.library.custom_op(f"{_NS}::linear_logprobs_entropy_fwd", mutates_args=())
def _fwd_op(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
            temperature: float, ignore_index: int,
            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.check_temperature(temperature)  # under torch.compile only here: the value is concrete in the op
    _checks.check_target_range(targets, weight.shape[0], ignore_index)
    n = hidden.shape[0]
    rows, t = _kept_rows(targets, ignore_index)  # ignored positions never reach the head
    outs = _run_forward(backend, hidden, rows, weight, bias, t, temperature, ignore_index)
    return tuple(_scatter(x, rows, n) for x in outs)


@_fwd_op.register_fake
def _(hidden, weight, bias, targets, temperature, ignore_index, backend):
    n = hidden.shape[0]
    return tuple(hidden.new_empty((n,), dtype=_checks.compute_dtype(hidden.dtype)) for _ in range(4))


@torch.library.custom_op(f"{_NS}::linear_logprobs_entropy_bwd", mutates_args=())
def _bwd_op(grad_lp: torch.Tensor, grad_ent: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
            bias: Optional[torch.Tensor], targets: torch.Tensor, lse: torch.Tensor, ez: torch.Tensor,
            temperature: float, ignore_index: int, backend: str, need_hidden: bool, need_weight: bool,
            need_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, t = _kept_rows(targets, ignore_index)
    needs = (need_hidden, need_weight, need_bias and bias is not None)
    dh, dw, db = _run_backward(backend, _take(grad_lp, rows), _take(grad_ent, rows), hidden, rows, weight, bias, t,
                               _take(lse, rows), _take(ez, rows), temperature, ignore_index, needs)
    return tuple(x if x is not None else hidden.new_empty((0,)) for x in (dh, dw, db))  # never aliased


@_bwd_op.register_fake
def _(grad_lp, grad_ent, hidden, weight, bias, targets, lse, ez, temperature, ignore_index, backend,
      need_hidden, need_weight, need_bias):
    dh = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_hidden else hidden.new_empty((0,))
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else hidden.new_empty((0,))
    db = torch.empty_like(bias) if need_bias and bias is not None else hidden.new_empty((0,))
    return dh, dw, db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, temperature, ignore_index, backend = inputs
    _, _, lse, ez = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, ez)
    ctx.args = (temperature, ignore_index, backend)


def _backward(ctx, grad_lp, grad_ent, _g_lse, _g_ez):
    hidden, weight, bias, targets, lse, ez = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = bool(need_b and bias is not None)
    if grad_lp is None:
        grad_lp = torch.zeros_like(lse)
    if grad_ent is None:
        grad_ent = torch.zeros_like(lse)
    dh, dw, db = _bwd_op(grad_lp, grad_ent, hidden, weight, bias, targets, lse, ez, *ctx.args,
                         bool(need_h), bool(need_w), need_b)
    return (dh if need_h else None, dw if need_w else None, db if need_b else None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --- public functions ----------------------------------------------------------------------------------------------

def _check_head(hidden, weight, bias) -> tuple[int, int]:
    """Validate hidden (..., H), weight (V, H) and bias (V) or None; return (V, H)."""
    _checks.check_float_tensor(hidden, "hidden")
    _checks.check_float_tensor(weight, "weight")
    if hidden.dim() < 1:
        raise ValueError("hidden must have at least one dimension (..., H)")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, H) like nn.Linear.weight, got shape {tuple(weight.shape)}")
    V, H = weight.shape
    if hidden.shape[-1] != H:
        raise ValueError(f"hidden has H = {hidden.shape[-1]} features but weight is (V, H) = {tuple(weight.shape)}")
    if V == 0:
        raise ValueError("weight has an empty vocabulary dimension (V = 0)")
    if H == 0:
        raise ValueError("hidden and weight have an empty feature dimension (H = 0)")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but hidden has {hidden.dtype}; they must match")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if bias is not None:
        _checks.check_float_tensor(bias, "bias")
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({V},)")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but weight has {weight.dtype}; they must match")
        if bias.device != weight.device:
            raise ValueError(f"bias is on {bias.device} but weight is on {weight.device}")
    return V, H


def linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                bias: torch.Tensor | None = None, temperature: float = 1.0,
                                ignore_index: int = _checks.IGNORE_INDEX, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of ``targets`` and entropy of softmax((hidden @ weight.T + bias) / temperature).

    The same numbers as ``logprobs_and_entropy`` on the full logits, without ever holding them: only positions whose
    target is not ``ignore_index`` go through the head, one bounded chunk / tile at a time.

    Args:
        hidden: (..., H) float32, bfloat16, float16 or float64 (CPU backends and "torch"; not "triton"), any
            strides.
        weight: (V, H) like ``nn.Linear.weight`` (e.g. ``model.lm_head.weight``), same dtype as hidden.
        targets: (...) int64 or int32 in [0, V), or ``ignore_index`` (0 in both outputs, no gradient).
        bias: optional (V,) with weight's dtype.
        temperature: > 0.
        backend: "auto", "triton", "native" or "torch" (see ``prepo_kernels.dispatch``).
    Returns:
        (logprobs, entropy), each of shape (...), float32 (float64 for float64 inputs), differentiable w.r.t.
        hidden, weight and bias. A kept position whose logits / T hold NaN or +inf, or are all -inf, gives NaN in
        both, and NaN reaches every gradient it touches, as in ``logprobs_and_entropy``.
    """
    V, H = _check_head(hidden, weight, bias)
    _checks.check_targets(targets, hidden.shape[:-1], hidden.device)
    temperature = _checks.check_temperature(temperature)
    ignore_index = _checks.check_ignore_index(ignore_index)
    name = dispatch.resolve(backend, hidden.device, hidden.dtype, "hidden")
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, H)
    t1 = targets.reshape(-1).to(torch.int64).contiguous()
    lp, ent, _, _ = _fwd_op(h2, weight, bias, t1, temperature, ignore_index, name)
    return lp.reshape(lead), ent.reshape(lead)


def linear_sequence_perplexity(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               mask: torch.Tensor | None = None, *, bias: torch.Tensor | None = None,
                               temperature: float = 1.0, ignore_index: int = _checks.IGNORE_INDEX,
                               backend: str = "auto") -> torch.Tensor:
    """Perplexity per sequence from hidden states (B, T, H) and the head; same rules as ``sequence_perplexity``.

    Returns float32 (B,) (float64 for float64 inputs) = exp(sum(mask * -logprob) / sum(mask)); a row whose mask
    (after ignore_index) selects nothing raises ValueError. Differentiable w.r.t. hidden, weight and bias.
    """
    _check_head(hidden, weight, bias)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, H) for linear_sequence_perplexity, got shape {tuple(hidden.shape)}")
    lp, _ = linear_logprobs_and_entropy(hidden, weight, targets, bias=bias, temperature=temperature,
                                        ignore_index=ignore_index, backend=backend)
    return reduce_perplexity(lp, targets, mask, ignore_index)
