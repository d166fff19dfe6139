"""Rollout-efficiency benchmark: train one model from the same seeds with PREPO and the baselines, evaluate on held-out
problems every few steps, and report accuracy against rollouts generated (``benchmarks.rl.efficiency_summary``).

usage: python -m benchmarks.rl.rollout_efficiency --config configs/efficiency-cpu.yaml [--summarize-only]

Runs go sequentially into ``<runs_root>/efficiency-<name>/<variant>-s<seed>/`` (checkpoints there); each run's
metrics.jsonl, config.yaml and status.json are copied to ``<results_root>/efficiency-<name>/<variant>-s<seed>/``, and
summary.md + curves.png there are rebuilt after every run. Rerunning the command skips finished runs (status.json
says complete, same configuration) and resumes unfinished ones from their newest checkpoint; SIGTERM or Ctrl-C
saves a checkpoint at the end of the current step and stops.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import model_slug
from benchmarks.rl.efficiency_summary import (METRIC_KEYS, RunRecord, build_report, plot, read_metrics,
                                           regime_line, summary_markdown)

# config keys that may differ between a run's start and its resume without changing what it computes
_VOLATILE_KEYS = {("run", "progress"), ("run", "threads"), ("run", "device"), ("run", "name"), ("run", "output_root"),
                  ("run", "report_to"), ("model", "cache_dir")}


class BenchmarkConfigError(ValueError):
    """A bad key or value in the efficiency config (the message names it)."""


@dataclass
class Variant:
    """One strategy: a name, dotted TrainConfig overrides on top of the base, and its seeds."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # [] = the benchmark's seeds


@dataclass
class EfficiencyConfig:
    """The benchmark: a base training config, the variants to compare and where outputs go."""

    name: str                                   # outputs go to efficiency-<name>/
    train: dict[str, Any]                       # base TrainConfig mapping (the keys of prepo.config)
    variants: list[Variant]
    seeds: list[int] = field(default_factory=lambda: [0])  # the seeds of a variant that names none
    reference: str = "random"                   # the variant whose final accuracy is the target
    runs_root: str = "runs"                     # run dirs (checkpoints): <runs_root>/efficiency-<name>/
    results_root: str = "results"               # committed outputs: <results_root>/efficiency-<name>/
    eval_dataset: str | None = None             # which held-out set the report uses (None: the only/first one)
    keep_checkpoints_after: bool = False        # keep a finished run's checkpoints (they are ~3× the model size)
    notes: str = ""                             # free text appended to summary.md (what was tried and why)
    metric: str = "avg@k"                       # the report's primary held-out metric (METRIC_KEYS)
    gate_min_gain: float = 0.15                 # validity gate: the reference's held-out gain over the run …
    gate_min_share: float = 0.8                 # … on at least this share of its seeds
    models: list[str] = field(default_factory=list)  # several models (e.g. build seeds): every run on each, reported
                                                # per model (<results>/<model>/) and pooled; [] = train.model's own
    model: str | None = None                    # set on the per-model configs (per_model) only
    transfer_benchmark: str | None = None       # the benchmark whose runs measure transfer (its name), for the
                                                # pre-registered conditions (benchmarks.rl.efficiency_conditions)

    def __post_init__(self):
        """What the types cannot say (they are checked when the YAML is read: load_efficiency_config)."""
        from prepo.structured import require

        require(bool(self.name) and "/" not in self.name, "name", f"must be a plain folder name, got {self.name!r}")
        require(bool(self.variants), "variants", "expected a non-empty list")
        for i, variant in enumerate(self.variants):
            variant.seeds = variant.seeds or list(self.seeds)
            require(len(set(variant.seeds)) == len(variant.seeds), f"variants[{i}].seeds",
                    f"seeds must be distinct, got {variant.seeds}")
        names = [v.name for v in self.variants]
        require(len(set(names)) == len(names) and all(n and "/" not in n for n in names), "variants",
                f"names must be distinct plain names, got {names}")
        require(self.reference in names, "reference", f"{self.reference!r} is not one of the variants {names}")
        require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds",
                f"expected distinct seeds, got {self.seeds}")
        require(all(self.models) and len({model_slug(m) for m in self.models}) == len(self.models), "models",
                f"expected a list of distinct model names, got {self.models!r}")
        require(self.transfer_benchmark is None or (bool(self.transfer_benchmark) and "/" not in
                self.transfer_benchmark), "transfer_benchmark",
                f"expected a benchmark name, got {self.transfer_benchmark!r}")
        require(self.metric in METRIC_KEYS, "metric", f"expected one of {sorted(METRIC_KEYS)}, got {self.metric!r}")
        require(0 <= self.gate_min_share <= 1, "gate_min_share",
                f"expected a share in [0, 1], got {self.gate_min_share!r}")

    @property
    def runs_dir(self) -> Path:
        base = Path(self.runs_root) / f"efficiency-{self.name}"
        return base / model_slug(self.model) if self.model else base

    @property
    def results_dir(self) -> Path:
        base = Path(self.results_root) / f"efficiency-{self.name}"
        return base / model_slug(self.model) if self.model else base

    def plan(self) -> list[tuple[Variant, int]]:
        """(variant, seed) in run order: the headline variants (those with the most seeds) first, seed by seed (every
        such variant's first seed, then the second seeds, …, so partial results compare them early), then the others
        the same way."""
        depth = max(len(v.seeds) for v in self.variants)
        order = []
        for group in ([v for v in self.variants if len(v.seeds) == depth],
                      [v for v in self.variants if len(v.seeds) < depth]):
            for i in range(depth):
                order += [(v, v.seeds[i]) for v in group if i < len(v.seeds)]
        return order


