"""`prepo train` and `prepo eval` on bad input: one line (`prepo <cmd>: error: ...`, exit 2, no traceback), and
everything that can be checked from the options, the config, the run folder, the checkpoint and the data is checked
before the model loads. Also: a run folder holding another run is refused (or cleared with --overwrite), --resume
refuses config changes by name, unfinished checkpoint folders of dead writers are removed.
"""
import json
import os
import subprocess
import sys

import pytest

import prepo.models
import prepo.rewards
import prepo.trainer
from prepo import cli
from prepo.checkpoint import list_checkpoints
from tiny_lm import one_thread, save_model_folder  # noqa: F401 (autouse; run.threads=1 too)


def _fake_scores(examples, completions, *, timeout=5.0):
    return [float(len(text) % 2 == 0) for text in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("tiny-model"))


def _base(model_dir, *more):
    return [f"model.name_or_path={model_dir}", "data.train=arith", "data.train_size=20", "data.eval_size=0",
            "data.tiers=[add1]", "selection.num_candidates=4", "selection.k=2", "rollout.group_size=2",
            "rollout.max_new_tokens=3", "eval.before=false", "optim.micro_batch_tokens=128", "run.progress=false",
            "run.threads=1", *more]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the error must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(prepo.trainer, "load_policy", refuse)
    monkeypatch.setattr(prepo.models, "load_model_and_tokenizer", refuse)


