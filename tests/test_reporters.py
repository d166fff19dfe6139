"""run.report_to: metrics rows reach TensorBoard and W&B (offline) through one interface, beside metrics.jsonl."""
from __future__ import annotations

import importlib.util
import json

import pytest

from prepo.config import ConfigError, load_config
from prepo.metrics import MetricsLog
from prepo.reporters import check_installed, make_reporters, scalars

ROWS = [{"kind": "eval", "step": 0, "rollouts": 0, "dataset": "arith", "accuracy": 0.25, "n": 8},
        {"kind": "train", "step": 1, "rollouts": 64, "reward_mean": 0.5, "loss": None, "greso_p_easy": 0.4,
         "ok": True},
        {"kind": "train", "step": 2, "rollouts": 128, "reward_mean": 0.75, "loss": -0.1}]


def test_rows_become_tagged_scalars():
    assert scalars(ROWS[0]) == (0, {"eval/arith/rollouts": 0.0, "eval/arith/accuracy": 0.25, "eval/arith/n": 8.0})
    assert scalars(ROWS[1]) == (1, {"train/rollouts": 64.0, "train/reward_mean": 0.5, "train/greso_p_easy": 0.4})


def test_report_to_is_checked_with_the_config(monkeypatch):
    assert load_config().run.report_to == []
    assert load_config(None, ["run.report_to=[tensorboard, wandb]"]).run.report_to == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"^run\.report_to: unknown \['mlflow'\]; known: \['tensorboard', 'wandb'\]"):
        load_config(None, ["run.report_to=tensorboard,mlflow"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r'^run\.report_to: wandb needs the wandb package: pip install "prepo\[report\]"'):
        check_installed(["tensorboard", "wandb"])


def _log(tmp_path, names):
    log = MetricsLog(tmp_path / "metrics.jsonl", reporters=make_reporters(names, tmp_path, "t", {"run": {"seed": 1}}))
    for row in ROWS:
        log.write(row)
    log.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == ROWS


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_event_files_hold_the_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/reward_mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("eval/arith/accuracy")] == [(0, 0.25)]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_runs_offline_and_records_the_rows(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    [reporter] = make_reporters(["wandb"], tmp_path, "t", {"run": {"seed": 1}})
    assert os.environ["WANDB_MODE"] == "offline" and reporter.run.settings.mode == "offline"
    for row in ROWS:
        reporter.log(row)
    assert reporter.run.config["run"] == {"seed": 1}
    # a step's values are committed when a later step arrives (the last one at close)
    assert reporter.run.summary["train/reward_mean"] == 0.5 and reporter.run.summary["eval/arith/accuracy"] == 0.25
    reporter.close()
    [record] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` uploads later
    assert record.stat().st_size > 0
