"""The rollout-efficiency comparison's statistics on inputs with known answers: Student-t quantiles and intervals, the
paired bootstrap of the cost ratio (degenerate, never reached, half reached), paired AUC differences, the gate, and
summary.md's order (gate first) on synthetic runs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.rl import rollout_efficiency as eff
from benchmarks.rl.efficiency_stats import (by_quarter, common_range_auc, cost_ratio, mean_accuracy, paired_difference,
                                         paired_ratio, percentile_interval, t_interval, t_quantile, validity_gate)
from benchmarks.rl.efficiency_summary import RunRecord, build_report, resolve_metrics, summary_markdown

X = np.array([0.0, 100.0, 200.0, 300.0, 400.0])  # cumulative rollouts at each evaluation


@pytest.mark.parametrize("df, value", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423),
                                       (120, 1.9799)])
def test_t_quantile_matches_the_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=1e-4)
    assert t_quantile(0.5, df) == pytest.approx(0.0, abs=1e-9)


def test_t_interval_by_hand():
    lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])  # mean 2.5, sd √(5/3), n 4, t(0.975, 3) = 3.1824
    half = 3.182446 * math.sqrt(5 / 3) / 2
    assert (lo, hi) == (pytest.approx(2.5 - half, abs=1e-5), pytest.approx(2.5 + half, abs=1e-5))
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_percentile_interval_orders_infinities_and_drops_nans():
    samples = [math.nan] * 5 + [0.0] * 10 + list(np.linspace(1, 2, 80)) + [math.inf] * 10
    lo, hi = percentile_interval(samples)
    assert lo == 0.0 and hi == math.inf
    assert percentile_interval([3.0] * 50) == (3.0, 3.0)
    assert all(math.isnan(v) for v in percentile_interval([math.nan]))


def test_cost_ratio_conventions():
    assert cost_ratio(300.0, 150.0) == 2.0
    assert cost_ratio(300.0, None) == 0.0                   # the strategy never gets there: infinite cost
    assert cost_ratio(None, 150.0) == math.inf
    assert math.isnan(cost_ratio(None, None)) and math.isnan(cost_ratio(0.0, 0.0)) and math.isnan(cost_ratio(5, 0))


def _seeds_halfway(n=6, seed=0):
    """A rises linearly by 0.2 over 400 rollouts from a seed-specific start; B twice as fast: on every seed, and so
    on every resample of seeds, B reaches A's mean final accuracy at 200 rollouts, A at 400."""
    start = np.random.default_rng(seed).uniform(0.1, 0.4, n)[:, None]
    a = start + 0.2 * X / 400
    b = start + 0.4 * X / 400
    return np.tile(X, (n, 1)), a, b


def test_paired_ratio_degenerate_when_every_seed_halves_the_cost():
    xs, a, b = _seeds_halfway()
    r = paired_ratio(xs, a, xs, b, resamples=500)
    assert r.n == 6 and r.target == pytest.approx(a[:, -1].mean())
    assert (r.reference_cost, r.cost) == (pytest.approx(400.0), pytest.approx(200.0))
    assert (r.ratio, r.lo, r.hi) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))
    assert r.not_reached == 0 and r.undefined == 0
    # against time, B's steps twice as long as A's: the same seconds to the target, ratio 1
    r = paired_ratio(xs * 0.5, a, xs * 1.0, b, resamples=500)
    assert (r.ratio, r.lo, r.hi) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))


def test_paired_ratio_never_reached():
    xs, a, _ = _seeds_halfway()
    flat = np.tile(a[:, :1], (1, len(X)))  # B never moves off the start
    r = paired_ratio(xs, a, xs, flat, resamples=300)
    assert r.cost is None and r.ratio == 0.0 and (r.lo, r.hi) == (0.0, 0.0) and r.not_reached == 1.0


def test_paired_ratio_reached_on_some_resamples_only():
    """Two seeds: A rises 0.2 → 0.4 on both; B to 0.6 on seed 0 and flat at 0.2 on seed 1. Resamples (0, 0): B's
    mean reaches 0.4 at half the rollouts (ratio 2); (1, 1): never (ratio 0, a quarter of them); mixed: ratio 1."""
    xs = np.tile([0.0, 400.0], (2, 1))
    a = np.array([[0.2, 0.4], [0.2, 0.4]])
    b = np.array([[0.2, 0.6], [0.2, 0.2]])
    r = paired_ratio(xs, a, xs, b, resamples=4000, seed=1)
    assert r.ratio == pytest.approx(1.0) and r.cost == pytest.approx(400.0)
    assert r.not_reached == pytest.approx(0.25, abs=0.03)
    assert r.lo == 0.0 and r.hi == pytest.approx(2.0)
    again = paired_ratio(xs, a, xs, b, resamples=4000, seed=1)
    assert (again.lo, again.hi, again.not_reached) == (r.lo, r.hi, r.not_reached)  # seeded: deterministic


