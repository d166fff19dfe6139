"""``prepo train``: run PREPO (or a baseline) from a YAML config plus ``key=value`` overrides, or resume a run.

usage: prepo train [--config FILE] [--output-dir DIR] [--max-steps N] [--resume DIR] [key=value ...]
Data parallel: torchrun --nproc_per_node N -m prepo train ... (prepo.distributed)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prepo.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepo train",
        description="Train a causal LM with PREPO (perplexity-window prompt selection + entropy weighting) or a "
                    "baseline selection strategy. Any config key can be overridden as dotted key=value, e.g. "
                    "selection.strategy=random optim.lr=1e-5.")
    p.add_argument("--config", help="YAML config file (default: built-in defaults; on --resume: the run's config)")
    p.add_argument("--output-dir", help="run folder (default: <run.output_root>/<run.name>, or the resumed run's)")
    p.add_argument("--max-steps", type=int, help="training steps (sets run.steps)")
    p.add_argument("--resume", metavar="DIR", help="continue from a run folder's newest checkpoint (or a checkpoint)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides with dotted keys")
    return p


def _run_dir_of(resume: Path) -> Path:
    """The run folder a resume path belongs to (a checkpoint lives in <run>/checkpoints/step-N)."""
    return resume.parent.parent if resume.parent.name == "checkpoints" else resume


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"run.steps={args.max_steps}")
    config_path = args.config
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        if not resume.exists():
            print(f"prepo train: --resume {resume}: no such folder", file=sys.stderr)
            return 2
        if config_path is None and (_run_dir_of(resume) / "config.yaml").is_file():
            config_path = _run_dir_of(resume) / "config.yaml"
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"prepo train: {exc}", file=sys.stderr)
        return 2
    if args.output_dir:
        run_dir = Path(args.output_dir)
    elif resume is not None:
        run_dir = _run_dir_of(resume)
    else:
        run_dir = Path(config.run.output_root) / config.run.name

    from prepo.distributed import teardown
    from prepo.trainer import Trainer

    try:
        trainer = Trainer(config, run_dir, resume_from=resume)
    except FileNotFoundError as exc:
        print(f"prepo train: {exc}", file=sys.stderr)
        return 2
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