def per_model(cfg: EfficiencyConfig) -> list[EfficiencyConfig]:
    """One configuration per model of ``cfg.models`` (train.model.name_or_path set, outputs in a subfolder), or
    ``[cfg]`` when it names none."""
    if not cfg.models:
        return [cfg]
    out = []
    for name in cfg.models:
        train = copy.deepcopy(cfg.train)
        train.setdefault("model", {})["name_or_path"] = name
        out.append(dataclasses.replace(cfg, train=train, models=[], model=name))
    return out


def full_plan(cfg: EfficiencyConfig) -> list[tuple[EfficiencyConfig, Variant, int]]:
    """(per-model config, variant, seed) in run order: each model's plan, interleaved run by run."""
    plans = [[(sub, v, s) for v, s in sub.plan()] for sub in per_model(cfg)]
    return [p[i] for i in range(max(map(len, plans))) for p in plans if i < len(p)]


def train_config(cfg: EfficiencyConfig, variant: Variant, seed: int):
    """The TrainConfig of one run: base + the variant's dotted overrides + the seed (validated by prepo.config)."""
    from prepo.config import TrainConfig
    from prepo.structured import build

    return build(TrainConfig, cfg.train, {**variant.overrides, "run.seed": seed,
                                          "run.name": run_name(variant, seed, cfg.model)})


def run_name(variant: Variant, seed: int, model: str | None = None) -> str:
    return f"{variant.name}-s{seed}" if model is None else f"{variant.name}-{model_slug(model)}-s{seed}"