def test_paired_ratio_rejects_unpaired_shapes():
    xs, a, b = _seeds_halfway()
    with pytest.raises(ValueError, match="same seeds"):
        paired_ratio(xs, a, xs[:3], b[:3])


def test_mean_accuracy_and_common_range():
    assert mean_accuracy([0, 100], [0.0, 1.0], 0, 100) == pytest.approx(0.5)
    assert mean_accuracy([0, 100, 200], [0.0, 1.0, 1.0], 0, 200) == pytest.approx(0.75)
    assert mean_accuracy([0, 100], [0.0, 1.0], 25, 75) == pytest.approx(0.5)   # the range cuts between evaluations
    assert mean_accuracy([0, 100], [0.2, 0.6], 50, 50) == pytest.approx(0.4)
    # two runs of one seed: the common range is [0, 100] (the shorter run's end)
    assert common_range_auc([([0, 100, 200], [0.0, 1.0, 0.0]), ([0, 50, 100], [0.4, 0.4, 0.4])]) == [
        pytest.approx(0.5), pytest.approx(0.4)]


def test_paired_difference_known_mean_excludes_zero():
    """Seeds differ a lot (the reference from 0.1 to 0.7) but the strategy is 0.1 ± 0.02 above it on each: the paired
    interval is tight around 0.1 and excludes 0, where the unpaired spread would not."""
    ref = np.array([0.1, 0.3, 0.5, 0.7, 0.2])
    diffs = np.array([0.10, 0.12, 0.08, 0.11, 0.09])
    d = paired_difference(ref + diffs, ref, resamples=3000)
    half = 2.776445 * math.sqrt(0.001 / 4) / math.sqrt(5)  # sd² = Σ(d − 0.1)² / 4 = 0.001 / 4
    assert (d.n, d.diff, d.mean, d.reference) == (5, pytest.approx(0.1), pytest.approx(0.46), pytest.approx(0.36))
    assert (d.t_lo, d.t_hi) == (pytest.approx(0.1 - half, abs=1e-6), pytest.approx(0.1 + half, abs=1e-6))
    assert 0 < d.boot_lo < 0.1 < d.boot_hi and d.boot_lo >= 0.08 and d.boot_hi <= 0.12
    same = paired_difference(ref, ref)
    assert (same.diff, same.t_lo, same.t_hi, same.boot_lo, same.boot_hi) == (0, 0, 0, 0, 0)
    one = paired_difference([0.5], [0.3])
    assert one.diff == pytest.approx(0.2) and math.isnan(one.t_lo)


def test_validity_gate():
    start = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    end = np.array([0.4, 0.36, 0.35, 0.5, 0.3])  # 0.35 − 0.2 rounds below 0.15 in floating point: still counts
    g = validity_gate(end - start, 0.15, 0.8)
    assert g.passed and g.share == pytest.approx(0.8)
    g = validity_gate([0.2, 0.1, 0.1, 0.3], 0.15, 0.8)
    assert not g.passed and g.share == pytest.approx(0.5)
    assert not validity_gate([], 0.15, 0.8).passed


def test_by_quarter():
    steps = list(range(1, 9))
    assert by_quarter(steps, [1, 3, 5, 7, 9, 11, 13, 15], 8) == [2, 6, 10, 14]
    assert by_quarter(steps, [None, None, 1, 1, 2, None, 4, 4], 8) == [None, 1, 2, 4]
    assert by_quarter([1, 2, 3], [1.0, 2.0, 3.0], 3) == [None, 1.0, 2.0, 3.0]  # (0, 0.75], (0.75, 1.5], …


# --- the report -----------------------------------------------------------------------------------------------------

def _run(variant, seed, ys, step_seconds, greedy=None):
    """A complete run with one evaluation every 2 steps at the rollouts of X (50 rollouts a step)."""
    rows = [{"kind": "eval", "step": 2 * i, "rollouts": x, "dataset": "d", "accuracy": y, "k": 8, "n": 500,
             "time_eval": 1.0, **({"greedy_accuracy": greedy[i]} if greedy is not None else {})}
            for i, (x, y) in enumerate(zip(X, ys))]
    rows += [{"kind": "train", "step": s, "rollouts": 50 * s, "time_step": step_seconds,
              "zero_variance_frac": 0.5 if s <= 4 else 0.25, "ppl_window_lo": float(s), "ppl_window_hi": s + 1.0}
             for s in range(1, 9)]
    return RunRecord(variant, seed, rows, True, 8)


