"""The rollout-efficiency benchmark: the runner end to end on a tiny random Llama (outputs, skip, resume) and the
report's curve arithmetic (rollouts to reach a target, seed means) against hand-computed curves.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks.rl import rollout_efficiency as eff
from benchmarks.rl.efficiency_summary import (RunRecord, binomial_se, build_report, mean_curve, rollouts_to_reach,
                                           summary_markdown)
from tiny_lm import save_tiny

K, G, STEPS = 2, 2, 2
VARIANTS = textwrap.dedent("""\
    - {name: prepo, overrides: {selection.strategy: ppl, algorithm.weighting: entropy}}
    - {name: ppl, overrides: {selection.strategy: ppl, algorithm.weighting: none}}
    - {name: random, overrides: {selection.strategy: random, algorithm.weighting: none}}
    - {name: dynamic, overrides: {selection.strategy: dynamic, algorithm.weighting: none}}
    - {name: greso, overrides: {selection.strategy: greso, algorithm.weighting: none}}
""")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny(folder)
    return folder


def write_config(tmp_path, model_dir, name: str, variants: str = VARIANTS) -> str:
    text = textwrap.dedent(f"""\
        name: {name}
        runs_root: {tmp_path}/runs
        results_root: {tmp_path}/results
        reference: random
        seeds: [0]
        notes: tiny test configuration
        train:
          model: {{name_or_path: {model_dir}}}
          data: {{train: arith, train_size: 40, eval_size: 6, system_prompt: Answer with a single number.}}
          selection: {{num_candidates: 5, k: {K}, max_rounds: 2}}
          rollout: {{group_size: {G}, max_new_tokens: 3}}
          optim: {{lr: 1.0e-3}}
          eval: {{every: 1}}
          run: {{steps: {STEPS}, save_every: 1, progress: false, threads: 1}}
        variants:
        """) + textwrap.indent(variants, "  ")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def rows_of(results, run):
    return [json.loads(line) for line in (results / run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_runner_end_to_end_then_skips(tmp_path, tiny_model, monkeypatch):
    cfg = eff.load_efficiency_config(write_config(tmp_path, tiny_model, "tiny"))
    outcomes = eff.run_all(cfg, "cmd", log=lambda msg: None)
    runs = ["prepo-s0", "ppl-s0", "random-s0", "dynamic-s0", "greso-s0"]
    assert [o.run for o in outcomes] == runs
    assert all(o.action == "fresh" and o.complete for o in outcomes)
    results = cfg.results_dir
    for run in runs:
        rows = rows_of(results, run)
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        assert [r["step"] for r in train] == [1, 2]
        assert [r["step"] for r in evals] == [0, 1, 2]         # before, every step, (no duplicate at the end)
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in evals)
        cumulative = np.cumsum([r["rollouts_step"] for r in train])
        assert [r["rollouts"] for r in train] == cumulative.tolist()
        assert [r["rollouts"] for r in evals] == [0] + cumulative.tolist()
        if run.split("-")[0] in ("prepo", "ppl", "random"):  # fixed budget per step: K prompts × G rollouts
            assert cumulative.tolist() == [K * G, 2 * K * G]
        elif run.startswith("dynamic"):                     # K prompts a round, 1 to max_rounds = 2 rounds
            assert all(K * G <= r["rollouts_step"] <= 2 * K * G for r in train)
        else:                                               # greso: ≤ ⌈K / (1 − 0.25)⌉ = 3 survivors a round
            assert all(r["rollouts_step"] % G == 0 and r["rollouts_step"] <= 2 * 3 * G for r in train)
        status = json.loads((results / run / "status.json").read_text())
        assert status["complete"] and status["steps_done"] == STEPS
        assert (results / run / "config.yaml").is_file()
        assert not (cfg.runs_dir / run / "checkpoints").exists()  # removed once complete
    prepo_rows = [r for r in rows_of(results, "prepo-s0") if r["kind"] == "train"]
    assert all(r["ppl_window_lo"] is not None for r in prepo_rows)

    summary = (results / "summary.md").read_text()
    assert "Made by `cmd`" in summary and "tiny test configuration" in summary
    for variant in ("prepo", "ppl", "random", "dynamic", "greso"):
        assert f"| {variant} | 1/1 |" in summary
    png = (results / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # a rerun trains nothing: every run is finished
    monkeypatch.setattr("prepo.trainer.Trainer.__init__", lambda *a, **k: pytest.fail("a finished run was retrained"))
    again = eff.run_all(cfg, "cmd", log=lambda msg: None)
    assert [o.action for o in again] == ["skipped"] * len(runs)

    # summarize-only from the results alone (run dirs gone, as on a fresh clone)
    import shutil

    shutil.rmtree(cfg.runs_dir)
    (results / "summary.md").unlink()
    path = write_config(tmp_path, tiny_model, "tiny")
    assert eff.main(["--config", path, "--summarize-only"]) == 0
    command = f"python -m benchmarks.rl.rollout_efficiency --config {path}"
    assert (results / "summary.md").read_text() == summary.replace("`cmd`", f"`{command}`")


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, tiny_model, monkeypatch):
    only_random = "- {name: random, overrides: {selection.strategy: random, algorithm.weighting: entropy}}\n"
    straight = eff.load_efficiency_config(write_config(tmp_path, tiny_model, "straight", only_random))
    eff.run_all(straight, "cmd", log=lambda msg: None)

    cut = eff.load_efficiency_config(write_config(tmp_path, tiny_model, "cut", only_random))
    from prepo.trainer import Trainer

    original = Trainer.train_step

    def stop_after_first_step(self):
        if self.step == 1:  # a Ctrl-C while step 2 generates: the trainer saves step 1's checkpoint and returns
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", stop_after_first_step)
    with pytest.raises(eff.Interrupted):
        eff.run_all(cut, "cmd", log=lambda msg: None)
    status = json.loads((cut.results_dir / "random-s0" / "status.json").read_text())
    assert status == {**status, "complete": False, "steps_done": 1}
    assert "incomplete, 1/2 steps" in (cut.results_dir / "summary.md").read_text()

    monkeypatch.setattr(Trainer, "train_step", original)
    changed = eff.load_efficiency_config(write_config(tmp_path, tiny_model, "cut", only_random))
    changed.variants[0].overrides["optim.lr"] = 5e-4  # resuming under another configuration is refused
    with pytest.raises(eff.BenchmarkConfigError, match="optim.lr"):
        eff.run_all(changed, "cmd", log=lambda msg: None)
    (outcome,) = eff.run_all(cut, "cmd", log=lambda msg: None)
    assert outcome.action == "resumed from step-000001" and outcome.complete
    a, b = rows_of(straight.results_dir, "random-s0"), rows_of(cut.results_dir, "random-s0")
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    for ra, rb in zip(a, b):  # the resumed run samples and updates exactly as the uninterrupted one
        for key in ("rollouts", "reward_mean", "accuracy", "loss", "weight_min", "weight_max"):
            if ra.get(key) is None:
                assert rb.get(key) is None
            else:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), key
    changed = eff.load_efficiency_config(write_config(tmp_path, tiny_model, "straight", only_random))
    changed.variants[0].overrides["rollout.max_new_tokens"] = 4  # a finished run under another one: refused too
    with pytest.raises(eff.BenchmarkConfigError, match="rollout.max_new_tokens"):
        eff.run_all(changed, "cmd", log=lambda msg: None)


def test_plan_runs_the_headline_variants_first_seed_by_seed(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("name: p\nseeds: [3, 4]\ntrain: {}\nreference: b\nvariants:\n"
                    "  - {name: a, seeds: [0, 1, 2]}\n  - {name: b}\n  - {name: c, seeds: [7]}\n"
                    "  - {name: d, seeds: [5, 6, 8]}\n")
    cfg = eff.load_efficiency_config(path)
    assert [eff.run_name(v, s) for v, s in cfg.plan()] == ["a-s0", "d-s5", "a-s1", "d-s6", "a-s2", "d-s8",
                                                           "b-s3", "c-s7", "b-s4"]


@pytest.mark.parametrize("text, match", [
    ("name: x\ntrain: {}\nvariants: []\n", "variants"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: b\n", "reference"),
    ("name: x\ntrain: {}\nvariants: [{name: a}, {name: a}]\nreference: a\n", "distinct"),
    ("name: x\ntrain: {}\nvariants: [{name: a, overrides: {selection.strategy: best}}]\nreference: a\n", "strategy"),
    ("name: x\ntrain: {}\nvariants: [{name: a, seeds: [1, 1]}]\nreference: a\n", "seeds"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nstep: 3\n", "unknown"),
    ("name: a/b\ntrain: {}\nvariants: [{name: a}]\nreference: a\n", "name"),
    # read onto EfficiencyConfig by OmegaConf (prepo.structured): each error names its key
    ("name: x\nvariants: [{name: a}]\nreference: a\n", r"^train: missing"),
    ("name: x\ntrain: 3\nvariants: [{name: a}]\nreference: a\n", r"^train: expected a mapping, got 3$"),
    ("name: x\ntrain: {}\nvariants: {name: a}\nreference: a\n", r"^variants: expected a list"),
    ("name: x\ntrain: {}\nvariants: [{overrides: {}}]\nreference: a\n", r"variants\[0\]\.name"),
    ("name: x\ntrain: {}\nvariants: [{name: a, seed: [1]}]\nreference: a\n", r"Key 'seed' not in 'Variant'"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nseeds: [one]\n", r"^seeds\[0\]"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nseeds: []\n", r"^seeds: expected distinct"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nmetric: best\n", r"^metric: expected one of"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\ngate_min_share: 1.5\n", r"^gate_min_share: expected"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\ngate_min_gain: much\n",
     r"^gate_min_gain: cannot read 'much' as float$"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nmodels: [m, m]\n", r"^models: expected .*distinct"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\ntransfer_benchmark: a/b\n", "^transfer_benchmark"),
    ("name: x\ntrain: {}\nvariants: [{name: a}]\nreference: a\nmodel: m\n", r"unknown key\(s\) \['model'\]"),
    ("name: x\ntrain: {optim: {lr: 0}}\nvariants: [{name: a}]\nreference: a\n",
     r"^variant 'a': optim\.lr: must be > 0"),
    ("name: x\ntrain: {}\nvariants: [{name: a, overrides: {optim.lrr: 1}}]\nreference: a\n",
     r"^variant 'a': unknown config key\(s\) optim\.lrr; valid keys: optim\.lr"),
])
def test_bad_benchmark_config(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(eff.BenchmarkConfigError, match=match):
        eff.load_efficiency_config(path)


def test_config_with_a_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "name: base\nseeds: [0, 1]\nreference: a\ntrain: {optim: {lr: 1.0e-6, weight_decay: 0.5}, run: {steps: 3}}\n"
        "variants: [{name: a}, {name: b}]\n")
    derived = tmp_path / "sub" / "derived.yaml"
    derived.parent.mkdir()
    derived.write_text("base: ../base.yaml\nname: derived\ntrain: {optim: {lr: 2.0e-5}}\nvariants: [{name: a}]\n")
    cfg = eff.load_efficiency_config(derived)
    assert cfg.name == "derived" and [(v.name, v.seeds) for v in cfg.variants] == [("a", [0, 1])]
    run = eff.train_config(cfg, cfg.variants[0], 0)
    assert (run.optim.lr, run.optim.weight_decay, run.run.steps) == (2e-5, 0.5, 3)  # merged section by section
    derived.write_text("base: ../base.yaml\ntrain: {}\n")
    with pytest.raises(eff.BenchmarkConfigError, match="name of its own"):
        eff.load_efficiency_config(derived)
    derived.write_text("base: derived.yaml\nname: loop\n")
    with pytest.raises(eff.BenchmarkConfigError, match="includes itself"):
        eff.load_efficiency_config(derived)


def test_benchmark_values_are_typed_and_literal(tmp_path):
    """Values are converted to the field's type; train values are taken literally, ${...} included."""
    path = tmp_path / "b.yaml"
    path.write_text("{name: x, reference: a, variants: [{name: a}], gate_min_gain: 1, keep_checkpoints_after: yes,"
                    " train: {data: {system_prompt: 'x ${oc.env:HOME}'}, run: {steps: '2'}}}\n")
    cfg = eff.load_efficiency_config(path)
    run = eff.train_config(cfg, cfg.variants[0], 3)
    assert (cfg.gate_min_gain, cfg.keep_checkpoints_after, cfg.variants[0].seeds) == (1.0, True, [0])
    assert (run.data.system_prompt, run.run.steps, run.run.name) == ("x ${oc.env:HOME}", 2, "a-s3")


