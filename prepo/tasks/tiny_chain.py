"""The testbed task ``tiny-chain``: running sums and differences of 1-digit numbers over k = 1..8 steps, solved by a
scratchpad the policy writes out ("3+5=8-2=6+7=13####13"); a procedure RL can teach, with difficulty that composes.

Tier ``k<n>`` has n steps. Longer chains are worded in rarer ways (and are rarer in the supervised mix), so the question
text gets less familiar as problems get harder, as in real data. The supervised stage (prepo.tasks.tiny_model) shows a
consistent slip at steps that cross 10 (a dropped carry, a missed borrow): RL has a procedure to correct, not only
sampling noise to lower.
"""
from __future__ import annotations

import random
from typing import Sequence

from prepo.tasks.example import Example
from prepo.tasks.synthetic import draw_examples

TASK = "tiny-chain"
MAX_STEPS = 8
TIERS: tuple[str, ...] = tuple(f"k{k}" for k in range(1, MAX_STEPS + 1))
TOTAL_MAX = 18          # the running total stays in 0..18: every step is a 1-digit operand and at most one carry
MARK = "####"           # the answer marker (four "#" tokens): the verifier reads only the number after it

# Wordings, most familiar first: (opening, plus words, minus words, closing). Every step is two tokens, an operation
# word and a digit; the rarer wordings draw each step's word from more synonyms, so their text is less predictable (and,
# being rarer in the supervised mix, less familiar), as rarer phrasings are in real data.
WORDINGS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("What is {start}", ("+",), ("-",), " ?"),
    ("Compute {start}", ("plus",), ("minus",), " ."),
    ("Start at {start}", ("add", "gain", "raise"), ("drop", "lose", "cut"), " ."),
    ("Begin with {start}", ("up", "more", "grow", "rise", "extra"), ("down", "fewer", "shrink", "fall", "less"), " ."),
)
# weight of each wording for a k-step chain: the symbolic form dominates short chains, the rarer wordings grow with k
_BASE = (0.70, 0.20, 0.08, 0.02)
_GROWTH = (0.70, 1.0, 1.45, 1.6)
CROSS_BIAS = 0.6        # share of steps drawn among the moves that cross 10 (when one exists): the slip's occasions


def wording_weights(k: int) -> list[float]:
    """Relative frequency of each wording (WORDINGS order) for a ``k``-step chain."""
    w = [b * g ** (k - 1) for b, g in zip(_BASE, _GROWTH)]
    total = sum(w)
    return [x / total for x in w]


WORDS = sorted({w for opening, plus, minus, closing in WORDINGS
                for w in [*opening.replace("{start}", "").split(), *plus, *minus, *closing.split()]}
               | {"+", "-", "=", "#"})


def draw_chain(k: int, rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """(start, [(op, operand), ...]) with every running total in 0..TOTAL_MAX; ops "+"/"-", operands 1..9. With
    probability CROSS_BIAS a step is drawn among the moves that cross 10 (when there is one), else among all."""
    total = rng.randint(0, 9)
    start, steps = total, []
    for _ in range(k):
        moves = [("+", n) for n in range(1, min(9, TOTAL_MAX - total) + 1)] + \
                [("-", n) for n in range(1, min(9, total) + 1)]
        crossing = [(op, n) for op, n in moves if crosses_ten(total, op, n)]
        op, n = rng.choice(crossing if crossing and rng.random() < CROSS_BIAS else moves)
        total = total + n if op == "+" else total - n
        steps.append((op, n))
    return start, steps


def crosses_ten(total: int, op: str, n: int) -> bool:
    """Whether a step carries (a 1-digit total reaching 10 or more) or borrows (a 2-digit total falling below 10)."""
    if op == "+":
        return 0 <= total <= 9 and total + n >= 10
    return 10 <= total <= 19 and 0 <= total - n <= 9


def slipped(total: int, op: str, n: int) -> int:
    """The consistent slip at a crossing step: the carry dropped (8+5 -> 3) or the borrow missed (13-5 -> 12)."""
    if op == "+":
        return total + n - 10
    return 10 + abs(total % 10 - n)


def scratchpad(start: int, steps: Sequence[tuple[str, int]], *, slip: float = 0.0,
               rng: random.Random | None = None) -> tuple[str, int]:
    """(solution text, its final number): ``start``, then ``<op><n>=<total>`` per step, then ``####<total>``.

    With ``slip > 0`` each crossing step (``crosses_ten``) is written with the ``slipped`` result with that
    probability, and the chain goes on from it (the supervised stage's teacher; ``rng`` required then).

    >>> scratchpad(3, [("+", 5), ("-", 2), ("+", 7)])
    ('3+5=8-2=6+7=13####13', 13)
    """
    if slip > 0 and rng is None:
        raise ValueError("rng: required when slip > 0")
    total, parts = start, [str(start)]
    for op, n in steps:
        if slip > 0 and crosses_ten(total, op, n) and rng.random() < slip:
            total = slipped(total, op, n)
        else:
            total = total + n if op == "+" else total - n
        parts.append(f"{op}{n}={total}")
    return "".join(parts) + f"{MARK}{total}", total


def question_text(start: int, steps: Sequence[tuple[str, int]], wording: int,
                  words: Sequence[int] | None = None) -> str:
    """The question in wording ``wording`` (an index into WORDINGS), tokens separated by spaces; ``words[i]`` picks
    step i's synonym (default: the first)."""
    opening, plus, minus, closing = WORDINGS[wording]
    words = [0] * len(steps) if words is None else words
    return opening.format(start=start) + "".join(f" {(plus if op == '+' else minus)[w]} {n}"
                                                 for (op, n), w in zip(steps, words)) + closing


def _example(tier: str, rng: random.Random) -> tuple[str, str, dict]:
    k = int(tier[1:])
    start, steps = draw_chain(k, rng)
    wording = rng.choices(range(len(WORDINGS)), wording_weights(k))[0]
    words = [rng.randrange(len(WORDINGS[wording][1 if op == "+" else 2])) for op, _ in steps]
    _, value = scratchpad(start, steps)
    return question_text(start, steps, wording, words), str(value), {
        "k": k, "wording": wording, "start": start, "steps": "".join(f"{op}{n}" for op, n in steps)}


def parse_steps(text: str) -> list[tuple[str, int]]:
    """The (op, operand) list of meta["steps"] ("+5-2+7")."""
    return [(text[i], int(text[i + 1])) for i in range(0, len(text), 2)]


def make_tiny_chain(n: int, seed: int, tiers: Sequence[str] | None = None, *, split: str | None = None,
                    weights: Sequence[float] | None = None) -> list[Example]:
    """``n`` chain problems over ``tiers`` (default k1..k8), round robin (or drawn by ``weights``), deterministic for a
    seed; ``split`` keeps only the train or held-out part of the question space (prepo.tasks.synthetic.split_of). Ids
    ``tiny-chain-<tier>-<i>``; graded by the ``marked`` verifier (the number after ``####``); meta holds ``tier``,
    ``k``, ``wording``, ``start`` and ``steps``."""
    return draw_examples(TASK, n, seed, tiers, list(TIERS), _example, split=split, weights=weights,
                         verifier="marked")