def _runs(with_greedy=False):
    _, a, b = _seeds_halfway(4)
    runs = []
    for s in range(4):
        g = (lambda y: list(y - 0.05)) if with_greedy else (lambda y: None)
        runs += [_run("random", s, a[s], 1.0, g(a[s])), _run("prepo", s, b[s], 2.0, g(b[s])),
                 _run("ppl", s, a[s] + 0.01 * (s % 2), 1.5, g(a[s]))]
    return runs


def test_report_paired_rows_and_summary_order():
    report = build_report(_runs(), {"prepo": 4, "ppl": 4, "random": 4}, "random", "d", 500, metric="avg@k",
                          temperature=1.0, resamples=400)
    c = report.comparisons[0]
    assert c.metric.label == "avg@8 at temperature 1" and c.gate.passed and c.gate.gains == pytest.approx([0.2] * 4)
    by = {row.variant: row for row in c.rows}
    assert set(by) == {"prepo", "ppl"} and by["prepo"].seeds == [0, 1, 2, 3]
    assert (by["prepo"].rollouts.ratio, by["prepo"].rollouts.lo, by["prepo"].rollouts.hi) == pytest.approx((2, 2, 2))
    assert by["prepo"].seconds.ratio == pytest.approx(1.0)  # half the rollouts at twice the seconds a step
    # AUC over [0, 400]: a rises by 0.2 (mean +0.1 over the range), b by 0.4 (+0.2): prepo − random = 0.1 exactly
    assert by["prepo"].auc.diff == pytest.approx(0.1) and by["prepo"].auc.t_lo == pytest.approx(0.1)
    assert by["ppl"].auc.diff == pytest.approx(0.005)
    assert report.quarters["zero_variance_frac"]["prepo"] == ([0.5, 0.5, 0.25, 0.25], 4)
    assert report.quarters["ppl_window_lo"]["random"] == ([1.5, 3.5, 5.5, 7.5], 4)
    text = summary_markdown(report, name="t", command="cmd", run_status=[])
    assert text.index("**PASSED**") < text.index("| strategy |")  # the gate before any comparison
    assert "on 4 of 4 (100%)" in text and "s0 +0.200" in text
    assert "| prepo | 4 | " in text and "2.00× [2.00× – 2.00×]" in text
    assert "| both: window + entropy weights | prepo | 4 | +0.100 [+0.100, +0.100] |" in text
    assert "| window alone | ppl |" in text and "| weights alone" not in text
    assert "Not in this benchmark: `entropy` (weights alone: random choice + entropy weights)." in text
    assert "the train rows have no `ppl_selected_mean`" in text
    assert "Secondary metric" not in text


def test_report_gate_fails_and_secondary_metric():
    runs = _runs(with_greedy=True)
    for r in runs:  # the reference gains 0.2 on seeds 0-1 only
        if r.variant == "random" and r.seed >= 2:
            for row in r.rows:
                if row["kind"] == "eval":
                    row["accuracy"] = row["greedy_accuracy"] = 0.3
    report = build_report(runs, {"prepo": 4, "ppl": 4, "random": 4}, "random", "d", 500, metric="avg@k",
                          temperature=1.0, resamples=200)
    assert [m.name for m in (c.metric for c in report.comparisons)] == ["avg@k", "greedy"]
    assert report.comparisons[1].metric.key == "greedy_accuracy"
    text = summary_markdown(report, name="t", command="cmd", run_status=[])
    assert "**FAILED**" in text and "on 2 of 4 (50%)" in text
    assert "## Secondary metric: greedy accuracy" in text and "| prepo | 4 |" in text.split("## Secondary")[1]
    assert "greedy accuracy (not the gate): gain ≥ 0.150 on 2 of 4 seeds (50%), would fail" in text
    greedy = build_report(runs, {"prepo": 4, "random": 4}, "random", "d", metric="greedy", temperature=1.0,
                          resamples=50)
    assert greedy.comparisons[0].metric.key == "greedy_accuracy" and greedy.comparisons[1].metric.key == "accuracy"


def test_resolve_metrics():
    plain = _runs()
    assert [(m.name, m.key) for m in resolve_metrics("avg@k", 1.0, plain)] == [("avg@k", "accuracy")]
    at_zero = resolve_metrics("greedy", 0.0, plain)  # at temperature 0, avg@k is greedy accuracy
    assert [(m.key, m.label) for m in at_zero] == [("accuracy", "avg@8 at temperature 0 (greedy)")]
    assert resolve_metrics("pass@k", 1.0, plain)[0].key == "pass_at_k"
    with pytest.raises(ValueError, match="metric"):
        resolve_metrics("best", 1.0, plain)


@pytest.mark.parametrize("extra, match", [("metric: best\n", "metric"), ("gate_min_gain: high\n", "gate_min_gain"),
                                          ("gate_min_share: 1.5\n", "gate_min_share")])
