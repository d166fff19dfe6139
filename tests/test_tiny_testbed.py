"""The tiny-arith testbed: its task, its deterministic model build and cache, loading by name, and a short efficiency
benchmark on it end to end (a shrunken recipe stands in for the default so the build takes seconds)."""
from __future__ import annotations

import random
import re

import pytest
import torch

from prepo.tasks import tiny_arith, tiny_model
from prepo.tasks.registry import make_builtin
from prepo.tasks.synthetic import split_of
from tiny_lm import one_thread  # noqa: F401  (applies to every test here)

SMALL = tiny_model.TinyRecipe(hidden=32, layers=1, heads=2, kv_heads=1, steps=4, batch=8, warmup=2)


# -- the task ---------------------------------------------------------------------------------------------------
def _value(question: str, tier: str) -> int:
    """The answer read back from the question's words, independently of how it was generated."""
    xs = [int(x) for x in re.findall(r"\d+", question)]
    if tiny_arith.TIERS[tier].op == "+":
        return sum(xs)
    if question.startswith("Take"):  # "Take {b} away from {a}."
        return xs[1] - xs[0]
    return xs[0] - xs[1]


def test_problems_are_right_sized_and_deterministic():
    seed = random.randrange(10**6)
    a = tiny_arith.make_tiny_arith(300, seed)
    assert a == tiny_arith.make_tiny_arith(300, seed)
    assert a != tiny_arith.make_tiny_arith(300, seed + 1)
    for ex in a:
        tier = tiny_arith.TIERS[ex.meta["tier"]]
        xs = [int(x) for x in re.findall(r"\d+", ex.question)]
        if ex.question.startswith(("Take", "Add")):
            xs[0], xs[1] = xs[1], xs[0]
        assert sorted(len(str(x)) for x in xs) == sorted(tier.digits), ex
        assert int(ex.answer) == _value(ex.question, ex.meta["tier"]) >= 0, ex
        assert ex.meta["template"].format(*xs) == ex.question


def test_splits_are_disjoint_and_builtin_dispatch():
    seed = random.randrange(10**6)
    train = make_builtin("tiny-arith", 400, seed, ["add22", "sub22"], split="train")
    held = make_builtin("tiny-arith", 100, seed, ["add22", "sub22"], split="eval")
    assert not {e.question for e in train} & {e.question for e in held}
    assert {e.meta["tier"] for e in held} == {"add22", "sub22"}
    assert all(split_of(e.question) == "eval" for e in held)
    with pytest.raises(ValueError, match="tiers"):
        tiny_arith.make_tiny_arith(3, 0, ["nope"])
    with pytest.raises(ValueError, match="weights"):
        tiny_arith.make_tiny_arith(3, 0, ["add1"], weights=[1, 2])


def test_template_frequencies_follow_their_weights():
    ex = tiny_arith.make_tiny_arith(4000, 3, ["add2"])
    common = sum(e.meta["template"] == "What is {0} + {1}?" for e in ex) / len(ex)
    assert abs(common - 0.70) < 0.04


def test_noise_changes_digits_at_the_rate_asked():
    rng = random.Random(0)
    answers = [str(rng.randrange(10, 10**4)) for _ in range(3000)]
    noisy = [tiny_model._noisy(a, 0.2, rng) for a in answers]
    changed = sum(x != y for a, b in zip(answers, noisy) for x, y in zip(a, b))
    assert abs(changed / sum(map(len, answers)) - 0.2) < 0.02
    assert all(len(a) == len(b) and (len(b) == 1 or b[0] != "0") for a, b in zip(answers, noisy))


