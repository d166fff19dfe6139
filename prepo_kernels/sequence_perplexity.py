"""Per-sequence perplexity exp(mean NLL over masked positions), built on the fused per-token log-probs.

Used by PREPO's prompt scorer; the logits path and the fused linear path share the reduction here.
"""
from __future__ import annotations

import torch

from prepo_kernels import _checks


def reduce_perplexity(lp: torch.Tensor, targets: torch.Tensor, mask, ignore_index: int) -> torch.Tensor:
    """exp(sum(mask * -lp) / sum(mask)) per row of (B, T) log-probs; positions at ignore_index never count."""
    if lp.dim() != 2:
        raise ValueError(f"sequence perplexity needs (B, T) targets, got shape {tuple(targets.shape)}")
    valid = (targets != ignore_index).to(lp.dtype)
    if mask is not None:
        _checks.check_mask(mask, targets.shape, targets.device)
        valid = valid * mask.to(lp.dtype)
    count = valid.sum(dim=-1)
    if not torch.compiler.is_compiling():
        empty = count <= 0
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise ValueError(f"mask selects no position in row(s) {rows[:10]}: perplexity is undefined")
    return torch.exp(-(lp * valid).sum(dim=-1) / count)


def sequence_perplexity(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, *,
                        temperature: float = 1.0, ignore_index: int = _checks.IGNORE_INDEX, backend: str = "auto") -> torch.Tensor:
    """Perplexity per sequence from logits (B, T, V), targets (B, T) and an optional 0/1 mask (B, T).

    Returns float32 (B,) (float64 for float64 logits) = exp(sum(mask * -logprob) / sum(mask)); a row whose mask
    (after ignore_index) selects nothing raises ValueError; a row with a NaN log-prob (see ``logprobs_and_entropy``)
    gives NaN. Differentiable w.r.t. logits.
    """
    from prepo_kernels.logprobs_entropy import token_logprobs

    _checks.check_logits(logits, targets)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V) for sequence_perplexity, got shape {tuple(logits.shape)}")
    lp = token_logprobs(logits, targets, temperature=temperature, ignore_index=ignore_index, backend=backend)
    return reduce_perplexity(lp, targets, mask, ignore_index)
