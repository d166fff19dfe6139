"""Where a testbed policy (``tiny-arith``, ``tiny-chain``) starts: pass rate per tier at a temperature and greedy, and
the Spearman correlation between each question's perplexity (question tokens only) and its pass rate.

usage: python -m benchmarks.rl.testbed_report [--model tiny-chain[@seed]] [--per-tier 64] [--k 8] [--temperature 1.0]
       [--max-new-tokens N] [--save]   (the task is the model's: tiny-chain@1 is scored on tiny-chain problems)
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import RESULTS_DIR, model_slug


def ranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's correlation needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def pass_rates(engine, prompts, examples, *, k: int, temperature: float, max_new_tokens: int, seed: int,
               rows: int = 2048) -> np.ndarray:
    """Per-problem share of ``k`` samples whose answer is right (k=1, temperature 0: greedy)."""
    from prepo.rewards import score_rollouts

    out = np.zeros(len(examples))
    per_call = max(1, rows // k)
    for start in range(0, len(examples), per_call):
        chunk = list(range(start, min(start + per_call, len(examples))))
        rollouts = engine.generate([prompts[i].input_ids for i in chunk], n=k, max_new_tokens=max_new_tokens,
                                   temperature=temperature, seed=seed + start)
        rewards = score_rollouts([examples[chunk[r.prompt_index]] for r in rollouts], [r.text for r in rollouts])
        for r, reward in zip(rollouts, rewards):
            out[chunk[r.prompt_index]] += reward / k
    return out


def testbed_report(model, tokenizer, *, per_tier: int = 64, k: int = 8, temperature: float = 1.0,
                   max_new_tokens: int = 6, seed: int = 0, tiers=None, task: str = "tiny-arith") -> tuple[str, dict]:
    """A markdown table (tier, ppl, pass@T, greedy) and its numbers, on held-out problems of ``task``'s ``tiers``
    (default all); Spearman's correlation over all those problems and within each tier."""
    from prepo.tasks.prompts import encode_prompts
    from prepo.tasks.registry import builtin_tiers, make_builtin
    from prepo.rollout import HFEngine
    from prepo.logprobs import prompt_perplexities

    tiers = builtin_tiers(task) if tiers is None else list(tiers)
    examples = make_builtin(task, per_tier * len(tiers), seed, tiers, split="eval")
    prompts = encode_prompts(tokenizer, examples, score_span="question")
    engine = HFEngine(model, tokenizer)
    ppl = prompt_perplexities(model, prompts, pad_id=tokenizer.pad_token_id).numpy()
    sampled = pass_rates(engine, prompts, examples, k=k, temperature=temperature, max_new_tokens=max_new_tokens,
                         seed=seed)
    greedy = pass_rates(engine, prompts, examples, k=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)
    tier_of = np.array([ex.meta["tier"] for ex in examples])
    lines = [f"| tier | question ppl | pass rate, T = {temperature:g} (k = {k}) | greedy |", "| --- | --- | --- | --- |"]
    table = {}
    for t in tiers:
        m = tier_of == t
        table[t] = {"ppl": float(np.median(ppl[m])), "pass": float(sampled[m].mean()), "greedy": float(greedy[m].mean())}
        lines.append(f"| {t} | {table[t]['ppl']:.2f} | {table[t]['pass']:.3f} | {table[t]['greedy']:.3f} |")
    rho = spearman(ppl, sampled)
    within = [spearman(ppl[tier_of == t], sampled[tier_of == t]) for t in tiers]
    within = [r for r in within if np.isfinite(r)]
    rho_within = float(np.mean(within)) if within else float("nan")
    lines.append(f"| all | {np.median(ppl):.2f} | {sampled.mean():.3f} | {greedy.mean():.3f} |")
    lines.append("")
    lines.append(f"Spearman(question perplexity, pass rate) over {len(examples)} held-out problems: {rho:+.3f}; "
                 f"within a tier (mean over the {len(within)} tiers with both varying): {rho_within:+.3f} "
                 "(paper, DAPO-Math-17K: -0.17 to -0.23). ppl: median per tier; perplexity of the question tokens "
                 "under the policy, pass rate over k samples.")
    return "\n".join(lines), {"tiers": table, "spearman": rho, "spearman_within": rho_within, "n": len(examples),
                              "ppl": ppl.tolist(), "pass": sampled.tolist(), "greedy": greedy.tolist(),
                              "tier_of": tier_of.tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-arith", help="tiny-arith | tiny-chain, optionally @<build seed>")
    p.add_argument("--per-tier", type=int, default=64)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=6)
    p.add_argument("--tiers", default=None, help="comma-separated tiers (default: all)")
    p.add_argument("--config", default=None, help="the efficiency config whose training tiers get their own table "
                   "(default: configs/efficiency-tiny.yaml or configs/efficiency-chain.yaml by task)")
    p.add_argument("--save", action="store_true", help="write results/testbed-<model>.md (all tiers, "
                   "then the training tiers of the efficiency config) and its numbers as JSON beside it")
    args = p.parse_args(argv)
    from prepo.models import load_model_and_tokenizer
    from prepo.tasks.tiny_model import recipe_for, tiny_model_dir, weights_sha256

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    task = recipe_for(args.model).task
    model, tokenizer = load_model_and_tokenizer(args.model)
    sha = weights_sha256(tiny_model_dir(args.model))
    kw = dict(per_tier=args.per_tier, k=args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
              task=task)
    text, numbers = testbed_report(model, tokenizer, tiers=args.tiers.split(",") if args.tiers else None, **kw)
    print(text)
    if args.save:
        import json

        import yaml

        config = args.config or ("configs/efficiency-tiny.yaml" if task == "tiny-arith" else
                                 "configs/efficiency-chain.yaml")
        train_tiers = yaml.safe_load(open(config))["train"]["data"]["tiers"]
        from prepo.tasks.registry import builtin_tiers

        if list(train_tiers) == builtin_tiers(task):   # the training tiers are every tier: the same numbers
            trained, trained_numbers = text, numbers
        else:
            trained, trained_numbers = testbed_report(model, tokenizer, tiers=train_tiers, **kw)
        print(trained)
        slug = model_slug(args.model)
        out = RESULTS_DIR / f"testbed-{slug}.md"
        out.write_text(f"# The {task} testbed policy before RL (model: {args.model}, weights sha256 {sha})\n\n"
                       f"`python -m benchmarks.rl.testbed_report --model {args.model} --per-tier {args.per_tier} "
                       f"--max-new-tokens {args.max_new_tokens} --save`: held-out problems ({args.per_tier} a tier), "
                       f"{args.k} samples each at T = {args.temperature:g}, and greedy.\n\n## Every tier\n\n{text}\n\n"
                       f"## The training tiers of {config}\n\n{trained}\n")
        out.with_suffix(".json").write_text(json.dumps({"model": args.model, "sha256": sha, "all": numbers,
                                                        "train_tiers": trained_numbers}) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
