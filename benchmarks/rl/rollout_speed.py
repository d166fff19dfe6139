"""Rollout tokens/s on the CPU, transformers ``generate`` (HFEngine) against the fast engine (prepo.rollout_fast),
and where a training step's time goes. Run: ``python -m benchmarks.rl.rollout_speed [--save]``.
"""
# The model: a random LlamaForCausalLM shaped like the tiny-chain testbed's (hidden 128, 4 layers, 4 heads, 2 key/value
# heads, vocabulary 64, tied embeddings); 16 prompts of 15-25 tokens x 8 samples = 128 rows x up to 40 new tokens at
# temperature 1, torch threads 1 and 2. Cases: `fixed` (no stop token can be drawn: every row runs 40 tokens) and
# `ragged` (EOS stops rows). Each timing is the fastest of --repeats calls after a warm-up, engines alternating call
# by call so they share the machine's load. --smollm2 adds a SmolLM2-135M-shaped random model (32 rows x 32 tokens,
# one timed call), --vllm the vLLM engine (start-up reported apart), --compile the fast engine's forward under
# torch.compile (compilation reported apart); --breakdown RUN_DIR... tabulates runs' metrics.jsonl by stage. --save
# writes the report (--out, default results/rollout-speed.md).
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import RESULTS_DIR

RESULT = RESULTS_DIR / "rollout-speed.md"
VOCAB, K, G, NEW_TOKENS, TEMPERATURE = 64, 16, 8, 40, 1.0
SPECIALS = ["<pad>", "<unk>", "<|end|>"]


def build_tokenizer():
    """A word-level tokenizer over the 64 ids: three specials and words w3..w63 (vLLM needs a real tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(len(SPECIALS), VOCAB)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>")


def build_model(tokenizer, *, smollm2: bool = False, seed: int = 0):
    """A random LlamaForCausalLM: the tiny-chain shape, or SmolLM2-135M's (hidden 576, 30 layers, 9/3 heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = (dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0) if smollm2 else
             dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB))
    config = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def make_prompts(k: int, vocab: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(len(SPECIALS), vocab) for _ in range(rng.randint(15, 25))] for _ in range(k)]


def _time(fn, repeats: int) -> tuple[float, list]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_case(engines: dict, prompts, *, n: int, max_new: int, repeats: int, same_as: dict | None = None) -> dict:
    """Fastest wall time of each engine (alternating calls), tokens generated, and whether its rollouts equal those
    of the engine ``same_as`` names for it (an HFEngine with the same rows a call: seeded samples depend on it)."""
    calls = {name: (lambda e=e: e.generate(prompts, n=n, max_new_tokens=max_new, temperature=TEMPERATURE, seed=3))
             for name, e in engines.items()}
    outs = {name: call() for name, call in calls.items()}                # warm-up (and the rollouts compared)
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            best[name] = min(best[name], _time(call, 1)[0])
    same_as = same_as or {}
    ids = {name: [r.completion_ids for r in out] for name, out in outs.items()}
    return {name: {"seconds": best[name], "tokens": sum(map(len, ids[name])),
                   "same_as_hf": ids[name] == ids[same_as[name]] if name in same_as else None} for name in calls}


def engines_for(model, tokenizer, *, stop_ids, rows: int, main_only: bool = False) -> tuple[dict, dict]:
    """HFEngine at its default 64 rows a call and at ``rows`` (all rows, as the fast engine runs them here), the fast
    engine with and without oneDNN (``main_only``: the default HFEngine and FastEngine alone); and which HF engine
    each fast one's rollouts should equal."""
    from prepo.rollout import HFEngine
    from prepo.rollout_fast import FastEngine

    out = {"hf": HFEngine(model, tokenizer, stop_ids=stop_ids)}
    whole = "hf"
    if main_only:
        out["fast"] = FastEngine(model, tokenizer, stop_ids=stop_ids)
        return out, ({"fast": "hf"} if rows <= out["hf"].batch_size else {})
    if rows > out["hf"].batch_size:
        whole = f"hf (batch {rows})"
        out[whole] = HFEngine(model, tokenizer, batch_size=rows, stop_ids=stop_ids)
    out["fast"] = FastEngine(model, tokenizer, stop_ids=stop_ids)
    out["fast (MKL matmul)"] = FastEngine(model, tokenizer, stop_ids=stop_ids, onednn=False)
    return out, {"fast": whole, "fast (MKL matmul)": whole}


