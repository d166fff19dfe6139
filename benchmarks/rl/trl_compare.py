"""Step time (generate vs update) and peak RSS of TRL's GRPOTrainer and prepo's own loop on one CPU config.

SmolLM2-135M-Instruct (``prepo.models.load_model_and_tokenizer()``), 4 arith prompts × 8 rollouts, 64 new tokens,
temperature 1, one update per batch, lr 1e-6, no KL; each side runs in its own process (peak RSS is per process).
Both train on the same prompt text: arith problems as prepo's trainer formats them (chat template, worked examples,
the reply started as "a + b ="), given to TRL as plain-text prompts; the table counts the tokens each side generated.
TRL is installed only for this (``pip install "prepo[trl]"``). Run: ``python -m benchmarks.rl.trl_compare``; writes
results/trl-compare-cpu.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import RESULTS_DIR

K, G, NEW_TOKENS, LR, TEMPERATURE = 4, 8, 64, 1e-6, 1.0
RESULT = RESULTS_DIR / "trl-compare-cpu.md"


def _prepo_prompts(tokenizer, examples):
    """The arith prompts as prepo's trainer encodes them (prepo.trainer.prompt_format)."""
    from prepo.config import DataConfig
    from prepo.tasks.prompts import encode_prompts
    from prepo.trainer import prompt_format

    return encode_prompts(tokenizer, examples, **prompt_format(DataConfig(), "arith"))


def _peak_rss_mb() -> float:
    from prepo.metrics import peak_rss_mb

    return peak_rss_mb()


