"""``prepo eval``: evaluate a model on benchmark files and/or the built-in arith task; print a table, write JSON.

Example: ``prepo eval --model smollm2-135m-instruct --data arith:64 --data data/gsm8k/test.jsonl --k 4 --limit 50``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from prepo.data import ARITH_FORMAT, load_examples, make_arith

ARITH_EVAL_SEED = 1234  # the held-out arith problems are the same for every run
ARITH_DEFAULT_N = 200
MATH_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepo eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, GGUF file, local folder or hub name")
    p.add_argument("--data", action="append", required=True, metavar="FILE",
                   help="a dataset file (preset detected from its folder), PRESET=FILE, or arith[:N]; repeatable")
    p.add_argument("--k", type=int, default=16, help="samples per problem (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default 16 for arith, 1024 for benchmark files")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N problems of each file")
    p.add_argument("--engine", default="hf", help="rollout engine (hf)")
    p.add_argument("--batch-size", type=int, default=64, help="rows (prompts × samples) per generate call")
    p.add_argument("--system-prompt", default=None,
                   help="default: arith's own (prepo.data.ARITH_FORMAT, with its worked examples) or the template's")
    p.add_argument("--prompt-template", default=None, help="user message around {question}; default: plain "
                   "for arith, a 'reason step by step ... \\boxed{}' instruction for benchmark files")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="JSON report path (default: eval-<time>.json in the cwd)")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_data_arg(spec: str, limit: int | None):
    """(name, examples, is_arith) for one --data value."""
    if spec == "arith" or spec.startswith("arith:"):
        n = ARITH_DEFAULT_N if spec == "arith" else _positive_int(spec[len("arith:"):], "--data arith:N")
        if limit is not None:
            n = min(n, limit)
        return "arith", make_arith(n, ARITH_EVAL_SEED, split="eval"), True
    preset = None
    if "=" in spec and not os.path.exists(spec):
        preset, spec = spec.split("=", 1)
    path = Path(spec)
    examples = load_examples(path, preset, limit=limit)
    name = preset or (path.parent.name if path.parent.name else path.stem)
    return name, examples, False


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what}: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{what}: expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from prepo.evaluate import evaluate
    from prepo.models import load_model_and_tokenizer
    from prepo.rollout import make_engine

    try:
        datasets, arith_names = {}, set()
        for spec in args.data:
            name, examples, is_arith = parse_data_arg(spec, args.limit)
            while name in datasets:
                name += "'"
            datasets[name] = examples
            if is_arith:
                arith_names.add(name)
        _positive_int(str(args.k), "--k")
    except (ValueError, FileNotFoundError) as exc:
        print(f"prepo eval: {exc}", file=sys.stderr)
        return 2
    pick = lambda given, arith, other: {n: (given if given is not None else (arith if n in arith_names else other))
                                        for n in datasets}
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    engine_kw = {"batch_size": args.batch_size} if args.engine == "hf" else {}
    engine = make_engine(args.engine, model, tokenizer, **engine_kw)
    start = time.time()
    report = evaluate(engine, tokenizer, datasets, k=args.k, max_new_tokens=pick(args.max_new_tokens, 16, 1024),
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed, progress=not args.no_progress,
                      system_prompt=pick(args.system_prompt, ARITH_FORMAT.system_prompt, None),
                      prompt_template=pick(args.prompt_template, ARITH_FORMAT.prompt_template, MATH_PROMPT),
                      few_shot=pick(None, ARITH_FORMAT.few_shot, ()),
                      response_prefix=pick(None, ARITH_FORMAT.response_prefix, ""),
                      rows_per_call=args.batch_size)
    report.settings.update(model=args.model, engine=args.engine, data=args.data, limit=args.limit,
                           seconds=round(time.time() - start, 1))
    print(report.table())
    out = Path(args.output or f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"report written to {out}")
    return 0
