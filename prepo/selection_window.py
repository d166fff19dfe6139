"""PREPO's prompt-perplexity window: which K of |B| candidates to train on at training progress ρ.

Sort candidates by perplexity ascending and take the K starting at l(ρ) = ⌊ρ·(|B| − K)⌋ (low perplexity first).
"""
from __future__ import annotations

import math
from typing import Sequence


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
