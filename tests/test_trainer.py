"""End to end on a tiny random Llama saved to a folder: `prepo train` runs, logs, plots, checkpoints and resumes exactly.

The reward is swapped for a deterministic function of the completion text so a random model gets reward variance.
"""
import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

import prepo.rewards
import prepo.trainer
import prepo.step
from prepo import cli
from prepo.checkpoint import list_checkpoints
from prepo.metrics import TRAIN_FIELDS
from prepo.selection import Group
from prepo.step import build_samples, group_advantage_table, reward_groups, step_seed
from tiny_lm import one_thread, save_model_folder  # noqa: F401 (autouse; run.threads=1 too)

# fields that depend on wall time or memory, not on the computation
_TIMING = {"time_select", "time_generate", "time_reward", "time_update", "time_step", "peak_rss_mb", "time_eval"}


def _fake_scores(examples, completions, *, timeout=5.0):
    return [float(len(text) % 2 == 0) for text in completions]


@pytest.fixture
def tiny_model_dir(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("tiny-model"))


def _overrides(model_dir, strategy="ppl"):
    return [f"model.name_or_path={model_dir}", "data.train=arith", "data.train_size=40", "data.eval_size=4",
            "data.tiers=[add1, sub1]", "data.system_prompt=Answer with a single number.",
            f"selection.strategy={strategy}", "selection.num_candidates=5", "selection.k=2",
            "rollout.group_size=4", "rollout.max_new_tokens=5", "rollout.temperature=1.0",
            "algorithm.weighting=entropy", "optim.lr=1e-3", "optim.micro_batch_tokens=128",
            "eval.max_new_tokens=4", "run.progress=false", "run.threads=1", f"run.seed={random.randrange(1000)}"]


