"""A training run: ``Trainer`` sets up model, data, engine, optimizer and selection strategy (or resumes them from a
checkpoint), then runs the steps (each one prepo.step.train_step), evaluates, and saves checkpoints.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from prepo.checkpoint import (find_checkpoint, list_checkpoints, load_sharded_checkpoint, load_weights, read_state,
                              remove_unfinished, rng_state, run_dir_of, save_checkpoint, save_sharded_checkpoint,
                              set_aside_later, set_rng_state)
from prepo.config import TrainConfig, resume_changes, save_config
from prepo.distributed import Dist, full_weights, setup as setup_distributed, shard_model
from prepo.metrics import MetricsLog, plot_curves, read_rows, summary
from prepo.reporters import check_installed, make_reporters
from prepo.selection import PromptSampler, make_strategy
from prepo.step import Policy, TrainSet, train_step
from prepo.update import NonFiniteError, UpdateSettings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DIVERGENCE_FIX = "a lower optim.lr, optim.max_grad_norm > 0 or a wider model.dtype"


# --- data and model set-up ----------------------------------------------------------------------------------------

def load_datasets(data_cfg) -> tuple[list, dict[str, list]]:
    """(training examples, {name: held-out examples}); a built-in task draws both from disjoint parts of its
    question space. A data.eval file is read like a data.train file: with data.preset and data.fields."""
    from prepo.tasks.registry import BUILTIN_TASKS, make_builtin

    if data_cfg.train in BUILTIN_TASKS:
        task = data_cfg.train
        train = make_builtin(task, data_cfg.train_size, data_cfg.seed, data_cfg.tiers, split="train")
        eval_tiers = data_cfg.eval_tiers if data_cfg.eval_tiers is not None else data_cfg.tiers
        evals = {task: make_builtin(task, data_cfg.eval_size, data_cfg.eval_seed, eval_tiers, split="eval")}
        if not data_cfg.eval_size:
            evals = {}
    else:
        train = _load_file(data_cfg, "train", data_cfg.train_size)
        evals = {}
    if data_cfg.eval is not None:
        evals = {Path(data_cfg.eval).stem: _load_file(data_cfg, "eval", data_cfg.eval_size)}
    if not train:
        raise ValueError(f"data.train: {data_cfg.train!r} gave no training examples")
    return train, evals


def _load_file(data_cfg, which: str, size: int) -> list:
    """data.train or data.eval (``which``) from its file, with data.preset and data.fields; a file whose format
    cannot be told is refused naming those keys."""
    from prepo.tasks.files import PRESETS, detect_preset, load_examples

    path, fields = getattr(data_cfg, which), dict(data_cfg.fields or {})
    if (data_cfg.preset is None and detect_preset(path) is None and Path(path).is_file()
            and not {"prompt_field", "answer_field"} <= set(fields)):
        raise ValueError(f"data.{which}: cannot tell the format of {path} from its folder name; set data.preset (one "
                         f"of {', '.join(sorted(PRESETS))}) or data.fields={{prompt_field: ..., answer_field: ...}}")
    return load_examples(path, data_cfg.preset, limit=size or None, **fields)


def prompt_format(data_cfg, dataset: str) -> dict:
    """encode_prompts / evaluate keyword arguments for one dataset (prepo.tasks.prompts.PromptFormat.for_dataset), with
    data.system_prompt and data.prompt_template over its own when set."""
    from prepo.tasks.prompts import PromptFormat

    return PromptFormat.for_dataset(dataset, system_prompt=data_cfg.system_prompt,
                                    prompt_template=data_cfg.prompt_template).as_kwargs()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device: cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def use_packed_rows(model_cfg, device: torch.device) -> bool:
    """Packed rows need flash-attention's varlen kernels: CUDA with flash_attn installed (or asked for by name)."""
    if device.type != "cuda" or model_cfg.attn_implementation not in ("auto", "flash_attention_2"):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        if model_cfg.attn_implementation == "flash_attention_2":
            raise ValueError("model.attn_implementation: flash_attention_2 needs the flash-attn package") from None
        return False
    return True