def load_efficiency_config(path: str | Path) -> EfficiencyConfig:
    """Read the benchmark YAML and its ``base: other.yaml`` chain onto EfficiencyConfig (OmegaConf merges and
    type-checks, prepo.structured); a derived config must name itself (its results go to efficiency-<name>/). Every
    run's TrainConfig is built once here so a typo fails at once."""
    from prepo.structured import ConfigError, build, yaml_layers

    path = Path(path)
    if not path.is_file():
        raise BenchmarkConfigError(f"--config: {str(path)!r} does not exist")
    try:
        layers = yaml_layers(path)
        for (_, base), (file, raw) in zip(layers, layers[1:]):
            if raw.get("name") in (None, base.get("name")):
                raise ConfigError(f"{file}: name: a config with a base needs a name of its own "
                                  f"(base: {base.get('name')!r})")
        if any("model" in raw for _, raw in layers):  # set per model from `models`, never by hand
            raise ConfigError(f"{path}: unknown key(s) ['model']; the models to train are listed in `models`")
        cfg = build(EfficiencyConfig, *(raw for _, raw in layers))
    except ConfigError as exc:
        raise BenchmarkConfigError(str(exc)) from None
    for sub in per_model(cfg):
        for variant in cfg.variants:
            try:
                train_config(sub, variant, variant.seeds[0])
            except ConfigError as exc:
                raise BenchmarkConfigError(f"variant {variant.name!r}: {exc}") from None
    return cfg


# --- run bookkeeping ----------------------------------------------------------------------------------------------

STATUS = "status.json"


def _comparable(config_dict: dict) -> dict:
    out = copy.deepcopy(config_dict)
    for section, key in _VOLATILE_KEYS:
        out.get(section, {}).pop(key, None)
    return out


def _saved_config(folder: Path) -> dict | None:
    from prepo.config import load_config

    path = folder / "config.yaml"
    return load_config(path).to_dict() if path.is_file() else None


def check_same_config(folder: Path, config) -> None:
    """Refuse to skip or resume a run that was made with a different configuration."""
    saved = _saved_config(folder)
    if saved is None:
        return
    old, new = _comparable(saved), _comparable(config.to_dict())
    if old != new:
        diff = sorted(f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k])
        raise BenchmarkConfigError(
            f"{folder}: was made with a different configuration (differs in {', '.join(diff) or 'sections'}); "
            "delete that folder (and its run/results twin) or rename the benchmark to start over")


def read_status(folder: Path) -> dict:
    path = folder / STATUS
    return json.loads(path.read_text()) if path.is_file() else {}


def sync_results(run_dir: Path, results: Path, steps: int, wall_seconds: float | None = None) -> dict:
    """Copy a run's metrics.jsonl and config.yaml to its results folder and write status.json there."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "config.yaml"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, results / name)
    rows = read_metrics(results / "metrics.jsonl") if (results / "metrics.jsonl").is_file() else []
    done = max((int(r["step"]) for r in rows if r.get("kind") == "train"), default=0)
    finished_eval = any(r.get("kind") == "eval" and int(r["step"]) == steps for r in rows)
    status = {"complete": done >= steps and finished_eval, "steps_done": done, "steps": steps}
    old = read_status(results)
    status["wall_seconds"] = (old.get("wall_seconds") or 0.0) + (wall_seconds or 0.0)
    (results / STATUS).write_text(json.dumps(status, indent=1) + "\n")
    return status


@dataclass
class RunOutcome:
    run: str
    action: str            # "skipped" | "fresh" | "resumed from step N" | "interrupted at step N"
    complete: bool


class Interrupted(Exception):
    pass


def run_one(cfg: EfficiencyConfig, variant: Variant, seed: int, log=print) -> RunOutcome:
    """Train one (variant, seed) unless finished; resume from its newest checkpoint when there is one."""
    from prepo.checkpoint import list_checkpoints
    from prepo.trainer import Trainer

    name = run_name(variant, seed)
    config = train_config(cfg, variant, seed)
    run_dir, results = cfg.runs_dir / name, cfg.results_dir / name
    if read_status(results).get("complete"):
        check_same_config(results, config)
        return RunOutcome(name, "skipped", True)
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        check_same_config(run_dir, config)
    action = f"resumed from {checkpoints[-1].name}" if checkpoints else "fresh"
    log(f"{name}: {action}")
    t0 = time.perf_counter()
    # fresh: what a run that died before its first checkpoint left in the folder is replaced (overwrite)
    trainer = Trainer(config, run_dir, resume_from=run_dir if checkpoints else None, overwrite=not checkpoints)
    result = trainer.train()
    del trainer
    status = sync_results(run_dir, results, config.run.steps, time.perf_counter() - t0)
    log(f"{name}: {result.summary}")
    if result.interrupted:
        raise Interrupted(f"{name}: interrupted at step {result.steps_done}; rerun the command to resume")
    if status["complete"] and not cfg.keep_checkpoints_after:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return RunOutcome(name, action, status["complete"])


# --- the report ---------------------------------------------------------------------------------------------------

def collect_runs(cfg: EfficiencyConfig) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """Every planned run's results (synced from its run dir first when that exists) and a status line each."""
    records, lines = [], []
    for variant, seed in cfg.plan():
        name = run_name(variant, seed)
        steps = train_config(cfg, variant, seed).run.steps
        results, run_dir = cfg.results_dir / name, cfg.runs_dir / name
        if (run_dir / "metrics.jsonl").is_file() and not read_status(results).get("complete"):
            sync_results(run_dir, results, steps)
        if not (results / "metrics.jsonl").is_file():
            lines.append((name, "not started"))
            continue
        status = read_status(results)
        rows = read_metrics(results / "metrics.jsonl")
        records.append(RunRecord(variant.name, seed, rows, bool(status.get("complete")), steps))
        line = f"{'complete' if status.get('complete') else 'incomplete'}, {status.get('steps_done', 0)}/{steps} steps"
        if status.get("wall_seconds"):
            line += f", {status['wall_seconds'] / 60:.1f} min wall (model loading included)"
        lines.append((name, line))
    return records, lines