def _rows(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _same_row(a, b):
    keys = set(a) - _TIMING
    assert keys == set(b) - _TIMING
    for key in keys:
        assert a[key] == b[key], (key, a[key], b[key])


def test_train_logs_checkpoints_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    base = _overrides(tiny_model_dir)

    # uninterrupted: 3 steps, a checkpoint after each
    full = tmp_path / "full"
    assert cli.run_train(["--output-dir", str(full), "--max-steps", "3", *base,
                           "run.save_every=1", "run.keep_checkpoints=0"]) == 0
    train = _rows(full, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert set(TRAIN_FIELDS) <= set(r)
        for key in ("reward_mean", "accuracy", "entropy_mean", "weight_min", "weight_max", "ppl_window_lo",
                    "ppl_window_hi", "time_select", "time_generate", "time_update", "peak_rss_mb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r[key])
        assert r["rollouts_step"] == 2 * 4 and r["prompts"] == 2
        assert r["weight_min"] <= 1.0 <= r["weight_max"]
        assert r["ppl_window_lo"] <= r["ppl_window_hi"]
    assert [r["rollouts"] for r in train] == [8, 16, 24]
    evals = _rows(full, "eval")
    assert [r["step"] for r in evals] == [0, 3] and all(0.0 <= r["accuracy"] <= 1.0 for r in evals)
    assert (full / "curves.png").stat().st_size > 1000
    assert (full / "config.yaml").is_file()
    assert [p.name for p in list_checkpoints(full)] == ["step-000001", "step-000002", "step-000003"]
    w1 = load_file(str(full / "checkpoints" / "step-000001" / "model.safetensors"))
    w3 = load_file(str(full / "checkpoints" / "step-000003" / "model.safetensors"))
    assert any(not torch.equal(w1[k], w3[k]) for k in w1), "training did not change the weights"

    # interrupted by Ctrl-C during step 3: the checkpoint is the state after step 2
    calls = {"n": 0}
    real_roll_out = prepo.step.roll_out

    def interrupting_roll_out(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_roll_out(*args, **kwargs)

    cut = tmp_path / "cut"
    monkeypatch.setattr(prepo.step, "roll_out", interrupting_roll_out)
    assert cli.run_train(["--output-dir", str(cut), "--max-steps", "3", *base]) == 130
    assert [p.name for p in list_checkpoints(cut)] == ["step-000002"]
    assert [r["step"] for r in _rows(cut, "train")] == [1, 2]
    for a, b in zip(_rows(full, "train")[:2], _rows(cut, "train")):
        _same_row(a, b)

    # resume: step 3 equals the uninterrupted run's step 3, metrics and weights alike
    monkeypatch.setattr(prepo.step, "roll_out", real_roll_out)
    assert cli.run_train(["--resume", str(cut)]) == 0
    resumed = _rows(cut, "train")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    _same_row(resumed[2], train[2])
    w_resumed = load_file(str(cut / "checkpoints" / "step-000003" / "model.safetensors"))
    assert w_resumed.keys() == w3.keys()
    for k in w3:
        assert torch.equal(w_resumed[k], w3[k]), k
    state_full = torch.load(full / "checkpoints" / "step-000003" / "state.pt", weights_only=True)
    state_cut = torch.load(cut / "checkpoints" / "step-000003" / "state.pt", weights_only=True)
    assert state_full["sampler"] == state_cut["sampler"] and state_full["rollouts"] == state_cut["rollouts"] == 24


@pytest.mark.parametrize("strategy", ["dynamic", "greso", "random", "all"])
def test_baseline_strategies_run(tiny_model_dir, tmp_path, monkeypatch, strategy):
    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    out = tmp_path / strategy
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "2", *_overrides(tiny_model_dir, strategy),
                           "eval.before=false", "data.eval_size=0", "selection.max_rounds=2"]) == 0
    rows = _rows(out, "train")
    assert len(rows) == 2 and rows[-1]["rollouts"] == sum(r["rollouts_step"] for r in rows)
    for r in rows:
        assert r["ppl_window_lo"] is None  # no perplexity window outside `ppl`
        assert r["rollouts_step"] == r["discarded_step"] + 4 * r["prompts"]
        if strategy == "all":
            assert r["prompts"] == 5
        elif strategy == "random":
            assert r["prompts"] == 2


def test_stage_functions_by_hand():
    class R:
        def __init__(self, ids, text):
            self.completion_ids, self.text = ids, text

    class P:
        def __init__(self, ids):
            self.input_ids = ids

    from prepo.tasks.example import Example

    examples = [Example("a", "What is 1 + 1?", "2"), Example("b", "What is 2 + 2?", "4")]
    rollouts = [[R([5, 6], "2"), R([7], "3")], [R([8], "4"), R([9, 9], "four")]]
    groups = reward_groups(examples, [0, 1], rollouts)
    assert [g.rewards for g in groups] == [[1.0, 0.0], [1.0, 0.0]]
    adv = group_advantage_table(groups, normalize_std=False)
    assert adv.tolist() == [[0.5, -0.5], [0.5, -0.5]]
    samples = build_samples(groups, [P([1, 2, 3]), P([4])], adv)
    assert [s.seq.input_ids for s in samples] == [[1, 2, 3, 5, 6], [1, 2, 3, 7], [4, 8], [4, 9, 9]]
    assert [s.seq.score_mask for s in samples][0] == [0, 0, 0, 1, 1]
    assert [s.advantage for s in samples] == [0.5, -0.5, 0.5, -0.5]
    with pytest.raises(ValueError, match="different sizes"):
        group_advantage_table([Group(0, [1], [1.0]), Group(1, [1, 2], [1.0, 0.0])], True)
    assert step_seed(3, 4, 0) == step_seed(3, 4, 0) != step_seed(3, 4, 1)


def test_failing_reward_names_the_prompt(monkeypatch):
    import prepo.rewards as rewards

    def boom(completion, answer):
        raise ZeroDivisionError("bad parse")

    monkeypatch.setitem(rewards.REWARDS, "numeric", boom)
    from prepo.tasks.example import Example

    class R:
        completion_ids, text = [1], "7"

    with pytest.raises(rewards.RewardError, match="arith-x-7"):
        reward_groups([Example("arith-x-7", "What is 3 + 4?", "7")], [0], [[R()]])


def test_signal_during_update_finishes_the_step_then_saves(tiny_model_dir, tmp_path, monkeypatch):
    import os
    import signal

    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    real_update = prepo.step.policy_update
    calls = {"n": 0}

    def update_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-update: deferred to the end of step 2
        return real_update(*args, **kwargs)

    monkeypatch.setattr(prepo.step, "policy_update", update_then_signal)
    handler_before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "sig"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "4", *_overrides(tiny_model_dir),
                           "eval.before=false", "data.eval_size=0"]) == 130
    assert [r["step"] for r in _rows(out, "train")] == [1, 2]
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the trainer's handlers are gone again


# --- issue #13: a run never loses work ------------------------------------------------------------------------------