def run_trl(steps: int, seed: int) -> dict:
    """GRPOTrainer with TRL's defaults except the shared settings; generate = its _generate_and_score_completions."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from prepo.tasks.arith import make_arith
    from prepo.models import load_model_and_tokenizer
    from prepo.rewards import numeric_reward

    model, tokenizer = load_model_and_tokenizer()
    examples = make_arith(K * steps, seed)
    # the very prompt text prepo's loop trains on (chat template, worked examples, reply started as "a + b =")
    rows = [{"prompt": tokenizer.decode(p.input_ids), "answer": e.answer}
            for p, e in zip(_prepo_prompts(tokenizer, examples), examples)]

    def reward(completions, answer, **kwargs):
        return [numeric_reward(c, a) for c, a in zip(completions, answer)]

    timings: list[dict] = []

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            timings.append({"generate": time.perf_counter() - t0,
                            "tokens": int(out["completion_mask"].sum()) if "completion_mask" in out else None})
            return out

        def training_step(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super().training_step(*args, **kwargs)
            timings[-1]["step"] = time.perf_counter() - t0
            return out

    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=K * G, num_generations=G,
                      max_completion_length=NEW_TOKENS, temperature=TEMPERATURE, learning_rate=LR, beta=0.0,
                      max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                      bf16=False, seed=seed, shuffle_dataset=False, disable_tqdm=True)
    trainer = Timed(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                    processing_class=tokenizer)
    trainer.train()
    steps_out = [{"generate": t["generate"], "update": t["step"] - t["generate"], "step": t["step"],
                  "tokens": t["tokens"]} for t in timings]
    return {"side": "trl", "steps": steps_out, "peak_rss_mb": _peak_rss_mb(),
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def run_prepo(steps: int, seed: int, extra: list[str] = ()) -> dict:
    """prepo's own loop (PREPO: perplexity window of 20 candidates, entropy weights) on the same settings.

    ``extra`` are further ``key=value`` config overrides (e.g. ``model.gradient_checkpointing=true``)."""
    from prepo.config import load_config
    from prepo.trainer import Trainer

    cfg = load_config(None, [f"selection.k={K}", f"rollout.group_size={G}", f"rollout.max_new_tokens={NEW_TOKENS}",
                             f"rollout.temperature={TEMPERATURE}", f"optim.lr={LR}", f"run.steps={steps}",
                             f"run.seed={seed}", "eval.every=0", "data.eval_size=0", "run.progress=false",
                             "run.device=cpu", *extra])
    trainer = Trainer(cfg, tempfile.mkdtemp())
    rows = [trainer.train_step() for _ in range(steps)]
    steps_out = [{"generate": r["time_select"] + r["time_generate"] + r["time_reward"], "update": r["time_update"],
                  "step": r["time_step"], "select": r["time_select"],
                  "tokens": round(r["completion_len_mean"] * r["rollouts_step"])} for r in rows]
    return {"side": "prepo", "steps": steps_out, "peak_rss_mb": _peak_rss_mb(),
            "gradient_checkpointing": bool(cfg.model.gradient_checkpointing), "overrides": list(extra)}


def _child(side: str, steps: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.rl.trl_compare", "--side", side, "--steps", str(steps), "--seed", str(seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def _table(results: list[dict], skip: int) -> str:
    head = ("| side | steps timed | step s (median) | generate s | update s | tokens generated / step | "
            "generate ms / token | peak RSS MiB | grad. checkpointing |\n")
    head += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    for r in results:
        timed = r["steps"][skip:] or r["steps"]
        med = {k: statistics.median(s[k] for s in timed) for k in ("step", "generate", "update")}
        tokens = [s.get("tokens") for s in timed]
        per_token = (f"{1000 * sum(s['generate'] for s in timed) / sum(tokens):.1f}"
                     if None not in tokens and sum(tokens) else "–")
        tok = f"{statistics.median(tokens):.0f}" if None not in tokens else "–"
        label = r["side"] + (f" ({', '.join(r['overrides'])})" if r.get("overrides") else "")
        head += (f"| {label} | {len(timed)} | {med['step']:.1f} | {med['generate']:.1f} | {med['update']:.1f} | "
                 f"{tok} | {per_token} | {r['peak_rss_mb']:.0f} | {r['gradient_checkpointing']} |\n")
    return head


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("trl", "prepo"), help="run one side in this process and print JSON")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--skip", type=int, default=1, help="leading steps left out of the medians (warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--prepo-set", nargs="*", default=[], metavar="KEY=VALUE", help="extra prepo config overrides")
    p.add_argument("--note", default="", help="a line added to the result file (e.g. the machine's load)")
    p.add_argument("--results", nargs="+", type=Path, metavar="JSON",
                   help="write the table from earlier --side outputs (TRL first, then prepo runs) instead of running")
    a = p.parse_args(argv)
    if a.side:
        result = run_trl(a.steps, a.seed) if a.side == "trl" else run_prepo(a.steps, a.seed, a.prepo_set)
        print(json.dumps(result))
        return 0
    if a.results:
        results = [json.loads(path.read_text().strip().splitlines()[-1]) for path in a.results]
    else:
        results = [_child(side, a.steps, a.seed) for side in ("trl", "prepo")]
    trl, ours = results[0], results[1]
    med = lambda r, k: statistics.median(s[k] for s in (r["steps"][a.skip:] or r["steps"]))  # noqa: E731
    ratio = med(ours, "step") / med(trl, "step")
    n_steps = min(len(r["steps"]) for r in results)
    timed = (f"medians over the steps after the first {a.skip}" if n_steps > a.skip
             else f"{n_steps} step(s) each, warm-up included")
    text = (f"# TRL GRPOTrainer vs prepo's loop on CPU\n\n{datetime.date.today().isoformat()}, {_cpu_model()}, "
            f"{os.cpu_count()} cores, `python -m benchmarks.rl.trl_compare` ({timed}).\n\n"
            + (f"{a.note}\n\n" if a.note else "") + f"SmolLM2-135M-Instruct fp32, {K} arith prompts × {G} rollouts, "
            f"{NEW_TOKENS} new tokens, temperature {TEMPERATURE}, lr {LR}, no KL, one update per batch; each side in "
            f"its own process. TRL: GRPOTrainer defaults otherwise (generate = `_generate_and_score_completions`). "
            f"prepo: its default PREPO step (perplexity window of 20 candidates, entropy weights; generate includes "
            f"the selection and rewards).\n\n{_table(results, a.skip)}\n"
            f"prepo / TRL step time: {ratio:.2f}× (target ≤ 0.5×); peak RSS prepo / TRL: "
            f"{ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}×.\n\nRaw per-step seconds:\n\n```json\n"
            f"{json.dumps(results, indent=1)}\n```\n")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