# -- the model --------------------------------------------------------------------------------------------------
def test_tokenizer_round_trips_questions_and_answers():
    tok = tiny_model.build_tokenizer()
    for ex in tiny_arith.make_tiny_arith(50, 1):
        ids = tok(ex.question, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, ex.question
        assert tok.decode(tok(ex.answer, add_special_tokens=False)["input_ids"]) == ex.answer
    text = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|assistant|> ")


def test_build_is_deterministic_and_learns():
    m1, _ = tiny_model.train_tiny_model(SMALL)
    m2, _ = tiny_model.train_tiny_model(SMALL)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    m3, _ = tiny_model.train_tiny_model(tiny_model.TinyRecipe(**{**SMALL.__dict__, "seed": 1}))
    assert not all(torch.equal(s1[k], m3.state_dict()[k]) for k in s1)


def test_recipe_key_names_every_field():
    assert SMALL.key() == tiny_model.TinyRecipe(**SMALL.__dict__).key()
    assert SMALL.key() != tiny_model.TinyRecipe(**{**SMALL.__dict__, "digit_noise": 0.2}).key()


def test_loads_by_name_builds_once_and_generates(tmp_path, monkeypatch):
    from prepo.models import load_model_and_tokenizer
    from prepo.rollout import HFEngine

    monkeypatch.setitem(tiny_model.RECIPES, "tiny-arith", SMALL)
    model, tok = load_model_and_tokenizer("tiny-arith", cache_dir=tmp_path)
    folder = tmp_path / f"tiny-arith-{SMALL.key()}"
    assert (folder / "config.json").is_file() and (folder / "recipe.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again, _ = load_model_and_tokenizer("tiny-arith", cache_dir=tmp_path)  # from the cache, not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not list(tmp_path.glob(".tiny-arith-*"))  # no temporary folder left behind
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True,
                                     tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = HFEngine(model, tok).generate([list(prompt)], n=3, max_new_tokens=4, temperature=1.0, seed=0)
    assert len(out) == 3 and all(len(r.completion_ids) <= 4 for r in out)


def test_report_statistics_known_answers():
    from benchmarks.rl.testbed_report import ranks, spearman

    assert ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # hand-worked: ranks x = 1,2,3,4,5; y = 2,1,4,3,5 -> 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*4/120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)


# -- end to end -------------------------------------------------------------------------------------------------
def test_efficiency_benchmark_runs_on_the_testbed(tmp_path, monkeypatch):
    """configs/efficiency-tiny.yaml, shrunk to 3 steps, two strategies, one seed: trains, evaluates (avg@k and
    greedy) and writes the summary with its validity gate."""
    import yaml

    from benchmarks.rl import rollout_efficiency as rex

    monkeypatch.setitem(tiny_model.RECIPES, "tiny-arith", SMALL)
    monkeypatch.setenv("PREPO_CACHE", str(tmp_path / "cache"))
    raw = yaml.safe_load(open("configs/efficiency-tiny.yaml"))
    raw.update(runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"), seeds=[0],
               models=["tiny-arith"])
    raw["variants"] = [v for v in raw["variants"] if v["name"] in ("prepo", "random")]
    for v in raw["variants"]:
        v.pop("seeds", None)
    t = raw["train"]
    t["data"].update(train_size=200, eval_size=12)
    t["selection"].update(num_candidates=10, k=2)
    t["eval"].update(every=2)
    t["run"].update(steps=3, save_every=1)
    path = tmp_path / "efficiency-tiny-small.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert rex.main(["--config", str(path)]) == 0
    out = tmp_path / "results" / f"efficiency-{raw['name']}"
    summary = (out / "summary.md").read_text()
    assert summary.index("Pre-registered conditions") < summary.index("Validity gate") < summary.index("Paired")
    for run in ("prepo-s0", "random-s0"):
        rows = [yaml.safe_load(line) for line in (out / "tiny-arith" / run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if r["kind"] == "eval"]
        assert [r["step"] for r in evals] == [0, 2, 3]
        assert all(0 <= r["greedy_accuracy"] <= 1 and r["k"] == t["eval"]["k"] for r in evals)
    assert (out / "curves.png").is_file()


def test_prepo_eval_on_the_testbed_scores_the_training_held_out_set(tmp_path, monkeypatch, capsys):
    """`prepo eval --data tiny-arith:N --tiers ...` evaluates the problems `prepo train` holds out for the same
    tiers and size, with the task's plain prompt (no math instruction the tiny model never saw)."""
    import json

    from prepo import cli
    from prepo.config import DataConfig
    from prepo.trainer import load_datasets

    name, examples, fmt = cli.parse_data_arg("tiny-arith:24", None, tiers=["add2", "sub22"])
    _, held = load_datasets(DataConfig(train="tiny-arith", tiers=["add2", "sub22"], eval_size=24))
    assert name == "tiny-arith" and examples == held["tiny-arith"] and fmt.prompt_template == "{question}"
    monkeypatch.setitem(tiny_model.RECIPES, "tiny-arith", SMALL)
    monkeypatch.setenv("PREPO_CACHE", str(tmp_path))
    out = tmp_path / "report.json"
    assert cli.run_eval(["--model", "tiny-arith", "--data", "tiny-arith:6", "--k", "2", "--output", str(out),
                          "--no-progress", "--tiers", "add1"]) == 0
    report = json.loads(out.read_text())["benchmarks"]["tiny-arith"]
    assert report["n"] == 6 and report["k"] == 2
    assert cli.run_eval(["--model", "tiny-arith", "--data", "tiny-arith:6", "--tiers", "nope"]) == 2
    assert "tiers: unknown ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["arith", "tiny-arith", "tiny-chain"])
def test_no_held_out_question_reaches_training_or_the_supervised_stage(task):
    """For every seed pairing (equal seeds included) and tier choice, the trainer's training prompts and a testbed
    model's supervised stage come from the train part of the question space only, and share no question with the
    held-out set the trainer (and `prepo eval --data <task>:N`) scores."""
    import dataclasses

    from prepo.config import DataConfig
    from prepo.tasks.registry import BUILTIN_TASKS, builtin_tiers
    from prepo.trainer import load_datasets

    if task not in BUILTIN_TASKS:
        pytest.skip(f"{task} is not a built-in task here")
    held = set()
    s = random.randrange(10**6)
    for seed, eval_seed in [(0, 0), (0, 1), (s, s + 1), (s, s)]:
        for tiers in (None, builtin_tiers(task)[:2]):
            train, evals = load_datasets(DataConfig(train=task, train_size=300, eval_size=120, seed=seed,
                                                    eval_seed=eval_seed, tiers=tiers))
            questions = {e.question for e in evals[task]}
            assert len(evals[task]) == 120 and all(split_of(q) == "eval" for q in questions)
            assert all(split_of(e.question) == "train" for e in train)
            assert not questions & {e.question for e in train}
            held |= questions
    recipes = [r for r in tiny_model.RECIPES.values() if r.task == task]
    for recipe in recipes:
        pairs = tiny_model.supervised_targets(dataclasses.replace(recipe, steps=40, batch=50))
        assert len(pairs) == 2000
        assert all(split_of(q) == "train" for q, _ in pairs)
        assert not held & {q for q, _ in pairs}
