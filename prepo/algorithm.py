"""The PREPO/GRPO method as plain functions: the prompt-perplexity window, group advantages, relative-entropy weights
and the clipped loss, free of models and data so the trainer and the TRL/verl integrations share one definition.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

WEIGHTINGS = ("none", "entropy", "entropy_token")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


# --- which prompts: the perplexity window ------------------------------------------------------------------------

def progress(step: int, total_steps: int) -> float:
    """ρ for the 0-based ``step`` of ``total_steps``: step / (total_steps − 1), so the first step is 0 and the last 1.

    The paper's ρ = step / total_steps never reaches 1 with 0-based steps (never 0 with 1-based ones): one end of
    the candidate order would never be trained on. A one-step run has ρ = 0.

    >>> progress(0, 240), progress(239, 240), progress(0, 1)
    (0.0, 1.0, 0.0)
    """
    return step / (total_steps - 1) if total_steps > 1 else 0.0


def window_start(num_candidates: int, k: int, rho: float) -> int:
    """l(ρ) = ⌊ρ·(|B| − K)⌋ with ρ clipped to [0, 1].

    >>> window_start(10, 2, 0.0), window_start(10, 2, 0.5), window_start(10, 2, 1.0), window_start(11, 3, 0.3)
    (0, 4, 8, 2)
    """
    if k <= 0 or k > num_candidates:
        raise ValueError(f"window size k={k} must be in [1, {num_candidates}] (the number of candidates)")
    if not math.isfinite(rho):
        raise ValueError(f"rho must be finite, got {rho}")
    rho = min(max(rho, 0.0), 1.0)
    return int(math.floor(rho * (num_candidates - k) + 1e-9))


def ppl_window(ppl: Sequence[float], k: int, rho: float) -> list[int]:
    """Indices (into ``ppl``) of the K candidates in the window at progress ρ, in ascending-perplexity order.

    Ties are broken by candidate index so the choice is deterministic.

    >>> ppl_window([5.0, 1.0, 3.0, 2.0, 4.0], 2, 0.0), ppl_window([5.0, 1.0, 3.0, 2.0, 4.0], 2, 1.0)
    ([1, 3], [4, 0])
    """
    values = [float(v) for v in ppl]
    if any(math.isnan(v) for v in values):
        raise ValueError("ppl contains NaN: score every candidate before selecting")
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    start = window_start(len(values), k, rho)
    return order[start:start + k]


def window_stats(ppl: Sequence[float], window: Sequence[int]) -> dict[str, float]:
    """What a run logs about a perplexity window (``window`` indexes ``ppl``): its ends and mean, and the range of
    the candidates it was cut from.

    >>> list(window_stats([5.0, 1.0, 3.0, 2.0], [3, 2]).values())  # window lo, hi, mean; candidates lo, hi
    [2.0, 3.0, 2.5, 1.0, 5.0]
    """
    chosen = [ppl[i] for i in window]
    return {"ppl_window_lo": min(chosen), "ppl_window_hi": max(chosen), "ppl_selected_mean": sum(chosen) / len(chosen),
            "ppl_candidates_lo": min(ppl), "ppl_candidates_hi": max(ppl)}


def weight_stats(weights: torch.Tensor) -> dict[str, float]:
    """What a run logs about the entropy weights it applied: their least, greatest and mean value.

    >>> weight_stats(torch.tensor([0.5, 1.5, 1.0]))
    {'weight_min': 0.5, 'weight_max': 1.5, 'weight_mean': 1.0}
    """
    return {"weight_min": weights.min().item(), "weight_max": weights.max().item(),
            "weight_mean": weights.mean().item()}


# --- the update's terms ---------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, *, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages per group: (r - mean) / (std + eps), or r - mean when ``normalize_std`` is False (Dr. GRPO).

    ``rewards`` is (num_groups, G); std is the unbiased one (as in GRPO's reference code). A group whose
    rewards are all equal gets advantage 0 for every member.

    >>> group_advantages(torch.tensor([[1., 0., 0., 1.], [1., 1., 1., 1.]]))
    tensor([[ 0.8660, -0.8660, -0.8660,  0.8660],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (num_groups, G), got shape {tuple(rewards.shape)}")
    r = rewards.double()
    centred = r - r.mean(dim=1, keepdim=True)
    if normalize_std and r.shape[1] > 1:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def _baseline(h: torch.Tensor, lengths: torch.Tensor | None, mode: str) -> torch.Tensor:
    """H̄ (float64, 0-dim) of rollouts' mean entropies ``h``: their mean, or for "entropy_token" the token-weighted mean."""
    if mode == "entropy":
        return h.mean()
    if lengths is None:
        raise ValueError("mode='entropy_token' needs the response lengths")
    n = lengths.detach().double()
    return (h * n).sum() / n.sum().clamp_min(1.0)


