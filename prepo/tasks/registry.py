"""The built-in tasks by name (``data.train`` / ``prepo eval --data``): their tiers and their example generators.

One table, ``TASKS``; ``make_builtin`` and ``builtin_tiers`` look a name up in it and refuse an unknown one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from prepo.tasks import arith, tiny_arith, tiny_chain
from prepo.tasks.example import Example


@dataclass(frozen=True)
class Task:
    """A built-in task: its tiers (easiest first) and ``make(n, seed, tiers, split=...)`` drawing its examples."""

    name: str
    tiers: tuple[str, ...]
    make: Callable[..., list[Example]]


TASKS: dict[str, Task] = {t.name: t for t in (
    Task(arith.TASK, tuple(arith.ARITH_TIERS), arith.make_arith),
    Task(tiny_arith.TASK, tuple(tiny_arith.TIERS), tiny_arith.make_tiny_arith),
    Task(tiny_chain.TASK, tuple(tiny_chain.TIERS), tiny_chain.make_tiny_chain),
)}
BUILTIN_TASKS = tuple(TASKS)  # ("arith", "tiny-arith", "tiny-chain")


def _task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task: unknown built-in task {name!r}; known: {list(BUILTIN_TASKS)}")
    return TASKS[name]


def builtin_tiers(task: str) -> list[str]:
    """The difficulty tiers of a built-in task, easiest first."""
    return list(_task(task).tiers)


def make_builtin(task: str, n: int, seed: int, tiers: Sequence[str] | None = None, *,
                 split: str | None = None) -> list[Example]:
    """``n`` problems of a built-in task (``arith.make_arith``, ``tiny_arith.make_tiny_arith``,
    ``tiny_chain.make_tiny_chain``), deterministic for a seed; ``split`` "train" / "eval" / None as in
    ``prepo.tasks.synthetic.draw_examples``."""
    return _task(task).make(n, seed, tiers, split=split)