def _eval_size(records: list[RunRecord], dataset: str | None, cfg: EfficiencyConfig) -> int:
    for r in records:
        for row in r.evals(dataset):
            for key in ("n", "problems", "num_problems"):
                if isinstance(row.get(key), int):
                    return int(row[key])
    return int((cfg.train.get("data") or {}).get("eval_size", 0) or 0)


def summarize(cfg: EfficiencyConfig, command: str) -> Path:
    """Rebuild summary.md and curves.png in the results folder from whatever runs exist: with several models, each
    model's own (in its subfolder) and the pooled one (paired by model and seed) at the top."""
    from benchmarks.rl.efficiency_conditions import condition_lines, model_lines

    subs = per_model(cfg)
    parts = [(sub, *collect_runs(sub)) for sub in subs]
    if cfg.models:
        for sub, records, status_lines in parts:
            _write_summary(sub, records, status_lines, command + f"  (model {sub.model})", header=[])
    # pooled: model m's seed s is paired as seed 1000·m + s
    pooled = [dataclasses.replace(r, seed=1000 * m + r.seed) for m, (_, records, _) in enumerate(parts)
              for r in records]
    status = [(f"{model_slug(sub.model)}/{run}" if sub.model else run, line) for sub, _, lines in parts
              for run, line in lines]
    off_policy = any(s != (1, 1) for s in update_settings(subs[0]).values())
    header = condition_lines(cfg, [(sub.model, records) for sub, records, _ in parts], off_policy) + budget_lines(subs)
    if cfg.models:
        header += model_lines(cfg) + ["", "Pooled below over the models (model m's seed s is paired as seed "
                                      "1000·m + s); each model's own summary is in its folder.", ""]
    return _write_summary(cfg, pooled, status, command, header=header)


def budget_lines(subs: list[EfficiencyConfig]) -> list[str]:
    """The '## Wall time' section: what the runs in the results took (status.json's wall_seconds, resumed parts
    summed, model loading included; model builds not), in total and as two runs at once (``--jobs 2``)."""
    walls, planned = {}, 0
    for sub in subs:
        for variant, seed in sub.plan():
            planned += 1
            status = read_status(sub.results_dir / run_name(variant, seed))
            if status.get("complete") and status.get("wall_seconds"):
                walls.setdefault(variant.name, []).append(float(status["wall_seconds"]))
    if not walls:
        return []
    total, done = sum(map(sum, walls.values())), sum(map(len, walls.values()))
    per = ", ".join(f"{name} {sorted(w)[len(w) // 2] / 60:.1f}" for name, w in walls.items())
    return ["## Wall time", "",
            f"{done} of {planned} planned runs complete: {total / 3600:.2f} h of run time in all (status.json's "
            f"wall_seconds, model loading included, model builds not), so ≈ {total / 7200:.2f} h as two runs at once "
            f"(`--jobs 2`) on this 2-core machine. Median minutes a run: {per}. Runs that shared the machine with "
            "other work took longer than on idle cores, so this is an upper bound for these runs.", ""]