def test_shipped_configs_load():
    paths = sorted(Path("configs").glob("efficiency-*.yaml"))
    assert {"efficiency-cpu.yaml", "efficiency-gpu.yaml"} <= {p.name for p in paths}
    for path in paths:
        cfg = eff.load_efficiency_config(path)
        names = [v.name for v in cfg.variants]
        if names == [cfg.reference]:  # one strategy: it measures a testbed condition (transfer), not a comparison
            assert path.stem.endswith("-transfer") and "base" in path.read_text()
            continue
        assert {"prepo", "random"} <= set(names)
        derived = "base" in path.read_text()  # a variation of another benchmark may compare fewer strategies
        assert derived or {"ppl", "dynamic", "greso"} <= set(names)
        assert all(len(v.seeds) >= 3 for v in cfg.variants if v.name in ("prepo", "ppl", "random"))
        configs = {v.name: eff.train_config(cfg, v, v.seeds[0]) for v in cfg.variants}
        assert configs["prepo"].selection.strategy == "ppl" and configs["prepo"].algorithm.weighting != "none"
        assert "ppl" not in configs or configs["ppl"].algorithm.weighting == "none"
        assert configs["random"].selection.k == configs["prepo"].selection.k
        assert configs["random"].selection.num_candidates == configs["prepo"].selection.num_candidates
        assert configs["prepo"].rollout.group_size == 8
    cfg = eff.load_efficiency_config("configs/efficiency-gpu.yaml")
    gpu = eff.train_config(cfg, cfg.variants[0], 0)
    assert gpu.selection.num_candidates == 5 * gpu.selection.k
    assert (gpu.algorithm.eps_low, gpu.algorithm.eps_high, gpu.rollout.temperature) == (0.2, 0.28, 1.0)
    assert gpu.rollout.max_new_tokens >= 2048