def load_policy(model_cfg, device: torch.device, packed: bool):
    from prepo.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_cfg.name_or_path, dtype=_DTYPES[model_cfg.dtype],
                                                cache_dir=model_cfg.cache_dir, device=device)
    if packed:  # --- packed branch (CUDA + flash-attn only) ---
        model.set_attn_implementation("flash_attention_2")
    elif model_cfg.attn_implementation in ("eager", "sdpa"):
        model.set_attn_implementation(model_cfg.attn_implementation)
    return model, tokenizer


# --- the run folder -------------------------------------------------------------------------------------------------

RUN_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "checkpoints")  # what a run writes in its folder


def _same_run(run_dir: Path, checkpoint: Path) -> bool:
    return run_dir.resolve() == run_dir_of(checkpoint).resolve()


def check_run_dir(run_dir: Path, checkpoint: Path | None, overwrite: bool) -> None:
    """A new run (or a checkpoint resumed into another folder) refuses a folder that holds another run, unless
    ``overwrite`` (then it is cleared once the model has loaded); the run resumed from is never overwritten."""
    own = checkpoint is not None and _same_run(run_dir, checkpoint)
    if own and overwrite:
        raise ValueError(f"overwrite: {run_dir} holds the checkpoint being resumed ({checkpoint}); it cannot be "
                         "cleared and resumed at once")
    if not own and not overwrite and any((run_dir / name).exists() for name in RUN_FILES):
        raise ValueError(f"run_dir: {run_dir} already holds a run; continue it with --resume {run_dir}, or pass "
                         "--overwrite to delete it and start over (or choose another --output-dir / run.name)")


def clear_run_dir(run_dir: Path) -> None:
    """Delete what a run wrote in ``run_dir`` (other files there are left alone)."""
    import shutil

    for path in [run_dir / name for name in RUN_FILES] + sorted(run_dir.glob("abandoned-*")):  # branches too
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_context(examples: Sequence, prompts: Sequence, max_new_tokens: int, context: int | None, what: str,
                  key: str) -> None:
    """Every prompt plus ``max_new_tokens`` fits in the model's context (``context`` tokens; None: unknown)."""
    if not context:
        return
    for ex, prompt in zip(examples, prompts):
        n = len(prompt.input_ids)
        if n + max_new_tokens > context:
            where = f" ({ex.meta['source']}:line {ex.meta['line']})" if "source" in ex.meta else ""
            raise ValueError(f"{what}: prompt {ex.id!r}{where} is {n} tokens; with {key}={max_new_tokens} it "
                             f"exceeds the model's context of {context} tokens (shorten or drop it, or lower {key})")


# --- the loop -----------------------------------------------------------------------------------------------------

def _sigterm_as_interrupt():
    """While training, SIGTERM (e.g. a job scheduler stopping the run) is handled like Ctrl-C: save, then exit."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


class HeldInterrupts:
    """Ctrl-C / SIGTERM inside ``with``: at once until :meth:`hold`, then held to the end of the block (said with
    ``message``, and ``requested`` set), so weights never end half-updated nor a checkpoint half-written."""

    def __init__(self, message: str):
        self.message, self.requested, self._previous = message, False, {}

    def hold(self) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        print(f"\ninterrupted: {self.message}", file=sys.stderr)

    def __enter__(self) -> HeldInterrupts:
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Steps the optimizer has taken, summed over its parameters (AdamW counts them per parameter): a change means
    the weights moved."""
    return sum(int(state["step"]) for state in optimizer.state.values() if "step" in state)


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    rollouts: int
    interrupted: bool
    summary: str


