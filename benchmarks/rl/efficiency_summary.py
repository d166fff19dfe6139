"""Rollout-efficiency report (summary.md, curves.png): the reference's validity gate, then per strategy, paired by seed,
the rollouts and seconds to reach the reference's final accuracy, the area under the curve, and diagnostics by quarter.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.rl.efficiency_stats import (RESAMPLES, speedup_for_gain, Gate, PairedDifference, PairedRatio, by_quarter, common_range_auc,
                                         paired_difference, paired_ratio, rollouts_to_reach, t_interval,
                                         validity_gate)

# --- curves -------------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One finished (or partial) run as the report sees it: its metrics rows and status."""

    variant: str
    seed: int
    rows: list[dict]
    complete: bool
    steps: int                      # steps the run is configured for

    def evals(self, dataset: str | None, key: str = "accuracy") -> list[dict]:
        return [r for r in self.rows if r.get("kind") == "eval" and r.get(key) is not None
                and (dataset is None or r.get("dataset") == dataset)]

    def curve(self, dataset: str | None, key: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """(cumulative rollouts, held-out accuracy) at each evaluation, in step order."""
        pts = sorted(self.evals(dataset, key), key=lambda r: r["step"])
        return (np.array([float(r["rollouts"]) for r in pts]), np.array([float(r[key]) for r in pts]))

    def points(self, dataset: str | None, key: str = "accuracy") -> dict[int, tuple[float, float, float]]:
        """step → (cumulative rollouts, cumulative step seconds, held-out accuracy) at each evaluation. The seconds
        add up the train rows' time_step (selection, generation, reward, update) to that step; evaluation excluded."""
        steps = {int(r["step"]): float(r.get("time_step") or 0.0) for r in self.train_rows()}
        out = {}
        for r in self.evals(dataset, key):
            s = int(r["step"])
            out[s] = (float(r["rollouts"]), sum(t for k, t in steps.items() if k <= s), float(r[key]))
        return out

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


def _stats(variant: str, planned: int, runs: list[RunRecord], dataset: str | None,
           key: str = "accuracy") -> StrategyStats:
    done = [r for r in runs if r.complete and len(r.curve(dataset, key)[0])]
    s = StrategyStats(variant, planned, done)
    for r in done:
        xs, ys = r.curve(dataset, key)
        s.final.append(float(ys[-1]))
        s.initial.append(float(ys[0]))
        s.rollouts.append(float(xs[-1]))
        s.seconds.append(r.seconds())
    if done:
        s.curve = mean_curve([r.curve(dataset, key) for r in done])
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


# --- the paired comparison ----------------------------------------------------------------------------------------

METRIC_KEYS = {"avg@k": "accuracy", "pass@k": "pass_at_k", "maj@k": "maj_at_k", "greedy": "greedy_accuracy"}
ABLATION = (("prepo", "both: window + entropy weights"), ("ppl", "window alone"),
            ("entropy", "weights alone: random choice + entropy weights"))


@dataclass(frozen=True)
class Metric:
    """A held-out accuracy the eval rows carry: its config name, its key in metrics.jsonl and how to say it."""

    name: str
    key: str
    label: str


def resolve_metrics(name: str, temperature: float | None, runs: Sequence[RunRecord]) -> list[Metric]:
    """The primary metric first, then the other of avg@k and greedy when the rows carry it. At eval temperature 0,
    avg@k *is* greedy accuracy (the ``accuracy`` key)."""
    if name not in METRIC_KEYS:
        raise ValueError(f"metric: {name!r} is not one of {sorted(METRIC_KEYS)}")
    evals = [r for run in runs for r in run.rows if r.get("kind") == "eval"]
    k = next((r["k"] for r in evals if isinstance(r.get("k"), int)), None)
    at = f"at temperature {temperature:g}" if temperature is not None else "at the eval temperature"
    greedy_is_avg = temperature == 0
    labels = {"avg@k": (f"avg@{k or 'k'} at temperature 0 (greedy)" if greedy_is_avg
                        else f"avg@{k or 'k'} {at}"),
              "pass@k": f"pass@{k or 'k'} {at}", "maj@k": f"maj@{k or 'k'} {at}",
              "greedy": "greedy accuracy"}

    def metric(n: str) -> Metric:
        key = "accuracy" if n == "greedy" and greedy_is_avg else METRIC_KEYS[n]
        return Metric(n, key, labels["avg@k"] if key == "accuracy" else labels[n])

    out = [metric(name)]
    for other in ("avg@k", "greedy"):
        m = metric(other)
        if m.key not in {o.key for o in out} and any(r.get(m.key) is not None for r in evals):
            out.append(m)
    return out


@dataclass
class Aligned:
    """One strategy's complete runs on the evaluation steps they all have: row i is seeds[i]."""

    seeds: list[int]
    steps: list[int]
    rollouts: np.ndarray       # (seeds, evaluations)
    seconds: np.ndarray
    accuracy: np.ndarray

    def rows(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = [self.seeds.index(s) for s in seeds]
        return self.rollouts[idx], self.seconds[idx], self.accuracy[idx]


def align(runs: Sequence[RunRecord], dataset: str | None, key: str) -> Aligned | None:
    """The complete runs' evaluations of ``key`` as (seeds, steps) arrays; None when no step is common to them."""
    pts = {r.seed: r.points(dataset, key) for r in runs if r.complete}
    pts = {s: p for s, p in pts.items() if p}
    if not pts:
        return None
    steps = sorted(set.intersection(*(set(p) for p in pts.values())))
    if not steps:
        return None
    seeds = sorted(pts)
    cols = [np.array([[pts[s][t][i] for t in steps] for s in seeds], float).reshape(len(seeds), len(steps))
            for i in range(3)]
    return Aligned(seeds, steps, *cols)


@dataclass
class StrategyComparison:
    """One strategy against the reference on their common complete seeds."""

    variant: str
    seeds: list[int]
    rollouts: PairedRatio | None = None
    seconds: PairedRatio | None = None
    auc: PairedDifference | None = None


@dataclass
class Comparison:
    metric: Metric
    gate: Gate | None                         # None: no complete reference run
    aligned: dict[str, Aligned]
    auc: dict[str, dict[int, float]]          # variant → seed → mean accuracy over the seed's common rollouts range
    rows: list[StrategyComparison]


def seed_aucs(aligned: dict[str, Aligned]) -> dict[str, dict[int, float]]:
    """Per seed, every strategy's mean accuracy over the rollouts range all that seed's complete runs cover."""
    out: dict[str, dict[int, float]] = {v: {} for v in aligned}
    for seed in sorted({s for a in aligned.values() for s in a.seeds}):
        have = [v for v, a in aligned.items() if seed in a.seeds]
        rows = [aligned[v].rows([seed]) for v in have]
        for v, value in zip(have, common_range_auc([(x[0], y[0]) for x, _, y in rows])):
            out[v][seed] = value
    return out


def compare(runs: Sequence[RunRecord], variants: Sequence[str], reference: str, dataset: str | None, metric: Metric,
            gate: tuple[float, float], resamples: int = RESAMPLES) -> Comparison:
    """The gate and every strategy's paired ratios (rollouts, seconds) and AUC difference against the reference."""
    aligned = {v: a for v in variants if (a := align([r for r in runs if r.variant == v], dataset, metric.key))}
    ref = aligned.get(reference)
    the_gate = None if ref is None else validity_gate(ref.accuracy[:, -1] - ref.accuracy[:, 0], *gate)
    aucs = seed_aucs(aligned)
    rows = []
    for v in variants:
        if v == reference or v not in aligned or ref is None:
            continue
        seeds = sorted(set(aligned[v].seeds) & set(ref.seeds))
        row = StrategyComparison(v, seeds)
        if seeds:
            rx, rt, ry = ref.rows(seeds)
            x, t, y = aligned[v].rows(seeds)
            row.rollouts = paired_ratio(rx, ry, x, y, resamples=resamples)
            row.seconds = paired_ratio(rt, ry, t, y, resamples=resamples)
            row.auc = paired_difference([aucs[v][s] for s in seeds], [aucs[reference][s] for s in seeds],
                                        resamples=resamples)
        rows.append(row)
    return Comparison(metric, the_gate, aligned, aucs, rows)


QUARTER_KEYS = (("zero_variance_frac", "Zero-variance groups", "share of the groups trained on (dynamic sampling and "
                                                               "GRESO discard such groups first: 0 by construction)"),
                ("ppl_selected_mean", "Mean perplexity of the selected prompts", ""),
                ("ppl_window_lo", "Perplexity window, low end", "the least perplexing selected prompt"),
                ("ppl_window_hi", "Perplexity window, high end", "the most perplexing selected prompt"))


def quarters(runs: Sequence[RunRecord], key: str) -> tuple[list[float | None], int]:
    """A train-row key by quarter of the run, averaged over the complete runs that have it; and how many have it."""
    per_run = []
    for r in runs:
        rows = r.train_rows() if r.complete else []
        q = by_quarter([int(x["step"]) for x in rows], [x.get(key) for x in rows], r.steps)
        if any(v is not None for v in q):
            per_run.append(q)
    means = [[v[i] for v in per_run if v[i] is not None] for i in range(4)]
    return [float(np.mean(m)) if m else None for m in means], len(per_run)


# --- the report ---------------------------------------------------------------------------------------------------

@dataclass
class Report:
    stats: list[StrategyStats]
    reference: str
    target: float | None
    dataset: str | None
    eval_size: int
    decoding: str = "greedy decoding"           # how the held-out answers were sampled, for the noise note
    comparisons: list[Comparison] = field(default_factory=list)  # paired, one per metric (the primary first)
    # train-row key → variant → (mean by quarter of the run, runs that have the key)
    quarters: dict[str, dict[str, tuple[list[float | None], int]]] = field(default_factory=dict)
    resamples: int = RESAMPLES


def build_report(runs: Sequence[RunRecord], planned: dict[str, int], reference: str,
                 dataset: str | None = None, eval_size: int = 0, decoding: str = "greedy decoding", *,
                 metric: str = "avg@k", temperature: float | None = None, gate: tuple[float, float] = (0.15, 0.8),
                 resamples: int = RESAMPLES) -> Report:
    """Statistics per strategy (in ``planned`` order); the target is the reference's mean final accuracy of the
    primary ``metric``; the paired comparison for it and for the other metric the eval rows carry, if any; ``gate``
    is (min gain, min share of seeds)."""
    metrics = resolve_metrics(metric, temperature, runs)
    key = metrics[0].key
    stats = [_stats(v, n, [r for r in runs if r.variant == v], dataset, key) for v, n in planned.items()]
    ref = next((s for s in stats if s.variant == reference), None)
    target = float(np.mean(ref.final)) if ref is not None and ref.final else None
    if target is not None:
        for s in stats:
            if s.curve is not None:
                s.reach = rollouts_to_reach(s.curve.xs, s.curve.mean, target)
            s.reach_seeds = [rollouts_to_reach(*r.curve(dataset, key), target) for r in s.complete]
    comparisons = [compare(runs, list(planned), reference, dataset, m, gate, resamples) for m in metrics]
    by_key = {k: {v: quarters([r for r in runs if r.variant == v], k) for v in planned} for k, *_ in QUARTER_KEYS}
    return Report(stats, reference, target, dataset, eval_size, decoding, comparisons, by_key, resamples)


def band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a (seeds, evaluations) array: mean and its 95% Student-t interval (the mean itself: one seed)."""
    mean = values.mean(0)
    if len(values) < 2:
        return mean, mean, mean
    lo, hi = np.array([t_interval(col) for col in values.T]).T
    return mean, lo, hi


def plot(report: Report, path: str | Path, title: str) -> Path:
    """curves.png: held-out accuracy (primary metric) against rollouts (left) and step seconds (right), one line per
    strategy: the mean over its seeds at each evaluation, with the 95% t-interval of that mean as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    comparison = report.comparisons[0] if report.comparisons else None
    for variant, a in (comparison.aligned.items() if comparison else ()):
        mean, lo, hi = band(a.accuracy)
        for ax, xs in zip(axes, (a.rollouts.mean(0), a.seconds.mean(0) / 60)):
            line, = ax.plot(xs, mean, "o-", ms=3, label=f"{variant} (n={len(a.seeds)})")
            if len(a.seeds) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    for ax, xlabel in zip(axes, ("rollouts generated (discarded included)",
                                 "training minutes (selection, generation, reward, update; evaluation excluded)")):
        if report.target is not None:
            ax.axhline(report.target, color="gray", ls="--", lw=1,
                       label=f"{report.reference} final ({report.target:.3f})")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
    label = comparison.metric.label if comparison else "accuracy"
    axes[0].set_ylabel(f"held-out {label}{f' ({report.dataset})' if report.dataset else ''}", fontsize=9)
    fig.suptitle(f"{title}: mean over seeds, band = 95% t-interval of the mean", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def clipped_share(records) -> tuple[float | None, int]:
    """(share of optimizer steps whose gradient norm exceeded max_grad_norm, optimizer steps seen)."""
    steps = clipped = 0
    for r in records:
        for row in r.train_rows():
            if row.get("optimizer_steps"):
                steps += int(row["optimizer_steps"])
                clipped += int(row.get("clipped_steps") or 0)
    return (clipped / steps if steps else None), steps


def clip_fraction(records) -> float | None:
    """Mean share of response tokens whose PPO ratio was clipped (clip_frac), over every training row."""
    vals = [float(row["clip_frac"]) for r in records for row in r.train_rows() if row.get("clip_frac") is not None]
    return float(np.mean(vals)) if vals else None


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
    share, _ = clipped_share(s.complete)
    if share is not None:
        parts.append(f"optimizer steps clipped {share:.0%}")
    if (cf := clip_fraction(s.complete)) is not None and cf > 0:
        parts.append(f"PPO-clipped tokens {cf:.3f}")
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


# --- rendering of the paired comparison ---------------------------------------------------------------------------

def fmt_ratio(x: float, bound: bool = False) -> str:
    """A cost ratio as the tables print it: 0 is a strategy that never reaches the target ("not reached", or 0 as an
    interval bound)."""
    if math.isnan(x):
        return "n/a"
    if x == 0:
        return "0" if bound else "not reached"
    return "∞" if math.isinf(x) else f"{x:.2f}×"


def _fmt_cost(x: float | None, seconds: bool) -> str:
    if x is None:
        return "not reached"
    if not seconds:
        return f"{x:,.0f}"
    return f"{x / 60:.1f} min" if x >= 120 else f"{x:.0f} s"


def _fmt_ratio_ci(r: PairedRatio) -> str:
    if math.isnan(r.ratio) or math.isnan(r.lo):
        return fmt_ratio(r.ratio)
    ci = f"{fmt_ratio(r.lo, True)} – {fmt_ratio(r.hi, True)}"
    return f"{fmt_ratio(r.ratio)} [{ci}]"


def _fmt_diff(d: PairedDifference, which: str = "t") -> str:
    lo, hi = (d.t_lo, d.t_hi) if which == "t" else (d.boot_lo, d.boot_hi)
    ci = f"[{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo) else "[n/a: one seed]"
    return f"{d.diff:+.3f} {ci}"


def gate_lines(c: Comparison, reference: str, primary: bool = True) -> list[str]:
    """The validity gate: PASSED/FAILED, the rule, the per-seed gains."""
    if c.gate is None:
        return [f"No complete `{reference}` run with `{c.metric.key}` ({c.metric.label}) in its eval rows yet: the "
                "validity gate cannot be checked."]
    g, a = c.gate, c.aligned[reference]
    hits = sum(x >= g.min_gain - 1e-12 for x in g.gains)
    gains = ", ".join(f"s{s} {x:+.3f}" for s, x in zip(a.seeds, g.gains))
    if not primary:
        return [f"Secondary metric, {c.metric.label} (not the gate): gain ≥ {g.min_gain:.3f} on {hits} of "
                f"{len(g.gains)} seeds ({g.share:.0%}), would {'pass' if g.passed else 'fail'}; per seed: {gains}."]
    text = (f"**{'PASSED' if g.passed else 'FAILED'}**: `{reference}` must raise held-out {c.metric.label} by ≥ "
            f"{g.min_gain:.3f} absolute over the run (last − first evaluation) on ≥ {g.min_share:.0%} of seeds; it "
            f"does on {hits} of {len(g.gains)} ({g.share:.0%}).")
    if not g.passed:
        text += (" The reference does not learn reliably in this regime, so the comparison below says little about "
                 "the strategies.")
    return [text, "", f"Per-seed gain, {c.metric.label}: {gains}."]


def _ratio_table(c: Comparison, reference: str, seconds: bool) -> list[str]:
    unit = "time" if seconds else "rollouts"
    lines = [f"| strategy | paired seeds | target | {reference} {unit} to target | strategy {unit} to target | "
             f"ratio [95% CI] | resamples not reaching |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in c.rows:
        r = row.seconds if seconds else row.rollouts
        if r is None:
            lines.append(f"| {row.variant} | 0 | – | – | – | – | – |")
            continue
        lines.append(f"| {row.variant} | {r.n} | {r.target:.3f} | {_fmt_cost(r.reference_cost, seconds)} | "
                     f"{_fmt_cost(r.cost, seconds)} | {_fmt_ratio_ci(r)} | {r.not_reached:.0%}"
                     + (f" (+{r.undefined:.0%} n/a)" if r.undefined else "") + " |")
    return lines


def excluded_speedup(c: Comparison, reference: str, row: StrategyComparison) -> float | None:
    """The rollout speed-up over the reference that the upper end of the AUC difference's t interval excludes
    (the reference's seed-mean curve on the paired seeds, made that much faster: efficiency_stats.speedup_for_gain)."""
    ref = c.aligned.get(reference)
    if ref is None or row.auc is None or not row.seeds:
        return None
    x, _, y = ref.rows(row.seeds)
    return speedup_for_gain(x.mean(axis=0), y.mean(axis=0), row.auc.t_hi)


def _auc_table(c: Comparison, reference: str) -> list[str]:
    ref = c.auc.get(reference, {})
    lines = ["| strategy | paired seeds | mean AUC | " + reference + " AUC (same seeds) | difference [95% CI, t] | "
             "[95% CI, bootstrap] | speed-ups excluded |", "| --- | --- | --- | --- | --- | --- | --- |"]
    if ref:
        lines.append(f"| {reference} (reference) | {len(ref)} | {np.mean(list(ref.values())):.3f} | – | – | – | – |")
    for row in c.rows:
        d = row.auc
        if d is None:
            lines.append(f"| {row.variant} | 0 | – | – | – | – | – |")
            continue
        boot = f"[{d.boot_lo:+.3f}, {d.boot_hi:+.3f}]"
        bound = excluded_speedup(c, reference, row)
        power = "–" if bound is None else ("none" if not np.isfinite(bound) else f"> {bound:.2f}×")
        lines.append(f"| {row.variant} | {d.n} | {d.mean:.3f} | {d.reference:.3f} | {_fmt_diff(d)} | {boot} | "
                     f"{power} |")
    return lines


def compact_table(c: Comparison, labelled: Sequence[tuple[str, str]], reference: str) -> list[str]:
    """One row per (variant, label) present: seeds, AUC difference, rollouts and wall-time ratios with their CIs (a
    label column when some label is not the variant's name)."""
    by = {row.variant: row for row in c.rows if row.auc is not None}
    named = any(v != label for v, label in labelled)
    lines = [f"| {'what | ' if named else ''}strategy | paired seeds | AUC − {reference} [95% CI, t] | "
             "rollouts ratio [95% CI] | wall-time ratio [95% CI] |", "| --- " * (6 if named else 5) + "|"]
    for variant, label in labelled:
        if variant in by:
            row = by[variant]
            lines.append(f"| {label + ' | ' if named else ''}{variant} | {len(row.seeds)} | {_fmt_diff(row.auc)} | "
                         f"{_fmt_ratio_ci(row.rollouts)} | {_fmt_ratio_ci(row.seconds)} |")
    return lines if len(lines) > 2 else []


def paired_lines(c: Comparison, reference: str, resamples: int) -> list[str]:
    """The paired comparison of one metric: rollouts ratio, AUC, wall-time ratio, ablation."""
    lines = [f"Paired by seed (same seed: same initial model, same candidate draws): each strategy against "
             f"`{reference}` on the seeds both completed. Target: `{reference}`'s mean final {c.metric.label} over "
             "those seeds. Cost to target: where the seed-mean curve (accuracy and cost averaged over seeds at each "
             "evaluation step) first reaches it, linearly interpolated. Ratio: the reference's cost over the "
             "strategy's (> 1: the strategy needs less). 95% CI: percentile bootstrap over seeds "
             f"({resamples} resamples, the same seed draw for both strategies, target recomputed); a resample in "
             "which the strategy's mean curve never reaches the target counts as infinite cost (ratio 0, kept in the "
             "interval) and the last column gives their share; n/a: resamples with no ratio (the reference's mean "
             "curve starts at or above the target), left out.", "",
             "### Rollouts to target", ""]
    lines += _ratio_table(c, reference, seconds=False)
    lines += ["", "### Area under the accuracy-vs-rollouts curve", "",
              "Per seed, each strategy's mean accuracy over the rollouts range that all of that seed's complete runs "
              "cover (trapezoid area over the range, divided by its length). Difference: strategy − reference on "
              "each seed, then the mean; 95% CI: Student t on the per-seed differences, and percentile bootstrap "
              "over seeds. Speed-ups excluded (the comparison's power): a strategy k× as rollout-efficient as the "
              "reference (the reference's seed-mean curve compressed k× in rollouts, holding its final accuracy "
              "after) would gain more AUC than the t interval's upper end for every k above the bound shown.", ""]
    lines += _auc_table(c, reference)
    lines += ["", "### Wall time to target (selection cost included)", "",
              "Cost: each run's cumulative step time (`time_step`: selection scoring, generation, reward, update; "
              "evaluation excluded), same target, same bootstrap.", ""]
    lines += _ratio_table(c, reference, seconds=True)
    ablation = compact_table(c, ABLATION, reference)
    if ablation:
        lines += ["", "### Ablation: window alone, weights alone, both", ""] + ablation
        missing = [f"`{v}` ({label})" for v, label in ABLATION if v not in {row.variant for row in c.rows}]
        lines += ["", f"Not in this benchmark: {', '.join(missing)}."] if missing else []
    return lines


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def quarter_lines(report: Report) -> list[str]:
    """Zero-variance share and the perplexity window by quarter of the run, per strategy."""
    lines = ["Each quarter: the mean over its training steps, then over the complete seeds (n: seeds with the key).",
             ""]
    for key, title, note in QUARTER_KEYS:
        per = report.quarters.get(key, {})
        if not any(n for _, n in per.values()):
            if key == "ppl_selected_mean":
                lines += [f"{title}: not in the metrics (the train rows have no `{key}`).", ""]
            continue
        lines += [f"{title} (`{key}`){': ' + note if note else ''}.", "",
                  "| strategy | n | Q1 | Q2 | Q3 | Q4 |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {v} | {n} | " + " | ".join(_cell(x) for x in q) + " |"
                  for v, (q, n) in per.items() if n]
        lines.append("")
    return lines[:-1]


def regime_line(ppo_epochs: int, mini_batches: int) -> str:
    """Which update regime the runs use: on-policy (one optimizer step per rollout batch) or the paper's (several
    optimizer mini-batches per rollout batch, verl's ppo_mini_batch_size, so the policy moves and clip-higher acts)."""
    if (ppo_epochs, mini_batches) == (1, 1):
        return ("Update regime: **on-policy**, one optimizer step per rollout batch (`algorithm.mini_batches: 1`, "
                "`ppo_epochs: 1`): the PPO ratio stays 1, so clip-higher does not act.")
    return (f"Update regime: **{mini_batches} optimizer mini-batch{'es' if mini_batches > 1 else ''} × {ppo_epochs} "
            f"epoch{'s' if ppo_epochs > 1 else ''} per rollout batch** (`algorithm.mini_batches: {mini_batches}`, "
            f"`ppo_epochs: {ppo_epochs}`; verl's ppo_mini_batch_size = the selected groups / {mini_batches}): the "
            "policy moves between optimizer steps, so the PPO ratio leaves 1 and clip-higher acts.")


def summary_markdown(report: Report, *, name: str, command: str, run_status: Sequence[tuple[str, str]],
                     notes: str = "", regime: str = "") -> str:
    """summary.md: the validity gate, the overview table, the paired comparison (primary metric, then the secondary
    one), the diagnostics by quarter, the noise, the runs' status and the free-text notes of the configuration."""
    ref = next((s for s in report.stats if s.variant == report.reference), None)
    lines = [f"# Rollout efficiency: {name}", "", f"Made by `{command}`.", ""] + ([regime, ""] if regime else [])
    primary, *secondary = report.comparisons or [None]
    if primary is not None:
        lines += ["## Validity gate", ""] + gate_lines(primary, report.reference)
        for c in secondary:
            lines += [""] + gate_lines(c, report.reference, primary=False)
        lines += ["", f"## Overview: {primary.metric.label}", ""]
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
    if primary is not None and primary.rows:
        lines += ["", f"## Paired comparison with {report.reference}: {primary.metric.label}", ""]
        lines += paired_lines(primary, report.reference, report.resamples)
    for c in secondary:
        table = compact_table(c, [(row.variant, row.variant) for row in c.rows], report.reference)
        if table:
            lines += ["", f"## Secondary metric: {c.metric.label}", "", "The same paired statistics, in short.", ""]
            lines += table
    if any(n for per in report.quarters.values() for _, n in per.values()):
        lines += ["", "## Over the run, by quarter", ""] + quarter_lines(report)
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