def update_settings(cfg: EfficiencyConfig) -> dict[str, tuple[int, int]]:
    """Each variant's (ppo_epochs, mini_batches): its update regime, overrides applied."""
    out = {}
    for v in cfg.variants:
        alg = train_config(cfg, v, v.seeds[0]).algorithm
        out[v.name] = (alg.ppo_epochs, alg.mini_batches)
    return out


def _regime(cfg: EfficiencyConfig) -> str:
    """The update regime line for summary.md: one line if every variant shares it, else one per variant."""
    lines = {}
    for name, (epochs, mini_batches) in update_settings(cfg).items():
        lines.setdefault(regime_line(epochs, mini_batches), []).append(name)
    if len(lines) == 1:
        return next(iter(lines))
    return "\n".join(f"- {', '.join(names)}: {line}" for line, names in lines.items())


def _write_summary(cfg: EfficiencyConfig, records: list[RunRecord], status_lines, command: str,
                   header: list[str]) -> Path:
    dataset = cfg.eval_dataset
    if dataset is None:
        names = sorted({row.get("dataset") for r in records for row in r.evals(None) if row.get("dataset")})
        dataset = names[0] if names else None
    planned = {v.name: len(v.seeds) * max(1, len(cfg.models)) for v in cfg.variants}
    first = per_model(cfg)[0]
    ev = train_config(first, first.variants[0], first.variants[0].seeds[0]).eval
    decoding = ("greedy decoding" if ev.temperature == 0 else
                f"avg@{ev.k} at temperature {ev.temperature:g} (the bound below is for one sample per problem; "
                f"{ev.k} samples make it somewhat smaller)")
    report = build_report(records, planned, cfg.reference, dataset, _eval_size(records, dataset, cfg), decoding,
                          metric=cfg.metric, temperature=ev.temperature,
                          gate=(float(cfg.gate_min_gain), float(cfg.gate_min_share)))
    out = cfg.results_dir
    out.mkdir(parents=True, exist_ok=True)
    plot(report, out / "curves.png", f"rollout efficiency: {cfg.name}" + (f" ({cfg.model})" if cfg.model else ""))
    notes = cfg.notes
    for extra in ("notes.md", "diagnostics.md"):  # hand-written notes; the task diagnostics, when measured
        if (out / extra).is_file():
            notes = (notes + "\n\n" + ("\n" + (out / extra).read_text()).replace("\n# ", "\n### ")).strip()
    text = summary_markdown(report, name=cfg.name + (f" ({cfg.model})" if cfg.model else ""), command=command,
                            run_status=status_lines, notes=notes,
                            regime=_regime(first))
    if header:
        title, rest = text.split("\n", 1)
        text = title + "\n\n" + "\n".join(header).rstrip() + "\n" + rest
    tmp = out / f".summary.md.{os.getpid()}"  # --jobs workers rebuild it concurrently: replace, never interleave
    tmp.write_text(text)
    os.replace(tmp, out / "summary.md")
    return out / "summary.md"


# --- command line -------------------------------------------------------------------------------------------------

