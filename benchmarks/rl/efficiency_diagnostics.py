"""Does a benchmark task give PREPO's curriculum something to work with? Per difficulty tier of the starting policy:
question perplexity (what the window sorts by), sampled pass rate, zero-variance groups, greedy accuracy.

usage: python -m benchmarks.rl.efficiency_diagnostics --config configs/efficiency-cpu.yaml [--per-tier 6]
Writes diagnostics.md (and .json) beside summary.md. Prompts are encoded, scored and rolled out by a real Trainer of
the reference variant, so the numbers describe exactly what the runs see.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.rl.rollout_efficiency import BenchmarkConfigError, load_efficiency_config, train_config


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    a = np.asarray(values, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson on average ranks); None when either side is constant or too short."""
    if len(x) != len(y):
        raise ValueError(f"x, y: lengths differ ({len(x)} vs {len(y)})")
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else None


def measure(config_path: str, per_tier: int, seed: int = 0) -> dict:
    """Per-tier statistics of the reference variant's starting policy on ``per_tier`` training prompts per tier."""
    from prepo.step import generate, prompt_scores, reward_groups
    from prepo.trainer import Trainer

    cfg = load_efficiency_config(config_path)
    variant = next(v for v in cfg.variants if v.name == cfg.reference)
    config = train_config(cfg, variant, seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run")
        by_tier: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(trainer.train_examples):
            tier = ex.meta.get("tier", "all")
            if len(by_tier[tier]) < per_tier:
                by_tier[tier].append(i)
        indices = [i for idx in by_tier.values() for i in idx]
        t0 = time.perf_counter()
        ppl = dict(zip(indices, prompt_scores(trainer.policy, trainer.prompts, indices,
                                              config.selection.score_batch_tokens)))
        groups = reward_groups(trainer.train_examples, indices,
                               generate(trainer.engine, trainer.prompts, indices, config.rollout, seed))
        greedy = trainer.engine.generate([list(trainer.prompts[i].input_ids) for i in indices], n=1,
                                         max_new_tokens=config.rollout.max_new_tokens, temperature=0.0)
        greedy_groups = reward_groups(trainer.train_examples, indices, [[r] for r in greedy])
        seconds = time.perf_counter() - t0
    pass_rate = {g.prompt_index: float(np.mean(g.rewards)) for g in groups}
    zero_var = {g.prompt_index: g.zero_variance for g in groups}
    greedy_ok = {g.prompt_index: g.rewards[0] for g in greedy_groups}
    tiers = {}
    for tier, idx in by_tier.items():
        p = np.array([ppl[i] for i in idx])
        tiers[tier] = {"prompts": len(idx), "ppl_mean": float(p.mean()), "ppl_sd": float(p.std()),
                       "ppl_min": float(p.min()), "ppl_max": float(p.max()),
                       "pass_rate": float(np.mean([pass_rate[i] for i in idx])),
                       "zero_variance": float(np.mean([zero_var[i] for i in idx])),
                       "greedy": float(np.mean([greedy_ok[i] for i in idx]))}
    return {"config": config_path, "model": config.model.name_or_path, "group_size": config.rollout.group_size,
            "temperature": config.rollout.temperature, "max_new_tokens": config.rollout.max_new_tokens,
            "tiers": tiers, "spearman_ppl_pass": spearman([ppl[i] for i in indices], [pass_rate[i] for i in indices]),
            "seconds": seconds, "results_dir": str(cfg.results_dir)}


def to_markdown(d: dict) -> str:
    rho = d["spearman_ppl_pass"]
    lines = [f"# Task diagnostics: `{d['config']}`", "",
             f"Starting policy {d['model']}; G = {d['group_size']} samples at temperature {d['temperature']}, "
             f"{d['max_new_tokens']} new tokens; question-token perplexity as PREPO scores it. "
             f"Spearman(perplexity, pass rate) over all prompts: "
             f"{'n/a' if rho is None else f'{rho:+.2f}'} (the paper reports about −0.2 on DAPO-Math-17K).", "",
             "| tier | prompts | question ppl mean ± sd [min–max] | pass rate (sampled) | zero-variance groups | "
             "greedy accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    for tier, t in d["tiers"].items():
        lines.append(f"| {tier} | {t['prompts']} | {t['ppl_mean']:.1f} ± {t['ppl_sd']:.1f} "
                     f"[{t['ppl_min']:.1f}–{t['ppl_max']:.1f}] | {t['pass_rate']:.2f} | {t['zero_variance']:.2f} | "
                     f"{t['greedy']:.2f} |")
    lines += ["", f"Measured in {d['seconds']:.0f} s (scoring, sampling and greedy decoding)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rl.efficiency_diagnostics",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--per-tier", type=int, default=6, help="training prompts measured per tier")
    args = p.parse_args(argv)
    if args.per_tier < 1:
        p.error("--per-tier must be >= 1")
    try:
        d = measure(args.config, args.per_tier)
    except BenchmarkConfigError as exc:
        print(f"efficiency_diagnostics: {exc}", file=sys.stderr)
        return 2
    out = Path(d["results_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(d, indent=1) + "\n")
    (out / "diagnostics.md").write_text(to_markdown(d))
    print(to_markdown(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
