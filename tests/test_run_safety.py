"""A run never loses work (issue 18): a resumed earlier checkpoint branches (later checkpoints and metrics rows set
aside, retention keeps this branch's own), one process per run folder, metrics.jsonl replaced atomically, non-finite
weights never checkpointed, write errors and Ctrl-C during start-up or saving end in one line.
"""
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import prepo.checkpoint
import prepo.rewards
import prepo.step
import prepo.trainer
from prepo import cli
from prepo.checkpoint import list_checkpoints, remove_unfinished, save_checkpoint
from prepo.metrics import MetricsLog, read_rows
from prepo.run_lock import RunLock
from test_cli_errors import _base, _error_line, _fake_scores, _rows
from tiny_lm import one_thread, save_model_folder, tiny_llama  # noqa: F401 (autouse; run.threads=1 too)

_TIMING = {"time_select", "time_generate", "time_reward", "time_update", "time_step", "peak_rss_mb"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def scored(monkeypatch):
    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)


def _interrupt_roll_out_at(monkeypatch, call: int):
    """Ctrl-C (as SIGTERM becomes) at the ``call``-th roll-out of this process."""
    real, calls = prepo.step.roll_out, {"n": 0}

    def roll_out(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepo.step, "roll_out", roll_out)
    return real


def _computed(row):
    return {k: v for k, v in row.items() if k not in _TIMING}


# --- item 1: resuming an earlier checkpoint is a branch ------------------------------------------------------------

def test_resuming_an_earlier_checkpoint_branches_and_retention_keeps_the_branch(model_dir, tmp_path, monkeypatch,
                                                                                  scored, capsys):
    """The issue's case, shrunk: a run at step 4 resumed from step 1 with keep_checkpoints=1 and stopped in step 3;
    the checkpoint of step 2 (the SIGTERM one) was deleted at once, and the next --resume continued step 4."""
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "4",
                           *_base(model_dir, "run.save_every=1", "run.keep_checkpoints=0")]) == 0
    original = _rows(out)
    assert [r["step"] for r in original] == [1, 2, 3, 4]
    capsys.readouterr()

    real = _interrupt_roll_out_at(monkeypatch, 2)  # step 3 of the branch
    assert cli.run_train(["--resume", str(out / "checkpoints" / "step-000001"), "run.keep_checkpoints=1"]) == 130
    err = capsys.readouterr().err
    (aside,) = [p for p in out.iterdir() if p.name.startswith("abandoned-")]
    assert (f"resume: branching from step 1 (step-000001), older than the run's newest checkpoint: moved 3 later "
            f"checkpoint(s) and 3 later metrics row(s) to {aside}/") in err
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]  # this branch's own, kept
    assert [p.name for p in list_checkpoints(aside)] == ["step-000002", "step-000003", "step-000004"]
    assert [r["step"] for r in _rows(aside)] == [2, 3, 4] and (aside / "config.yaml").is_file()
    assert [r["step"] for r in _rows(out)] == [1, 2]

    # the next --resume continues this branch (step 2), not the abandoned step 4; same config, so the same rows
    monkeypatch.setattr(prepo.step, "roll_out", real)
    assert cli.run_train(["--resume", str(out)]) == 0
    assert [_computed(r) for r in _rows(out)] == [_computed(r) for r in original]
    assert [p.name for p in list_checkpoints(out)] == ["step-000004"]
    assert "branching" not in capsys.readouterr().err  # resuming the newest checkpoint is no branch
    prepo.trainer.clear_run_dir(out)  # --overwrite: the branches go with the run
    assert list(out.iterdir()) == []


# --- item 2: one process per run folder ------------------------------------------------------------------------------

def test_a_live_run_folder_is_refused_naming_the_holder(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepo.trainer, "load_policy", lambda *a, **k: pytest.fail("the model loaded"))
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from prepo.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        expected = f"run_dir: {out} is in use by another `prepo train` (pid {holder.pid})"
        assert cli.run_train(["--output-dir", str(out), "--max-steps", "1", *_base(model_dir)]) == 2
        assert expected in _error_line(capsys)
        assert cli.run_train(["--resume", str(out)]) == 2  # before the checkpoint is read
        assert expected in _error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out) as lock:  # the kernel released the dead holder's lock
        assert lock.path.read_text() == f"{os.getpid()}\n"
    assert not (out / ".prepo.lock").exists()


# --- item 3: metrics.jsonl is replaced atomically; a cut-off last row is dropped, a bad one named --------------------

def test_metrics_rewrite_survives_a_write_failure(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": i, "rollouts": 8 * i, "note": "x" * 200} for i in range(1, 50)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 3, hard))  # as `ulimit -f`: EFBIG past that size
    try:
        with pytest.raises(OSError):
            MetricsLog(path, resume_step=40)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    (tmp_path / ".metrics.jsonl-k1ll3d.tmp").write_text("a rewrite cut short by kill -9")
    log = MetricsLog(path, resume_step=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert [r["step"] for r in log.rows] == list(range(1, 41)) and read_rows(path) == rows[:40]

    path.write_bytes(before + b'{"kind": "train", "st')  # a write cut off: left out with a note
    assert read_rows(path) == rows
    path.write_bytes(before.replace(b'"step": 7,', b'"step": 7', 1))
    with pytest.raises(ValueError, match=f"{path}:line 7: malformed metrics row"):
        read_rows(path)


def test_a_malformed_metrics_row_is_named_before_the_model_loads(model_dir, tmp_path, monkeypatch, scored, capsys):
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "1", *_base(model_dir)]) == 0
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 1\n' + (out / "metrics.jsonl").read_text())
    capsys.readouterr()
    monkeypatch.setattr(prepo.trainer, "load_policy", lambda *a, **k: pytest.fail("the model loaded"))
    assert cli.run_train(["--resume", str(out)]) == 2
    assert f"{out / 'metrics.jsonl'}:line 1: malformed metrics row" in _error_line(capsys)


