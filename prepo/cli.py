"""The command line: ``prepo train`` (a run from a YAML config plus ``key=value`` overrides, or a resumed run) and
``prepo eval`` (avg@k, pass@k and maj@k of a model on benchmark files and built-in tasks).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from prepo.checkpoint import run_dir_of
from prepo.config import (DTYPES, MIN_TEMPERATURE, ConfigError, DataConfig, EvalConfig, ModelConfig, RolloutConfig,
                          RunConfig, load_config)
from prepo.tasks.example import VERIFIERS
from prepo.tasks.files import PRESETS, detect_preset, load_examples
from prepo.tasks.prompts import PromptFormat
from prepo.tasks.registry import BUILTIN_TASKS, make_builtin


def _usage() -> str:
    lines = ["usage: prepo {" + ",".join(COMMANDS) + "} [options]", ""]
    lines += [f"  {name:<6} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``prepo COMMAND [options]``: route to the sub-command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"prepo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return int(COMMANDS[name][0](rest) or 0)
    except KeyboardInterrupt:  # Ctrl-C where no finer handler (start-up, the training's save, the eval's report) is
        print(f"\nprepo {name}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message) -> int:
    """The one error line of a sub-command (exit status 2)."""
    print(f"prepo {command}: error: {message}", file=sys.stderr)
    return 2


# --- prepo train -----------------------------------------------------------------------------------------------------

def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepo train",
        description="Train a causal LM with PREPO (perplexity-window prompt selection + entropy weighting) or a "
                    "baseline selection strategy. Any config key can be overridden as dotted key=value, e.g. "
                    "selection.strategy=random optim.lr=1e-5 (before or after the options).")
    p.add_argument("--config", help="YAML config file (default: built-in defaults; on --resume: the run's config)")
    p.add_argument("--output-dir", help="run folder (default: <run.output_root>/<run.name>, or the resumed run's)")
    p.add_argument("--max-steps", type=int, help="training steps (sets run.steps)")
    p.add_argument("--resume", metavar="DIR", help="continue from a run folder's newest checkpoint (or a checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="the run folder may hold another run: delete it (config.yaml, metrics.jsonl, curves.png, "
                        "checkpoints/, abandoned-*/ branches) and start over")
    p.add_argument("--allow-config-change", metavar="KEY[,KEY]", default="",
                   help="on --resume: config keys that may differ from the checkpoint's, e.g. run.steps")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides with dotted keys")
    return p


def run_train(argv: list[str] | None = None) -> int:
    """``prepo train [--config FILE] [--output-dir DIR] [--max-steps N] [--resume DIR] [--overwrite]
    [--allow-config-change KEY[,KEY]] [key=value ...]``; data parallel: ``torchrun --nproc_per_node N -m prepo train``."""
    _error = functools.partial(_fail, "train")
    parser = train_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before, between and after the options
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"run.steps={args.max_steps}")
    allow = [k.strip() for k in args.allow_config_change.split(",") if k.strip()]
    config_path = args.config
    for option, value in (("--output-dir", args.output_dir), ("--resume", args.resume), ("--config", args.config)):
        if value is not None and not value.strip():
            return _error(f"{option}: must not be empty")
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        if not resume.exists():
            return _error(f"--resume {resume}: no such folder")
        if args.overwrite and not args.output_dir:
            return _error("--overwrite with --resume would delete the run being resumed; give --output-dir "
                          "for a copy, or leave out --overwrite")
        if config_path is None and (run_dir_of(resume) / "config.yaml").is_file():
            config_path = run_dir_of(resume) / "config.yaml"
    elif allow:
        return _error("--allow-config-change only applies with --resume")
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        return _error(exc)
    if args.output_dir:
        run_dir = Path(args.output_dir)
    elif resume is not None:
        run_dir = run_dir_of(resume)
    else:
        run_dir = Path(config.run.output_root) / config.run.name

    from prepo.run_lock import RunLock

    # one process at a time in a run folder (under torchrun, rank 0 holds it for all)
    lock = RunLock(run_dir) if os.environ.get("RANK", "0") == "0" else None
    try:
        if lock is not None:
            lock.acquire()
    except OSError as exc:
        return _error(exc)
    try:
        return _train_locked(config, run_dir, resume, args.overwrite, allow, _error)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(config, run_dir: Path, resume: Path | None, overwrite: bool, allow: list[str], _error) -> int:
    """Set up and run the training with the run folder locked; start-up and write errors are one line."""
    from prepo.distributed import teardown
    from prepo.trainer import Trainer
    from prepo.update import NonFiniteError

    try:
        trainer = Trainer(config, run_dir, resume_from=resume, overwrite=overwrite, allow_config_change=allow)
    except (ValueError, OSError) as exc:  # bad data, checkpoint, folder or model: one line, before any training
        return _error(exc)
    except KeyboardInterrupt:
        print("\nprepo train: interrupted during start-up, before the first step: nothing was trained",
              file=sys.stderr)
        return 130
    try:
        result = trainer.train()
    except (OSError, NonFiniteError) as exc:  # a full disk, an unwritable folder, a diverged run: the note said more
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _error(f"training stopped after step {trainer.step}: {detail}")
    finally:
        teardown(trainer.dist)
    if trainer.dist.is_main:
        print(result.summary)
        print(f"outputs in {result.run_dir}/ (config.yaml, metrics.jsonl, curves.png, checkpoints/)")
    return 130 if result.interrupted else 0


# --- prepo eval ------------------------------------------------------------------------------------------------------

ARITH_DEFAULT_N = 200
MATH_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


def eval_parser() -> argparse.ArgumentParser:
    """The options of ``prepo eval``; their defaults are the training config's (EvalConfig for the sampling, then
    ModelConfig, RolloutConfig and RunConfig), so a model is scored as the trainer's held-out evaluation scores it."""
    p = argparse.ArgumentParser(prog="prepo eval", description=COMMANDS["eval"][1])
    p.add_argument("--model", default=ModelConfig.name_or_path, help="alias, GGUF file, local folder or hub name")
    p.add_argument("--data", action="append", required=True, metavar="FILE",
                   help="a dataset file (preset detected from its folder), PRESET=FILE, or a built-in task "
                   "arith[:N] / tiny-arith[:N] / tiny-chain[:N] (held-out problems); repeatable")
    p.add_argument("--tiers", default=None, help="comma-separated tiers of a built-in task (default: all)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="field preset for --data files whose folder does not name one")
    p.add_argument("--prompt-field", default=None, help="the question's field in --data files (instead of a preset)")
    p.add_argument("--answer-field", default=None, help="the gold answer's field in --data files")
    p.add_argument("--verifier", choices=VERIFIERS, default=None,
                   help="how answers are checked for --data files (default: the preset's, else math)")
    p.add_argument("--k", type=int, default=EvalConfig.k, help=f"samples per problem (default {EvalConfig.k}: eval.k)")
    p.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens,
                   help="default 16 for built-in tasks, 1024 for benchmark files")
    p.add_argument("--temperature", type=float, default=EvalConfig.temperature,
                   help=f"default {EvalConfig.temperature} (greedy: eval.temperature)")
    p.add_argument("--top-p", type=float, default=RolloutConfig.top_p)
    p.add_argument("--seed", type=int, default=RunConfig.seed)
    p.add_argument("--limit", type=int, default=None, help="first N problems of each file")
    p.add_argument("--engine", default=RolloutConfig.engine,
                   help=f"rollout engine (default {RolloutConfig.engine}: rollout.engine)")
    p.add_argument("--batch-size", type=int, default=EvalConfig.rows_per_call,
                   help=f"rows (prompts × samples) per generate call (default {EvalConfig.rows_per_call}: "
                        "eval.rows_per_call)")
    p.add_argument("--system-prompt", default=None,
                   help="default: arith's own (prepo.tasks.prompts.ARITH_FORMAT, with its worked examples) or the "
                   "template's")
    p.add_argument("--prompt-template", default=None, help="user message around {question}; default: plain "
                   "for arith, a 'reason step by step ... \\boxed{}' instruction for benchmark files")
    p.add_argument("--dtype", default=ModelConfig.dtype, choices=DTYPES)
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
        # the held-out problems `prepo train` evaluates on (data.eval_seed's default) for the same tiers and size
        examples = make_builtin(task, n, DataConfig.eval_seed, tiers, split="eval")
        return task, examples, PromptFormat.for_dataset(task)
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


