"""The tiny-chain testbed: its task (scratchpads, slips, wordings, splits), the pinned model build (same weights under
other kernel settings, loading by name), and a shrunk efficiency run of configs/efficiency-chain.yaml end to end."""
from __future__ import annotations

import dataclasses
import random
import re

import pytest
import torch

from prepo.tasks import tiny_chain, tiny_model
from prepo.tasks.registry import make_builtin
from prepo.tasks.synthetic import split_of
from prepo.rewards import verify
from tiny_lm import one_thread  # noqa: F401  (applies to every test here)

SMALL = dataclasses.replace(tiny_model.RECIPES["tiny-chain"], hidden=32, layers=1, heads=2, kv_heads=1, steps=3,
                            batch=8, warmup=2)


# -- the task ---------------------------------------------------------------------------------------------------
PLUS = {"+", "plus", "add", "gain", "raise", "up", "more", "grow", "rise", "extra"}
MINUS = {"-", "minus", "drop", "lose", "cut", "down", "fewer", "shrink", "fall", "less"}


def _read_back(question: str) -> int:
    """The answer computed from the question's words alone, independently of how it was generated."""
    tokens = question.split()
    nums = [(i, int(t)) for i, t in enumerate(tokens) if t.isdigit()]
    total = nums[0][1]
    for i, n in nums[1:]:
        word = tokens[i - 1]
        assert word in PLUS | MINUS, question
        total += n if word in PLUS else -n
    return total


def test_problems_are_right_and_deterministic_per_tier():
    seed = random.randrange(10**6)
    for tier in tiny_chain.TIERS:
        a = tiny_chain.make_tiny_chain(60, seed, [tier])
        assert a == tiny_chain.make_tiny_chain(60, seed, [tier])
        assert [e.question for e in a] != [e.question for e in tiny_chain.make_tiny_chain(60, seed + 1, [tier])]
        for ex in a:
            k = int(tier[1:])
            assert ex.meta["k"] == k and len(re.findall(r"\d+", ex.question)) == k + 1
            assert int(ex.answer) == _read_back(ex.question)
            start, steps = ex.meta["start"], tiny_chain.parse_steps(ex.meta["steps"])
            totals = [start]
            for op, n in steps:
                totals.append(totals[-1] + (n if op == "+" else -n))
            assert all(0 <= t <= tiny_chain.TOTAL_MAX for t in totals) and 1 <= min(n for _, n in steps) <= 9
            assert ex.verifier == "marked"


def test_scratchpad_slips_only_at_crossings_and_grades_by_the_marker():
    rng = random.Random(0)
    assert tiny_chain.scratchpad(8, [("+", 5), ("-", 6)]) == ("8+5=13-6=7####7", 7)
    # slip 1: every crossing step is slipped, the chain goes on from the slipped total
    assert tiny_chain.scratchpad(8, [("+", 5), ("-", 6)], slip=1.0, rng=rng) == ("8+5=3-6=-3####-3", -3)
    assert tiny_chain.scratchpad(13, [("-", 5)], slip=1.0, rng=rng)[1] == 12      # missed borrow: 10 + |3 - 5|
    assert tiny_chain.scratchpad(2, [("+", 3), ("-", 4)], slip=1.0, rng=rng)[1] == 1  # no crossing: exact
    # the slip's rate on crossing steps
    hits = total = 0
    for _ in range(3000):
        a, n = rng.randint(1, 9), rng.randint(1, 9)
        if a + n >= 10:
            total += 1
            hits += tiny_chain.scratchpad(a, [("+", n)], slip=0.6, rng=rng)[1] != a + n
    assert abs(hits / total - 0.6) < 0.04
    assert verify("8+5=13-6=7####7", "7", "marked") == 1.0
    assert verify("8+5=13-6=7", "7", "marked") == 0.0          # stopped early: no marker, no credit
    assert verify("8+5=13-6=7####7", "7", "numeric") == 1.0


def test_steps_cross_ten_at_the_biased_rate():
    rng = random.Random(random.randrange(10**6))
    crossing = possible = 0
    for _ in range(3000):
        total, steps = tiny_chain.draw_chain(1, rng)
        op, n = steps[0]
        possible += total >= 1           # from 1..9 some addition reaches 10
        crossing += tiny_chain.crosses_ten(total, op, n)
    # a crossing move with probability CROSS_BIAS when one exists, plus the unbiased draws that happen to cross
    assert crossing / 3000 > tiny_chain.CROSS_BIAS * possible / 3000 - 0.03


def test_longer_chains_use_rarer_wordings():
    common = [tiny_chain.wording_weights(k)[0] for k in range(1, 9)]
    assert all(a > b for a, b in zip(common, common[1:]))
    assert all(abs(sum(tiny_chain.wording_weights(k)) - 1) < 1e-12 for k in range(1, 9))
    ex = tiny_chain.make_tiny_chain(4000, 5, ["k1", "k8"])
    share = {t: sum(e.meta["wording"] == 0 for e in ex if e.meta["tier"] == t) / 2000 for t in ("k1", "k8")}
    assert abs(share["k1"] - tiny_chain.wording_weights(1)[0]) < 0.04 and share["k8"] < 0.1