# --- item 4: non-finite loss, gradients or weights ------------------------------------------------------------------

def test_non_finite_weights_are_never_checkpointed(model_dir, tmp_path, scored, capsys):
    """The issue's case: float16, lr 1e5, no clipping; step 1's update overflows every weight."""
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "3",
                          *_base(model_dir, "model.dtype=float16", "optim.lr=1e5", "optim.max_grad_norm=0",
                                 "run.save_every=1")]) == 2
    line = _error_line(capsys)
    assert "training stopped after step 1: the weights after step 1 are not finite; not saved" in line
    assert list_checkpoints(out) == []
    err = capsys.readouterr().err
    assert "--resume" not in err


def test_a_non_finite_gradient_stops_before_the_optimizer_step(model_dir, tmp_path, monkeypatch, scored, capsys):
    real = prepo.step.policy_update
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # step 2's gradient: one NaN
            handle = next(model.parameters()).register_hook(lambda g: g.index_fill(0, torch.tensor([0]), float("nan")))
            try:
                return real(model, *args, **kwargs)
            finally:
                handle.remove()
        return real(model, *args, **kwargs)

    monkeypatch.setattr(prepo.step, "policy_update", poisoned)
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "3", *_base(model_dir)]) == 2
    line = _error_line(capsys)
    assert "training stopped after step 1: the loss (" in line and "the optimizer did not step" in line
    # the last completed step is saved (its weights are finite), with no plain --resume advice
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    weights = load_file(str(out / "checkpoints" / "step-000001" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


# --- write errors, Ctrl-C ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, error, expected", [
    # `ulimit -f`: torch.save (and safetensors) report EFBIG as their own error types
    ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
     "could not write the checkpoint {ckpt} (RuntimeError: [enforce fail at inline_container.cc:672]"),
    ("tempfile.mkdtemp", PermissionError(1, "Operation not permitted"), "[Errno 1] Operation not permitted"),
])
def test_a_checkpoint_write_error_is_one_line(model_dir, tmp_path, monkeypatch, scored, capsys, target, error,
                                              expected):
    """As `ulimit -f` (EFBIG) or an immutable folder (EPERM) make the save fail."""
    def fail(*args, **kwargs):
        raise error

    module, name = target.split(".")
    monkeypatch.setattr(getattr(prepo.checkpoint, module), name, fail)
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "2", *_base(model_dir, "run.save_every=1")]) == 2
    line = _error_line(capsys)
    assert "training stopped after step 1: " + expected.format(ckpt=out / "checkpoints" / "step-000001") in line
    assert list((out / "checkpoints").iterdir()) == []  # nothing partial left


def test_a_metrics_write_error_names_the_step_it_came_in(model_dir, tmp_path, monkeypatch, scored, capsys):
    real = MetricsLog.write

    def write(self, row):
        if row.get("step") == 2:
            raise OSError(28, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(MetricsLog, "write", write)
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "3", *_base(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "the error came after step 2's optimizer step" in err and "No space left on device" in err


def test_ctrl_c_during_start_up_and_a_second_during_the_save(model_dir, tmp_path, monkeypatch, scored, capsys):
    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    real_load = prepo.trainer.load_policy
    monkeypatch.setattr(prepo.trainer, "load_policy", interrupted_load)
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--max-steps", "3", *_base(model_dir)]
    assert cli.run_train(args) == 130
    err = capsys.readouterr().err
    assert "interrupted during start-up, before the first step: nothing was trained" in err
    assert "Traceback" not in err and not out.exists()

    # Ctrl-C in step 2, then another while the checkpoint of step 1 is written: the save completes
    monkeypatch.setattr(prepo.trainer, "load_policy", real_load)
    _interrupt_roll_out_at(monkeypatch, 2)
    real_save = prepo.trainer.save_checkpoint

    def save_with_second_ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(*a, **k)

    monkeypatch.setattr(prepo.trainer, "save_checkpoint", save_with_second_ctrl_c)
    assert cli.run_train(args) == 130
    assert "interrupted: still saving the checkpoint" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_retention_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    model = tiny_llama(seed=0)
    save_checkpoint(tmp_path, 1, model, {"step": 1})
    real_rmtree = prepo.checkpoint.shutil.rmtree

    def rmtree(path, *a, **k):
        if os.path.basename(path).startswith(".old-step-000001"):
            raise KeyboardInterrupt  # the deletion of step 1 cut short
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(prepo.checkpoint.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, {"step": 2}, keep=1)
    monkeypatch.setattr(prepo.checkpoint.shutil, "rmtree", real_rmtree)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    # its remains, and a step-* folder without its state file (an older deletion's remains), are cleaned up
    partial = tmp_path / "checkpoints" / "step-000000"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 8)
    removed = remove_unfinished(tmp_path)
    assert partial in removed and len(removed) == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]