def tiny_rows(threads: int, repeats: int, cases=("fixed", "ragged"), main_only: bool = False) -> list[dict]:
    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    prompts = make_prompts(K, VOCAB)
    rows = []
    for case in cases:
        stops = [VOCAB] if case == "fixed" else [tokenizer.eos_token_id]   # id 64 is never drawn
        engines, same_as = engines_for(model, tokenizer, stop_ids=stops, rows=K * G, main_only=main_only)
        result = run_case(engines, prompts, n=G, max_new=NEW_TOKENS, repeats=repeats, same_as=same_as)
        rows += [dict(model="tiny (1M)", case=case, threads=threads, engine=name, **r) for name, r in result.items()]
    return rows


def smollm2_rows(threads: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, smollm2=True)
    prompts = make_prompts(4, 49152)
    engines, same_as = engines_for(model, tokenizer, stop_ids=[49152], rows=4 * 8)
    result = run_case(engines, prompts, n=8, max_new=32, repeats=repeats, same_as=same_as)
    return [dict(model="SmolLM2-135M shape", case="fixed", threads=threads, engine=name, **r)
            for name, r in result.items()]


def vllm_rows(threads: int, repeats: int) -> tuple[list[dict], float]:
    """The vLLM engine on the tiny model (ragged case), beside HF: rows and vLLM's start-up seconds."""
    from prepo.rollout import HFEngine
    from prepo.rollout_vllm import VLLMEngine

    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    prompts = make_prompts(K, VOCAB)
    start = time.perf_counter()
    engine = VLLMEngine(model, tokenizer, stop_ids=[tokenizer.eos_token_id])
    startup = time.perf_counter() - start
    try:
        engines = {"hf": HFEngine(model, tokenizer, stop_ids=[tokenizer.eos_token_id]), "vllm": engine}
        result = run_case(engines, prompts, n=G, max_new=NEW_TOKENS, repeats=repeats)
    finally:
        engine.close()
    return [dict(model="tiny (1M)", case="ragged", threads=threads, engine=name, **r)
            for name, r in result.items() if name == "vllm"], startup


def compile_rows(threads: int, repeats: int) -> tuple[list[dict], float]:
    """The fast engine with its forward under torch.compile(dynamic=True), MKL matmuls (Inductor cannot lower the
    oneDNN prepacked op): rows and the first call's seconds (compilation included)."""
    import prepo.rollout_fast as fast

    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    prompts = make_prompts(K, VOCAB)
    engine = fast.FastEngine(model, tokenizer, stop_ids=[tokenizer.eos_token_id], onednn=False)
    eager = fast._forward
    fast._forward = torch.compile(eager, dynamic=True)
    try:
        first, _ = _time(lambda: engine.generate(prompts, n=G, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=3), 1)
        seconds, out = _time(lambda: engine.generate(prompts, n=G, max_new_tokens=NEW_TOKENS, temperature=1.0,
                                                     seed=3), repeats)
    finally:
        fast._forward = eager
    row = dict(model="tiny (1M)", case="ragged", threads=threads, engine="fast (MKL matmul) + torch.compile",
               seconds=seconds, tokens=sum(len(r.completion_ids) for r in out), same_as_hf=None)
    return [row], first


STAGES = (("select (scoring)", "time_select"), ("generate", "time_generate"), ("reward", "time_reward"),
          ("update", "time_update"))


