"""The pre-registered conditions of a testbed comparison, checked from the runs and printed before any comparison:
whether the testbed is in the regime the paper claims (RL teaches, most early groups fail), model by model.

Written down before the runs (issue #17); a testbed that fails one is changed, never the strategies.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import model_slug
from benchmarks.rl.efficiency_summary import RunRecord, clip_fraction, clipped_share, read_metrics

SPEARMAN_MAX = -0.3          # Spearman(question perplexity, pass rate) over the training tiers, at most
ZERO_VARIANCE_MIN = 0.40     # the reference's zero-variance share of groups in the first quarter, at least ...
GREEDY_GAIN_MIN = 0.10       # the reference's greedy held-out gain, at least (RL teaches, not only sharpens) ...
SAMPLED_GAIN_MIN = 0.15      # ... and its avg@k gain, at least ...
SEED_SHARE_MIN = 0.8         # ... on at least this share of seeds
TRANSFER_MIN = 0.05          # training on the short tiers alone lifts the longest held-out tier by at least this
CLIPPED_MAX = 0.5            # share of optimizer steps whose gradient norm was clipped, below this


def _first_last(rows: Sequence[dict], key: str) -> tuple[float, float] | None:
    evals = sorted((r for r in rows if r.get("kind") == "eval" and r.get(key) is not None), key=lambda r: r["step"])
    return (float(evals[0][key]), float(evals[-1][key])) if len(evals) >= 2 else None


def gains(records, key: str) -> list[float]:
    """Final minus initial held-out ``key`` of each complete record."""
    out = []
    for r in records:
        pair = _first_last(r.rows, key) if r.complete else None
        if pair is not None:
            out.append(pair[1] - pair[0])
    return out


def first_quarter(records, key: str) -> float | None:
    """Mean of train-row ``key`` over the first quarter of each record's steps, then over records."""
    means = []
    for r in records:
        rows = [row for row in r.train_rows() if row.get(key) is not None]
        head = [row[key] for row in rows if int(row["step"]) <= max(1, r.steps // 4)]
        if head:
            means.append(float(np.mean(head)))
    return float(np.mean(means)) if means else None


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**held**" if ok else "**failed**")


def _share_line(values: Sequence[float], threshold: float) -> tuple[bool | None, str]:
    if not values:
        return None, "no complete run"
    hits = sum(v >= threshold for v in values)
    ok = hits >= SEED_SHARE_MIN * len(values)
    return ok, f"{hits}/{len(values)} seeds ≥ {threshold:.2f} (range {min(values):+.3f}..{max(values):+.3f})"


def testbed_spearman(results_root: str | Path, model: str | None) -> float | None:
    """Spearman over the training tiers from ``benchmarks.rl.testbed_report --save`` for ``model`` (None: not run)."""
    if model is None:
        return None
    path = Path(results_root) / f"testbed-{model_slug(model)}.json"
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["train_tiers"]["spearman"])


def transfer_gains(results_root: str | Path, benchmark: str | None, model: str | None, key: str) -> list[float]:
    """Gains of the transfer benchmark's runs (trained on short tiers, evaluated on the longest) for ``model``."""
    if not benchmark:
        return []
    folder = Path(results_root) / f"efficiency-{benchmark}"
    if model is not None and (folder / model_slug(model)).is_dir():
        folder = folder / model_slug(model)
    out = []
    for status in sorted(folder.glob("*/status.json")):
        if json.loads(status.read_text()).get("complete"):
            rows = read_metrics(status.parent / "metrics.jsonl")
            out += gains([RunRecord("t", 0, rows, True, 0)], key)
    return out


def condition_lines(cfg, per_model: Sequence[tuple[str | None, list]], off_policy: bool = False) -> list[str]:
    """The '## Pre-registered conditions' section: one table row per condition and model; ``off_policy`` (several
    optimizer steps per rollout batch) adds the 'clip-higher acts' row."""
    ref = cfg.reference
    lines = ["## Pre-registered conditions (checked before any comparison)", "",
             "Written down before the runs: the comparison tests the paper's claim only where all of them hold. "
             f"Reference strategy: `{ref}`.", "",
             "| model | condition | measured | verdict |", "| --- | --- | --- | --- |"]
    for model, records in per_model:
        name = model or (cfg.train.get("model") or {}).get("name_or_path", "model")
        refs = [r for r in records if r.variant == ref]
        rho = testbed_spearman(cfg.results_root, name)
        lines.append(f"| {name} | Spearman(question ppl, pass rate) ≤ {SPEARMAN_MAX} over the training tiers | "
                     f"{'–' if rho is None else f'{rho:+.3f}'} | {_verdict(None if rho is None else rho <= SPEARMAN_MAX)} |")
        zv, wrong = first_quarter(refs, "zero_variance_frac"), first_quarter(refs, "all_wrong_frac")
        ok = None if zv is None else (zv >= ZERO_VARIANCE_MIN and wrong is not None and wrong >= zv / 2)
        lines.append(f"| {name} | `{ref}`: ≥ {ZERO_VARIANCE_MIN:.0%} of groups zero-variance in the first quarter, "
                     "mostly all-wrong | "
                     + ("–" if zv is None else f"{zv:.2f} zero-variance, {wrong if wrong is not None else float('nan'):.2f} "
                        "all-wrong") + f" | {_verdict(ok)} |")
        ok_g, text_g = _share_line(gains(refs, "greedy_accuracy"), GREEDY_GAIN_MIN)
        ok_s, text_s = _share_line(gains(refs, "accuracy"), SAMPLED_GAIN_MIN)
        lines.append(f"| {name} | `{ref}` raises greedy held-out accuracy by ≥ {GREEDY_GAIN_MIN:.2f} on ≥ "
                     f"{SEED_SHARE_MIN:.0%} of seeds (teaching) | {text_g} | {_verdict(ok_g)} |")
        lines.append(f"| {name} | `{ref}` raises avg@k by ≥ {SAMPLED_GAIN_MIN:.2f} on ≥ {SEED_SHARE_MIN:.0%} of "
                     f"seeds | {text_s} | {_verdict(ok_s)} |")
        bench = getattr(cfg, "transfer_benchmark", None)
        if bench:
            tg = transfer_gains(cfg.results_root, bench, model, "greedy_accuracy")
            ts = transfer_gains(cfg.results_root, bench, model, "accuracy")
            ok = None if not tg else float(np.mean(tg)) >= TRANSFER_MIN or float(np.mean(ts)) >= TRANSFER_MIN
            text = "–" if not tg else (f"greedy {np.mean(tg):+.3f}, avg@k {np.mean(ts):+.3f} "
                                       f"(mean of {len(tg)} seeds, `{bench}`)")
            lines.append(f"| {name} | training on the short tiers alone lifts the longest held-out tier by ≥ "
                         f"{TRANSFER_MIN:.2f} (transfer) | {text} | {_verdict(ok)} |")
        share, steps = clipped_share(records)
        lines.append(f"| {name} | share of optimizer steps with a clipped gradient < {CLIPPED_MAX:.0%} (all runs) | "
                     f"{'–' if share is None else f'{share:.1%} of {steps}'} | "
                     f"{_verdict(None if share is None else share < CLIPPED_MAX)} |")
        if off_policy:
            cf = clip_fraction(records)
            lines.append(f"| {name} | clip-higher acts: share of tokens with a clipped PPO ratio > 0 (all runs) | "
                         f"{'–' if cf is None else f'{cf:.4f}'} | {_verdict(None if cf is None else cf > 0)} |")
    return lines + [""]


def model_lines(cfg) -> list[str]:
    """The models compared, with their weights' sha256 (the same recipe builds the same weights on any x86-64)."""
    from prepo.tasks.tiny_model import is_tiny_name, model_folder

    lines = ["## Models", ""]
    for name in cfg.models:
        sha = "–"
        if is_tiny_name(name):
            folder = model_folder(name)
            if (folder / "recipe.json").is_file():
                sha = json.loads((folder / "recipe.json").read_text()).get("sha256", "–")
        lines.append(f"- `{name}`: weights sha256 `{sha}`")
    return lines + [""]