# --- the curve arithmetic, by hand ----------------------------------------------------------------------------------

@pytest.mark.parametrize("xs, ys, target, expected", [
    ([0, 100, 200, 300], [0.1, 0.2, 0.4, 0.5], 0.3, 150.0),        # halfway between 0.2 and 0.4
    ([0, 100, 200, 300], [0.1, 0.2, 0.4, 0.5], 0.4, 200.0),        # exactly on an evaluation
    ([0, 100, 200, 300], [0.1, 0.2, 0.4, 0.5], 0.25, 125.0),
    ([0, 100, 200, 300], [0.1, 0.35, 0.2, 0.5], 0.3, 80.0),        # first crossing, not the last
    ([0, 100, 200, 300], [0.1, 0.2, 0.4, 0.5], 0.05, 0.0),         # already there at the start
    ([32, 96], [0.5, 0.5], 0.5, 32.0),
    ([0, 100, 200, 300], [0.1, 0.2, 0.4, 0.5], 0.6, None),         # never reached
    ([], [], 0.3, None),
])
def test_rollouts_to_reach_by_hand(xs, ys, target, expected):
    got = rollouts_to_reach(xs, ys, target)
    assert got == (None if expected is None else pytest.approx(expected))


def test_rollouts_to_reach_random_curves():
    rng = np.random.default_rng()
    for _ in range(200):
        n = int(rng.integers(1, 12))
        xs = np.cumsum(rng.integers(0, 50, n)).astype(float)
        ys = rng.random(n)
        target = float(rng.random())
        got = rollouts_to_reach(xs, ys, target)
        above = np.nonzero(ys >= target)[0]
        if above.size == 0:
            assert got is None
            continue
        i = int(above[0])
        assert np.all(ys[:i] < target)
        lo = xs[i - 1] if i else xs[0]
        assert lo - 1e-9 <= got <= xs[i] + 1e-9
        if i and xs[i] > xs[i - 1]:  # the straight line between the bracketing evaluations passes the target there
            assert np.interp(got, xs[i - 1:i + 1], ys[i - 1:i + 1]) == pytest.approx(target)