def check_args(args) -> Path:
    """Every option that can be checked before the model loads; returns the report path."""
    _positive_int(str(args.k), "--k")
    _positive_int(str(args.batch_size), "--batch-size")
    if args.limit is not None:
        _positive_int(str(args.limit), "--limit")
    if args.max_new_tokens is not None:
        _positive_int(str(args.max_new_tokens), "--max-new-tokens")
    if not (math.isfinite(args.temperature) and (args.temperature == 0 or args.temperature >= MIN_TEMPERATURE)):
        raise ValueError(f"--temperature: expected 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got "
                         f"{args.temperature}")
    if args.prompt_template is not None and args.prompt_template.count("{question}") != 1:
        raise ValueError(f"--prompt-template: must contain '{{question}}' exactly once, got {args.prompt_template!r}")
    check_device(args.device)
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
    check_writable(out)
    return out


def check_writable(out: Path) -> None:
    """ValueError unless the report can be written at ``out`` (its folder is created; a probe file is opened and
    removed again), so an unwritable path fails before the evaluation, not after it."""
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a"):
            pass
    except OSError as exc:
        raise ValueError(f"--output {out}: cannot write the report there ({exc.strerror or exc})") from None
    if not existed:
        out.unlink()


def check_device(name: str) -> None:
    """ValueError unless ``name`` is a device the model can be evaluated on here (checked before it loads)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"--device {name}: torch sees {count} CUDA device(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available here")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: cannot evaluate on a {device.type} device; use cpu, cuda[:N] or mps")


def run_eval(argv: list[str] | None = None) -> int:
    """``prepo eval --model M --data arith:64 --data data/gsm8k/test.jsonl --k 4 --limit 50``: print a table, write
    the JSON report."""
    _error = functools.partial(_fail, "eval")
    args = eval_parser().parse_args(argv)
    fields = {"preset": args.preset, "prompt_field": args.prompt_field, "answer_field": args.answer_field,
              "verifier": args.verifier}
    try:
        out = check_args(args)
        tiers = [t for t in args.tiers.split(",") if t] if args.tiers else None
        datasets, formats = {}, {}
        for spec in args.data:
            name, examples, fmt = parse_data_arg(spec, args.limit, fields, tiers)
            if not examples:
                raise ValueError(f"--data {spec}: no problems in it")
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
    except KeyboardInterrupt:
        print("\nprepo eval: interrupted while loading the model: nothing was evaluated", file=sys.stderr)
        return 130
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
                      rows_per_call=args.batch_size, partial_on_interrupt=True)
    report.settings.update(model=args.model, engine=args.engine, data=args.data, limit=args.limit,
                           seconds=round(time.time() - start, 1))
    partial = report.settings.get("partial", False)
    if report.results:
        print(report.table())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as exc:  # e.g. the disk filled up during the evaluation: the table above still holds the results
        return _error(f"--output {out}: could not write the report ({exc.strerror or exc}); the table above has "
                      "its results")
    if partial:
        done = sum(r.n for r in report.results.values())
        print(f"\ninterrupted: partial report ({done} of {sum(map(len, datasets.values()))} problems scored, "
              f"settings.partial = true) written to {out}", file=sys.stderr)
        return 130
    print(f"report written to {out}")
    return 0


COMMANDS = {  # name: (entry point, one-line help)
    "train": (run_train, "train a causal LM with PREPO or a baseline selection strategy"),
    "eval": (run_eval, "evaluate a model: avg@k, pass@k and maj@k on math benchmarks"),
}
