"""Run records on known inputs: metrics.jsonl rows kept on resume, non-finite values written as null, the summary's
quarter means and before → after accuracy, and peak RSS in MiB."""
import json
import math

import pytest

from prepo.metrics import MetricsLog, peak_rss_mb, summary


def _train(step, reward):
    return {"kind": "train", "step": step, "rollouts": 8 * step, "reward_mean": reward, "time_step": 2.0 * step,
            "peak_rss_mb": 100.0 + step}


def test_summary_quarters_and_accuracy_before_after():
    rows = [_train(s, float(s - 1)) for s in range(1, 9)]                  # rewards 0..7
    rows += [{"kind": "eval", "step": 0, "dataset": "arith", "accuracy": 0.25},
             {"kind": "eval", "step": 4, "dataset": "arith", "accuracy": 0.5},
             {"kind": "eval", "step": 8, "dataset": "arith", "accuracy": 0.75}]
    text = summary(rows, 61.0)
    assert "steps 8, rollouts 64" in text
    assert "0.500 → 6.500" in text                    # first two steps' mean → last two steps' mean
    assert "mean step time 9.0 s, peak RSS 108 MiB" in text
    assert "arith accuracy: 0.250 (step 0) → 0.750 (step 8)" in text
    assert "wall time 61 s" in text


def test_resume_keeps_rows_up_to_the_step_and_nulls_non_finite_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for s in range(1, 5):
        log.write({**_train(s, 0.5), "loss": math.nan if s == 2 else (math.inf if s == 3 else 0.1)})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["loss"] for r in rows] == [0.1, None, None, 0.1]
    again = MetricsLog(path, resume_step=2)
    assert [r["step"] for r in again.rows] == [1, 2]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_peak_rss_is_in_mib():
    try:
        status = open("/proc/self/status").read()
    except OSError:
        pytest.skip("no /proc")
    hwm_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    assert peak_rss_mb() == pytest.approx(hwm_kib / 1024, abs=2.0)
