"""Evaluation: k samples per problem, scored by the examples' verifiers, reported as avg@k, pass@k and maj@k.

The same function serves ``prepo eval`` and the trainer's periodic evaluation on a held-out split.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from prepo.answers import final_number, marked_number, parse_number
from prepo.tasks.example import Example
from prepo.tasks.prompts import encode_prompts
from prepo.rewards import prepare_verifier, run_with_deadline, score_rollouts



@dataclass
class BenchmarkResult:
    """Scores of one benchmark: fractions in [0, 1] over its n problems, k samples each."""

    n: int
    k: int
    avg_at_k: float  # mean over problems of (correct samples / k): pass@1 averaged over k samples
    pass_at_k: float  # problems with at least one correct sample
    maj_at_k: float  # problems whose most frequent extracted answer is correct
    finished: float = 1.0  # samples that ended with a stop token rather than the length limit
    mean_tokens: float = 0.0  # completion length in tokens


@dataclass
class EvalReport:
    """Results per benchmark plus the settings that produced them."""

    results: dict[str, BenchmarkResult]
    settings: dict = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        """Unweighted mean of each metric over benchmarks (the paper's "avg" column)."""
        if not self.results:
            return {}
        keys = ("avg_at_k", "pass_at_k", "maj_at_k")
        return {key: sum(getattr(r, key) for r in self.results.values()) / len(self.results) for key in keys}

    def to_dict(self) -> dict:
        return {"settings": dict(self.settings), "benchmarks": {k: asdict(v) for k, v in self.results.items()},
                "mean": self.mean()}

    def table(self) -> str:
        k = self.settings.get("k", next(iter(self.results.values())).k if self.results else "k")
        head = ["benchmark", "n", f"avg@{k}", f"pass@{k}", f"maj@{k}", "finished", "tokens"]
        rows = [[name, str(r.n), f"{100 * r.avg_at_k:.2f}", f"{100 * r.pass_at_k:.2f}", f"{100 * r.maj_at_k:.2f}",
                 f"{100 * r.finished:.1f}", f"{r.mean_tokens:.1f}"] for name, r in self.results.items()]
        if len(self.results) > 1:
            m = self.mean()
            rows.append(["mean", "", f"{100 * m['avg_at_k']:.2f}", f"{100 * m['pass_at_k']:.2f}",
                         f"{100 * m['maj_at_k']:.2f}", "", ""])
        widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
        line = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------------------------
# metrics from per-sample rewards and extracted answers
# ---------------------------------------------------------------------------------------------------------------
def _math_answer_key(completion: str) -> str | None:
    from math_verify import parse

    parsed = parse(completion, parsing_timeout=None)
    return str(parsed[0]) if parsed else None


def answer_key(completion: str, kind: str, *, timeout: float = 5.0) -> str | None:
    """The answer a completion gives, normalised so that equal answers vote together (None: no answer found)."""
    if kind in ("numeric", "marked"):
        found = final_number(completion) if kind == "numeric" else marked_number(completion)
        value = parse_number(found) if found is not None else None
        return None if value is None else str(value)
    if kind == "math":
        prepare_verifier(kind)
        try:
            return run_with_deadline(_math_answer_key, (completion,), timeout)
        except TimeoutError:
            return None
    raise ValueError(f"kind: unknown verifier {kind!r}")


def problem_scores(rewards: Sequence[float], keys: Sequence[str | None]) -> tuple[float, float, float]:
    """(avg, pass, maj) for one problem's k samples: mean reward, any correct, and whether the most frequent
    non-empty answer key is a correct one (ties go to the key seen first; no answers at all scores 0).

    >>> problem_scores([1.0, 0.0, 0.0, 1.0], ["4", "5", "5", "4"])  # tie between 4 and 5: 4 came first
    (0.5, 1.0, 1.0)
    """
    if len(rewards) != len(keys) or not rewards:
        raise ValueError(f"rewards, keys: need equal non-zero lengths, got {len(rewards)} and {len(keys)}")
    counts = Counter(k for k in keys if k is not None)
    maj = 0.0
    if counts:
        top = max(counts.values())
        winner = next(k for k in keys if k is not None and counts[k] == top)
        maj = max(r for r, k in zip(rewards, keys) if k == winner)
    return sum(rewards) / len(rewards), float(any(r > 0 for r in rewards)), float(maj)


# ---------------------------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------------------------
def _per_benchmark(value, name: str):
    return value.get(name) if isinstance(value, Mapping) else value


def evaluate(engine, tokenizer, datasets: dict[str, list[Example]], *, k: int, max_new_tokens,
             temperature: float, top_p: float = 1.0, seed: int = 0, system_prompt=None, progress: bool = True,
             prompt_template="{question}", few_shot=(), response_prefix="", rows_per_call: int = 64,
             verify_timeout: float = 5.0, partial_on_interrupt: bool = False
             ) -> EvalReport:
    """Sample ``k`` completions per problem of each dataset with ``engine`` and score them.

    ``max_new_tokens`` and the prompt format (``system_prompt``, ``prompt_template``, ``few_shot``,
    ``response_prefix``: see ``prepo.tasks.prompts.encode_prompts``) are each either one value for every benchmark or a
    mapping from benchmark name to value. Generation goes ``rows_per_call`` samples (prompts × k) at a time, each call seeded
    from ``seed``, the benchmark and the call's position, so a report is reproducible for a seed.
    ``partial_on_interrupt``: Ctrl-C returns the problems scored so far (settings ``partial: true``) instead of
    raising KeyboardInterrupt.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if not datasets:
        raise ValueError("datasets: empty")
    from tqdm.auto import tqdm

    total = sum(len(v) for v in datasets.values())
    bar = tqdm(total=total, desc="eval", unit="problem", disable=not progress)
    results: dict[str, BenchmarkResult] = {}
    per_call = max(1, rows_per_call // k)
    name, scores, finished, tokens, interrupted = None, [], 0, 0, False
    try:
        for b_index, (name, examples) in enumerate(datasets.items()):
            if not examples:
                raise ValueError(f"datasets: benchmark {name!r} is empty")
            encoded = encode_prompts(tokenizer, examples, system_prompt=_per_benchmark(system_prompt, name),
                                     prompt_template=_per_benchmark(prompt_template, name) or "{question}",
                                     few_shot=_per_benchmark(few_shot, name) or (),
                                     response_prefix=_per_benchmark(response_prefix, name) or "")
            scores, finished, tokens = [], 0, 0
            for start in range(0, len(examples), per_call):
                chunk = examples[start:start + per_call]
                rollouts = engine.generate([e.input_ids for e in encoded[start:start + per_call]], n=k,
                                           max_new_tokens=_per_benchmark(max_new_tokens, name),
                                           temperature=temperature, top_p=top_p,
                                           seed=(seed * 1_000_003 + b_index * 10_007 + start) % 2**63)
                owners = [chunk[r.prompt_index] for r in rollouts]
                rewards = score_rollouts(owners, [r.text for r in rollouts], timeout=verify_timeout)
                chunk_scores = []
                for i, ex in enumerate(chunk):
                    mine = [j for j, r in enumerate(rollouts) if r.prompt_index == i]
                    keys = [answer_key(rollouts[j].text, ex.verifier, timeout=verify_timeout) for j in mine]
                    chunk_scores.append(problem_scores([rewards[j] for j in mine], keys))
                scores, finished, tokens = (scores + chunk_scores, finished + sum(r.finished for r in rollouts),
                                            tokens + sum(len(r.completion_ids) for r in rollouts))
                bar.update(len(chunk))
            results[name] = _result(scores, k, finished, tokens)
    except KeyboardInterrupt:
        if not partial_on_interrupt:
            raise
        interrupted = True
        if scores and name not in results:  # the benchmark under way: the problems scored so far
            results[name] = _result(scores, k, finished, tokens)
    finally:
        bar.close()
    settings = dict(k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    if interrupted:
        settings["partial"] = True
    return EvalReport(results=results, settings=settings)


def _result(scores: Sequence[tuple[float, float, float]], k: int, finished: int, tokens: int) -> BenchmarkResult:
    """One benchmark's result from its problems' (avg, pass, maj) scores and its samples' finished / token counts."""
    samples = len(scores) * k
    avg, pas, maj = (math.fsum(s[i] for s in scores) / len(scores) for i in range(3))
    return BenchmarkResult(n=len(scores), k=k, avg_at_k=avg, pass_at_k=pas, maj_at_k=maj,
                           finished=finished / samples, mean_tokens=tokens / samples)