def _scored(mean_entropy: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The rollouts with at least one response token (all of them when ``lengths`` is not given)."""
    if lengths is None:
        return torch.ones(mean_entropy.shape, dtype=torch.bool, device=mean_entropy.device)
    if lengths.shape != mean_entropy.shape:
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected {tuple(mean_entropy.shape)}")
    return lengths > 0


def entropy_baseline(mean_entropy: torch.Tensor, lengths: torch.Tensor | None = None, *,
                     mode: str = "entropy") -> float:
    """H̄, the statistic :func:`entropy_weights` divides by, over the rollouts with response tokens (0.0 if none)."""
    if mode not in WEIGHTINGS or mode == "none":
        raise ValueError(f"weighting mode must be one of {WEIGHTINGS[1:]}, got {mode!r}")
    scored = _scored(mean_entropy, lengths)
    if not bool(scored.any()):
        return 0.0
    return float(_baseline(mean_entropy.detach().double()[scored], None if lengths is None else lengths[scored], mode))


def entropy_weights(mean_entropy: torch.Tensor, lengths: torch.Tensor | None = None, *,
                    mode: str = "entropy") -> torch.Tensor:
    """PREPO relative-entropy weights w_i = H̄_i / H̄ (constants: no gradient flows through them).

    ``mean_entropy`` (n,) is each rollout's mean token entropy over its response tokens; ``lengths`` (n,) the
    response lengths. ``mode="entropy"`` uses H̄ = mean_i H̄_i (mean weight 1); ``"entropy_token"`` uses the
    token-weighted H̄ = Σ_i H̄_i·|o_i| / Σ_i |o_i|, which keeps Σ_i w_i·|o_i| = Σ_i |o_i|; ``"none"`` gives ones.
    A rollout without response tokens (length 0) has no entropy: it gets weight 1 and no say in H̄. If H̄ is 0
    (every rollout deterministic) all weights are 1.

    >>> entropy_weights(torch.tensor([1.0, 3.0]))
    tensor([0.5000, 1.5000])
    >>> entropy_weights(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([2, 2, 0]))
    tensor([0.5000, 1.5000, 1.0000])
    """
    if mode not in WEIGHTINGS:
        raise ValueError(f"weighting mode must be one of {WEIGHTINGS}, got {mode!r}")
    weights = torch.ones_like(mean_entropy, dtype=torch.float32)
    if mode == "none" or mean_entropy.numel() == 0:
        return weights
    scored = _scored(mean_entropy, lengths)
    if not bool(scored.any()):
        return weights
    h = mean_entropy.detach().double()[scored]
    h_bar = _baseline(h, None if lengths is None else lengths[scored], mode)
    if h_bar <= 0:
        return weights
    weights[scored] = (h / h_bar).float()
    return weights


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                      eps_low: float = 0.2, eps_high: float = 0.28) -> torch.Tensor:
    """Per-token PPO/DAPO clip-higher surrogate *loss*: −min(s·A, clip(s, 1−ε_low, 1+ε_high)·A), s = e^(logp−old).

    ``advantages`` broadcasts against ``logp`` (per token, or (B, 1) per sequence).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped)


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, *, mode: str = "token-mean",
                   num_tokens: float | None = None, num_seqs: float | None = None) -> torch.Tensor:
    """Reduce a (B, T) per-token loss over the response mask.

    "token-mean": Σ loss·mask / Σ mask (``num_tokens`` overrides the denominator, e.g. the global token count of a
    batch split into micro-batches or ranks); "seq-mean-token-mean": mean over sequences of each sequence's token
    mean (``num_seqs`` overrides the number of sequences).
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss aggregation must be one of {LOSS_AGGREGATIONS}, got {mode!r}")
    m = mask.to(token_loss.dtype)
    if mode == "token-mean":
        denom = m.sum() if num_tokens is None else torch.as_tensor(float(num_tokens))
        return (token_loss * m).sum() / denom.clamp_min(1.0)
    per_seq = (token_loss * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)
    denom = float(per_seq.numel()) if num_seqs is None else float(num_seqs)
    return per_seq.sum() / max(denom, 1.0)