def _error_line(capsys, command="train") -> str:
    """The one error line on stderr (progress bars of model loading aside); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"prepo {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- prepo train: the run folder, --resume ---------------------------------------------------------------------------

def test_a_new_run_refuses_a_folder_holding_another_run(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "1", *_base(model_dir, "run.seed=1")]) == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    real_load = prepo.trainer.load_policy
    monkeypatch.setattr(prepo.trainer, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "1", *_base(model_dir, "run.seed=2")]) == 2
    line = _error_line(capsys)
    assert f"{out} already holds a run" in line and f"--resume {out}" in line and "--overwrite" in line
    assert (out / "metrics.jsonl").read_text() == before and "seed: 1" in (out / "config.yaml").read_text()
    # --overwrite: cleared first, then a fresh run
    monkeypatch.setattr(prepo.trainer, "load_policy", real_load)
    (out / "notes.txt").write_text("mine")
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "1", "--overwrite",
                           *_base(model_dir, "run.seed=2", "run.keep_checkpoints=1")]) == 0
    assert "seed: 2" in (out / "config.yaml").read_text()
    assert [r["step"] for r in _rows(out)] == [1] and len(list_checkpoints(out)) == 1
    assert (out / "notes.txt").read_text() == "mine"  # only what a run writes is deleted
    # --overwrite with --resume of the same folder would delete the checkpoint being resumed
    assert cli.run_train(["--resume", str(out), "--overwrite"]) == 2
    assert "--overwrite with --resume" in _error_line(capsys)


def test_resume_refuses_config_changes_and_cleans_unfinished_saves(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    out = tmp_path / "run"
    assert cli.run_train(["--output-dir", str(out), "--max-steps", "1",
                           *_base(model_dir, "run.seed=1", "run.save_every=1", "run.keep_checkpoints=0")]) == 0
    capsys.readouterr()
    real_load = prepo.trainer.load_policy
    monkeypatch.setattr(prepo.trainer, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    for extra, expected in [(["run.seed=5"], "run.seed (1 -> 5); the checkpoint's state depends on these"),
                            (["selection.strategy=greso"], "selection.strategy ('ppl' -> 'greso')"),
                            (["rollout.group_size=4"], "rollout.group_size (2 -> 4); resume with the run's own config, "
                                                       "or pass --allow-config-change rollout.group_size"),
                            (["optim.lr=1e-2"], "--allow-config-change optim.lr"),
                            (["--max-steps", "2"], "run.steps (1 -> 2)")]:
        assert cli.run_train(["--resume", str(out), *extra]) == 2
        line = _error_line(capsys)
        assert line.startswith("prepo train: error: --resume: the config differs from the checkpoint's in ")
        assert expected in line, line
    assert cli.run_train(["--allow-config-change", "steps", "--max-steps", "2"]) == 2
    assert "only applies with --resume" in _error_line(capsys)

    # an unfinished save of a dead process is removed at resume; one whose writer still runs is left alone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ckpts = out / "checkpoints"
        orphans = [ckpts / f".tmp-step-000002-{dead.pid}-x1", ckpts / ".tmp-step-000003-sharded",
                   ckpts / f".old-step-000001-{dead.pid}-y"]
        live = ckpts / f".tmp-step-000002-{alive.pid}-z"
        for folder in [*orphans, live]:
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"\0" * 64)
        monkeypatch.setattr(prepo.trainer, "load_policy", real_load)
        assert cli.run_train(["--resume", str(out), "--max-steps", "2", "--allow-config-change", "run.steps",
                               "run.threads=1"]) == 0
        assert not any(p.exists() for p in orphans) and live.is_dir()
        assert [p.name for p in list_checkpoints(out)] == ["step-000001", "step-000002"]
        assert [r["step"] for r in _rows(out)] == [1, 2]
        err = capsys.readouterr().err
        assert "resume: config changed (--allow-config-change): run.steps (1 -> 2)" in err
        assert f"removed {orphans[0]}: an unfinished checkpoint" in err
    finally:
        alive.kill()
        alive.wait()

    # a truncated or corrupt checkpoint file: named, with the previous checkpoint to resume from instead
    monkeypatch.setattr(prepo.trainer, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    newest, previous = out / "checkpoints" / "step-000002", out / "checkpoints" / "step-000001"
    state = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(state[: len(state) // 2])
    assert cli.run_train(["--resume", str(out)]) == 2
    line = _error_line(capsys)
    assert f"checkpoint file {newest / 'state.pt'} is truncated or corrupt" in line
    assert f"resume from the previous checkpoint instead: --resume {previous}" in line
    (newest / "state.pt").write_bytes(b"\xa9" + state[1:])
    assert cli.run_train(["--resume", str(out)]) == 2
    assert f"{newest / 'state.pt'} is truncated or corrupt" in _error_line(capsys)
    (newest / "state.pt").write_bytes(state)
    weights = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(weights[:-100])
    assert cli.run_train(["--resume", str(out)]) == 2
    assert f"checkpoint file {newest / 'model.safetensors'} is truncated or corrupt" in _error_line(capsys)
    (previous / "state.pt").write_bytes(b"")
    assert cli.run_train(["--resume", str(previous)]) == 2
    assert "(EOFError" in (line := _error_line(capsys)) and "no earlier checkpoint to fall back on" in line


# --- prepo train: config and data ------------------------------------------------------------------------------------

def _file(path, rows, encoding="utf-8"):
    path.write_bytes(("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode(encoding))
    return path


def test_train_config_and_data_errors_are_one_line_before_the_model_loads(model_dir, tmp_path, no_model, capsys):
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(60)]
    rows[49]["a"] = "four"
    gold = _file(tmp_path / "gold.jsonl", rows)
    latin1 = _file(tmp_path / "latin1.jsonl", [{"q": "Café: what is 1 + 1?", "a": "2"}] * 3, "latin-1")
    small = _file(tmp_path / "small.jsonl", [{"q": "What is 1 + 1?", "a": "2"}] * 3)
    fields = "data.fields={prompt_field: q, answer_field: a, verifier: numeric}", "data.tiers=null", "data.train_size=0"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run:\n  name: [a, b\n")
    out = str(tmp_path / "out")
    cases = [
        (["--config", str(bad_yaml)], f"config file '{bad_yaml}': malformed YAML at line 3"),
        ([f"data.train={gold}", *fields], f"{gold}:line 50: field 'a': gold answer 'four' is not a number"),
        ([f"data.train={latin1}", *fields], f"{latin1}:line 1: not UTF-8 text (byte 0xe9)"),
        ([f"data.train={small}", *fields], "data.train: 3 training examples, fewer than the 4 prompts a step draws "
                                          "(selection.num_candidates=4)"),
        (["data.train_size=3"], "fewer than the 4 prompts a step draws"),
        (["data.tiers=[foo]"], "data.tiers: unknown tier(s) ['foo']"),
        (["optim.lr=inf"], "optim.lr: must be a finite number, got inf"),
        (["rollout.temperature=inf"], "rollout.temperature: must be a finite number, got inf"),
        (["rollout.group_size=1"], "rollout.group_size: must be >= 2, got 1"),
        (["run.name=.."], "run.name: must be one plain folder name"),
        (["rollout.engine=nope"], "rollout.engine: unknown engine 'nope'"),
    ]
    for extra, expected in cases:
        # overrides on both sides of the options
        assert cli.run_train(["run.seed=3", "--max-steps", "1", "--output-dir", out, *_base(model_dir, *extra)]) == 2
        line = _error_line(capsys)
        assert expected in line, (expected, line)
    assert not os.path.exists(out)


def test_a_prompt_longer_than_the_context_is_refused(model_dir, tmp_path, capsys):
    long = _file(tmp_path / "long.jsonl", [{"q": "What is 1 + 1?", "a": "2"}] * 5
                 + [{"q": "What is " + " + ".join(["12"] * 300) + "?", "a": "3600"}])
    out = tmp_path / "out"
    assert cli.run_train(["--output-dir", str(out), *_base(model_dir, f"data.train={long}", "data.tiers=null",
                                                            "data.fields={prompt_field: q, answer_field: a}")]) == 2
    line = _error_line(capsys)
    assert f"data.train: prompt 'long/6' ({long}:line 6) is " in line
    assert "with rollout.max_new_tokens=3 it exceeds the model's context of 512 tokens" in line
    assert not out.exists()


# --- prepo eval ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--limit", "0"], "--limit: expected a positive integer, got 0"),
    (["--temperature", "-1"], "--temperature: expected 0 (greedy) or a finite number >= 0.01, got -1.0"),
    (["--temperature", "nan"], "--temperature: expected 0 (greedy) or a finite number >= 0.01"),
    (["--temperature", "1e-38"], "--temperature: expected 0 (greedy) or a finite number >= 0.01, got 1e-38"),
    (["--prompt-template", "Solve it."], "--prompt-template: must contain '{question}' exactly once"),
    (["--device", "cuda:7"], "--device cuda:7: torch sees "),
    (["--device", "meta"], "--device meta: cannot evaluate on a meta device"),
    (["--device", "gpu0"], "--device gpu0: not a device name"),
    (["--output", "/proc/prepo-report.json"], "--output /proc/prepo-report.json: cannot write the report there"),
    (["--max-new-tokens", "0"], "--max-new-tokens: expected a positive integer, got 0"),
    (["--engine", "nope"], "--engine: unknown engine 'nope'; known: hf"),
    (["--k", "0"], "--k: expected a positive integer, got 0"),
    (["--top-p", "0"], "--top-p: expected a number in (0, 1]"),
    (["--model", "./no-such-model"], "--model ./no-such-model: no such file or folder, and not a model alias"),
    (["--model", "/no/such/model"], "--model /no/such/model: no such file or folder"),
    (["--model", "model.gguf"], "--model model.gguf: no such file or folder"),
])
def test_eval_options_are_checked_before_the_model_loads(args, expected, no_model, capsys):
    assert cli.run_eval(["--data", "arith:2", *args]) == 2
    assert expected in _error_line(capsys, "eval")


def test_eval_output_folder_and_plain_jsonl(model_dir, tmp_path, no_model, capsys, monkeypatch):
    assert cli.run_eval(["--data", "arith:2", "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path}: is a folder" in _error_line(capsys, "eval")
    plain = _file(tmp_path / "mine.jsonl", [{"q": "What is 1 + 1?", "a": "2"}, {"q": "What is 2 + 2?", "a": "4"}])
    assert cli.run_eval(["--data", str(plain), "--output", str(tmp_path / "r.json")]) == 2
    line = _error_line(capsys, "eval")
    assert f"--data {plain}: cannot tell its format" in line and "--prompt-field and --answer-field" in line
    # with the field flags it evaluates
    monkeypatch.undo()
    out = tmp_path / "r.json"
    assert cli.run_eval(["--model", str(model_dir), "--data", str(plain), "--prompt-field", "q", "--answer-field",
                          "a", "--verifier", "numeric", "--k", "1", "--max-new-tokens", "2", "--temperature", "0",
                          "--output", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert [b["n"] for b in report["benchmarks"].values()] == [2] and report["settings"]["k"] == 1


def test_eval_data_and_output_errors_before_the_model_loads(tmp_path, no_model, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    under_a_file = tmp_path / "notes.txt" / "sub" / "r.json"
    assert cli.run_eval(["--data", "arith:2", "--output", str(under_a_file)]) == 2
    assert f"--output {under_a_file}: cannot write the report there" in _error_line(capsys, "eval")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli.run_eval(["--data", str(empty), "--prompt-field", "q", "--answer-field", "a",
                         "--output", str(tmp_path / "r.json")]) == 2
    assert f"--data {empty}: no problems in it" in _error_line(capsys, "eval")
    assert not (tmp_path / "r.json").exists()  # the writability probe leaves nothing behind


def test_ctrl_c_mid_eval_writes_the_partial_report(model_dir, tmp_path, monkeypatch, capsys):
    import prepo.evaluate

    real, calls = prepo.evaluate.score_rollouts, {"n": 0}

    def score_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the second call of the second benchmark
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepo.evaluate, "score_rollouts", score_then_interrupt)
    out = tmp_path / "r.json"
    assert cli.run_eval(["--model", str(model_dir), "--data", "arith:2", "--data", "arith:4", "--k", "1",
                         "--batch-size", "2", "--max-new-tokens", "2", "--temperature", "0", "--output", str(out),
                         "--no-progress"]) == 130
    report = json.loads(out.read_text())
    assert report["settings"]["partial"] is True
    assert {name: b["n"] for name, b in report["benchmarks"].items()} == {"arith": 2, "arith'": 2}
    assert "interrupted: partial report (4 of 6 problems scored" in capsys.readouterr().err

    # a write error after the evaluation (the disk filled up meanwhile): one line, the table printed above it
    import pathlib

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    assert cli.run_eval(["--model", str(model_dir), "--data", "arith:2", "--k", "1", "--max-new-tokens", "2",
                         "--temperature", "0", "--output", str(out), "--no-progress"]) == 2
    assert (f"--output {out}: could not write the report (No space left on device); the table above has its "
            "results") in _error_line(capsys, "eval")


def test_train_option_and_data_eval_errors(model_dir, tmp_path, no_model, capsys):
    assert cli.run_train(["--output-dir", "", *_base(model_dir)]) == 2
    assert "--output-dir: must not be empty" in _error_line(capsys)
    plain = _file(tmp_path / "mine.jsonl", [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(5)])
    assert cli.run_train(["--output-dir", str(tmp_path / "out"), *_base(model_dir, f"data.eval={plain}")]) == 2
    line = _error_line(capsys)
    assert f"data.eval: cannot tell the format of {plain} from its folder name; set data.preset" in line
    assert "data.fields={prompt_field: ..., answer_field: ...}" in line


def test_data_eval_is_read_with_data_fields(tmp_path):
    from prepo.config import load_config
    from prepo.trainer import load_datasets

    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(6)]
    train, held = _file(tmp_path / "train.jsonl", rows), _file(tmp_path / "held.jsonl", rows[:3])
    cfg = load_config(None, [f"data.train={train}", f"data.eval={held}", "data.tiers=null", "data.train_size=0",
                             "data.eval_size=0", "data.fields={prompt_field: q, answer_field: a, verifier: numeric}"])
    examples, evals = load_datasets(cfg.data)
    assert len(examples) == 6 and [(e.question, e.answer, e.verifier) for e in evals["held"]] == [
        (r["q"], r["a"], "numeric") for r in rows[:3]]


def test_ctrl_c_anywhere_else_is_one_line(monkeypatch, no_model, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parse_data_arg", interrupted)  # while the data loads, before the model
    assert cli.main(["eval", "--data", "arith:2"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "prepo eval: interrupted" and "Traceback" not in err
