"""Paired statistics of the rollout-efficiency comparison over seeds: cost to reach a target and its ratio, area under
the accuracy curve, the validity gate, by-quarter means, bootstrap and Student-t intervals (numbers in, numbers out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


# --- intervals ----------------------------------------------------------------------------------------------------

def _t_cdf(t: float, df: int) -> float:
    """Student-t CDF for an integer df, in closed form (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    term = acc = c if df % 2 else 1.0
    for j in range(3 if df % 2 else 2, df - 1, 2):
        term *= c * c * (j - 1) / j
        acc += term
    if df % 2:
        a = 2 / math.pi * (theta + (s * acc if df > 1 else 0.0))
    else:
        a = s * acc
    return (1.0 + a) / 2.0


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on the exact CDF).

    >>> round(t_quantile(0.975, 4), 3)
    2.776
    """
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df >= 1, got p={p!r}, df={df!r}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaNs when fewer than two)."""
    a = np.asarray(values, float)
    if a.size < 2:
        return math.nan, math.nan
    half = t_quantile(0.5 + level / 2, a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return float(a.mean()) - half, float(a.mean()) + half


def percentile_interval(samples: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples by order statistics (±inf samples stay ordered; NaNs are dropped)."""
    a = np.sort(np.asarray(samples, float)[~np.isnan(np.asarray(samples, float))])
    if a.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    pos = tail * (a.size - 1)  # rounded first: (1 - 0.9) / 2 * 200 is 9.999..., whose floor would widen the interval
    lo, hi = math.floor(round(pos, 9)), math.ceil(round((a.size - 1) - pos, 9))
    return float(a[lo]), float(a[hi])


def bootstrap(n: int, statistic: Callable[[np.ndarray], float], resamples: int = RESAMPLES,
              seed: int = 0) -> np.ndarray:
    """``statistic(indices)`` on ``resamples`` draws of n seed indices with replacement (seeded). Paired comparisons
    index both strategies' per-seed arrays with the same draw."""
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return np.array([statistic(idx) for idx in draws], dtype=float)


# --- cost to reach a target ---------------------------------------------------------------------------------------

def rollouts_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """Rollouts (or seconds: any cost on the x axis) at which the curve first reaches ``target``, linearly
    interpolated between the two evaluations that bracket the crossing; the first x when the curve starts at or above
    it; None when it never gets there.

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


def cost_ratio(reference_cost: float | None, cost: float | None) -> float:
    """The reference's cost to the target over the strategy's (> 1: the strategy needs less). A strategy that never
    gets there needs +inf: 0; a reference that never does (and the strategy does): +inf; NaN when undefined (neither
    gets there, or one is there before training)."""
    ref = math.inf if reference_cost is None else reference_cost
    own = math.inf if cost is None else cost
    if own == 0 or ref == 0:
        return math.nan
    if math.isinf(own):
        return math.nan if math.isinf(ref) else 0.0
    return ref / own


def _ratio_of(ref_x: np.ndarray, ref_y: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float | None,
                                                                                             float | None, float]:
    """(target, reference cost, strategy cost, ratio) of seed-aligned curves (rows: seeds, columns: evaluations):
    the target is the reference's mean final accuracy, each cost is read off the seed-mean curve."""
    target = float(ref_y[:, -1].mean())
    reach = target - 1e-12  # the reference's own mean curve ends on the target, up to rounding
    ref_cost = rollouts_to_reach(ref_x.mean(0), ref_y.mean(0), reach)
    cost = rollouts_to_reach(x.mean(0), y.mean(0), reach)
    return target, ref_cost, cost, cost_ratio(ref_cost, cost)


@dataclass
class PairedRatio:
    """Reference cost to its mean final accuracy over a strategy's, on the same seeds, with a bootstrap interval."""

    n: int                          # paired seeds
    target: float
    reference_cost: float | None    # on the reference's seed-mean curve
    cost: float | None              # on the strategy's seed-mean curve; None: not reached
    ratio: float                    # cost_ratio of the two
    lo: float                       # percentile interval over resamples (not reached counts as ratio 0)
    hi: float
    not_reached: float              # share of resamples where only the reference's mean curve reaches the target
    undefined: float                # share of resamples with no ratio (NaN: left out of the interval)


def paired_ratio(ref_x, ref_y, x, y, *, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> PairedRatio:
    """The ratio on seed-aligned curves (row i of every array is seed i; columns are the evaluations) and its paired
    bootstrap: each resample draws seeds with replacement and recomputes target, both mean curves and the ratio."""
    ref_x, ref_y, x, y = (np.asarray(a, float) for a in (ref_x, ref_y, x, y))
    if not (ref_x.shape == ref_y.shape and x.shape == y.shape and ref_x.ndim == 2 and len(ref_x) == len(x) > 0):
        raise ValueError(f"paired_ratio: expected (seeds, evaluations) arrays with the same seeds, got "
                         f"{ref_x.shape}, {ref_y.shape}, {x.shape}, {y.shape}")
    target, ref_cost, cost, ratio = _ratio_of(ref_x, ref_y, x, y)
    ratios = bootstrap(len(x), lambda i: _ratio_of(ref_x[i], ref_y[i], x[i], y[i])[3], resamples, seed)
    lo, hi = percentile_interval(ratios, level)
    return PairedRatio(len(x), target, ref_cost, cost, ratio, lo, hi,
                       not_reached=float(np.mean(ratios == 0)),
                       undefined=float(np.mean(np.isnan(ratios))))


# --- area under the curve -----------------------------------------------------------------------------------------

def mean_accuracy(xs: Sequence[float], ys: Sequence[float], lo: float, hi: float) -> float:
    """Area under the piecewise-linear curve between x = lo and x = hi over (hi − lo): its mean accuracy there (the
    value at lo when the range is empty)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if hi < lo:
        raise ValueError(f"mean_accuracy: empty range [{lo}, {hi}]")
    if hi == lo:
        return float(np.interp(lo, xs, ys))
    grid = np.unique(np.concatenate([[lo, hi], xs[(xs > lo) & (xs < hi)]]))
    vals = np.interp(grid, xs, ys)
    return float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)) / (hi - lo))


def common_range_auc(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[float]:
    """Each curve's mean accuracy over the rollouts range all of them cover (one seed's compared runs)."""
    lo = max(float(x[0]) for x, _ in curves)
    hi = min(float(x[-1]) for x, _ in curves)
    return [mean_accuracy(x, y, lo, max(lo, hi)) for x, y in curves]


def speedup_gain(xs: Sequence[float], ys: Sequence[float], speedup: float) -> float:
    """Mean-accuracy gain, over the curve's own range, of a strategy ``speedup``× as rollout-efficient: its curve is
    y(min(speedup·x, x_end)), holding the final accuracy once it has used the reference's rollouts (conservative: a
    faster strategy that kept climbing would gain more)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    lo, hi = float(xs[0]), float(xs[-1])
    grid = np.unique(np.concatenate([xs, lo + (xs - lo) / speedup]))
    faster = np.interp(np.minimum(lo + (grid - lo) * speedup, hi), xs, ys)
    return mean_accuracy(grid, faster, lo, hi) - mean_accuracy(xs, ys, lo, hi)


def speedup_for_gain(xs: Sequence[float], ys: Sequence[float], gain: float, max_speedup: float = 16.0) -> float:
    """The rollout speed-up whose ``speedup_gain`` equals ``gain`` (bisection; the gain grows with the speed-up on
    a rising curve): 1 when ``gain`` <= 0, inf when even ``max_speedup`` gains less. With ``gain`` the upper end of a
    CI on the AUC difference, speed-ups above the result are excluded at that level."""
    if gain <= 0:
        return 1.0
    if speedup_gain(xs, ys, max_speedup) < gain:
        return float("inf")
    lo, hi = 1.0, max_speedup
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedup_gain(xs, ys, mid) < gain else (lo, mid)
    return (lo + hi) / 2


@dataclass
class PairedDifference:
    """Mean of per-seed differences (strategy − reference) with a Student-t and a bootstrap percentile interval."""

    n: int
    mean: float           # strategy's mean over the paired seeds
    reference: float      # reference's mean over the same seeds
    diff: float
    t_lo: float
    t_hi: float
    boot_lo: float
    boot_hi: float


def paired_difference(values: Sequence[float], reference: Sequence[float], *, resamples: int = RESAMPLES,
                      seed: int = 0, level: float = LEVEL) -> PairedDifference:
    a, b = np.asarray(values, float), np.asarray(reference, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference: expected two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    d = a - b
    t_lo, t_hi = t_interval(d, level)
    boot_lo, boot_hi = percentile_interval(bootstrap(d.size, lambda i: float(d[i].mean()), resamples, seed), level)
    return PairedDifference(d.size, float(a.mean()), float(b.mean()), float(d.mean()), t_lo, t_hi, boot_lo, boot_hi)


# --- the gate and the run's quarters ------------------------------------------------------------------------------

@dataclass
class Gate:
    passed: bool
    gains: list[float]      # last − first held-out accuracy per reference seed
    share: float            # share of seeds whose gain is at least min_gain
    min_gain: float
    min_share: float


def validity_gate(gains: Sequence[float], min_gain: float, min_share: float) -> Gate:
    """Does the reference learn? Its held-out gain ≥ min_gain on at least min_share of the seeds (no seeds: fails)."""
    gains = [float(g) for g in gains]
    share = float(np.mean([g >= min_gain - 1e-12 for g in gains])) if gains else 0.0
    return Gate(bool(gains) and share >= min_share - 1e-12, gains, share, min_gain, min_share)


def by_quarter(steps: Sequence[int], values: Sequence[float | None], total_steps: int) -> list[float | None]:
    """Mean of the values whose step falls in each quarter of a run of total_steps (step s ∈ (q−1, q]·total/4);
    None where a quarter has no value."""
    out: list[list[float]] = [[], [], [], []]
    for s, v in zip(steps, values):
        if v is not None and 0 < s <= total_steps:
            out[min(3, math.ceil(4 * s / total_steps) - 1)].append(float(v))
    return [float(np.mean(q)) if q else None for q in out]