def _scores_drawing_global_rng(examples, completions, *, timeout=5.0):
    """_fake_scores that also draws from the global python, numpy and torch RNGs (as a user's reward function or an
    unseeded engine may), so the saved RNG states differ from freshly seeded ones and restoring them matters."""
    import numpy as np

    random.random(), np.random.rand(), torch.rand(1)
    return _fake_scores(examples, completions)


@pytest.mark.parametrize("strategy", ["greso", "random"])
def test_resume_restores_strategy_and_global_rng_states(tiny_model_dir, tmp_path, monkeypatch, strategy):
    import numpy as np

    from prepo.checkpoint import rng_state
    from prepo.config import load_config
    from prepo.trainer import Trainer

    monkeypatch.setattr(prepo.rewards, "score_rollouts", _scores_drawing_global_rng)
    base = [*_overrides(tiny_model_dir, strategy), "eval.before=false", "data.eval_size=0", "selection.max_rounds=2",
            "run.save_every=1", "run.keep_checkpoints=0"]
    full = tmp_path / "full"
    assert cli.run_train(["--output-dir", str(full), "--max-steps", "3", *base]) == 0
    ckpt = full / "checkpoints" / "step-000001"
    saved = torch.load(ckpt / "state.pt", weights_only=True)

    trainer = Trainer(load_config(full / "config.yaml"), tmp_path / "resumed", resume_from=ckpt)
    now = rng_state()
    version, internal, gauss = saved["rng"]["python"]
    assert now["python"] == (version, tuple(internal), gauss)
    assert torch.equal(now["numpy"]["keys"], saved["rng"]["numpy"]["keys"])
    assert now["numpy"]["pos"] == saved["rng"]["numpy"]["pos"]
    assert torch.equal(now["torch"], saved["rng"]["torch"])
    assert trainer.strategy.state_dict() == saved["strategy"]
    assert trainer.sampler.state_dict() == saved["sampler"]
    assert not np.array_equal(saved["rng"]["numpy"]["keys"].numpy(), np.random.RandomState(0).get_state()[1])

    trainer.train()
    resumed, original = _rows(tmp_path / "resumed", "train"), _rows(full, "train")
    assert [r["step"] for r in resumed] == [2, 3]
    for a, b in zip(resumed, original[1:]):
        _same_row(a, b)
    w_full = load_file(str(full / "checkpoints" / "step-000003" / "model.safetensors"))
    w_resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000003" / "model.safetensors"))
    assert all(torch.equal(w_resumed[k], w_full[k]) for k in w_full)


