"""Which prompts a step trains on: PREPO's perplexity window and the random, DAPO, GRESO and all-prompts baselines,
one registry (``STRATEGIES``), and the records of a step's rounds (``Round``, ``Collected``); prepo.step runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from prepo.algorithm import ppl_window, progress, window_stats


@dataclass
class Group:
    """One prompt's G rollouts (``prepo.rollout.Rollout``) and their rewards."""

    prompt_index: int              # index into the training examples
    rollouts: list
    rewards: list[float]

    @property
    def zero_variance(self) -> bool:
        """All rewards equal: every advantage is 0, the group carries no policy-gradient signal."""
        return max(self.rewards) == min(self.rewards)


@dataclass
class SelectionContext:
    """What a strategy may look at when choosing: progress, what this step kept so far and, for a strategy that
    ``scores_prompts``, the candidates' perplexities under the current policy. K is the strategy's ``config.k``."""

    step: int                      # completed steps before this one (0-based)
    total_steps: int
    kept: int = 0                  # groups kept by this step's earlier rounds
    ppl: Sequence[float] | None = None  # one per candidate, in the candidates' order

    @property
    def rho(self) -> float:
        """Training progress ρ (prepo.algorithm.progress): 0 at the first step, 1 at the last."""
        return progress(self.step, self.total_steps)


@dataclass
class Choice:
    """Dataset indices to roll out now, plus what the strategy wants logged."""

    indices: list[int]
    info: dict = field(default_factory=dict)
    seconds: float = 0.0           # the choose stage's time (drawing and scoring included), as the caller measured it


class PromptSampler:
    """Draws candidate prompts without replacement, reshuffling each epoch (permutation seeded by (seed, epoch))."""

    def __init__(self, num_prompts: int, seed: int = 0):
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.num_prompts, self.seed = num_prompts, int(seed)
        self.epoch, self.pos = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)

    def draw(self, m: int) -> list[int]:
        """The next ``m`` distinct prompt indices (an epoch boundary may fall inside a draw)."""
        if not 1 <= m <= self.num_prompts:
            raise ValueError(f"cannot draw {m} distinct prompts from a dataset of {self.num_prompts}")
        out: list[int] = []
        seen: set[int] = set()
        while len(out) < m:
            order = self._order(self.epoch)
            while self.pos < len(order) and len(out) < m:
                i = int(order[self.pos])
                self.pos += 1
                if i not in seen:  # only possible right after a reshuffle: skip, don't repeat within a draw
                    out.append(i)
                    seen.add(i)
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"num_prompts": self.num_prompts, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_prompts"]) != self.num_prompts:
            raise ValueError(f"sampler state is for {state['num_prompts']} prompts, this dataset has {self.num_prompts}")
        self.seed, self.epoch, self.pos = int(state["seed"]), int(state["epoch"]), int(state["pos"])


# --- strategies ---------------------------------------------------------------------------------------------------

class Strategy:
    """Interface: how many candidates to draw per round, which to roll out, which groups to keep, when to stop.

    ``config`` is a prepo.config.SelectionConfig (or any object with its fields): ``config.k`` is the number of
    prompts a step trains on.
    """

    filters_after_reward = False   # True: may drop groups after reward and go another round
    scores_prompts = False         # True: choose needs the candidates' perplexities (SelectionContext.ppl)

    def __init__(self, config, seed: int = 0):
        self.config = config
        self.rng = np.random.default_rng(seed)

    def draw_size(self) -> int:
        return self.config.num_candidates

    def choose(self, candidates: list[int], ctx: SelectionContext) -> Choice:
        raise NotImplementedError

    def keep(self, groups: list[Group]) -> list[Group]:
        """Groups to train on out of those just rolled out (may update the strategy's history)."""
        return groups

    def enough(self, kept: int, rounds: int) -> bool:
        """Stop generating this step?"""
        return True

    def cut(self, kept: list[Group]) -> list[Group]:
        """The groups the step trains on, out of all those kept over its rounds (filtering strategies: the first K)."""
        return kept[:self.config.k] if self.filters_after_reward else kept

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


PACES = ("linear", "adaptive")


