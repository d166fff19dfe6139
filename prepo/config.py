"""Training configuration: one dataclass per concern, loaded from YAML and overridden by dotted ``key=value`` pairs.

Every field is documented once, here; ``__post_init__`` rejects bad values and bad combinations with the key's name.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

STRATEGIES = ("ppl", "random", "dynamic", "greso", "all")
DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
SCORE_SPANS = ("question", "prompt")
FILE_FIELDS = ("prompt_field", "answer_field", "answer_extractor", "verifier", "split")


class ConfigError(ValueError):
    """A bad key or value in a config file or override (the message names the key)."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _require_finite(section, prefix: str) -> None:
    """Every float field of a config section is a finite number (inf and NaN pass most range checks)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            _require(math.isfinite(value), f"{prefix}.{f.name}", f"must be a finite number, got {value}")


@dataclass
class ModelConfig:
    """The policy model."""
    name_or_path: str = "smollm2-135m-instruct"  # alias, GGUF file, local folder or hub name
    dtype: str = "float32"                       # parameter dtype: float32 | bfloat16 | float16
    cache_dir: str | None = None                  # where converted GGUF models live (default ~/.cache/prepo)
    attn_implementation: str = "auto"             # auto: flash_attention_2 (packed rows) on CUDA when installed
    gradient_checkpointing: bool = False

    def __post_init__(self):
        _require(bool(self.name_or_path), "model.name_or_path", "must not be empty")
        _require(self.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _require(self.attn_implementation in ATTN_IMPLEMENTATIONS, "model.attn_implementation",
                 f"must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}")


@dataclass
class DataConfig:
    """Training and held-out prompts, and how they become token ids."""
    train: str = "arith"                    # a built-in task ("arith", "tiny-arith") or a file (jsonl/json/parquet)
    preset: str | None = None               # field preset for a file (see prepo.data.load_examples)
    fields: dict[str, str] | None = None    # file field mapping, e.g. {prompt_field: problem, answer_field: answer}
    train_size: int = 2000                  # arith: number of training problems; file: cap (0 = all)
    tiers: list[str] | None = None          # arith: difficulty tiers (None = the task's default tiers)
    eval: str | None = None                 # held-out set: None = arith with eval_seed, or a file path
    eval_size: int = 64                     # number of held-out problems (0 = all for a file)
    seed: int = 0                           # arith training split seed
    eval_seed: int = 1                      # arith held-out draw seed (the held-out split never shares a question)
    system_prompt: str | None = None        # None: the tokenizer template's default
    prompt_template: str = "{question}"     # the user message; must contain {question} once
    use_chat_template: bool | None = None   # None: use it when the tokenizer has one
    score_span: str = "question"            # prompt-perplexity tokens: the question only, or the whole prompt

    def __post_init__(self):
        _require(bool(self.train), "data.train", "must be 'arith' or a file path")
        _require(self.train_size >= 0, "data.train_size", f"must be >= 0, got {self.train_size}")
        _require(self.eval_size >= 0, "data.eval_size", f"must be >= 0, got {self.eval_size}")
        _require(self.train not in ("arith", "tiny-arith") or self.train_size > 0, "data.train_size",
                 f"must be > 0 for the built-in task {self.train!r}")
        _require(self.score_span in SCORE_SPANS, "data.score_span",
                 f"must be one of {SCORE_SPANS}, got {self.score_span!r}")
        _require(self.prompt_template.count("{question}") == 1, "data.prompt_template",
                 f"must contain '{{question}}' exactly once, got {self.prompt_template!r}")
        from prepo.data import BUILTIN_TASKS, builtin_tiers

        _require(self.train in BUILTIN_TASKS or self.tiers is None, "data.tiers",
                 f"only applies to a built-in task (data.train in {list(BUILTIN_TASKS)})")
        if self.tiers is not None:
            known = builtin_tiers(self.train)
            unknown_tiers = [t for t in self.tiers if t not in known]
            _require(bool(self.tiers), "data.tiers", f"must not be empty; known tiers: {known}")
            _require(not unknown_tiers, "data.tiers", f"unknown tier(s) {unknown_tiers}; known: {known}")
        unknown = sorted(set(self.fields or {}) - set(FILE_FIELDS))
        _require(not unknown, "data.fields", f"unknown key(s) {unknown}; valid: {list(FILE_FIELDS)}")


@dataclass
class SelectionConfig:
    """Which prompts each step trains on (PREPO's perplexity window or a baseline)."""
    strategy: str = "ppl"           # ppl | random | dynamic | greso | all
    num_candidates: int = 20        # |B|: prompts drawn per step (per round for greso)
    k: int = 4                      # K: prompts trained on per step (the paper uses K = |B| / 5)
    score_batch_tokens: int = 4096  # ppl: padded tokens per scoring forward
    max_rounds: int = 4             # dynamic / greso: generation rounds per step before training on what is kept
    greso_p_easy: float = 0.5       # greso: initial exploration probability for all-correct prompts
    greso_p_hard: float = 0.5       # greso: initial exploration probability for all-wrong prompts
    greso_target_zero_variance: float = 0.25  # greso: target share of zero-variance prompts (1/3 easy, 2/3 hard)
    greso_step: float = 0.01        # greso: exploration-probability adjustment per round
    greso_p_min: float = 0.05       # greso: exploration probability floor (a skipped prompt is never gone for good)

    def __post_init__(self):
        _require_finite(self, "selection")
        _require(self.strategy in STRATEGIES, "selection.strategy",
                 f"must be one of {STRATEGIES}, got {self.strategy!r}")
        _require(self.k >= 1, "selection.k", f"must be >= 1, got {self.k}")
        _require(self.num_candidates >= 1, "selection.num_candidates", f"must be >= 1, got {self.num_candidates}")
        _require(self.k <= self.num_candidates, "selection.k",
                 f"K={self.k} is larger than the candidate batch |B|={self.num_candidates}")
        _require(self.score_batch_tokens >= 1, "selection.score_batch_tokens", "must be >= 1")
        _require(self.max_rounds >= 1, "selection.max_rounds", f"must be >= 1, got {self.max_rounds}")
        for name in ("greso_p_easy", "greso_p_hard", "greso_p_min"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"selection.{name}", f"must be in [0, 1], got {value}")
        _require(0.0 <= self.greso_target_zero_variance < 1.0, "selection.greso_target_zero_variance",
                 f"must be in [0, 1), got {self.greso_target_zero_variance}")
        _require(0.0 <= self.greso_step <= 1.0, "selection.greso_step", f"must be in [0, 1], got {self.greso_step}")


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
        _require_finite(self, "rollout")
        from prepo.rollout import engine_names

        _require(self.engine in engine_names(), "rollout.engine",
                 f"unknown engine {self.engine!r}; known: {engine_names()}")
        _require(self.group_size >= 2, "rollout.group_size",
                 f"must be >= 2, got {self.group_size} (advantages are relative to the group: with G=1 every "
                 "advantage is 0 and nothing is learned)")
        _require(self.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _require(self.temperature > 0, "rollout.temperature", f"must be > 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.batch_size is None or self.batch_size >= 1, "rollout.batch_size", "must be >= 1 or null")


@dataclass
class AlgorithmConfig:
    """The GRPO/PREPO objective."""
    weighting: str = "entropy"            # none | entropy | entropy_token (PREPO relative-entropy weights)
    normalize_std: bool = True            # divide group advantages by the group std (False: Dr. GRPO)
    eps_low: float = 0.2                  # clip-higher lower bound: ratio >= 1 - eps_low
    eps_high: float = 0.28                # clip-higher upper bound: ratio <= 1 + eps_high
    loss_aggregation: str = "token-mean"  # token-mean | seq-mean-token-mean
    kl_coef: float = 0.0                  # k3 KL to the initial model (0 = off, no reference model kept)
    ppo_epochs: int = 1                   # updates per batch (1 = on-policy, no old-log-prob pass)
    skip_zero_advantage: bool = False     # leave zero-advantage rollouts out of the update forward (see update.py)

    def __post_init__(self):
        from prepo.algorithm import LOSS_AGGREGATIONS, WEIGHTINGS

        _require_finite(self, "algorithm")
        _require(self.weighting in WEIGHTINGS, "algorithm.weighting",
                 f"must be one of {WEIGHTINGS}, got {self.weighting!r}")
        _require(self.loss_aggregation in LOSS_AGGREGATIONS, "algorithm.loss_aggregation",
                 f"must be one of {LOSS_AGGREGATIONS}, got {self.loss_aggregation!r}")
        _require(0 <= self.eps_low < 1, "algorithm.eps_low", f"must be in [0, 1), got {self.eps_low}")
        _require(self.eps_high >= 0, "algorithm.eps_high", f"must be >= 0, got {self.eps_high}")
        _require(self.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {self.kl_coef}")
        _require(self.ppo_epochs >= 1, "algorithm.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        _require(not (self.skip_zero_advantage and self.kl_coef > 0), "algorithm.skip_zero_advantage",
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
    micro_batch_tokens: int = 1024    # tokens per forward/backward in the update (peak memory: 1024 vs 4096 on
                                      # SmolLM2, 32 rollouts x 64 tokens: 4.2 vs 7.2 GB RSS, same CPU time)

    def __post_init__(self):
        _require_finite(self, "optim")
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            _require(0 <= getattr(self, name) < 1, f"optim.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        _require(self.adam_eps > 0, "optim.adam_eps", f"must be > 0, got {self.adam_eps}")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.max_grad_norm >= 0, "optim.max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        _require(self.micro_batch_tokens >= 1, "optim.micro_batch_tokens", "must be >= 1")


@dataclass
class EvalConfig:
    """Held-out evaluation before, during and after training (prepo.evaluate)."""
    every: int = 0                 # evaluate every N steps (0 = only before and after)
    before: bool = True            # evaluate the initial model
    k: int = 1                     # samples per problem (avg@k)
    temperature: float = 0.0       # 0 = greedy
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens
    greedy: bool = False           # with temperature > 0: also the greedy accuracy (metrics key greedy_accuracy)
    rows_per_call: int = 64        # samples (problems x k) per generate call: larger is faster for tiny models

    def __post_init__(self):
        _require_finite(self, "eval")
        _require(self.rows_per_call >= 1, "eval.rows_per_call", f"must be >= 1, got {self.rows_per_call}")
        _require(self.every >= 0, "eval.every", f"must be >= 0, got {self.every}")
        _require(self.k >= 1, "eval.k", f"must be >= 1, got {self.k}")
        _require(self.temperature >= 0, "eval.temperature", f"must be >= 0, got {self.temperature}")
        _require(self.max_new_tokens is None or self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")


@dataclass
class RunConfig:
    """Run length, seeds, outputs and logging."""
    name: str = "prepo"             # runs/<name>/ unless --output-dir is given
    output_root: str = "runs"
    steps: int = 20                 # training steps (the perplexity schedule spans them: rho = step / steps)
    seed: int = 0
    save_every: int = 0             # checkpoint every N steps (0 = only at the end and on Ctrl-C)
    keep_checkpoints: int = 2       # newest checkpoints kept (0 = all)
    threads: int = 0                # torch CPU threads (0 = torch's default)
    progress: bool = True           # tqdm progress bar
    device: str = "auto"            # auto | cpu | cuda
    parallel: str = "auto"          # under torchrun: ddp (replicas) | fsdp (FSDP2 shards) | auto (fsdp on CUDA, ddp on CPU)

    def __post_init__(self):
        _require(bool(self.name) and self.name not in (".", "..") and not any(c in self.name for c in "/\\\0"),
                 "run.name", f"must be one plain folder name (no '/', '\\', '.' or '..'), got {self.name!r}")
        _require(self.steps >= 1, "run.steps", f"must be >= 1, got {self.steps}")
        _require(self.save_every >= 0, "run.save_every", f"must be >= 0, got {self.save_every}")
        _require(self.keep_checkpoints >= 0, "run.keep_checkpoints", f"must be >= 0, got {self.keep_checkpoints}")
        _require(self.threads >= 0, "run.threads", f"must be >= 0, got {self.threads}")
        _require(self.device in ("auto", "cpu", "cuda"), "run.device", f"must be auto, cpu or cuda, got {self.device!r}")
        _require(self.parallel in ("auto", "ddp", "fsdp"), "run.parallel",
                 f"must be auto, ddp or fsdp, got {self.parallel!r}")


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


# --- loading: YAML mapping + dotted overrides, each value coerced to its field's type ------------------------------

def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(tp):
    """(inner type, allows None) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_text(text: str):
    """A command-line value as YAML (so lists and mappings work); plain words stay strings."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce_value(value, tp, key: str):
    """Convert ``value`` (from YAML, or a raw command-line string) to the field type ``tp``; ConfigError if it can't."""
    inner, optional = _strip_optional(tp)
    from_cli = isinstance(value, str)
    if value is None or (from_cli and optional and value.strip().lower() in ("null", "none", "~", "")):
        if optional:
            return None
        raise ConfigError(f"{key}: must not be null")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if from_cli and value.strip().lower() in ("true", "yes", "on", "1"):
                return True
            if from_cli and value.strip().lower() in ("false", "no", "off", "0"):
                return False
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        if inner is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            return int(value.strip().replace("_", "")) if from_cli else int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ConfigError(f"{key}: expected a number, got {value!r}")
            return float(value)
        if inner is str:
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected a string, got {value!r}")
            return value
        if origin is list:
            (item_tp,) = typing.get_args(inner)
            if from_cli:
                parsed = _parse_text(value)
                value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return [coerce_value(str(v) if item_tp is str and isinstance(v, (int, float)) else v,
                                 item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            key_tp, val_tp = typing.get_args(inner)
            if from_cli:
                value = _parse_text(value)
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {value!r}")
            return {coerce_value(str(k), key_tp, key): coerce_value(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(inner, '__name__', inner)}") from None
    raise TypeError(f"{key}: unsupported field type {tp!r}")  # a programming error in this file


def _valid_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _build(cls, raw: dict, prefix: str = ""):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        valid = ", ".join(_valid_keys(cls, prefix))
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + str(u) for u in unknown)}; valid keys: {valid}")
    kwargs = {}
    for name, value in raw.items():
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(value, tp, prefix + name)
    return cls(**kwargs)


def apply_override(raw: dict, item: str) -> None:
    """Set one ``dotted.key=value`` pair in the raw (not yet validated) config mapping."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. selection.strategy=random")
    key, value = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    cls = TrainConfig
    node = raw
    for i, part in enumerate(parts):
        types_ = _field_types(cls)
        if part not in types_:
            prefix = ".".join(parts[:i]) + "." if i else ""
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(_valid_keys(cls, prefix))}")
        tp = types_[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{next(iter(_field_types(tp)))}=...")
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[:i + 1])}: expected a mapping")
            cls = tp
        else:
            if not last:
                prefix = ".".join(parts[:i]) + "." if i else ""
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} is not a section; "
                                  f"valid keys: {', '.join(_valid_keys(cls, prefix))}")
            node[part] = coerce_value(value, tp, key)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML file (optional), apply ``key=value`` overrides, validate, return a TrainConfig."""
    import yaml

    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config file {str(path)!r}: malformed YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
        raw = loaded
    for item in overrides:
        apply_override(raw, item)
    return _build(TrainConfig, raw)


def save_config(config: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# --- resuming: which keys may differ from the checkpoint's config ---------------------------------------------------

# no effect on what a run computes: may differ on --resume without a word
FREE_ON_RESUME = ("run.name", "run.output_root", "run.progress", "run.threads", "run.device", "run.save_every",
                  "run.keep_checkpoints", "model.cache_dir")
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
    valid = _valid_keys(TrainConfig)
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
