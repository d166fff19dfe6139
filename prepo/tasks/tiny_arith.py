"""The testbed task ``tiny-arith``: worded integer sums and differences, graded by size and by familiarity.

Tiers differ in operand digits (size) and in how often the supervised mix shows their operation (familiarity).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from prepo.tasks.example import Example
from prepo.tasks.synthetic import draw_examples

TASK = "tiny-arith"


@dataclass(frozen=True)
class Tier:
    """``x0 op x1 [op x2]`` with operand i drawn from ``digits[i]``-digit numbers; subtraction never goes negative."""

    op: str                       # "+" or "-"
    digits: tuple[int, ...]


# Size grows down each block; familiarity is set by the supervised mix (prepo.tasks.tiny_model.TinyRecipe.mix): sums are
# frequent, differences rare, three-term sums absent.
TIERS: dict[str, Tier] = {
    "add1": Tier("+", (1, 1)), "add2": Tier("+", (2, 1)), "add22": Tier("+", (2, 2)),
    "add32": Tier("+", (3, 2)), "add33": Tier("+", (3, 3)),
    "sub1": Tier("-", (1, 1)), "sub2": Tier("-", (2, 1)), "sub22": Tier("-", (2, 2)), "sub32": Tier("-", (3, 2)),
    "add111": Tier("+", (1, 1, 1)), "add211": Tier("+", (2, 1, 1)),
}
# Wordings of each operation and how often they appear (in the supervised mix and in the task alike): the rare
# wordings are a second familiarity axis inside every tier. {0}, {1}, {2} are the operands.
TEMPLATES: dict[str, tuple[tuple[str, float], ...]] = {
    "+": (("What is {0} + {1}?", 0.70), ("Compute {0} plus {1}.", 0.20), ("Find the sum of {0} and {1}.", 0.08),
          ("Add {1} to {0}.", 0.02)),
    "-": (("What is {0} - {1}?", 0.70), ("Compute {0} minus {1}.", 0.20),
          ("Find the difference of {0} and {1}.", 0.08), ("Take {1} away from {0}.", 0.02)),
    "++": (("What is {0} + {1} + {2}?", 0.70), ("Compute {0} plus {1} plus {2}.", 0.30)),
}
WORDS = sorted({w for group in TEMPLATES.values() for text, _ in group
                for w in text.replace("?", " ").replace(".", " ").split() if not w.startswith("{")} | {"+", "-"})
def _operand(digits: int, rng: random.Random) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def draw(tier: str, rng: random.Random) -> tuple[str, int, str]:
    """(question, exact value, template) for one random problem of ``tier``."""
    spec = TIERS[tier]
    xs = [_operand(d, rng) for d in spec.digits]
    if spec.op == "-" and xs[0] < xs[1]:
        xs[0], xs[1] = xs[1], xs[0]
    value = sum(xs) if spec.op == "+" else xs[0] - xs[1]
    key = "++" if len(xs) == 3 else spec.op
    texts, weights = zip(*TEMPLATES[key])
    template = rng.choices(texts, weights)[0]
    return template.format(*xs), value, template


def _example(tier: str, rng: random.Random) -> tuple[str, str, dict]:
    question, value, template = draw(tier, rng)
    return question, str(value), {"template": template}


def make_tiny_arith(n: int, seed: int, tiers: Sequence[str] | None = None, *, split: str | None = None,
                    weights: Sequence[float] | None = None) -> list[Example]:
    """``n`` problems over ``tiers`` (default: all), round robin (or drawn by ``weights``), deterministic for a
    seed; ``split`` keeps only the train or the held-out part of the question space (prepo.tasks.synthetic.split_of: the
    supervised stage and RL never see a held-out question). Ids ``tiny-arith-<tier>-<i>``; meta holds ``tier`` and
    ``template``."""
    return draw_examples(TASK, n, seed, tiers, list(TIERS), _example, split=split, weights=weights)