def test_held_out_questions_never_reach_the_supervised_stage_or_rl():
    seed = random.randrange(1000)
    held = {e.question for e in make_builtin("tiny-chain", 400, 1, split="eval")}
    assert all(split_of(q) == "eval" for q in held)
    train = {e.question for e in make_builtin("tiny-chain", 4000, seed, split="train")}
    assert not held & train
    recipe = dataclasses.replace(SMALL, steps=200, batch=16, seed=seed)   # 3200 supervised examples
    supervised = {q for q, _ in tiny_model.supervised_targets(recipe)}
    assert len(supervised) > 1000 and not held & supervised
    assert all(split_of(q) == "train" for q in supervised)


# -- the model --------------------------------------------------------------------------------------------------
def test_tokenizer_round_trips_questions_and_scratchpads():
    tok = tiny_model.build_tokenizer("tiny-chain")
    for ex in tiny_chain.make_tiny_chain(40, 2):
        assert tok.unk_token_id not in tok(ex.question, add_special_tokens=False)["input_ids"], ex.question
        pad, _ = tiny_chain.scratchpad(ex.meta["start"], tiny_chain.parse_steps(ex.meta["steps"]), slip=1.0,
                                       rng=random.Random(1))
        ids = tok(pad, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == pad


def test_recipes_by_name():
    assert tiny_model.recipe_for("tiny-chain").task == "tiny-chain"
    assert tiny_model.recipe_for("tiny-chain@3") == dataclasses.replace(tiny_model.RECIPES["tiny-chain"], seed=3)
    assert tiny_model.recipe_for("tiny-chain@3").key() != tiny_model.recipe_for("tiny-chain").key()
    assert tiny_model.is_tiny_name("TINY-ARITH@2") and not tiny_model.is_tiny_name("tiny-other")
    with pytest.raises(ValueError, match="build seed"):
        tiny_model.recipe_for("tiny-chain@x")
    with pytest.raises(ValueError, match="task"):
        tiny_model.TinyRecipe(task="nope")


def test_pinned_build_is_the_same_under_other_kernel_settings(tmp_path):
    """The build's child pins its kernels: other MKL/oneDNN instruction sets outside give the same weights (bit for
    bit). (Another build seed gives other weights: test_loads_by_name_builds_once_and_generates.)"""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    sha_a = tiny_model.build_model(SMALL, a)
    sha_b = tiny_model.build_model(SMALL, b, env={"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert sha_a == sha_b == tiny_model.weights_sha256(a)


def test_loads_by_name_builds_once_and_generates(tmp_path, monkeypatch):
    from prepo.models import load_model_and_tokenizer
    from prepo.rollout import HFEngine

    monkeypatch.setitem(tiny_model.RECIPES, "tiny-chain", SMALL)
    model, tok = load_model_and_tokenizer("tiny-chain", cache_dir=tmp_path)
    folder = tmp_path / f"tiny-chain-{SMALL.key()}"
    assert (folder / "recipe.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again, _ = load_model_and_tokenizer("tiny-chain", cache_dir=tmp_path)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    other, _ = load_model_and_tokenizer("tiny-chain@1", cache_dir=tmp_path)
    assert (tmp_path / f"tiny-chain-{dataclasses.replace(SMALL, seed=1).key()}").is_dir()
    assert not all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), other.state_dict().values()))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4 ?"}], add_generation_prompt=True,
                                     tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = HFEngine(model, tok).generate([list(prompt)], n=2, max_new_tokens=5, temperature=1.0, seed=0)
    assert len(out) == 2


# -- end to end -------------------------------------------------------------------------------------------------
def test_efficiency_benchmark_runs_on_the_chain_testbed(tmp_path, monkeypatch):
    """configs/efficiency-chain.yaml shrunk to 3 steps, two strategies, two build seeds: trains, evaluates and writes
    the pooled summary with the pre-registered conditions first, and one summary per model."""
    import yaml

    from benchmarks.rl import rollout_efficiency as rex

    monkeypatch.setitem(tiny_model.RECIPES, "tiny-chain", SMALL)
    monkeypatch.setenv("PREPO_CACHE", str(tmp_path / "cache"))
    raw = yaml.safe_load(open("configs/efficiency-chain.yaml"))
    raw.update(runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"), seeds=[0])
    raw["variants"] = [v for v in raw["variants"] if v["name"] in ("adaptive", "random")]
    for v in raw["variants"]:
        v.pop("seeds", None)
    t = raw["train"]
    t["data"].update(train_size=200, eval_size=4)
    t["selection"].update(num_candidates=10, k=2)
    t["rollout"].update(max_new_tokens=8)
    t["eval"].update(every=2, k=2)
    t["run"].update(steps=3, save_every=1)
    path = tmp_path / "efficiency-chain-small.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert rex.main(["--config", str(path)]) == 0
    out = tmp_path / "results" / "efficiency-chain"
    summary = (out / "summary.md").read_text()
    assert summary.index("Pre-registered conditions") < summary.index("Validity gate") < summary.index("Paired")
    assert "tiny-chain@1" in summary and "sha256" in summary
    for model in ("tiny-chain", "tiny-chain-b1"):
        assert (out / model / "summary.md").is_file()
        rows = [yaml.safe_load(line) for line in (out / model / "adaptive-s0" / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2, 3] and all(0 <= r["rho"] <= 1 for r in train)
        assert all(r["optimizer_steps"] == 1 and "all_wrong_frac" in r for r in train)
