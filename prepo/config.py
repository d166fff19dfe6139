"""Training configuration: one dataclass per concern, loaded from YAML and overridden by dotted ``key=value`` pairs.

Every field is documented once, here; OmegaConf checks keys and types (prepo.structured), ``__post_init__`` ranges,
choices and combinations, each error naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prepo.structured import ConfigError, build, check, override, require, valid_keys, yaml_layers

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
FILE_FIELDS = ("prompt_field", "answer_field", "answer_extractor", "verifier", "split")
# the lowest sampling temperature (vLLM's floor too): logits / T overflow float32 below it and sampling fails on inf/nan
MIN_TEMPERATURE = 0.01


@dataclass
class ModelConfig:
    """The policy model."""
    name_or_path: str = "smollm2-135m-instruct"  # alias, GGUF file, local folder or hub name
    dtype: str = "float32"                       # parameter dtype: float32 | bfloat16 | float16
    cache_dir: str | None = None                  # where converted GGUF models live (default ~/.cache/prepo)
    attn_implementation: str = "auto"             # auto: flash_attention_2 (packed rows) on CUDA when installed
    gradient_checkpointing: bool = False

    def __post_init__(self):
        require(bool(self.name_or_path), "model.name_or_path", "must not be empty")
        check(self, "model", dtype=DTYPES, attn_implementation=ATTN_IMPLEMENTATIONS)


@dataclass
class DataConfig:
    """Training and held-out prompts, and how they become token ids."""
    train: str = "arith"                    # a built-in task (prepo.tasks.registry) or a file (jsonl/json/parquet)
    preset: str | None = None               # field preset for a file (see prepo.tasks.files.load_examples)
    fields: dict[str, str] | None = None    # file field mapping, e.g. {prompt_field: problem, answer_field: answer}
    train_size: int = 2000                  # arith: number of training problems; file: cap (0 = all)
    tiers: list[str] | None = None          # arith: difficulty tiers (None = the task's default tiers)
    eval_tiers: list[str] | None = None     # built-in task: the held-out set's tiers (None = data.tiers), e.g. to
                                            # measure transfer from short chains to long ones
    eval: str | None = None                 # held-out set: None = arith with eval_seed, or a file path
    eval_size: int = 64                     # number of held-out problems (0 = all for a file)
    seed: int = 0                           # arith training split seed
    eval_seed: int = 1                      # arith held-out draw seed (the held-out split never shares a question)
    system_prompt: str | None = None        # None: the tokenizer template's default
    prompt_template: str = "{question}"     # the user message; must contain {question} once
    use_chat_template: bool | None = None   # None: use it when the tokenizer has one
    score_span: str = "question"            # prompt-perplexity tokens: the question only, or the whole prompt

    def __post_init__(self):
        from prepo.tasks.prompts import SCORE_SPANS
        from prepo.tasks.registry import BUILTIN_TASKS, builtin_tiers

        require(bool(self.train), "data.train", "must be 'arith' or a file path")
        check(self, "data", train_size=">= 0", eval_size=">= 0", score_span=SCORE_SPANS)
        builtin = self.train in BUILTIN_TASKS
        require(not builtin or self.train_size > 0, "data.train_size",
                 f"must be > 0 for the built-in task {self.train!r}")
        require(self.prompt_template.count("{question}") == 1, "data.prompt_template",
                 f"must contain '{{question}}' exactly once, got {self.prompt_template!r}")
        for key in ("tiers", "eval_tiers"):
            value = getattr(self, key)
            require(builtin or value is None, f"data.{key}",
                     f"only applies to a built-in task (data.train in {list(BUILTIN_TASKS)})")
            if value is not None:
                known = builtin_tiers(self.train)
                require(bool(value), f"data.{key}", f"must not be empty; known tiers: {known}")
                unknown_tiers = [t for t in value if t not in known]
                require(not unknown_tiers, f"data.{key}", f"unknown tier(s) {unknown_tiers}; known: {known}")
        unknown = sorted(set(self.fields or {}) - set(FILE_FIELDS))
        require(not unknown, "data.fields", f"unknown key(s) {unknown}; valid: {list(FILE_FIELDS)}")


@dataclass
class SelectionConfig:
    """Which prompts each step trains on (PREPO's perplexity window or a baseline)."""
    strategy: str = "ppl"           # ppl | random | dynamic | greso | all
    num_candidates: int = 20        # |B|: prompts drawn per step (per round for greso)
    k: int = 4                      # K: prompts trained on per step (the paper uses K = |B| / 5)
    score_batch_tokens: int = 4096  # ppl: padded tokens per scoring forward
    pace: str = "linear"            # ppl: how the window moves: linear (rho = step / (steps - 1), the paper) |
                                    # adaptive (with the window's all-correct vs all-wrong groups; prepo.selection)
    pace_gain: float = 4.0          # ppl, adaptive: rho moves by pace_gain / (steps - 1) * (solved - failed share)
    max_rounds: int = 4             # dynamic / greso: generation rounds per step before training on what is kept
    greso_p_easy: float = 0.5       # greso: initial exploration probability for all-correct prompts
    greso_p_hard: float = 0.5       # greso: initial exploration probability for all-wrong prompts
    greso_target_zero_variance: float = 0.25  # greso: target share of zero-variance prompts (1/3 easy, 2/3 hard)
    greso_step: float = 0.01        # greso: exploration-probability adjustment per round
    greso_p_min: float = 0.05       # greso: exploration probability floor (a skipped prompt is never gone for good)

    def __post_init__(self):
        from prepo.selection import PACES, STRATEGIES

        check(self, "selection", strategy=tuple(STRATEGIES), k=">= 1", num_candidates=">= 1",
               score_batch_tokens=">= 1", pace=PACES, pace_gain="> 0", max_rounds=">= 1", greso_p_easy="in [0, 1]",
               greso_p_hard="in [0, 1]", greso_p_min="in [0, 1]", greso_target_zero_variance="in [0, 1)",
               greso_step="in [0, 1]")
        require(self.k <= self.num_candidates, "selection.k",
                 f"K={self.k} is larger than the candidate batch |B|={self.num_candidates}")


@dataclass
class RolloutConfig:
    """How completions are sampled."""
    engine: str = "hf"              # rollout engine name (prepo.rollout.make_engine)
    group_size: int = 8             # G: completions per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0        # also the temperature of the log-probs and entropies in the update
    top_p: float = 1.0
    batch_size: int | None = None   # sequences per generate call (None: all at once)

    def __post_init__(self):
        from prepo.rollout import engine_names

        check(self, "rollout", max_new_tokens=">= 1", top_p="in (0, 1]", batch_size=">= 1")
        require(self.engine in engine_names(), "rollout.engine",
                 f"unknown engine {self.engine!r}; known: {engine_names()}")
        require(self.group_size >= 2, "rollout.group_size",
                 f"must be >= 2, got {self.group_size} (advantages are relative to the group: with G=1 every "
                 "advantage is 0 and nothing is learned)")
        require(self.temperature >= MIN_TEMPERATURE, "rollout.temperature",
                 f"must be >= {MIN_TEMPERATURE} (logits / T overflow below it), got {self.temperature}")


@dataclass
class AlgorithmConfig:
    """The GRPO/PREPO objective."""
    weighting: str = "entropy"            # none | entropy | entropy_token (PREPO relative-entropy weights)
    normalize_std: bool = True            # divide group advantages by the group std (False: Dr. GRPO)
    eps_low: float = 0.2                  # clip-higher lower bound: ratio >= 1 - eps_low
    eps_high: float = 0.28                # clip-higher upper bound: ratio <= 1 + eps_high
    loss_aggregation: str = "token-mean"  # token-mean | seq-mean-token-mean
    kl_coef: float = 0.0                  # k3 KL to the initial model (0 = off, no reference model kept)
    ppo_epochs: int = 1                   # passes over each rollout batch (1 = on-policy, no old-log-prob pass)
    mini_batches: int = 1                 # optimizer steps per pass, each over its part of the groups (verl's
                                          # ppo_mini_batch_size = groups / mini_batches): > 1 moves the policy
                                          # between them, so the ratio departs from 1 and clip-higher acts
    skip_zero_advantage: bool = False     # leave zero-advantage rollouts out of the update forward (see update.py)

    def __post_init__(self):
        from prepo.algorithm import LOSS_AGGREGATIONS, WEIGHTINGS

        check(self, "algorithm", weighting=WEIGHTINGS, loss_aggregation=LOSS_AGGREGATIONS, eps_low="in [0, 1)",
               eps_high=">= 0", kl_coef=">= 0", ppo_epochs=">= 1", mini_batches=">= 1")
        require(not (self.skip_zero_advantage and self.kl_coef > 0), "algorithm.skip_zero_advantage",
                 "cannot skip zero-advantage rollouts while kl_coef > 0 (their KL term still has a gradient)")


@dataclass
class OptimConfig:
    """AdamW, micro-batching and gradient clipping."""
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0             # linear warm-up from 0 to lr, then constant
    max_grad_norm: float = 1.0        # 0 = no clipping (the norm is still reported)
    micro_batch_tokens: int = 1024    # tokens per forward/backward in the update (peak memory against time:
                                      # results/update-micro-batch.md)

    def __post_init__(self):
        check(self, "optim", lr="> 0", weight_decay=">= 0", adam_beta1="in [0, 1)", adam_beta2="in [0, 1)",
               adam_eps="> 0", warmup_steps=">= 0", max_grad_norm=">= 0", micro_batch_tokens=">= 1")


@dataclass
class EvalConfig:
    """Held-out evaluation before, during and after training (prepo.evaluate); ``prepo eval``'s defaults too."""
    every: int = 0                 # evaluate every N steps (0 = only before and after)
    before: bool = True            # evaluate the initial model
    k: int = 1                     # samples per problem (avg@k)
    temperature: float = 0.0       # 0 = greedy
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens
    greedy: bool = False           # with temperature > 0: also the greedy accuracy (metrics key greedy_accuracy)
    rows_per_call: int = 64        # samples (problems x k) per generate call: larger is faster for tiny models

    def __post_init__(self):
        check(self, "eval", rows_per_call=">= 1", every=">= 0", k=">= 1", max_new_tokens=">= 1")
        require(self.temperature == 0 or self.temperature >= MIN_TEMPERATURE, "eval.temperature",
                 f"must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {self.temperature}")


@dataclass
class RunConfig:
    """Run length, seeds, outputs and logging."""
    name: str = "prepo"             # runs/<name>/ unless --output-dir is given
    output_root: str = "runs"
    steps: int = 20                 # training steps (the perplexity schedule spans them: rho = step / (steps - 1))
    seed: int = 0
    save_every: int = 0             # checkpoint every N steps (0 = only at the end and on Ctrl-C)
    keep_checkpoints: int = 2       # newest checkpoints kept (0 = all)
    threads: int = 0                # torch CPU threads (0 = torch's default)
    progress: bool = True           # tqdm progress bar
    device: str = "auto"            # auto | cpu | cuda
    parallel: str = "auto"          # under torchrun: ddp (replicas) | fsdp (FSDP2 shards) | auto (fsdp on CUDA, ddp on CPU)
    report_to: list[str] = field(default_factory=list)  # also log to: tensorboard, wandb (offline without network)

    def __post_init__(self):
        from prepo.reporters import REPORTERS

        require(bool(self.name) and self.name not in (".", "..") and not any(c in self.name for c in "/\\\0"),
                 "run.name", f"must be one plain folder name (no '/', '\\', '.' or '..'), got {self.name!r}")
        check(self, "run", steps=">= 1", save_every=">= 0", keep_checkpoints=">= 0", threads=">= 0",
               device=("auto", "cpu", "cuda"), parallel=("auto", "ddp", "fsdp"))
        unknown = [name for name in self.report_to if name not in REPORTERS]
        require(not unknown, "run.report_to", f"unknown {unknown}; known: {list(REPORTERS)}")


@dataclass
class TrainConfig:
    """The whole run: one section per concern."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (optional; with its ``base:`` chain), apply ``key=value`` overrides, validate."""
    files = [raw for _, raw in yaml_layers(path)] if path is not None else []
    return build(TrainConfig, *files, *(override(TrainConfig, item) for item in overrides))


def save_config(config: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# --- resuming: which keys may differ from the checkpoint's config ---------------------------------------------------

# no effect on what a run computes: may differ on --resume without a word
FREE_ON_RESUME = ("run.name", "run.output_root", "run.progress", "run.threads", "run.device", "run.save_every",
                  "run.keep_checkpoints", "run.report_to", "model.cache_dir")
# the checkpoint's state (sampler positions, strategy state, weights) is tied to these: never changed on --resume
FIXED_ON_RESUME = ("model.name_or_path", "run.seed", "selection.strategy", "data.train", "data.preset",
                   "data.fields", "data.train_size", "data.tiers", "data.seed")


def _flatten(tree: dict) -> dict:
    """{"section.key": value} from ``TrainConfig.to_dict()``."""
    return {f"{section}.{key}": value for section, keys in tree.items() if isinstance(keys, dict)
            for key, value in keys.items()}


def resume_changes(saved: dict, config: TrainConfig, allow=()) -> list[str]:
    """Check ``config`` against the checkpoint's saved config (``TrainConfig.to_dict()``) before resuming.

    Keys in FREE_ON_RESUME may differ; any other differing key must be named in ``allow`` (a dotted key, or its last
    part when that is unambiguous, e.g. ``steps``) and must not be in FIXED_ON_RESUME. Returns the allowed changes
    ("key: old -> new"); raises ConfigError naming every refused key.
    """
    valid = valid_keys(TrainConfig)
    allowed = set()
    for name in allow:
        matches = [k for k in valid if k == name or k.endswith("." + name)]
        if len(matches) != 1:
            raise ConfigError(f"--allow-config-change: {name!r} is {'ambiguous' if matches else 'not a config key'}"
                              f"{' (' + ', '.join(matches) + ')' if matches else ''}")
        allowed.add(matches[0])
    old = {k: v for k, v in _flatten(saved).items() if k in valid}
    new = _flatten(config.to_dict())
    changed = [k for k in valid if k in old and old[k] != new[k] and k not in FREE_ON_RESUME]
    describe = lambda k: f"{k} ({old[k]!r} -> {new[k]!r})"
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {', '.join(map(describe, fixed))}; "
                          "the checkpoint's state depends on these, so they cannot change: start a new run instead")
    refused = [k for k in changed if k not in allowed]
    if refused:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {', '.join(map(describe, refused))}; "
                          f"resume with the run's own config, or pass --allow-config-change {','.join(refused)}")
    return [describe(k) for k in changed]