def _forward_sigterm() -> None:
    """SIGTERM → SIGINT, which the trainer turns into "finish this step, save a checkpoint, stop". SIGINT gets
    Python's own handler back: a shell starts background jobs (``nohup ... &``) with SIGINT ignored, and an ignored
    SIGINT would make both signals do nothing."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def run_all(cfg: EfficiencyConfig, command: str, log=print, shard: tuple[int, int] = (0, 1)) -> list[RunOutcome]:
    """Every planned run in order (those of shard ``i`` of ``n``: plan positions ≡ i mod n), the report rebuilt after
    each; stops (re-raising Interrupted) on an interrupt."""
    outcomes = []
    plan = full_plan(cfg)
    index, count = shard
    for i, (sub, variant, seed) in enumerate(plan, 1):
        if (i - 1) % count != index:
            continue
        log(f"[{i}/{len(plan)}] {run_name(variant, seed, sub.model)}")
        try:
            outcome = run_one(sub, variant, seed, log)
        except Interrupted:
            summarize(cfg, command)
            raise
        outcomes.append(outcome)
        if outcome.action != "skipped":
            summarize(cfg, command)
    summarize(cfg, command)
    return outcomes


def prepare_models(cfg: EfficiencyConfig) -> None:
    """Build the testbed models the runs need (once, before workers start: two workers would build one twice)."""
    from prepo.tasks.tiny_model import is_tiny_name, tiny_model_dir

    for sub in per_model(cfg):
        name = (sub.train.get("model") or {}).get("name_or_path")
        if name and is_tiny_name(name):
            tiny_model_dir(name, cache_dir=(sub.train.get("model") or {}).get("cache_dir"))


def _run_jobs(config_path: str, jobs: int, cfg: EfficiencyConfig, command: str) -> int:
    """``jobs`` worker processes, each taking every jobs-th run of the plan; SIGTERM/Ctrl-C reach all of them (each
    checkpoints and stops); the report is rebuilt once they are done."""
    import subprocess

    prepare_models(cfg)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # see _forward_sigterm
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.rl.rollout_efficiency", "--config", config_path,
                                 "--shard", f"{i}/{jobs}"]) for i in range(jobs)]
    signal.signal(signal.SIGTERM, lambda signum, frame: [w.send_signal(signal.SIGINT) for w in workers])
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:  # the terminal's Ctrl-C went to the workers too: let them checkpoint
        codes = [w.wait() for w in workers]
    print(f"wrote {summarize(cfg, command)}")
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rl.rollout_efficiency",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="benchmark YAML (e.g. configs/efficiency-cpu.yaml)")
    p.add_argument("--summarize-only", action="store_true", help="rebuild summary.md and curves.png, train nothing")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process (use run.threads: 1 in the config; default 1)")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # "i/n": the runs one --jobs worker takes
    args = p.parse_args(argv)
    shard = (0, 1)
    if args.shard is not None:
        i, _, n = args.shard.partition("/")
        shard = (int(i), int(n))
        if not 0 <= shard[0] < shard[1]:
            p.error(f"--shard: expected i/n with 0 <= i < n, got {args.shard!r}")
    if args.jobs < 1:
        p.error(f"--jobs: expected a positive int, got {args.jobs}")
    try:
        cfg = load_efficiency_config(args.config)
    except BenchmarkConfigError as exc:
        print(f"rollout_efficiency: {exc}", file=sys.stderr)
        return 2
    command = f"python -m benchmarks.rl.rollout_efficiency --config {args.config}"
    if args.summarize_only:
        print(f"wrote {summarize(cfg, command)}")
        return 0
    if args.jobs > 1:
        return _run_jobs(args.config, args.jobs, cfg, command)
    _forward_sigterm()
    try:
        outcomes = run_all(cfg, command, log=lambda msg: print(msg, flush=True), shard=shard)
    except Interrupted as exc:
        print(f"rollout_efficiency: {exc}", file=sys.stderr)
        return 130
    except BenchmarkConfigError as exc:
        print(f"rollout_efficiency: {exc}", file=sys.stderr)
        return 2
    for o in outcomes:
        print(f"{o.run}: {o.action}{'' if o.complete else ' (incomplete)'}")
    print(f"outputs in {cfg.results_dir}/ (summary.md, curves.png, <run>/metrics.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
