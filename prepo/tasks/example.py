"""The Example record every task and dataset file produces: a prompt, its gold answer and the verifier that checks it.

Imports nothing of prepo, so every other module of the package can build on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VERIFIERS = ("numeric", "marked", "math")  # prepo.rewards.REWARDS


@dataclass(frozen=True)
class Example:
    """One prompt with its gold answer; ``verifier`` names the reward that checks it (see prepo.rewards)."""

    id: str
    question: str
    answer: str
    verifier: str = "numeric"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name in ("id", "question", "answer"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected str, got {type(getattr(self, name)).__name__}")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier: expected one of {VERIFIERS}, got {self.verifier!r}")
