"""Tests for prepo.evaluate and ``prepo eval``: metric formulas on fixed completions, a tiny model end to end."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from prepo.tasks.arith import make_arith
from prepo.tasks.example import Example
from prepo.tasks.files import load_examples
from prepo.tasks.prompts import ARITH_FORMAT
from prepo.evaluate import EvalReport, evaluate, problem_scores
from prepo.rollout import HFEngine, Rollout
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: F401 (autouse fixture)

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


class ScriptedEngine:
    """Returns fixed texts per question (found by decoding the prompt) and records every call."""

    def __init__(self, tokenizer, texts: dict[str, list[str]]):
        self.tokenizer, self.texts, self.calls = tokenizer, texts, []

    def generate(self, prompts, *, n, max_new_tokens, temperature, top_p=1.0, seed=None):
        self.calls.append(dict(prompts=len(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed))
        out = []
        for p, ids in enumerate(prompts):
            text = self.tokenizer.decode(ids)
            question = next(q for q in self.texts if q in text)
            assert len(self.texts[question]) == n
            out += [Rollout(p, s, [5] * (s + 1), t, s % 2 == 0) for s, t in enumerate(self.texts[question])]
        return out

    def sync_weights(self, model):
        pass


def test_metrics_on_scripted_completions(tok):
    numeric = [Example("a", "What is 3 + 4?", "7"), Example("b", "What is 5 + 5?", "10"),
               Example("c", "What is 2 + 3?", "5"), Example("d", "What is 1 + 1?", "2")]
    math = [Example("e", "Half of one?", "\\frac{1}{2}", "math"), Example("f", "One more than x?", "x + 1", "math")]
    texts = {
        "What is 3 + 4?": ["7", "8", "7", "9"],          # avg .5, pass 1, maj 7 -> 1
        "What is 5 + 5?": ["3", "3", "10", "4"],         # avg .25, pass 1, maj 3 -> 0
        "What is 2 + 3?": ["x", "no", "6", "6"],         # avg 0, pass 0, maj 6 -> 0
        "What is 1 + 1?": ["2", "3", "3", "2"],          # avg .5, pass 1, tie 2/3: 2 came first -> 1
        "Half of one?": ["$\\boxed{\\frac{1}{3}}$"] * 3 + ["$\\boxed{\\frac{1}{2}}$"],   # .25, 1, 0
        "One more than x?": ["$\\boxed{x+1}$", "$\\boxed{1+x}$", "$\\boxed{2}$", "none"],  # .5, 1, x+1 twice -> 1
    }
    engine = ScriptedEngine(tok, texts)
    report = evaluate(engine, tok, {"num": numeric, "math": math}, k=4, max_new_tokens={"num": 7, "math": 9},
                      temperature=0.6, seed=3, progress=False, rows_per_call=8)
    num, mth = report.results["num"], report.results["math"]
    assert (num.n, num.k, num.avg_at_k, num.pass_at_k, num.maj_at_k) == (4, 4, 0.3125, 0.75, 0.5)
    assert (mth.n, mth.avg_at_k, mth.pass_at_k, mth.maj_at_k) == (2, 0.375, 1.0, 0.5)
    assert num.finished == 0.5 and num.mean_tokens == 2.5
    assert report.mean() == {"avg_at_k": 0.34375, "pass_at_k": 0.875, "maj_at_k": 0.5}
    # 8 rows per call = 2 prompts of 4 samples; per-benchmark max_new_tokens; distinct seeds per call
    assert [(c["prompts"], c["n"], c["max_new_tokens"]) for c in engine.calls] == [(2, 4, 7), (2, 4, 7), (2, 4, 9)]
    assert len({c["seed"] for c in engine.calls}) == 3 and all(c["temperature"] == 0.6 for c in engine.calls)
    again = ScriptedEngine(tok, texts)
    evaluate(again, tok, {"num": numeric, "math": math}, k=4, max_new_tokens=8, temperature=0.6, seed=3,
             progress=False, rows_per_call=8)
    assert [c["seed"] for c in again.calls] == [c["seed"] for c in engine.calls]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["benchmarks"]["num"]["maj_at_k"] == 0.5 and d["mean"]["pass_at_k"] == 0.875
    table = report.table()
    assert "avg@4" in table and "31.25" in table and "mean" in table and "87.50" in table


def _reference_scores(rewards, keys):
    first = {}
    for i, k in enumerate(keys):
        if k is not None:
            first.setdefault(k, i)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return sum(rewards) / len(rewards), float(max(rewards) > 0), 0.0
    winner = sorted(counts, key=lambda k: (-counts[k], first[k]))[0]
    return sum(rewards) / len(rewards), float(max(rewards) > 0), rewards[first[winner]]


def test_problem_scores_against_reference():
    for _ in range(200):
        k = random.randint(1, 9)
        keys = [random.choice(["1", "2", "3", None]) for _ in range(k)]
        gold = random.choice(["1", "2"])
        rewards = [1.0 if key == gold else 0.0 for key in keys]
        assert problem_scores(rewards, keys) == pytest.approx(_reference_scores(rewards, keys))
    with pytest.raises(ValueError, match="rewards"):
        problem_scores([1.0], [])


def test_bad_arguments(tok):
    engine = ScriptedEngine(tok, {})
    with pytest.raises(ValueError, match="k"):
        evaluate(engine, tok, {"a": [Example("a", "q", "1")]}, k=0, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="datasets"):
        evaluate(engine, tok, {}, k=1, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="'a' is empty"):
        evaluate(engine, tok, {"a": []}, k=1, max_new_tokens=2, temperature=1.0, progress=False)
    assert EvalReport({}).mean() == {}


def test_tiny_model_end_to_end_is_deterministic(tok):
    model = build_model(tok)
    engine = HFEngine(model, tok, batch_size=16)
    data = {"gsm8k": load_examples(FIXTURES / "gsm8k" / "test.jsonl"),
            "olympiadbench": load_examples(FIXTURES / "olympiadbench" / "test.jsonl", limit=2),
            "arith": make_arith(3, 0, split="eval")}
    seed = random.randrange(1000)
    kw = dict(k=2, max_new_tokens=4, temperature=1.0, seed=seed, progress=False,
              system_prompt={"arith": ARITH_FORMAT.system_prompt}, few_shot={"arith": ARITH_FORMAT.few_shot},
              response_prefix={"arith": ARITH_FORMAT.response_prefix})
    a, b = evaluate(engine, tok, data, **kw), evaluate(engine, tok, data, **kw)
    assert a.to_dict() == b.to_dict()
    assert [(name, r.n, r.k) for name, r in a.results.items()] == [("gsm8k", 5, 2), ("olympiadbench", 2, 2),
                                                                   ("arith", 3, 2)]
    for r in a.results.values():
        assert 0 <= r.avg_at_k <= r.pass_at_k <= 1 and 0 <= r.maj_at_k <= r.pass_at_k
        assert 0 < r.mean_tokens <= 4 and 0 <= r.finished <= 1


def test_eval_cli(tmp_path, tok, capsys):
    from prepo.cli import run_eval as main

    folder = tmp_path / "tiny"
    build_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "report.json"
    rc = main(["--model", str(folder), "--data", str(FIXTURES / "amc23" / "test.jsonl"), "--data", "arith:3",
               "--k", "2", "--max-new-tokens", "3", "--limit", "2", "--output", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["benchmarks"]) == {"amc23", "arith"}
    assert report["benchmarks"]["amc23"]["n"] == 2 and report["benchmarks"]["arith"]["n"] == 2
    assert report["settings"]["k"] == 2 and report["settings"]["model"] == str(folder)
    assert "pass@2" in capsys.readouterr().out
    assert main(["--model", str(folder), "--data", "arith:0", "--output", str(out)]) == 2
    assert main(["--model", str(folder), "--data", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.parametrize("tiers", [["add1", "add2"], None])
def test_prepo_eval_arith_scores_the_problems_training_holds_out(tiers, tmp_path, monkeypatch):
    """`prepo eval --data arith:N [--tiers ...]` evaluates exactly the problems `prepo train` holds out (data.eval_seed)
    for the same tiers and size, with arith's own prompt format."""
    import prepo.evaluate
    import prepo.models
    import prepo.rollout
    from prepo.cli import run_eval
    from prepo.config import DataConfig
    from prepo.trainer import load_datasets

    seen = {}

    def fake_evaluate(engine, tokenizer, datasets, **kw):
        seen.update(datasets=datasets, kw=kw)
        return EvalReport(results={}, settings={})

    monkeypatch.setattr(prepo.models, "load_model_and_tokenizer", lambda *a, **kw: (None, None))
    monkeypatch.setattr(prepo.rollout, "make_engine", lambda *a, **kw: None)
    monkeypatch.setattr(prepo.evaluate, "evaluate", fake_evaluate)
    args = ["--data", "arith:24", "--output", str(tmp_path / "r.json"), "--no-progress"]
    assert run_eval(args + (["--tiers", ",".join(tiers)] if tiers else [])) == 0
    _, held = load_datasets(DataConfig(train="arith", tiers=tiers, eval_size=24))
    assert seen["datasets"] == {"arith": held["arith"]}
    assert seen["kw"]["system_prompt"]["arith"] == ARITH_FORMAT.system_prompt


def test_eval_defaults_are_the_training_configs():
    """`prepo eval` scores a model as the trainer's held-out evaluation does unless told otherwise: its defaults are
    read from EvalConfig (then ModelConfig, RolloutConfig, RunConfig), not written again beside them."""
    from prepo.cli import eval_parser
    from prepo.config import EvalConfig, ModelConfig, RolloutConfig, RunConfig

    args = eval_parser().parse_args(["--data", "arith:2"])
    ev = EvalConfig()
    assert (args.k, args.temperature, args.max_new_tokens, args.batch_size) == (
        ev.k, ev.temperature, ev.max_new_tokens, ev.rows_per_call)
    model, rollout = ModelConfig(), RolloutConfig()
    assert (args.model, args.dtype, args.top_p, args.engine, args.seed) == (
        model.name_or_path, model.dtype, rollout.top_p, rollout.engine, RunConfig().seed)
