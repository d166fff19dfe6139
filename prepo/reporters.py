"""Where a run's metrics rows go besides metrics.jsonl and curves.png: TensorBoard and Weights & Biases, chosen by
``run.report_to`` and driven through one interface (``log(row)``, ``close()``), as TRL's ``report_to`` is.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path

INSTALL = 'pip install "prepo[report]"'


def scalars(row: dict) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) of a metrics row: its numbers, under ``train/`` or ``eval/<dataset>/``."""
    prefix = "train" if row.get("kind") == "train" else f"eval/{row.get('dataset', 'eval')}"
    values = {f"{prefix}/{key}": float(value) for key, value in row.items()
              if key not in ("kind", "step") and isinstance(value, numbers.Real) and not isinstance(value, bool)}
    return int(row.get("step", 0)), values


class Reporter:
    """One destination of the metrics rows."""

    def log(self, row: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardReporter(Reporter):
    """Event files under ``<run_dir>/tensorboard/`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict) -> None:
        step, values = scalars(row)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter(Reporter):
    """A W&B run under ``<run_dir>/wandb/``; offline (synced later with ``wandb sync``) unless WANDB_MODE says
    otherwise, so a machine without network or login still trains."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "prepo"), name=name, dir=str(run_dir),
                              config=config)

    def log(self, row: dict) -> None:
        step, values = scalars(row)
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


REPORTERS = {"tensorboard": (TensorBoardReporter, "tensorboard"), "wandb": (WandbReporter, "wandb")}


def check_installed(names) -> None:
    """ValueError naming ``run.report_to`` and the install command when a chosen reporter's package is missing."""
    import importlib.util

    for name in names:
        package = REPORTERS[name][1]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"run.report_to: {name} needs the {package} package: {INSTALL} (or pip install "
                             f"{package}), or leave {name} out of run.report_to")


def make_reporters(names, run_dir: Path, name: str, config: dict) -> list[Reporter]:
    """The reporters ``run.report_to`` names, started for this run."""
    check_installed(names)
    return [REPORTERS[n][0](Path(run_dir), name, config) for n in names]