class PerplexityWindow(Strategy):
    """PREPO: score the |B| candidates' prompt perplexity, sort ascending, take K at l(ρ) = ⌊ρ·(|B|−K)⌋.

    ``selection.pace``: ``linear`` (the paper) moves ρ with training progress (SelectionContext.rho). ``adaptive``
    (ours) moves ρ with what the window's own groups show, with no extra rollouts: after each step
    ρ ← clip(ρ + gain/(T−1) · (share of all-correct groups − share of all-wrong groups), 0, 1), starting at 0.
    A window of solved prompts moves on to less familiar ones, a window nobody solves moves back, and a window
    whose groups carry signal stays; ``gain`` = ``selection.pace_gain`` (4: a sustained surplus of a quarter of the
    window's groups moves ρ as fast as the linear pace).
    """

    scores_prompts = True

    def __init__(self, config, seed: int = 0):
        super().__init__(config, seed)
        self.pace = getattr(config, "pace", "linear")
        if self.pace not in PACES:
            raise ValueError(f"selection.pace: expected one of {PACES}, got {self.pace!r}")
        self.gain = float(getattr(config, "pace_gain", 4.0))
        self.rho = 0.0             # the adaptive pace's position
        self.total_steps = 1

    def choose(self, candidates, ctx):
        if ctx.ppl is None or len(ctx.ppl) != len(candidates):
            raise ValueError("strategy 'ppl' needs the candidates' perplexities (SelectionContext.ppl), one each")
        ppl = [float(v) for v in ctx.ppl]
        self.total_steps = ctx.total_steps
        rho = ctx.rho if self.pace == "linear" else self.rho
        window = ppl_window(ppl, self.config.k, rho)
        return Choice([candidates[i] for i in window], {**window_stats(ppl, window), "rho": rho})

    def keep(self, groups):
        if self.pace == "adaptive" and groups:
            solved = sum(g.zero_variance and g.rewards[0] > 0 for g in groups) / len(groups)
            failed = sum(g.zero_variance and g.rewards[0] <= 0 for g in groups) / len(groups)
            self.rho = pace_update(self.rho, solved, failed, self.gain, self.total_steps)
        return groups

    def state_dict(self):
        return {**super().state_dict(), "rho": self.rho}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rho = float(state.get("rho", 0.0))


def pace_update(rho: float, solved: float, failed: float, gain: float, total_steps: int) -> float:
    """The adaptive pace's step: ρ + gain/(T−1)·(solved − failed), clipped to [0, 1].

    >>> pace_update(0.5, 0.5, 0.0, 4.0, 101), pace_update(0.01, 0.0, 1.0, 4.0, 101), pace_update(0.3, 0.2, 0.2, 4.0, 11)
    (0.52, 0.0, 0.3)
    """
    return min(1.0, max(0.0, rho + gain / max(total_steps - 1, 1) * (solved - failed)))


class RandomSubset(Strategy):
    """Baseline: K of the same |B| candidates, uniformly without replacement."""

    def choose(self, candidates, ctx):
        picked = self.rng.choice(len(candidates), size=self.config.k, replace=False)
        return Choice([candidates[int(i)] for i in picked])


class AllPrompts(Strategy):
    """Plain GRPO: train on every one of the |B| drawn prompts."""

    def choose(self, candidates, ctx):
        return Choice(list(candidates))


class DynamicSampling(Strategy):
    """DAPO dynamic sampling: draw K prompts per round, drop zero-variance groups, repeat until K are kept.

    Stops after ``max_rounds`` rounds and trains on what it has (possibly nothing), the kept groups cut to K
    (:meth:`Strategy.cut`). Every generated rollout counts, discarded ones included.
    """

    filters_after_reward = True

    def draw_size(self):
        return self.config.k

    def choose(self, candidates, ctx):
        return Choice(list(candidates))

    def keep(self, groups):
        return [g for g in groups if not g.zero_variance]

    def enough(self, kept, rounds):
        return kept >= self.config.k or rounds >= self.config.max_rounds


