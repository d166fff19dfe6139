"""``prepo eval``: evaluate a model on benchmark files and/or a built-in task (arith, tiny-arith); print a table and
write JSON.

Example: ``prepo eval --model smollm2-135m-instruct --data arith:64 --data data/gsm8k/test.jsonl --k 4 --limit 50``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from prepo.config import DataConfig
from prepo.data import (ARITH_FORMAT, BUILTIN_TASKS, PRESETS, VERIFIERS, PromptFormat, detect_preset, load_examples,
                        make_arith, make_builtin)

ARITH_EVAL_SEED = 1234  # the held-out arith problems are the same for every run
ARITH_DEFAULT_N = 200
MATH_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepo eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, GGUF file, local folder or hub name")
    p.add_argument("--data", action="append", required=True, metavar="FILE",
                   help="a dataset file (preset detected from its folder), PRESET=FILE, or a built-in task "
                   "arith[:N] / tiny-arith[:N] (held-out problems); repeatable")
    p.add_argument("--tiers", default=None, help="comma-separated tiers of a built-in task (default: all)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="field preset for --data files whose folder does not name one")
    p.add_argument("--prompt-field", default=None, help="the question's field in --data files (instead of a preset)")
    p.add_argument("--answer-field", default=None, help="the gold answer's field in --data files")
    p.add_argument("--verifier", choices=VERIFIERS, default=None,
                   help="how answers are checked for --data files (default: the preset's, else math)")
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


def parse_data_arg(spec: str, limit: int | None, fields: dict | None = None, tiers: list[str] | None = None):
    """(name, examples, prompt format or None for a file) for one --data value; ``fields``: preset / prompt_field /
    answer_field / verifier for files (a PRESET=FILE value names its own preset); ``tiers``: of a built-in task."""
    task, _, count = spec.partition(":")
    if task in BUILTIN_TASKS:
        n = ARITH_DEFAULT_N if not count else _positive_int(count, f"--data {task}:N")
        if limit is not None:
            n = min(n, limit)
        if task == "arith":
            return "arith", make_arith(n, ARITH_EVAL_SEED, tiers, split="eval"), ARITH_FORMAT
        # the held-out problems `prepo train` evaluates on (data.eval_seed's default) for the same tiers and size
        return task, make_builtin(task, n, DataConfig.eval_seed, tiers, split="eval"), PromptFormat()
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if "=" in spec and not os.path.exists(spec):
        fields["preset"], spec = spec.split("=", 1)
    path = Path(spec)
    preset = fields.pop("preset", None)
    if path.exists() and not path.is_dir() and preset is None and detect_preset(path) is None and not (
            "prompt_field" in fields and "answer_field" in fields):
        raise ValueError(f"--data {spec}: cannot tell its format from the folder name; pass --preset (one of "
                         f"{', '.join(sorted(PRESETS))}), or --prompt-field and --answer-field")
    examples = load_examples(path, preset, limit=limit, **fields)
    name = preset or (path.parent.name if path.parent.name else path.stem)
    return name, examples, None


_HUB_NAME = re.compile(r"^(?:[\w.-]+/)?[\w.-]{1,96}$")


def check_model_name(name: str) -> None:
    """ValueError when ``name`` can be neither an existing file or folder, nor an alias or hub name (checked before
    anything loads; whether a hub name exists shows only when it is fetched)."""
    if Path(name).expanduser().exists():
        return
    if (name.endswith(".gguf") or name.startswith((".", "/", "~")) or "\\" in name or ".." in name or "--" in name
            or not _HUB_NAME.match(name)):
        raise ValueError(f"--model {name}: no such file or folder, and not a model alias or hub name")


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what}: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{what}: expected a positive integer, got {value}")
    return value


def _error(message) -> int:
    print(f"prepo eval: error: {message}", file=sys.stderr)
    return 2


def check_args(args) -> Path:
    """Every option that can be checked before the model loads; returns the report path."""
    _positive_int(str(args.k), "--k")
    _positive_int(str(args.batch_size), "--batch-size")
    if args.limit is not None:
        _positive_int(str(args.limit), "--limit")
    if args.max_new_tokens is not None:
        _positive_int(str(args.max_new_tokens), "--max-new-tokens")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature: expected a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise ValueError(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    from prepo.rollout import engine_names

    if args.engine not in engine_names():
        raise ValueError(f"--engine: unknown engine {args.engine!r}; known: {', '.join(engine_names())}")
    check_model_name(args.model)
    out = Path(args.output or f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if out.is_dir():
        raise ValueError(f"--output {out}: is a folder; give a file path for the JSON report")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--output {out}: {out.parent} is not a folder")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {"preset": args.preset, "prompt_field": args.prompt_field, "answer_field": args.answer_field,
              "verifier": args.verifier}
    try:
        out = check_args(args)
        tiers = [t for t in args.tiers.split(",") if t] if args.tiers else None
        datasets, formats = {}, {}
        for spec in args.data:
            name, examples, fmt = parse_data_arg(spec, args.limit, fields, tiers)
            while name in datasets:
                name += "'"
            datasets[name] = examples
            if fmt is not None:
                formats[name] = fmt
    except (ValueError, OSError) as exc:
        return _error(exc)
    import torch

    from prepo.evaluate import evaluate
    from prepo.models import load_model_and_tokenizer
    from prepo.rollout import make_engine

    def pick(given, field: str | None, other):
        """Per dataset: the option when given, else the built-in task's own format field (16 new tokens), else
        ``other`` (benchmark files)."""
        return {n: given if given is not None else (
            (getattr(formats[n], field) if field else 16) if n in formats else other) for n in datasets}

    try:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    except (OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _error(f"--model {args.model}: cannot load it: not a local folder, GGUF file or alias, and not a "
                      f"reachable hub model ({detail})")
    engine_kw = {"batch_size": args.batch_size} if args.engine == "hf" else {}
    engine = make_engine(args.engine, model, tokenizer, **engine_kw)
    start = time.time()
    report = evaluate(engine, tokenizer, datasets, k=args.k, max_new_tokens=pick(args.max_new_tokens, None, 1024),
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed, progress=not args.no_progress,
                      system_prompt=pick(args.system_prompt, "system_prompt", None),
                      prompt_template=pick(args.prompt_template, "prompt_template", MATH_PROMPT),
                      few_shot=pick(None, "few_shot", ()),
                      response_prefix=pick(None, "response_prefix", ""),
                      rows_per_call=args.batch_size)
    report.settings.update(model=args.model, engine=args.engine, data=args.data, limit=args.limit,
                           seconds=round(time.time() - start, 1))
    print(report.table())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"report written to {out}")
    return 0
