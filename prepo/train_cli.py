"""``prepo train``: run PREPO (or a baseline) from a YAML config plus ``key=value`` overrides, or resume a run.

usage: prepo train [--config FILE] [--output-dir DIR] [--max-steps N] [--resume DIR] [--overwrite]
                   [--allow-config-change KEY[,KEY]] [key=value ...]
Data parallel: torchrun --nproc_per_node N -m prepo train ... (prepo.distributed)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prepo.checkpoint import run_dir_of
from prepo.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
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
                        "checkpoints/) and start over")
    p.add_argument("--allow-config-change", metavar="KEY[,KEY]", default="",
                   help="on --resume: config keys that may differ from the checkpoint's, e.g. run.steps")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides with dotted keys")
    return p


def _error(message) -> int:
    print(f"prepo train: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before, between and after the options
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"run.steps={args.max_steps}")
    allow = [k.strip() for k in args.allow_config_change.split(",") if k.strip()]
    config_path = args.config
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

    from prepo.distributed import teardown
    from prepo.trainer import Trainer

    try:
        trainer = Trainer(config, run_dir, resume_from=resume, overwrite=args.overwrite, allow_config_change=allow)
    except (ValueError, OSError) as exc:  # bad data, checkpoint, folder or model: one line, before any training
        return _error(exc)
    try:
        result = trainer.train()
    finally:
        teardown(trainer.dist)
    if trainer.dist.is_main:
        print(result.summary)
        print(f"outputs in {result.run_dir}/ (config.yaml, metrics.jsonl, curves.png, checkpoints/)")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
