"""Run records: metrics.jsonl (one JSON object per training step or evaluation), peak RSS, curves.png, the summary.

Rows carry ``kind`` ("train" or "eval"), ``step`` and ``rollouts`` (cumulative, discarded ones included).
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path

# the per-step fields every training row has (None where a field does not apply, e.g. the window for `random`)
TRAIN_FIELDS = ("step", "rollouts", "reward_mean", "accuracy", "entropy_mean", "weight_min", "weight_max",
                "ppl_window_lo", "ppl_window_hi", "time_select", "time_generate", "time_update", "peak_rss_mb")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _clean(value):
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl. A last line cut off mid-write (no newline at its end) is left out with a note;
    any other malformed line is a ValueError naming the file and line."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            if lineno == len(lines):  # the unterminated last line: a write the run never finished
                print(f"{path}:line {lineno}: left out a row whose write was cut off", file=sys.stderr)
                break
            detail = str(exc).splitlines()[0][:120]
            raise ValueError(f"{path}:line {lineno}: malformed metrics row ({detail}); repair or delete that "
                             "line") from None
        rows.append(row)
    return rows


def write_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace ``path`` with ``rows`` atomically: a temporary file beside it, fsynced, then renamed over it (a write
    error leaves the old file whole)."""
    import tempfile

    from prepo.checkpoint import _fsync_dir

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class MetricsLog:
    """Append-only metrics.jsonl; on resume, rows after the checkpoint's step are dropped (they will be redone) or,
    with ``set_aside``, moved to ``set_aside/metrics.jsonl`` (a branch from an earlier checkpoint)."""

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None, write: bool = True,
                 reporters=(), set_aside: Path | None = None):
        """``reporters``: prepo.reporters destinations (TensorBoard, W&B) that get each new row too."""
        self.path, self.writes = Path(path), write  # write=False: rows kept in memory only (other ranks than 0)
        self.reporters = list(reporters)
        self.rows: list[dict] = []
        self.dropped: list[dict] = []  # rows after resume_step
        if resume_step is not None and self.path.is_file():
            for row in read_rows(self.path):
                (self.rows if int(row.get("step", 0)) <= resume_step else self.dropped).append(row)
        if not write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}-*.tmp"):  # a rewrite a killed process left
            stale.unlink(missing_ok=True)
        if set_aside is not None and self.dropped:
            set_aside.mkdir(parents=True, exist_ok=True)
            write_rows(set_aside / self.path.name, self.dropped)
        write_rows(self.path, self.rows)

    def write(self, row: dict) -> dict:
        row = _clean(row)
        self.rows.append(row)
        if not self.writes:
            return row
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        for reporter in self.reporters:
            reporter.log(row)
        return row

    def close(self) -> None:
        """Close the reporters (metrics.jsonl is complete after every write)."""
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []


def plot_curves(rows: list[dict], path: str | os.PathLike) -> Path:
    """curves.png: training reward and held-out accuracy against rollouts generated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval" and r.get("accuracy") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    pts = [(r["rollouts"], r["reward_mean"]) for r in train if r.get("reward_mean") is not None]
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, ".-", alpha=0.35, label="step")
        width = min(5, len(ys))
        smooth = [sum(ys[max(0, i - width + 1):i + 1]) / len(ys[max(0, i - width + 1):i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, "-", linewidth=2, label=f"mean of last {width}")
        ax.legend()
    ax.set_xlabel("rollouts generated")
    ax.set_ylabel("mean reward")
    ax.set_title("training reward")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for name in sorted({r.get("dataset", "eval") for r in evals}):
        pts = [r for r in evals if r.get("dataset", "eval") == name]
        ax.plot([r["rollouts"] for r in pts], [r["accuracy"] for r in pts], "o-", label=name)
    ax.set_xlabel("rollouts generated")
    ax.set_ylabel("accuracy")
    ax.set_title("held-out accuracy")
    ax.grid(alpha=0.3)
    if evals:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary(rows: list[dict], wall_seconds: float | None = None) -> str:
    """A few lines for the end of a run: steps, rollouts, reward, eval accuracy before → after, time, memory."""
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval" and r.get("accuracy") is not None]
    lines = ["run summary"]
    if train:
        last = train[-1]
        first_rewards = [r["reward_mean"] for r in train[: max(1, len(train) // 4)]]
        last_rewards = [r["reward_mean"] for r in train[-max(1, len(train) // 4):]]
        lines.append(f"  steps {last['step']}, rollouts {last['rollouts']}, "
                     f"reward (first quarter → last quarter) {sum(first_rewards) / len(first_rewards):.3f} → "
                     f"{sum(last_rewards) / len(last_rewards):.3f}")
        step_times = [r["time_step"] for r in train]  # select + generate + reward + update
        lines.append(f"  mean step time {sum(step_times) / len(step_times):.1f} s, peak RSS {last['peak_rss_mb']:.0f} MiB")
    for name in sorted({r.get("dataset", "eval") for r in evals}):
        pts = [r for r in evals if r.get("dataset", "eval") == name]
        lines.append(f"  {name} accuracy: {pts[0]['accuracy']:.3f} (step {pts[0]['step']}) → "
                     f"{pts[-1]['accuracy']:.3f} (step {pts[-1]['step']})")
    if wall_seconds is not None:
        lines.append(f"  wall time {wall_seconds:.0f} s")
    return "\n".join(lines)