def step_breakdown(run_dirs: list[Path]) -> str:
    """Where a training step's time goes, from runs' metrics.jsonl: per run, each stage's total share of the step
    time and its median seconds a step, and the evaluations' seconds beside the training steps'."""
    import json
    import statistics

    lines = ["| run | steps | " + " | ".join(name for name, _ in STAGES) + " | step (median s) | evaluations |",
             "|---|---|" + "---|" * len(STAGES) + "---|---|"]
    for run in run_dirs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval" and r.get("time_eval") is not None]
        total = sum(r["time_step"] for r in train)
        cells = [f"{sum(r[key] for r in train) / total:.0%} ({statistics.median(r[key] for r in train):.3f} s)"
                 for _, key in STAGES]
        eval_s = sum(r["time_eval"] for r in evals)
        lines.append(f"| {run.name} | {len(train)} | " + " | ".join(cells) +
                     f" | {statistics.median(r['time_step'] for r in train):.3f} | {len(evals)} rows, {eval_s:.1f} s |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    base = {(r["model"], r["case"], r["threads"]): r for r in rows if r["engine"] == "hf"}
    lines = ["| model | case | threads | engine | tokens | seconds | tokens/s | × hf | same rollouts |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = base[(r["model"], r["case"], r["threads"])]
        same = "—" if r["same_as_hf"] is None else ("yes" if r["same_as_hf"] else "no")
        lines.append(f"| {r['model']} | {r['case']} | {r['threads']} | {r['engine']} | {r['tokens']} | "
                     f"{r['seconds']:.3f} | {r['tokens'] / r['seconds']:,.0f} | {ref['seconds'] / r['seconds']:.2f} | "
                     f"{same} |")
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smollm2", action="store_true", help="add a SmolLM2-135M-shaped random model")
    parser.add_argument("--vllm", action="store_true", help="add the vLLM engine (tiny model, ragged case)")
    parser.add_argument("--compile", action="store_true", help="add the fast engine under torch.compile")
    parser.add_argument("--breakdown", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                        help="training runs (folders with metrics.jsonl) whose step time to break down by stage")
    parser.add_argument("--cases", nargs="+", choices=["fixed", "ragged"], default=["fixed", "ragged"])
    parser.add_argument("--main-only", action="store_true",
                        help="time HFEngine and FastEngine at their defaults only (not HF at 128 rows, not MKL)")
    parser.add_argument("--save", action="store_true", help="write the report (--out)")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"the report's path (default {RESULT.name} in "
                        "results/)")
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.repeats < 1:
        parser.error("--threads and --repeats: expected positive ints")
    loads = [_uptime()]
    rows, notes = [], []
    for threads in args.threads:
        rows += tiny_rows(threads, args.repeats, args.cases, args.main_only)
        if args.vllm:
            more, startup = vllm_rows(threads, args.repeats)
            rows += more
            notes.append(f"vLLM start-up ({threads} thread(s)): {startup:.1f} s")
        if args.compile:
            more, first = compile_rows(threads, args.repeats)
            rows += more
            notes.append(f"torch.compile first call, compilation included ({threads} thread(s)): {first:.1f} s")
        if args.smollm2:
            rows += smollm2_rows(threads, 1)   # a call takes about a minute
        loads.append(_uptime())
    text = "\n".join([
        "# Rollout speed on the CPU: transformers generate (hf) vs the fast engine",
        "",
        f"`python -m benchmarks.rl.rollout_speed {' '.join(argv if argv is not None else sys.argv[1:])}`, "
        f"{datetime.date.today()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. The machine is shared with other jobs: `uptime` before and after each thread "
        "count:", "", *[f"    {line}" for line in loads], "",
        "Tiny random Llama (hidden 128, 4 layers, 4/2 heads, vocabulary 64, tied), 16 prompts of 15-25 tokens × 8 "
        "samples, temperature 1, up to 40 new tokens; `fixed`: no stop token (40 tokens a row), `ragged`: EOS stops "
        "rows. Seconds: the fastest of the repeated calls, engines alternating. `hf`: HFEngine at its default "
        "64 rows a call; `fast`: FastEngine at its default (all rows in one chunk), oneDNN matmuls; "
        "`fast (MKL matmul)`: `onednn=False`. \"same rollouts\": every completion equals, for the same seed, that "
        "of HFEngine with the same rows a call (`hf (batch 128)` for the tiny model; seeded samples depend on it).",
        "",
        table(rows), "", *[f"- {note}" for note in notes]]) + "\n"
    if args.breakdown:
        text += "\n## Where a training step's time goes\n\n" + step_breakdown(args.breakdown) + "\n"
    print(text)
    if args.save:
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