def test_rollouts_to_reach_rejects_bad_curves():
    with pytest.raises(ValueError, match="xs, ys"):
        rollouts_to_reach([0, 1], [0.1], 0.2)
    with pytest.raises(ValueError, match="non-decreasing"):
        rollouts_to_reach([0, 200, 100], [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(ValueError, match="target"):
        rollouts_to_reach([0, 1], [0.1, 0.2], math.nan)


def test_mean_curve_by_hand():
    same = mean_curve([([0, 10, 20], [0.1, 0.3, 0.2]), ([0, 10, 20], [0.3, 0.1, 0.4])])
    assert same.xs.tolist() == [0, 10, 20]
    assert same.mean == pytest.approx([0.2, 0.2, 0.3])
    assert same.lo == pytest.approx([0.1, 0.1, 0.2]) and same.hi == pytest.approx([0.3, 0.3, 0.4])
    # different evaluation points: union of points inside the common range [0, 20], each curve interpolated
    mixed = mean_curve([([0, 10, 30], [0.0, 0.2, 0.6]), ([0, 20], [0.2, 0.6])])
    assert mixed.xs.tolist() == [0, 10, 20]
    assert mixed.mean == pytest.approx([(0.0 + 0.2) / 2, (0.2 + 0.4) / 2, (0.4 + 0.6) / 2])
    with pytest.raises(ValueError, match="curves"):
        mean_curve([])


def _record(variant, seed, xs, ys, complete=True):
    rows = [{"kind": "eval", "step": i, "rollouts": x, "accuracy": y, "dataset": "arith", "time_eval": 1.0}
            for i, (x, y) in enumerate(zip(xs, ys))]
    rows += [{"kind": "train", "step": i, "rollouts": x, "time_step": 2.0} for i, x in enumerate(xs) if i]
    return RunRecord(variant, seed, rows, complete, len(xs) - 1)


def test_report_target_ratio_and_table():
    runs = [_record("random", 0, [0, 100, 200], [0.1, 0.3, 0.4]),
            _record("random", 1, [0, 100, 200], [0.1, 0.4, 0.5]),          # target: mean final 0.45
            _record("prepo", 0, [0, 100, 200], [0.1, 0.5, 0.5]),
            _record("prepo", 1, [0, 100, 200], [0.1, 0.4, 0.6]),           # mean curve 0.1, 0.45, 0.55
            _record("greso", 0, [0, 150, 300], [0.1, 0.2, 0.3]),            # never reaches 0.45
            _record("ppl", 0, [0, 100], [0.1, 0.9], complete=False)]        # incomplete: left out
    report = build_report(runs, {"prepo": 2, "random": 2, "greso": 1, "ppl": 1}, "random", "arith", eval_size=100)
    assert report.target == pytest.approx(0.45)
    by = {s.variant: s for s in report.stats}
    # random's mean curve 0.1, 0.35, 0.45 reaches 0.45 at 200; prepo's (0.1, 0.45, 0.55) at 100
    assert by["random"].reach == pytest.approx(200.0) and by["prepo"].reach == pytest.approx(100.0)
    assert by["prepo"].reach_seeds == pytest.approx([100 * 0.35 / 0.4 + 0, 100.0 + 100 * 0.05 / 0.2])
    assert by["greso"].reach is None and by["ppl"].curve is None and not by["ppl"].complete
    assert by["prepo"].final == [0.5, 0.6] and by["prepo"].seconds == [2 * 2.0 + 3 * 1.0] * 2
    text = summary_markdown(report, name="t", command="cmd", run_status=[("ppl-s0", "incomplete")])
    line = next(ln for ln in text.splitlines() if ln.startswith("| prepo |"))
    assert "2/2" in line and "0.550 ± 0.071 [0.500–0.600]" in line and "| 100 |" in line and "2.00×" in line
    assert "not reached" in next(ln for ln in text.splitlines() if ln.startswith("| greso |"))
    assert f"±{binomial_se(0.45, 100):.3f}" in text and "`ppl-s0`: incomplete" in text
    assert "- prepo: held-out change over the run +0.450 ± 0.071" in text  # (0.5 − 0.1, 0.6 − 0.1)


def test_ratio_text():
    from benchmarks.rl.efficiency_summary import ratio_text

    assert ratio_text(300.0, 100.0, True) == "3.00×"
    assert ratio_text(100.0, 400.0, True) == "0.25×"
    assert ratio_text(300.0, None, True) == "not reached"
    assert ratio_text(0.0, 0.0, True).startswith("n/a") and ratio_text(100.0, 0.0, True).startswith("n/a")
    assert ratio_text(300.0, 100.0, False) == "–" and ratio_text(None, 100.0, True) == "–"


def test_binomial_se():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.0, 10) == 0.0
    assert math.isnan(binomial_se(0.3, 0))


# --- task diagnostics ---------------------------------------------------------------------------------------------

def _reference_spearman(x, y):
    """Brute force: rank = 1 + #smaller + (#equal − 1) / 2, then Pearson in float64."""
    def ranks(v):
        return np.array([1 + sum(w < u for w in v) + (sum(w == u for w in v) - 1) / 2 for u in v], dtype=np.float64)
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_spearman_against_brute_force():
    from benchmarks.rl.efficiency_diagnostics import spearman

    rng = np.random.default_rng()
    for _ in range(50):
        n = int(rng.integers(3, 30))
        x = rng.integers(0, 6, n).astype(float)        # many ties, like pass rates in eighths
        y = rng.normal(size=n) if rng.random() < 0.5 else rng.integers(0, 4, n).astype(float)
        got = spearman(x.tolist(), y.tolist())
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert got is None
        else:
            assert got == pytest.approx(_reference_spearman(x, y), abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="lengths"):
        spearman([1, 2, 3], [1, 2])


def test_diagnostics_on_the_tiny_model(tmp_path, tiny_model):
    from benchmarks.rl.efficiency_diagnostics import measure, to_markdown

    only_random = "- {name: random, overrides: {selection.strategy: random}}\n"
    d = measure(write_config(tmp_path, tiny_model, "diag", only_random), per_tier=2)
    from prepo.tasks.arith import ARITH_TIERS

    assert set(d["tiers"]) <= set(ARITH_TIERS) and len(d["tiers"]) >= 2
    for t in d["tiers"].values():
        assert t["prompts"] == 2 and 0 < t["ppl_min"] <= t["ppl_mean"] <= t["ppl_max"]
        assert 0.0 <= t["pass_rate"] <= 1.0 and 0.0 <= t["zero_variance"] <= 1.0 and 0.0 <= t["greedy"] <= 1.0
    text = to_markdown(d)
    assert all(f"| {tier} | 2 |" in text for tier in d["tiers"])


def test_arith_runs_use_the_worked_example_format(tmp_path, tiny_model):
    """The benchmark's arith prompts (training and held-out) carry ARITH_FORMAT's worked turns and reply prefix."""
    from prepo.tasks.prompts import ARITH_FORMAT
    from prepo.trainer import Trainer, prompt_format

    only_random = "- {name: random, overrides: {selection.strategy: random}}\n"
    cfg = eff.load_efficiency_config(write_config(tmp_path, tiny_model, "fmt", only_random))
    trainer = Trainer(eff.train_config(cfg, cfg.variants[0], 0), tmp_path / "run")
    text = trainer.tokenizer.decode(trainer.prompts[0].input_ids)
    ex = trainer.train_examples[0]
    assert text.replace(" ", "").endswith(ex.meta["expr"].replace(" ", "") + "=")  # the reply starts "a + b ="
    assert text.replace(" ", "").count("=") == len(ARITH_FORMAT.few_shot) + 1
    assert prompt_format(trainer.cfg.data, "arith")["few_shot"] == ARITH_FORMAT.few_shot
    assert trainer._eval_formats()["response_prefix"] == {"arith": ARITH_FORMAT.response_prefix}
    assert prompt_format(trainer.cfg.data, "math500") == {"system_prompt": "Answer with a single number.",
                                                          "prompt_template": "{question}", "few_shot": (),
                                                          "response_prefix": ""}


def test_sigterm_still_stops_a_runner_started_with_sigint_ignored():
    """`nohup ... &` starts the runner with SIGINT ignored; SIGTERM (→ SIGINT) must still reach the trainer as a
    KeyboardInterrupt, its "save a checkpoint and stop"."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        eff._forward_sigterm()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_summary_names_the_update_regime_and_checks_clip_higher(tmp_path, tiny_model):
    """On-policy configs say the PPO ratio stays 1; a mini-batch config says how many optimizer steps a rollout batch
    takes, and its conditions gain the 'clip-higher acts' row, measured from the runs' clip_frac."""
    from benchmarks.rl.efficiency_summary import clip_fraction
    from benchmarks.rl.efficiency_summary import regime_line

    assert "on-policy" in regime_line(1, 1) and "does not act" in regime_line(1, 1)
    assert "3 optimizer mini-batches × 2 epochs" in regime_line(2, 3) and "clip-higher acts" in regime_line(2, 3)
    variants = textwrap.dedent("""\
        - {name: prepo, overrides: {selection.strategy: ppl, algorithm.weighting: entropy}}
        - {name: random, overrides: {selection.strategy: random, algorithm.weighting: none}}
    """)
    for sub in ("on", "mb"):
        (tmp_path / sub).mkdir()
    on = eff.load_efficiency_config(write_config(tmp_path / "on", tiny_model, "on", variants))
    path = Path(write_config(tmp_path / "mb", tiny_model, "mb", variants))
    path.write_text(path.read_text().replace("  optim: {lr: 1.0e-3}",
                                             "  optim: {lr: 1.0e-3}\n  algorithm: {mini_batches: 2, ppo_epochs: 2}"))
    mb = eff.load_efficiency_config(path)
    for cfg in (on, mb):
        eff.run_all(cfg, "cmd", log=lambda msg: None)
    text_on, text_mb = ((cfg.results_dir / "summary.md").read_text() for cfg in (on, mb))
    assert "Update regime: **on-policy**" in text_on and "clip-higher acts: share" not in text_on
    walls = [json.loads((on.results_dir / run / "status.json").read_text())["wall_seconds"]
             for run in ("prepo-s0", "random-s0")]
    assert f"2 of 2 planned runs complete: {sum(walls) / 3600:.2f} h of run time" in text_on
    assert f"≈ {sum(walls) / 7200:.2f} h as two runs at once" in text_on
    assert "Update regime: **2 optimizer mini-batches × 2 epochs per rollout batch**" in text_mb
    row = next(ln for ln in text_mb.splitlines() if "clip-higher acts: share" in ln)
    records, _ = eff.collect_runs(eff.per_model(mb)[0])
    cf = clip_fraction(records)
    assert cf is not None and f"| {cf:.4f} |" in row
    steps = [r["optimizer_steps"] for rec in records for r in rec.train_rows()]
    assert all(s in (2, 4) for s in steps) and 4 in steps   # 2 epochs × (1 or 2 parts: K = 2 groups, zero-var skipped)
