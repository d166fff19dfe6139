"""The built-in task ``arith``: integer expressions in eight tiers, easiest first, for SmolLM2-sized models.

Its prompt (worked turns and a reply prefix) is ``prepo.tasks.prompts.ARITH_FORMAT``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from prepo.tasks.example import Example
from prepo.tasks.synthetic import draw_examples

TASK = "arith"


@dataclass(frozen=True)
class ArithTier:
    """Expressions ``x0 op x1 [op x2]`` with operand i drawn from ``ranges[i]`` and each op from ``ops``.

    A two-operand subtraction puts the larger operand first and any expression with a negative value is redrawn:
    answers are never negative (the small model handles those worst).
    """

    ranges: tuple[tuple[int, int], ...]
    ops: str


# easiest first, by the pass rate of SmolLM2-135M-Instruct with ARITH_FORMAT (10 problems x 8 samples, T=0.7, 16 tokens)
ARITH_TIERS: dict[str, ArithTier] = {
    "add1": ArithTier(((1, 9), (1, 9)), "+"),              # 1-digit + 1-digit            0.84
    "mul1": ArithTier(((2, 9), (2, 9)), "*"),              # 1-digit * 1-digit            0.79
    "sub1": ArithTier(((1, 9), (1, 9)), "-"),              # 1-digit - 1-digit, >= 0      0.65
    "add2": ArithTier(((10, 99), (1, 9)), "+"),            # 2-digit + 1-digit            0.31
    "mul2": ArithTier(((10, 99), (2, 9)), "*"),            # 2-digit * 1-digit            0.28
    "add2x2": ArithTier(((10, 99), (10, 99)), "+-"),       # 2-digit +/- 2-digit          0.21
    "mixed": ArithTier(((1, 20), (2, 9), (2, 9)), "+-*"),  # two operators, precedence    0.03
    "add3": ArithTier(((100, 999), (100, 999)), "+-"),     # 3-digit +/- 3-digit          0.00
}
ARITH_QUESTION = "What is {expr}?"
ARITH_SYSTEM_PROMPT = "Answer with a single number."


def _arith_value(operands: list[int], ops: list[str]) -> int:
    """Exact value with * before + and -, left to right (an independent reading of the same expression)."""
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= x
        else:
            signs.append(op)
            terms.append(x)
    total = terms[0]
    for op, t in zip(signs, terms[1:]):
        total = total + t if op == "+" else total - t
    return total


def _arith_draw(tier: ArithTier, rng: random.Random) -> tuple[str, int]:
    """(expression, exact value) for one random problem of ``tier``."""
    while True:
        operands = [rng.randint(lo, hi) for lo, hi in tier.ranges]
        ops = [rng.choice(tier.ops) for _ in operands[1:]]
        if len(operands) == 2 and ops[0] == "-" and operands[0] < operands[1]:
            operands.reverse()
        value = _arith_value(operands, ops)
        if value >= 0:
            return " ".join(str(operands[0]) if i == 0 else f"{ops[i - 1]} {x}" for i, x in enumerate(operands)), value


def _arith_example(tier: str, rng: random.Random) -> tuple[str, str, dict]:
    expr, value = _arith_draw(ARITH_TIERS[tier], rng)
    return ARITH_QUESTION.format(expr=expr), str(value), {"expr": expr}


def make_arith(n: int, seed: int, tiers: Sequence[str] | None = None, *, split: str | None = None) -> list[Example]:
    """``n`` integer-arithmetic examples spread round robin over ``tiers`` (default: all of ARITH_TIERS, easiest
    first), deterministic for a seed. ``split="train"``/``"eval"`` keeps only questions of that part of a fixed
    partition of the question space, so a held-out set never shares a question with training; None draws from all.
    Ids are ``arith-<tier>-<i>`` (i counts within the tier); ``meta`` holds ``tier`` and ``expr`` ("7 + 5").
    """
    return draw_examples(TASK, n, seed, tiers, list(ARITH_TIERS), _arith_example, split=split)
