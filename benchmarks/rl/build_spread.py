"""How much a testbed model depends on its build: one recipe built from several build seeds under several kernel
settings (pinned, unpinned, one pin at a time), each build's answer NLL on a fixed probe set and held-out greedy accuracy.

usage: python -m benchmarks.rl.build_spread [--model tiny-arith] [--seeds 0,1,2] [--variants pinned,unpinned,...]
       [--steps N] [--jobs 2] [--save]   (--save writes results/build-spread-<model>.md)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks import RESULTS_DIR, model_slug

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# name -> (pinned, extra environment of the build's child process); "pinned" is what every testbed model is built with
VARIANTS = {
    "pinned": (True, {}),
    "unpinned": (False, ONE_THREAD),
    "aten-default": (False, {**ONE_THREAD, "ATEN_CPU_CAPABILITY": "default"}),
    "mkl-cbwr": (False, {**ONE_THREAD, "MKL_CBWR": "COMPATIBLE"}),
}
PROBE_SEED = 99     # the probe set: the recipe's supervised draw for this seed (never a build seed used here)


def probe_nll(model, tokenizer, recipe, batches: int = 16) -> float:
    """Mean NLL of the answer tokens (loss weight 1) over ``batches`` supervised batches drawn with PROBE_SEED."""
    from prepo.tasks.tiny_model import supervised_batches

    probe = dataclasses.replace(recipe, seed=PROBE_SEED, steps=batches)
    total = count = 0.0
    with torch.no_grad():
        for ids, w in supervised_batches(probe, tokenizer):
            logits = model(input_ids=ids, attention_mask=ids != tokenizer.pad_token_id).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="none").view_as(w[:, 1:])
            answer = w[:, 1:] == 1.0
            total += float((nll * answer).sum())
            count += float(answer.sum())
    return total / count


def greedy_accuracy(model, tokenizer, task: str, per_tier: int) -> float:
    """Greedy accuracy on ``per_tier`` held-out problems of each of the task's tiers."""
    from benchmarks.rl.testbed_report import pass_rates
    from prepo.rollout import HFEngine
    from prepo.tasks.prompts import encode_prompts
    from prepo.tasks.registry import builtin_tiers, make_builtin

    tiers = builtin_tiers(task)
    examples = make_builtin(task, per_tier * len(tiers), 0, tiers, split="eval")
    prompts = encode_prompts(tokenizer, examples, score_span="question")
    new_tokens = 6 if task == "tiny-arith" else 56
    return float(pass_rates(HFEngine(model, tokenizer), prompts, examples, k=1, temperature=0.0,
                            max_new_tokens=new_tokens, seed=0).mean())


def build_one(model_name: str, seed: int, variant: str, steps: int | None, per_tier: int) -> dict:
    """Build one (seed, variant) into a temporary folder; its sha256, build time, probe NLL and greedy accuracy."""
    from prepo.models import load_model_and_tokenizer
    from prepo.tasks.tiny_model import build_model, recipe_for

    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
    recipe = dataclasses.replace(recipe_for(model_name), seed=seed)
    if steps is not None:
        recipe = dataclasses.replace(recipe, steps=steps)
    pinned, env = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix="build-spread-") as out:
        t0 = time.perf_counter()
        sha = build_model(recipe, out, pinned=pinned, env=env)
        seconds = time.perf_counter() - t0
        model, tokenizer = load_model_and_tokenizer(out)
        model.float().eval()
        return {"seed": seed, "variant": variant, "sha256": sha, "build_seconds": seconds,
                "probe_nll": probe_nll(model, tokenizer, recipe),
                "greedy": greedy_accuracy(model, tokenizer, recipe.task, per_tier)}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| build seed | kernels | sha256 (first 16) | probe answer NLL | held-out greedy | build time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["seed"], list(VARIANTS).index(r["variant"]))):
        lines.append(f"| {r['seed']} | {r['variant']} | `{r['sha256'][:16]}` | {r['probe_nll']:.4f} | "
                     f"{r['greedy']:.3f} | {r['build_seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-arith", help="tiny-arith | tiny-chain (the recipe; the seed is --seeds)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="supervised steps (default: the recipe's)")
    p.add_argument("--per-tier", type=int, default=32)
    p.add_argument("--jobs", type=int, default=2, help="builds at once (each one thread)")
    p.add_argument("--save", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    plan = [(int(s), v) for s in args.seeds.split(",") for v in args.variants.split(",")]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda sv: build_one(args.model, sv[0], sv[1], args.steps, args.per_tier), plan))
    text = to_markdown(rows)
    print(text)
    if args.save:
        out = RESULTS_DIR / f"build-spread-{model_slug(args.model)}.md"
        command = "python -m benchmarks.rl.build_spread " + " ".join(sys.argv[1:] if argv is None else argv)
        out.write_text(f"# How much the {args.model} model depends on its build\n\nMade by `{command.strip()}` "
                       f"({args.jobs} builds at once, one thread each). Probe answer NLL: the answer tokens of 16 "
                       f"supervised batches drawn with seed {PROBE_SEED}; held-out greedy: {args.per_tier} held-out "
                       f"problems a tier, every tier.\n\n{text}\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
