"""Rollout-efficiency report: held-out accuracy against cumulative rollouts per strategy, mean over seeds with the
seeds' spread, the rollouts each strategy needs to reach the reference's final accuracy, curves.png and summary.md.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


# --- curves -------------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One finished (or partial) run as the report sees it: its metrics rows and status."""

    variant: str
    seed: int
    rows: list[dict]
    complete: bool
    steps: int                      # steps the run is configured for

    def evals(self, dataset: str | None) -> list[dict]:
        return [r for r in self.rows if r.get("kind") == "eval" and r.get("accuracy") is not None
                and (dataset is None or r.get("dataset") == dataset)]

    def curve(self, dataset: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(cumulative rollouts, held-out accuracy) at each evaluation, in step order."""
        pts = sorted(self.evals(dataset), key=lambda r: r["step"])
        return (np.array([float(r["rollouts"]) for r in pts]), np.array([float(r["accuracy"]) for r in pts]))

    def train_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("kind") == "train"]

    def seconds(self) -> float:
        """Training + evaluation time from the metrics (model loading excluded; adds up across resumes)."""
        train = sum(float(r.get("time_step") or 0.0) for r in self.train_rows())
        evals = {}
        for r in self.rows:
            if r.get("kind") == "eval":
                evals[r["step"]] = float(r.get("time_eval") or 0.0)  # one evaluate() call per step, all datasets
        return train + sum(evals.values())


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {n}: malformed JSON ({exc.msg})") from None
    return rows


def rollouts_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """Rollouts at which the curve first reaches ``target``, linearly interpolated between the two evaluations that
    bracket the crossing; the first x when the curve starts at or above it; None when it never gets there.

    >>> rollouts_to_reach([0, 100, 200], [0.1, 0.3, 0.5], 0.4)
    150.0
    """
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"xs, ys: expected two 1-D sequences of one length, got shapes {xs.shape} and {ys.shape}")
    if xs.size and np.any(np.diff(xs) < 0):
        raise ValueError("xs: rollouts must be non-decreasing along the curve")
    if not math.isfinite(target):
        raise ValueError(f"target: expected a finite accuracy, got {target!r}")
    hits = np.nonzero(ys >= target)[0]
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(xs[0])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))  # y0 < target <= y1, so y1 > y0


@dataclass
class MeanCurve:
    """Accuracy of several seeds on one rollouts grid: mean, min and max across seeds."""

    xs: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int


def mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> MeanCurve:
    """Average curves on the union of their evaluation points, restricted to the rollouts range all of them cover
    (each curve linearly interpolated there); with identical points this is the point-wise mean."""
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        raise ValueError("curves: need at least one non-empty curve")
    start = max(x[0] for x, _ in curves)
    stop = min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[(grid >= start) & (grid <= stop)]
    if grid.size == 0:  # the seeds' ranges do not overlap: keep each curve's last point
        grid = np.array([stop])
    table = np.stack([np.interp(grid, x, y) for x, y in curves])
    return MeanCurve(grid, table.mean(0), table.min(0), table.max(0), len(curves))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent problems."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


# --- per-strategy statistics --------------------------------------------------------------------------------------

@dataclass
class StrategyStats:
    variant: str
    planned: int
    complete: list[RunRecord]
    final: list[float] = field(default_factory=list)      # final accuracy per complete seed
    initial: list[float] = field(default_factory=list)
    rollouts: list[float] = field(default_factory=list)   # total rollouts per complete seed
    seconds: list[float] = field(default_factory=list)
    curve: MeanCurve | None = None
    reach: float | None = None                           # rollouts to the target on the mean curve
    reach_seeds: list[float | None] = field(default_factory=list)


def _stats(variant: str, planned: int, runs: list[RunRecord], dataset: str | None) -> StrategyStats:
    done = [r for r in runs if r.complete and len(r.curve(dataset)[0])]
    s = StrategyStats(variant, planned, done)
    for r in done:
        xs, ys = r.curve(dataset)
        s.final.append(float(ys[-1]))
        s.initial.append(float(ys[0]))
        s.rollouts.append(float(xs[-1]))
        s.seconds.append(r.seconds())
    if done:
        s.curve = mean_curve([r.curve(dataset) for r in done])
    return s


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _fmt_acc(values: Sequence[float]) -> str:
    if not values:
        return "–"
    m, sd = _mean_sd(values)
    if len(values) == 1:
        return f"{m:.3f} (1 seed)"
    return f"{m:.3f} ± {sd:.3f} [{min(values):.3f}–{max(values):.3f}]"


def _fmt_rollouts(x: float | None) -> str:
    return "not reached" if x is None else f"{x:,.0f}"


# --- the report ---------------------------------------------------------------------------------------------------

@dataclass
class Report:
    stats: list[StrategyStats]
    reference: str
    target: float | None
    dataset: str | None
    eval_size: int
    decoding: str = "greedy decoding"           # how the held-out answers were sampled, for the noise note


def build_report(runs: Sequence[RunRecord], planned: dict[str, int], reference: str,
                 dataset: str | None = None, eval_size: int = 0, decoding: str = "greedy decoding") -> Report:
    """Statistics per strategy (in ``planned`` order); the target is the reference's mean final accuracy."""
    stats = [_stats(v, n, [r for r in runs if r.variant == v], dataset) for v, n in planned.items()]
    ref = next((s for s in stats if s.variant == reference), None)
    target = float(np.mean(ref.final)) if ref is not None and ref.final else None
    if target is not None:
        for s in stats:
            if s.curve is not None:
                s.reach = rollouts_to_reach(s.curve.xs, s.curve.mean, target)
            s.reach_seeds = [rollouts_to_reach(*r.curve(dataset), target) for r in s.complete]
    return Report(stats, reference, target, dataset, eval_size, decoding)


def plot(report: Report, path: str | Path, title: str) -> Path:
    """curves.png: held-out accuracy against rollouts, one line per strategy (mean over seeds, min–max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for s in report.stats:
        if s.curve is None:
            continue
        c = s.curve
        line, = ax.plot(c.xs, c.mean, "o-", ms=3, label=f"{s.variant} (n={c.n})")
        if c.n > 1:
            ax.fill_between(c.xs, c.lo, c.hi, color=line.get_color(), alpha=0.15, lw=0)
    if report.target is not None:
        ax.axhline(report.target, color="gray", ls="--", lw=1, label=f"{report.reference} final ({report.target:.3f})")
    ax.set_xlabel("rollouts generated (discarded included)")
    ax.set_ylabel(f"held-out accuracy{f' ({report.dataset})' if report.dataset else ''}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _diagnostics(s: StrategyStats) -> str:
    """Mean over the complete seeds' training rows: zero-variance share, entropy-weight range, perplexity window."""
    rows = [r for run in s.complete for r in run.train_rows()]
    if not rows:
        return "–"

    def avg(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    parts = []
    if s.final:
        delta = [f - i for f, i in zip(s.final, s.initial)]
        m, sd = _mean_sd(delta)
        parts.append(f"held-out change over the run {m:+.3f}" + (f" ± {sd:.3f}" if len(delta) > 1 else ""))
    if (zv := avg("zero_variance_frac")) is not None:
        parts.append(f"zero-var groups {zv:.2f}")
    if (rw := avg("reward_mean")) is not None:
        parts.append(f"train reward {rw:.3f}")
    lo = [r["weight_min"] for r in rows if r.get("weight_min") is not None]
    hi = [r["weight_max"] for r in rows if r.get("weight_max") is not None]
    if lo and (min(lo) != 1.0 or max(hi) != 1.0):
        parts.append(f"weights {min(lo):.2f}–{max(hi):.2f}")
    win_lo = [r["ppl_window_lo"] for r in rows if r.get("ppl_window_lo") is not None]
    win_hi = [r["ppl_window_hi"] for r in rows if r.get("ppl_window_hi") is not None]
    if win_lo:
        parts.append(f"ppl window {min(win_lo):.1f}–{max(win_hi):.1f}")
    if (disc := avg("discarded_step")) is not None and disc > 0:
        parts.append(f"discarded/step {disc:.1f}")
    return ", ".join(parts) or "–"


def ratio_text(reference_reach: float | None, reach: float | None, complete: bool) -> str:
    """The reference's rollouts-to-target over a strategy's, or why there is none."""
    if not complete:
        return "–"
    if reach is None:
        return "not reached"
    if reference_reach is None:
        return "–"
    if reach == 0 or reference_reach == 0:
        return "n/a (target met at step 0)"
    return f"{reference_reach / reach:.2f}×"


def _table_row(s: StrategyStats, ref: StrategyStats | None, target: float | None, per_seed: str) -> str:
    initial = f"{np.mean(s.initial):.3f}" if s.initial else "–"
    total = f"{np.mean(s.rollouts):,.0f}" if s.rollouts else "–"
    reach = _fmt_rollouts(s.reach) if s.curve is not None and target is not None else "–"
    ratio = ratio_text(ref.reach if ref else None, s.reach, bool(s.complete) and target is not None)
    minutes = f"{np.mean(s.seconds) / 60:.1f} min" if s.seconds else "–"
    return (f"| {s.variant} | {len(s.complete)}/{s.planned} | {initial} | {_fmt_acc(s.final)} | {total} | {reach} | "
            f"{per_seed} | {ratio} | {minutes} |")


def summary_markdown(report: Report, *, name: str, command: str, run_status: Sequence[tuple[str, str]],
                     notes: str = "") -> str:
    """summary.md: the table, the noise, the runs' status and the free-text notes of the configuration."""
    ref = next((s for s in report.stats if s.variant == report.reference), None)
    lines = [f"# Rollout efficiency: {name}", "", f"Made by `{command}`.", ""]
    if report.target is None:
        lines += [f"No complete `{report.reference}` run yet: rollouts-to-reach and ratios are not available.", ""]
    else:
        lines += [f"Target: `{report.reference}`'s mean final held-out accuracy, **{report.target:.3f}**. "
                  "\"Rollouts to target\" is where the strategy's seed-mean curve first reaches it (linear "
                  "interpolation between evaluations); the ratio is the reference's rollouts-to-target over the "
                  "strategy's (> 1: fewer rollouts than the reference).", ""]
    lines += ["| strategy | seeds done | initial acc | final acc (mean ± sd [min–max]) | rollouts (total) | "
              "rollouts to target | per seed | ratio vs " + report.reference + " | time / run |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in report.stats:
        per_seed = ", ".join(_fmt_rollouts(x) for x in s.reach_seeds) if s.reach_seeds else "–"
        lines.append(_table_row(s, ref, report.target, per_seed))
    lines += ["", "## How noisy these numbers are", ""]
    n = report.eval_size
    finals = [f for s in report.stats for f in s.final]
    p = report.target if report.target is not None else (float(np.mean(finals)) if finals else None)
    if p is not None and n:
        se = binomial_se(p, n)
        lines.append(f"- Held-out set: {n} problems, {report.decoding}, so an accuracy near {p:.2f} has a "
                     f"binomial standard error of ±{se:.3f} (±{1.96 * se:.3f} for 95%); a difference between two "
                     f"strategies' single runs has ±{math.sqrt(2) * se:.3f}. The same problems are used for every "
                     "run, so differences between strategies are less noisy than this (paired), but seeds are not.")
    sds = [(s.variant, _mean_sd(s.final)[1]) for s in report.stats if len(s.final) > 1]
    if sds:
        lines.append("- Seed spread (sd of final accuracy across seeds): "
                     + ", ".join(f"{v} {sd:.3f}" for v, sd in sds) + ".")
        lines.append("- A strategy beats the reference only if the gap exceeds about 2 × sd / √seeds of both; "
                     "rollouts-to-target inherits the curve noise (a curve that grazes the target early crosses "
                     "early by luck), hence the per-seed column.")
    lines += ["", "## Training diagnostics (complete seeds, mean over steps)", ""]
    lines += [f"- {s.variant}: {_diagnostics(s)}" for s in report.stats]
    lines += ["", "## Runs", ""]
    lines += [f"- `{run}`: {status}" for run, status in run_status]
    if notes.strip():
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"