class Greso(Strategy):
    """GRESO (arXiv 2506.02177): skip prompts whose recent reward history predicts a zero-variance group.

    A prompt that gave zero-variance groups in its last z consecutive rollouts is rolled out with probability p^z
    (p = p_easy if that last group was all-correct, reward > 0, else p_hard), so z = 0 is always kept. After each round
    p_easy (p_hard) moves by ``greso_step`` down when the share of easy (hard) zero-variance groups among those rolled
    out exceeds its target (1/3 and 2/3 of ``greso_target_zero_variance``), up otherwise, within [p_min, 1].
    Each round rolls out at most ⌈(K − kept so far) / (1 − target)⌉ survivors; zero-variance groups are then dropped
    as in dynamic sampling, and rounds repeat until K are kept or ``max_rounds`` is reached.
    """

    filters_after_reward = True

    def __init__(self, config, seed: int = 0):
        super().__init__(config, seed)
        self.p_easy, self.p_hard = float(config.greso_p_easy), float(config.greso_p_hard)
        self.history: dict[int, tuple[int, bool]] = {}   # prompt index -> (consecutive zero-variance count, easy)

    def keep_probability(self, index: int) -> float:
        z, easy = self.history.get(index, (0, False))
        return (self.p_easy if easy else self.p_hard) ** z

    def choose(self, candidates, ctx):
        draws = self.rng.random(len(candidates))  # one draw per candidate, used or not: reproducible
        survivors = [c for c, u in zip(candidates, draws) if u < self.keep_probability(c)]
        target = self.config.greso_target_zero_variance
        limit = math.ceil((self.config.k - ctx.kept) / (1.0 - target))
        chosen = survivors[:limit]
        return Choice(chosen, {"greso_skipped": len(candidates) - len(survivors),
                               "greso_p_easy": self.p_easy, "greso_p_hard": self.p_hard})

    def keep(self, groups):
        if not groups:
            return []
        easy_zero = hard_zero = 0
        for g in groups:
            if g.zero_variance:
                z, _ = self.history.get(g.prompt_index, (0, False))
                easy = g.rewards[0] > 0
                self.history[g.prompt_index] = (z + 1, easy)
                easy_zero += easy
                hard_zero += not easy
            else:
                self.history[g.prompt_index] = (0, False)
        cfg = self.config
        target = cfg.greso_target_zero_variance
        self.p_easy = self._adjust(self.p_easy, easy_zero / len(groups), target / 3.0)
        self.p_hard = self._adjust(self.p_hard, hard_zero / len(groups), target * 2.0 / 3.0)
        return [g for g in groups if not g.zero_variance]

    def _adjust(self, p: float, observed: float, target: float) -> float:
        step = self.config.greso_step
        p = p - step if observed > target else p + step
        return min(1.0, max(self.config.greso_p_min, p))

    def enough(self, kept, rounds):
        return kept >= self.config.k or rounds >= self.config.max_rounds

    def state_dict(self):
        return {**super().state_dict(), "p_easy": self.p_easy, "p_hard": self.p_hard,
                "history": {int(i): [int(z), bool(e)] for i, (z, e) in self.history.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.p_easy, self.p_hard = float(state["p_easy"]), float(state["p_hard"])
        self.history = {int(i): (int(z), bool(e)) for i, (z, e) in state["history"].items()}


STRATEGIES: dict[str, type[Strategy]] = {
    "ppl": PerplexityWindow,
    "random": RandomSubset,
    "dynamic": DynamicSampling,
    "greso": Greso,
    "all": AllPrompts,
}


def make_strategy(config, seed: int = 0) -> Strategy:
    """The strategy named by ``config.strategy`` (a prepo.config.SelectionConfig)."""
    if config.strategy not in STRATEGIES:
        raise ValueError(f"selection.strategy: unknown {config.strategy!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[config.strategy](config, seed)


# --- one step's rounds ------------------------------------------------------------------------------------------

@dataclass
class Round:
    """One round of a step: what the strategy chose, the groups rolled out and rewarded, and those it kept."""

    choice: Choice
    groups: list[Group]
    kept: list[Group]
    time_generate: float = 0.0
    time_reward: float = 0.0


@dataclass
class Collected:
    """What a step trains on, everything it generated, and what that cost."""

    groups: list[Group]            # the groups to train on
    generated: list[Group]         # every group rolled out this step, discarded ones included
    rounds: int
    info: dict
    time_select: float
    time_generate: float
    time_reward: float

    @classmethod
    def of(cls, rounds: Sequence[Round], strategy: Strategy) -> Collected:
        """A step's rounds summed up: the kept groups as the strategy cuts them, every generated group, the
        strategies' log values (a later round's win) and the time of each stage."""
        info: dict = {}
        for r in rounds:
            info.update(r.choice.info)
        return cls(strategy.cut([g for r in rounds for g in r.kept]), [g for r in rounds for g in r.groups],
                   len(rounds), info, sum(r.choice.seconds for r in rounds), sum(r.time_generate for r in rounds),
                   sum(r.time_reward for r in rounds))

    @property
    def rollouts(self) -> int:
        """Every rollout generated this step, discarded ones included."""
        return sum(len(g.rollouts) for g in self.generated)

    @property
    def discarded(self) -> int:
        """Rollouts generated but not trained on."""
        return self.rollouts - sum(len(g.rollouts) for g in self.groups)

    @property
    def rewards(self) -> list[float]:
        """The reward of every generated rollout."""
        return [r for g in self.generated for r in g.rewards]

    @property
    def completion_lengths(self) -> list[int]:
        """The completion length (tokens) of every generated rollout."""
        return [len(r.completion_ids) for g in self.generated for r in g.rollouts]
