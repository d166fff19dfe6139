"""What the synthetic tasks (arith, tiny-arith, tiny-chain) share: drawing examples tier by tier, deterministic for a
seed, and the fixed partition of the question space into a training part and a held-out part.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable, Sequence

from prepo.tasks.example import Example

SPLITS = ("train", "eval")
_EVAL_BUCKETS = 10  # a question is held out (split "eval") when crc32(question) % 10 == 0: about 10% of each tier


def split_of(question: str) -> str:
    """"eval" for the held-out ~10% of the question space, "train" for the rest (stable across runs and machines)."""
    return "eval" if zlib.crc32(question.encode()) % _EVAL_BUCKETS == 0 else "train"


def draw_examples(task: str, n: int, seed: int, tiers: Sequence[str] | None, known: Sequence[str],
                  draw: Callable[[str, random.Random], tuple[str, str, dict]], *, split: str | None = None,
                  weights: Sequence[float] | None = None, verifier: str = "numeric") -> list[Example]:
    """``n`` examples of a synthetic task: tier names round robin over ``tiers`` (default ``known``), or drawn by
    ``weights``; ``draw(tier, rng)`` gives (question, answer, meta) and is retried until the question lies in
    ``split`` (see split_of). Deterministic for a seed; ids ``<task>-<tier>-<i>``, meta gains ``tier``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    tiers = list(known) if tiers is None else list(tiers)
    if not tiers:
        raise ValueError("tiers: empty")
    unknown = [t for t in tiers if t not in known]
    if unknown:
        raise ValueError(f"tiers: unknown {unknown}; known: {list(known)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS} or None, got {split!r}")
    if weights is not None and (len(weights) != len(tiers) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"weights: expected {len(tiers)} non-negative numbers with a positive sum, got {weights!r}")
    rng = random.Random(f"{task}/{seed}/{split}")
    counts = {t: 0 for t in tiers}
    out = []
    for i in range(n):
        name = tiers[i % len(tiers)] if weights is None else rng.choices(tiers, weights)[0]
        for _ in range(10_000):
            question, answer, meta = draw(name, rng)
            if split is None or split_of(question) == split:
                break
        else:  # pragma: no cover - every tier has hundreds of questions in each split
            raise RuntimeError(f"tier {name!r} has no {split} questions")
        out.append(Example(id=f"{task}-{name}-{counts[name]}", question=question, answer=answer,
                           verifier=verifier, meta={"tier": name, **meta}))
        counts[name] += 1
    return out