class Trainer:
    """One training run in ``run_dir``: set-up in ``__init__`` (or from a checkpoint), the loop in :meth:`train`."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, resume_from: str | Path | None = None,
                 overwrite: bool = False, allow_config_change: Sequence[str] = ()):
        """``overwrite``: ``run_dir`` may hold another run, which is deleted first (else that is refused);
        ``allow_config_change``: config keys that may differ from the resumed checkpoint's (prepo.config.resume_changes).
        Everything checkable without the model (run folder, checkpoint, config, data) is checked before it loads."""
        from prepo.tasks.prompts import encode_prompts
        from prepo.rollout import make_engine

        self.cfg, self.run_dir = config, Path(run_dir)
        cfg = config
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.device = resolve_device(cfg.run.device)
        # torchrun: join the process group; each rank then holds a replica (or FSDP2 shards) and trains on its share
        # of the groups
        self.dist: Dist = setup_distributed(self.device, cfg.run.parallel)
        if self.dist.active and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.packed = use_packed_rows(cfg.model, self.device)

        # before the model loads: the run folder, the checkpoint (readable, same config) and the data
        ckpt, state, self.config_changes = None, None, []
        if resume_from is not None:
            ckpt = find_checkpoint(resume_from)
            state = read_state(ckpt)
            self.config_changes = resume_changes(state.get("config", {}), cfg, allow_config_change)
        check_run_dir(self.run_dir, ckpt, overwrite)
        if ckpt is not None and _same_run(self.run_dir, ckpt) and (self.run_dir / "metrics.jsonl").is_file():
            read_rows(self.run_dir / "metrics.jsonl")  # a malformed row: its file:line now, not after the model loads
        check_installed(cfg.run.report_to)
        self.train_examples, self.eval_sets = load_datasets(cfg.data)
        self.strategy = make_strategy(cfg.selection, seed=cfg.run.seed)
        self.sampler = PromptSampler(len(self.train_examples), seed=cfg.run.seed)
        need = self.strategy.draw_size()
        if len(self.train_examples) < need:
            key = "selection.k" if need != cfg.selection.num_candidates else "selection.num_candidates"
            raise ValueError(f"data.train: {len(self.train_examples)} training examples, fewer than the {need} "
                             f"prompts a step draws ({key}={need}); lower {key} or use more data")

        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        self.model, self.tokenizer = load_policy(cfg.model, self.device, self.packed)
        self.dist.broadcast_parameters(self.model)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model = shard_model(self.model, self.dist)  # FSDP2 only; before the optimizer sees the parameters
        self.prompts = encode_prompts(self.tokenizer, self.train_examples,
                                      use_chat_template=cfg.data.use_chat_template, score_span=cfg.data.score_span,
                                      **prompt_format(cfg.data, cfg.data.train))
        context = getattr(self.model.config, "max_position_embeddings", None)
        check_context(self.train_examples, self.prompts, cfg.rollout.max_new_tokens, context, "data.train",
                      "rollout.max_new_tokens")
        for name, examples in self.eval_sets.items():
            check_context(examples, encode_prompts(self.tokenizer, examples, **prompt_format(cfg.data, name)),
                          cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, context, f"data.eval ({name})",
                          "eval.max_new_tokens")
        self.engine = make_engine(cfg.rollout.engine, self.model, self.tokenizer,
                                  **({"batch_size": cfg.rollout.batch_size} if cfg.rollout.batch_size else {}))
        self.ref_model = None
        if cfg.algorithm.kl_coef > 0:  # the reference is the initial model, also after a resume
            self.ref_model, _ = load_policy(cfg.model, self.device, self.packed)
            self.ref_model.eval().requires_grad_(False)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=o.lr,
                                           betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps,
                                           weight_decay=o.weight_decay)
        # FSDP gathers parameters in the model's forward, not the body's: no shared-prefix forward there
        self.settings = UpdateSettings.from_config(cfg, pad_id=int(self.tokenizer.pad_token_id), packed=self.packed,
                                                   shared_prefix=not self.dist.fsdp)
        self.policy = Policy(self.model, self.optimizer, self.engine, self.settings, self.ref_model, self.dist)
        self.data = TrainSet(self.train_examples, self.prompts)

        self.step, self.rollouts = 0, 0
        self._evaluated_step = -1  # the step whose evaluation last completed (a resumed run redoes a lost one)
        resume_step = None
        if ckpt is not None:
            if self.dist.fsdp:
                state = load_sharded_checkpoint(ckpt, self.model, self.optimizer)
            else:
                load_weights(ckpt, self.model)
            self._load_state(state)
            resume_step = self.step
        self.log = self._open_run_dir(ckpt, overwrite, resume_step)
        self._snapshot = self._host_state()  # what a checkpoint saves besides the weights: as of the last step
        self._committed_steps = optimizer_steps(self.optimizer)  # the optimizer's count as of that step
        self._stop_requested = False

    def _open_run_dir(self, ckpt: Path | None, overwrite: bool, resume_step: int | None) -> MetricsLog:
        """Prepare ``run_dir`` (rank 0 alone writes it): cleared if ``overwrite``, unfinished checkpoints removed,
        a branch's later checkpoints and rows set aside, the config written; then the metrics log, resumed."""
        cfg, aside, moved = self.cfg, None, []
        if self.dist.is_main:
            if overwrite and (ckpt is None or not _same_run(self.run_dir, ckpt)):
                clear_run_dir(self.run_dir)
            for path in remove_unfinished(self.run_dir):
                print(f"removed {path}: an unfinished checkpoint left by an interrupted save", file=sys.stderr)
            for change in self.config_changes:
                print(f"resume: config changed (--allow-config-change): {change}", file=sys.stderr)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is not None and _same_run(self.run_dir, ckpt):
                # resuming an earlier checkpoint than the newest starts a branch: the later checkpoints and metrics
                # rows move aside whole, so retention and a later --resume see this branch only
                aside = self.run_dir / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                moved = set_aside_later(self.run_dir, resume_step, aside)
                if moved and (self.run_dir / "config.yaml").is_file():  # the branch stays resumable on its own
                    (aside / "config.yaml").write_bytes((self.run_dir / "config.yaml").read_bytes())
            save_config(cfg, self.run_dir / "config.yaml")
        reporters = (make_reporters(cfg.run.report_to, self.run_dir, cfg.run.name, cfg.to_dict())
                     if self.dist.is_main else [])
        log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=resume_step, write=self.dist.is_main,
                         reporters=reporters, set_aside=aside if moved else None)
        if moved:
            print(f"resume: branching from step {resume_step} ({ckpt.name}), older than the run's newest checkpoint: "
                  f"moved {len(moved)} later checkpoint(s) and {len(log.dropped)} later metrics row(s) to "
                  f"{aside}/", file=sys.stderr)
        return log

    # -- state ---------------------------------------------------------------------------------------------------
    def _host_state(self) -> dict:
        """Everything but the model weights that a resumed run needs (plain containers / tensors)."""
        return {"step": self.step, "rollouts": self.rollouts, "rng": rng_state(),
                "sampler": self.sampler.state_dict(), "strategy": self.strategy.state_dict()}

    def _load_state(self, state: dict) -> None:
        self.step, self.rollouts = int(state["step"]), int(state["rollouts"])
        self._evaluated_step = int(state.get("eval_step", self.step))  # older checkpoints: taken as evaluated
        if "optimizer" in state:  # (sharded checkpoints hold it in dcp/)
            self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.strategy.load_state_dict(state["strategy"])
        set_rng_state(state["rng"])

    def save(self) -> Path:
        """Checkpoint as of the last completed step (host state from the end-of-step snapshot); rank 0 writes it
        (the replicas are equal), the other ranks wait until it is complete."""
        keep = self.cfg.run.keep_checkpoints
        if not all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
                   for p in self.model.parameters()):
            raise NonFiniteError(f"the weights after step {self.step} are not finite; not saved", weights=True)
        if self.dist.fsdp:
            state = {**self._snapshot, "eval_step": self._evaluated_step, "config": self.cfg.to_dict()}
            return save_sharded_checkpoint(self.run_dir, self.step, self.model, self.optimizer, state, dist=self.dist,
                                           tokenizer=self.tokenizer, keep=keep)
        path = None
        if self.dist.is_main:
            state = {**self._snapshot, "eval_step": self._evaluated_step, "optimizer": self.optimizer.state_dict(),
                     "config": self.cfg.to_dict()}
            path = save_checkpoint(self.run_dir, self.step, self.model, state, tokenizer=self.tokenizer, keep=keep)
        self.dist.barrier()
        return path

    # -- one step ----------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One step (prepo.step.train_step), then its commit: the metrics row, the counters and the snapshot a
        checkpoint saves. Ctrl-C / SIGTERM from the update on waits for the commit, then stops the run."""
        with HeldInterrupts("finishing this update, then saving a checkpoint") as interrupts:
            result = train_step(self.cfg, self.step, self.rollouts, self.policy, self.strategy, self.sampler,
                                self.data, interrupts)
            self.log.write(result.row)
            self.step, self.rollouts = result.row["step"], result.row["rollouts"]
            self._snapshot = self._host_state()
            self._committed_steps = optimizer_steps(self.optimizer)
        self._stop_requested = self._stop_requested or interrupts.requested
        return result.row

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self) -> list[dict]:
        """Held-out accuracy of the current policy, one metrics row per dataset (rank 0 evaluates, the others wait)."""
        if not self.eval_sets:
            return []
        with full_weights(self.model):
            rows = self._evaluate_main() if self.dist.is_main else []
            self.dist.barrier()
        return rows

    def _evaluate_main(self) -> list[dict]:
        from prepo.evaluate import evaluate

        e = self.cfg.eval
        t0 = time.perf_counter()
        common = dict(max_new_tokens=e.max_new_tokens or self.cfg.rollout.max_new_tokens, seed=self.cfg.run.seed,
                      progress=False, rows_per_call=e.rows_per_call, **self._eval_formats())
        report = evaluate(self.engine, self.tokenizer, self.eval_sets, k=e.k, temperature=e.temperature, **common)
        greedy = {}
        if e.greedy and e.temperature > 0:  # the sampled avg@k and the greedy answer, on the same problems
            greedy = evaluate(self.engine, self.tokenizer, self.eval_sets, k=1, temperature=0.0,
                              **common).to_dict()["benchmarks"]
        seconds = time.perf_counter() - t0
        rows = []
        for name, result in report.to_dict()["benchmarks"].items():
            extra = {"greedy_accuracy": greedy[name]["avg_at_k"]} if name in greedy else {}
            rows.append(self.log.write({"kind": "eval", "step": self.step, "rollouts": self.rollouts,
                                        "dataset": name, "accuracy": result["avg_at_k"], "time_eval": seconds,
                                        **{k: v for k, v in result.items() if k != "avg_at_k"}, **extra}))
        return rows

    def _eval_formats(self) -> dict:
        """Per-dataset prompt formats for evaluate (a mapping from dataset name for each keyword)."""
        formats = {name: prompt_format(self.cfg.data, name) for name in self.eval_sets}
        return {key: {name: f[key] for name, f in formats.items()} for key in next(iter(formats.values()))}

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run to ``run.steps``; evaluate before/every N/after; checkpoint every N and at the end; Ctrl-C saves."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        t0 = time.perf_counter()
        interrupted = False
        restore_sigterm = _sigterm_as_interrupt()
        bar = tqdm(total=cfg.run.steps, initial=self.step, disable=not (cfg.run.progress and self.dist.is_main),
                   desc="train", unit="step",
                   dynamic_ncols=True)
        try:
            # the starting policy's evaluation, or one an interruption cut short (a resumed run redoes it)
            if self._eval_due(self.step) and self._evaluated_step != self.step:
                self._evaluate_and_report(bar)
            while self.step < cfg.run.steps:
                # one training step: select → roll out → reward → advantages → weights → update
                row = self.train_step()
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward_mean'] or 0:.3f}", rollouts=row["rollouts"],
                                step_s=f"{row['time_step']:.1f}")
                # periodic evaluation and checkpoint
                if self._eval_due(self.step):
                    self._evaluate_and_report(bar)
                if cfg.run.save_every and self.step % cfg.run.save_every == 0:
                    self.save()
                if self._stop_requested:
                    raise KeyboardInterrupt
            # final evaluation and checkpoint
            if self._evaluated_step != self.step:
                self._evaluate_and_report(bar)
            self.save()
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            with HeldInterrupts("still saving the checkpoint; it is not cut short") as interrupts:
                interrupts.hold()
                path = self.save()
            if self.dist.is_main:
                print(f"\ninterrupted: saved {path}; continue with `prepo train --resume {self.run_dir}`",
                      file=sys.stderr)
        except Exception as exc:
            bar.close()
            self._save_after_error(exc)
            raise
        finally:
            bar.close()
            restore_sigterm()
            self.log.close()
        if self.dist.is_main:
            plot_curves(self.log.rows, self.run_dir / "curves.png")
        text = summary(self.log.rows, time.perf_counter() - t0)
        return TrainResult(self.run_dir, self.step, self.rollouts, interrupted, text)

    def _eval_due(self, step: int) -> bool:
        """Evaluate after ``step`` steps? Before training (eval.before) and every eval.every steps; the final
        evaluation is train's own."""
        every = self.cfg.eval.every
        return (step == 0 and self.cfg.eval.before) or (every > 0 and 0 < step < self.cfg.run.steps
                                                         and step % every == 0)

    def _evaluate_and_report(self, bar) -> None:
        for r in self.evaluate():
            bar.write(f"eval step {r['step']}: {r['dataset']} accuracy {r['accuracy']:.3f} ({r['time_eval']:.0f} s)")
        self._evaluated_step = self.step

    def _last_finite(self) -> str:
        """Where the last finite weights are, for a run stopped by non-finite ones (never a --resume into those)."""
        newest = list_checkpoints(self.run_dir)
        if not newest:
            return f"there is no earlier checkpoint: start over with {_DIVERGENCE_FIX}"
        return (f"the newest checkpoint, {newest[-1]}, holds the last finite weights: resume it only with "
                f"{_DIVERGENCE_FIX} (--allow-config-change)")

    def _save_after_error(self, exc: Exception) -> None:
        """An exception ends the run: save the last completed step's checkpoint (as Ctrl-C does) and say so, unless
        the error came after this step's optimizer step changed the weights (they belong to no step then)."""
        if optimizer_steps(self.optimizer) != self._committed_steps:  # the weights belong to no step
            note = (f"no checkpoint saved: the error came after step {self._snapshot['step'] + 1}'s optimizer step "
                    f"had changed the weights; resume from the newest checkpoint: `prepo train --resume "
                    f"{self.run_dir}`")
        elif isinstance(exc, NonFiniteError) and exc.weights:
            note = f"no checkpoint saved (a checkpoint never holds non-finite weights); {self._last_finite()}"
        elif self.dist.active and self.dist.world_size > 1:
            note = ("no checkpoint saved: under torchrun the other ranks may not reach the save; resume from the "
                    f"newest checkpoint: `prepo train --resume {self.run_dir}`")
        else:
            try:
                path = self.save()
                note = (f"saved {path} (the last completed step, {self.step}); after fixing the cause, continue with "
                        f"`prepo train --resume {self.run_dir}`")
                if isinstance(exc, NonFiniteError):
                    note = (f"saved {path} (the last completed step, {self.step}; its weights are finite); resuming it "
                            f"with the same settings diverges again: use {_DIVERGENCE_FIX} (--allow-config-change)")
            except NonFiniteError:
                note = f"no checkpoint saved: the weights are not finite; {self._last_finite()}"
            except Exception as save_exc:  # e.g. the disk is full: report the original error
                note = f"could not save a checkpoint either ({type(save_exc).__name__}: {save_exc})"
        if self.dist.is_main:
            print(f"\nerror during training: {note}", file=sys.stderr)
        if hasattr(exc, "add_note"):
            exc.add_note(note)