def test_bad_report_keys(tmp_path, extra, match):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\n" + extra)
    with pytest.raises(eff.BenchmarkConfigError, match=match):
        eff.load_efficiency_config(path)


def test_report_keys_reach_the_config(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nmetric: greedy\ngate_min_gain: 0.1\n")
    cfg = eff.load_efficiency_config(path)
    assert (cfg.metric, cfg.gate_min_gain, cfg.gate_min_share) == ("greedy", 0.1, 0.8)


def test_speedup_power_bound_on_a_linear_curve():
    """y = x / X on [0, X]: a k× faster strategy's curve is min(kx/X, 1), mean 1 − 1/(2k) against 1/2, a gain of
    (k − 1)/(2k): 0.25 at k = 2, 1/3 at k = 3."""
    from benchmarks.rl.efficiency_stats import speedup_for_gain, speedup_gain

    xs, ys = [0.0, 500.0, 1000.0], [0.0, 0.5, 1.0]
    assert speedup_gain(xs, ys, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert speedup_gain(xs, ys, 2.0) == pytest.approx(0.25)
    assert speedup_gain(xs, ys, 3.0) == pytest.approx(1 / 3)
    assert speedup_for_gain(xs, ys, 0.25) == pytest.approx(2.0, rel=1e-6)
    assert speedup_for_gain(xs, ys, -0.01) == 1.0
    assert speedup_for_gain(xs, ys, 0.49) == float("inf")  # beyond a 16x speed-up's gain (15/32)


def test_percentile_interval_and_bootstrap_on_a_known_sample():
    """Order statistics of a known sample (any order in), and the bootstrap's interval for the mean of 100 fair coin
    flips: the normal approximation gives 0.5 ± 1.96 · 0.05."""
    from benchmarks.rl.efficiency_stats import bootstrap

    sample = np.random.default_rng(3).permutation(201).astype(float)  # 0, 1, ..., 200 shuffled
    assert percentile_interval(sample, 0.90) == (10.0, 190.0)
    assert percentile_interval(sample, 0.95) == (5.0, 195.0)
    assert percentile_interval(sample, 0.5) == (50.0, 150.0)
    assert percentile_interval([4.0, 1.0, 3.0, 2.0], 0.0) == (2.0, 3.0)
    flips = np.array([0.0, 1.0] * 50)
    means = bootstrap(len(flips), lambda idx: float(flips[idx].mean()), resamples=4000, seed=11)
    assert means.shape == (4000,) and abs(means.mean() - 0.5) < 0.005 and abs(means.std() - 0.05) < 0.004
    lo, hi = percentile_interval(means)
    assert abs(lo - (0.5 - 1.96 * 0.05)) < 0.015 and abs(hi - (0.5 + 1.96 * 0.05)) < 0.015
    assert np.array_equal(means, bootstrap(len(flips), lambda idx: float(flips[idx].mean()), resamples=4000, seed=11))


def test_cost_to_reach_takes_the_first_evaluation_at_the_target():
    from benchmarks.rl.efficiency_stats import rollouts_to_reach

    assert rollouts_to_reach([0, 100, 200, 300], [0.1, 0.4, 0.4, 0.6], 0.4) == 100.0   # reached exactly, then flat
    assert rollouts_to_reach([0, 100, 200], [0.4, 0.5, 0.6], 0.4) == 0.0
    assert rollouts_to_reach([0, 100, 200], [0.1, 0.2, 0.3], 0.4) is None


def test_common_range_is_where_every_curve_has_evaluations():
    a = ([0.0, 100.0, 200.0], [0.0, 0.5, 1.0])
    b = ([50.0, 150.0, 250.0], [0.2, 0.2, 0.2])
    auc_a, auc_b = common_range_auc([a, b])                 # both over [50, 200]
    assert auc_a == pytest.approx((0.25 + 1.0) / 2) and auc_b == pytest.approx(0.2)


def test_paired_ratio_counts_undefined_resamples():
    """Seed 1's reference never moves: a resample of it alone has its target at the start (cost 0, ratio undefined,
    a quarter of resamples); every other resample is not reached by a flat strategy (ratio 0)."""
    xs = np.tile([0.0, 100.0], (2, 1))
    ref = np.array([[0.0, 1.0], [0.0, 0.0]])
    flat = np.zeros((2, 2))
    r = paired_ratio(xs, ref, xs, flat, resamples=4000, seed=3)
    assert r.ratio == 0.0 and r.cost is None and r.reference_cost == pytest.approx(100.0)
    assert r.undefined == pytest.approx(0.25, abs=0.03) and r.not_reached == pytest.approx(0.75, abs=0.03)
    assert r.undefined + r.not_reached == pytest.approx(1.0)
    assert (r.lo, r.hi) == (0.0, 0.0)