def test_sigterm_during_periodic_eval_is_redone_on_resume(tiny_model_dir, tmp_path, monkeypatch):
    import os
    import signal

    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    real_eval = prepo.trainer.Trainer._evaluate_main
    calls = {"n": 0}

    def eval_then_sigterm(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the periodic evaluation after step 1 (the first is the starting policy's)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_eval(self)

    monkeypatch.setattr(prepo.trainer.Trainer, "_evaluate_main", eval_then_sigterm)
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--max-steps", "3", *_overrides(tiny_model_dir), "eval.every=1"]
    assert cli.run_train(args) == 130
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    assert [r["step"] for r in _rows(out, "eval")] == [0]
    monkeypatch.setattr(prepo.trainer.Trainer, "_evaluate_main", real_eval)
    assert cli.run_train(["--resume", str(out)]) == 0
    assert [r["step"] for r in _rows(out, "eval")] == [0, 1, 2, 3]
    assert [r["step"] for r in _rows(out, "train")] == [1, 2, 3]
    # resuming a finished run evaluates nothing again
    assert cli.run_train(["--resume", str(out)]) == 0
    assert [r["step"] for r in _rows(out, "eval")] == [0, 1, 2, 3]


def test_an_error_during_training_saves_the_last_completed_step(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from prepo.rewards import RewardError

    calls = {"n": 0}

    def failing_scores(examples, completions, *, timeout=5.0):
        calls["n"] += 1
        if calls["n"] == 5:  # step 3's first group (K = 2 groups a step)
            raise RewardError(examples[0].id, "numeric verifier raised ValueError: boom")
        return _fake_scores(examples, completions)

    monkeypatch.setattr(prepo.rewards, "score_rollouts", failing_scores)
    out = tmp_path / "run"
    base = [*_overrides(tiny_model_dir), "eval.before=false", "data.eval_size=0"]
    with pytest.raises(RewardError) as err:
        cli.run_train(["--output-dir", str(out), "--max-steps", "4", *base])
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    note = f"saved {out / 'checkpoints' / 'step-000002'} (the last completed step, 2)"
    assert note in capsys.readouterr().err and any(note in n for n in err.value.__notes__)
    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    assert cli.run_train(["--resume", str(out)]) == 0
    assert [r["step"] for r in _rows(out, "train")] == [1, 2, 3, 4]

    # after the optimizer step the weights belong to no step: nothing is saved, and that is said
    real_update = prepo.step.policy_update

    def update_then_fail(*args, **kwargs):
        real_update(*args, **kwargs)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prepo.step, "policy_update", update_then_fail)
    out2 = tmp_path / "run2"
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.run_train(["--output-dir", str(out2), "--max-steps", "2", *base])
    assert list_checkpoints(out2) == []
    assert "no checkpoint saved: the error came after step 1's optimizer step" in capsys.readouterr().err


def test_summary_step_time_includes_reward_time():
    from prepo.metrics import summary

    row = {"kind": "train", "step": 1, "rollouts": 8, "reward_mean": 0.5, "peak_rss_mb": 100.0, "time_select": 0.0,
           "time_generate": 0.0, "time_reward": 10.4, "time_update": 0.0, "time_step": 10.4}
    assert "mean step time 10.4 s" in summary([row, {**row, "step": 2}])


# --- behaviours a planted one-line bug once slipped past (issue #18) -----------------------------------------------

def test_warmup_starts_above_zero_and_reaches_lr():
    from types import SimpleNamespace

    from prepo.step import learning_rate

    optim = SimpleNamespace(lr=2e-3, warmup_steps=4)
    assert [learning_rate(optim, s) for s in range(7)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3, 2e-3])
    assert learning_rate(SimpleNamespace(lr=2e-3, warmup_steps=0), 0) == 2e-3
    assert learning_rate(SimpleNamespace(lr=2e-3, warmup_steps=1), 0) == 2e-3


def _stub_trainer(tmp_path, monkeypatch, overrides):
    """A Trainer whose steps, evaluations and saves only record the step they happen at (no model)."""
    from prepo.config import load_config
    from prepo.distributed import Dist
    from prepo.metrics import MetricsLog

    t = prepo.trainer.Trainer.__new__(prepo.trainer.Trainer)
    t.cfg, t.run_dir, t.dist = load_config(None, ["run.progress=false", *overrides]), tmp_path, Dist()
    t.step, t.rollouts, t._evaluated_step, t._stop_requested, t._snapshot = 0, 0, -1, False, {}
    t.log = MetricsLog(tmp_path / "metrics.jsonl")
    events = []

    def train_step():
        t.step += 1
        events.append(("train", t.step))
        return {"reward_mean": 0.5, "rollouts": t.step, "time_step": 0.0}

    monkeypatch.setattr(t, "train_step", train_step)
    monkeypatch.setattr(t, "evaluate", lambda: events.append(("eval", t.step)) or [])
    monkeypatch.setattr(t, "save", lambda: events.append(("save", t.step)))
    monkeypatch.setattr(prepo.trainer, "plot_curves", lambda rows, path: None)
    monkeypatch.setattr(prepo.trainer, "summary", lambda rows, seconds=None: "")
    return t, events


@pytest.mark.parametrize("every, before, evals", [(3, True, [0, 3, 6, 9, 10]), (3, False, [3, 6, 9, 10]),
                                                  (0, True, [0, 10]), (5, True, [0, 5, 10]), (1, False, list(range(1, 11)))])
def test_periodic_evaluation_schedule(tmp_path, monkeypatch, every, before, evals):
    t, events = _stub_trainer(tmp_path, monkeypatch, ["run.steps=10", f"eval.every={every}", f"eval.before={before}",
                                                      "run.save_every=4"])
    result = t.train()
    assert result.steps_done == 10 and not result.interrupted
    assert [s for kind, s in events if kind == "eval"] == evals
    assert [s for kind, s in events if kind == "train"] == list(range(1, 11))
    assert [s for kind, s in events if kind == "save"] == [4, 8, 10]
    # each evaluation comes after the step it is named by, before the next one
    for kind, s in events:
        if kind == "eval" and s > 0:
            assert events.index((kind, s)) == events.index(("train", s)) + 1


def test_train_row_known_answers():
    """The metrics row of a step from a hand-made Collected and update: generated vs trained rewards, accuracy
    (reward >= 1), zero-variance share of the trained groups, lengths, the weights of the rollouts in the update."""
    from types import SimpleNamespace

    from prepo.selection import Collected

    def group(i, rewards, length):
        return Group(i, [SimpleNamespace(completion_ids=[0] * length)] * len(rewards), rewards)

    kept = [group(3, [1.0, 0.5, 0.0, 1.0], 2), group(8, [1.0, 1.0, 1.0, 1.0], 4)]
    dropped = group(5, [0.0, 0.0, 0.0, 0.0], 9)
    collected = Collected(kept, [kept[0], dropped, kept[1]], rounds=2, info={"rho": 0.25, "greso_skipped": 3},
                          time_select=1.0, time_generate=2.0, time_reward=0.5)
    stats = SimpleNamespace(loss=0.5, grad_norm=2.0, entropy_mean=1.5, weights=torch.tensor([0.5, 1.5, 1.0, 1.0,
                            3.0, 0.25, 1.0, 1.0]), active=[0, 1, 2, 3, 4], kl_mean=0.01, clip_frac=0.1, tokens=40,
                            optimizer_steps=1, clipped_steps=1)
    row = prepo.step.metrics_row(5, 100, collected, stats, lr=1e-3, time_update=0.5, time_step=4.0)
    expected = {"step": 5, "rollouts": 100, "rollouts_step": 12, "discarded_step": 4, "rounds": 2, "prompts": 2,
                "reward_mean": 6.5 / 12, "accuracy": 6 / 12, "reward_trained_mean": 6.5 / 8,
                "zero_variance_frac": 0.5, "completion_len_mean": (4 * 2 + 4 * 9 + 4 * 4) / 12, "entropy_mean": 1.5,
                "rollouts_in_update": 5, "weight_min": 0.5, "weight_max": 3.0, "loss": 0.5, "grad_norm": 2.0,
                "kl_mean": 0.01, "clip_frac": 0.1, "lr": 1e-3, "tokens": 40, "greso_skipped": 3,
                "time_update": 0.5, "time_step": 4.0}
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    assert row["ppl_window_lo"] is None and row["kind"] == "train"


@pytest.mark.parametrize("evaluated, evals", [(3, [6, 9, 10]), (2, [3, 6, 9, 10])])
def test_resumed_run_redoes_only_an_evaluation_cut_short(tmp_path, monkeypatch, evaluated, evals):
    """Resumed at step 3 (an eval.every=3 point): its evaluation is not repeated when the checkpoint says it was
    done, and is redone first when an interruption cut it short."""
    t, events = _stub_trainer(tmp_path, monkeypatch, ["run.steps=10", "eval.every=3", "run.save_every=0"])
    t.step, t._evaluated_step = 3, evaluated
    t.train()
    assert [s for kind, s in events if kind == "eval"] == evals
    assert [s for kind, s in events if kind == "train"] == list(range(4, 11))


# --- issue #19: a step that reads like the method -------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["ppl", "dynamic"])
def test_a_step_runs_the_stages_in_the_methods_order(tiny_model_dir, tmp_path, monkeypatch, strategy):
    """choose → roll out → reward per round (dynamic: until K kept), then the hold on interruptions, advantages,
    samples and the update; the metrics row is the one the step returns, written once."""
    from prepo.config import load_config

    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    order = []
    for name in ("choose", "roll_out", "reward", "group_advantage_table", "build_samples", "update_policy"):
        def recorded(*args, _real=getattr(prepo.step, name), _name=name, **kwargs):
            order.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(prepo.step, name, recorded)
    real_hold = prepo.trainer.HeldInterrupts.hold
    monkeypatch.setattr(prepo.trainer.HeldInterrupts, "hold", lambda self: order.append("hold") or real_hold(self))
    config = load_config(None, [*_overrides(tiny_model_dir, strategy), "selection.max_rounds=3", "eval.before=false",
                                "data.eval_size=0", "run.steps=1"])
    trainer = prepo.trainer.Trainer(config, tmp_path / "run")
    row = trainer.train_step()
    rounds = row["rounds"]
    assert order == ["choose", "roll_out", "reward"] * rounds + (
        ["hold", "group_advantage_table", "build_samples", "update_policy"] if row["prompts"] else ["hold"])
    assert (strategy == "ppl") == (rounds == 1 and row["ppl_window_lo"] is not None)
    assert trainer.step == 1 and trainer.rollouts == row["rollouts"] == row["rollouts_step"]
    assert trainer.log.rows == [row] and trainer._snapshot["step"] == 1
    assert prepo.trainer.optimizer_steps(trainer.optimizer) == trainer._committed_steps == (
        row["optimizer_steps"] * sum(p.requires_grad for p in trainer.model.parameters()))
