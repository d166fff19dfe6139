"""Training configuration: one dataclass per concern, loaded from YAML and overridden by dotted ``key=value`` pairs.

Every field is documented once, here; ``__post_init__`` rejects bad values and bad combinations with the key's name.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
FILE_FIELDS = ("prompt_field", "answer_field", "answer_extractor", "verifier", "split")
# the lowest sampling temperature (vLLM's floor too): logits / T overflow float32 below it and sampling fails on inf/nan
MIN_TEMPERATURE = 0.01


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
        _require(bool(self.train), "data.train", "must be 'arith' or a file path")
        _require(self.train_size >= 0, "data.train_size", f"must be >= 0, got {self.train_size}")
        _require(self.eval_size >= 0, "data.eval_size", f"must be >= 0, got {self.eval_size}")
        from prepo.tasks.prompts import SCORE_SPANS
        from prepo.tasks.registry import BUILTIN_TASKS, builtin_tiers

        _require(self.train not in BUILTIN_TASKS or self.train_size > 0, "data.train_size",
                 f"must be > 0 for the built-in task {self.train!r}")

        _require(self.score_span in SCORE_SPANS, "data.score_span",
                 f"must be one of {SCORE_SPANS}, got {self.score_span!r}")
        _require(self.prompt_template.count("{question}") == 1, "data.prompt_template",
                 f"must contain '{{question}}' exactly once, got {self.prompt_template!r}")

        _require(self.train in BUILTIN_TASKS or self.tiers is None, "data.tiers",
                 f"only applies to a built-in task (data.train in {list(BUILTIN_TASKS)})")
        _require(self.train in BUILTIN_TASKS or self.eval_tiers is None, "data.eval_tiers",
                 f"only applies to a built-in task (data.train in {list(BUILTIN_TASKS)})")
        for key in ("tiers", "eval_tiers"):
            value = getattr(self, key)
            if value is not None:
                known = builtin_tiers(self.train)
                unknown_tiers = [t for t in value if t not in known]
                _require(bool(value), f"data.{key}", f"must not be empty; known tiers: {known}")
                _require(not unknown_tiers, f"data.{key}", f"unknown tier(s) {unknown_tiers}; known: {known}")
        unknown = sorted(set(self.fields or {}) - set(FILE_FIELDS))
        _require(not unknown, "data.fields", f"unknown key(s) {unknown}; valid: {list(FILE_FIELDS)}")


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
        from prepo.selection import STRATEGIES

        _require_finite(self, "selection")
        _require(self.strategy in STRATEGIES, "selection.strategy",
                 f"must be one of {tuple(STRATEGIES)}, got {self.strategy!r}")
        _require(self.k >= 1, "selection.k", f"must be >= 1, got {self.k}")
        _require(self.num_candidates >= 1, "selection.num_candidates", f"must be >= 1, got {self.num_candidates}")
        _require(self.k <= self.num_candidates, "selection.k",
                 f"K={self.k} is larger than the candidate batch |B|={self.num_candidates}")
        _require(self.score_batch_tokens >= 1, "selection.score_batch_tokens", "must be >= 1")
        from prepo.selection import PACES

        _require(self.pace in PACES, "selection.pace", f"must be one of {PACES}, got {self.pace!r}")
        _require(self.pace_gain > 0, "selection.pace_gain", f"must be > 0, got {self.pace_gain}")
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
        _require(self.temperature >= MIN_TEMPERATURE, "rollout.temperature",
                 f"must be >= {MIN_TEMPERATURE} (logits / T overflow below it), got {self.temperature}")
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
    ppo_epochs: int = 1                   # passes over each rollout batch (1 = on-policy, no old-log-prob pass)
    mini_batches: int = 1                 # optimizer steps per pass, each over its part of the groups (verl's
                                          # ppo_mini_batch_size = groups / mini_batches): > 1 moves the policy
                                          # between them, so the ratio departs from 1 and clip-higher acts
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
        _require(self.mini_batches >= 1, "algorithm.mini_batches", f"must be >= 1, got {self.mini_batches}")
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
    micro_batch_tokens: int = 1024    # tokens per forward/backward in the update (peak memory against time:
                                      # benchmarks/results/update-micro-batch.md)

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
        _require(self.temperature == 0 or self.temperature >= MIN_TEMPERATURE, "eval.temperature",
                 f"must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {self.temperature}")
        _require(self.max_new_tokens is None or self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")


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
        _require(bool(self.name) and self.name not in (".", "..") and not any(c in self.name for c in "/\\\0"),
                 "run.name", f"must be one plain folder name (no '/', '\\', '.' or '..'), got {self.name!r}")
        _require(self.steps >= 1, "run.steps", f"must be >= 1, got {self.steps}")
        _require(self.save_every >= 0, "run.save_every", f"must be >= 0, got {self.save_every}")
        _require(self.keep_checkpoints >= 0, "run.keep_checkpoints", f"must be >= 0, got {self.keep_checkpoints}")
        _require(self.threads >= 0, "run.threads", f"must be >= 0, got {self.threads}")
        _require(self.device in ("auto", "cpu", "cuda"), "run.device", f"must be auto, cpu or cuda, got {self.device!r}")
        _require(self.parallel in ("auto", "ddp", "fsdp"), "run.parallel",
                 f"must be auto, ddp or fsdp, got {self.parallel!r}")
        from prepo.reporters import REPORTERS

        unknown = [name for name in self.report_to if name not in REPORTERS]
        _require(not unknown, "run.report_to", f"unknown {unknown}; known: {list(REPORTERS)}")


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


# --- loading: OmegaConf merges the dataclasses' defaults, YAML files (a ``base:`` chain), mappings and dotted overrides
# with strict keys and typed values; the dataclasses' __post_init__ checks run last. Any error is one ConfigError line.
# Values are taken literally: ${...} interpolations are never resolved (a config file must not read the environment).

def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _valid_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _lookup(key: str):
    """(the section class holding ``key``'s deepest known part, how many parts are known, that part's type or None)."""
    cls, parts = TrainConfig, key.split(".")
    for i, part in enumerate(parts):
        tp = _field_types(cls).get(part)
        if tp is None or i == len(parts) - 1 or not dataclasses.is_dataclass(tp):
            return cls, i, tp
        cls = tp
    return cls, len(parts), None


def _unknown_key(key: str) -> ConfigError:
    cls, known, _ = _lookup(key)
    prefix = ".".join(key.split(".")[:known])
    valid = ", ".join(_valid_keys(cls, prefix + "." if prefix else ""))
    return ConfigError(f"unknown config key(s) {key}; valid keys: {valid}")


def _short(value) -> str:
    """``repr(value)``, cut to 80 characters (a 100k-digit number stays one readable line)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _expected_type(key: str):
    """(the type ``key`` holds without Optional, its origin: list, dict, a dataclass or the type itself)."""
    _, _, tp = _lookup(key)
    inner = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if type(None) in typing.get_args(tp) else tp
    return inner, typing.get_origin(inner) or inner


def _bad_value(key: str, value) -> ConfigError:
    """The one line for a value that does not fit ``key``'s type."""
    inner, origin = _expected_type(key)
    value = _Shown(_short(value))
    if dataclasses.is_dataclass(inner) or origin is dict:
        return ConfigError(f"{key}: expected a mapping, got {value!r}")
    if origin is list:
        return ConfigError(f"{key}: expected a list, got {value!r}")
    if inner is bool:
        return ConfigError(f"{key}: expected true or false, got {value!r}")
    if inner is str:
        return ConfigError(f"{key}: expected a string, got {value!r}")
    return ConfigError(f"{key}: cannot read {value!r} as {getattr(inner, '__name__', inner)}")


class _Shown(str):
    """Text shown as itself by ``!r`` (an already shortened repr)."""

    def __repr__(self):
        return str(self)


def _check_shapes(mapping: dict) -> None:
    """A mapping or list given where the key holds something else: that key's one line (OmegaConf's merge would
    raise a bare TypeError naming no key)."""
    for name, section in mapping.items():
        if not isinstance(section, dict) or not dataclasses.is_dataclass(_field_types(TrainConfig).get(name)):
            continue
        for key, value in section.items():
            full = f"{name}.{key}"
            if _lookup(full)[2] is None:
                continue  # an unknown key: named by the merge
            _, origin = _expected_type(full)
            if ((isinstance(value, dict) and origin is not dict) or (isinstance(value, list) and origin is not list)
                    or (origin in (dict, list) and value is not None and not isinstance(value, (dict, list, str)))):
                raise _bad_value(full, value)


# a config holds about a hundred values: an alias chain ("billion laughs") that expands past this is refused before
# OmegaConf copies it node by node, and so is nesting deeper than any config needs
YAML_MAX_NODES = 10_000
YAML_MAX_DEPTH = 32


def _yaml_loader(text: str):
    """A yaml.SafeLoader over ``text`` that refuses a key given twice in one mapping (YAML would keep the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r} (first at line {seen[key_node.value]})",
                            key_node.start_mark)
                    seen[key_node.value] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return Loader(text)


def _expanded_size(node, memo: dict, depth: int = 0) -> int:
    """Nodes in the YAML tree once every alias is copied out (what OmegaConf builds), up to YAML_MAX_NODES."""
    import yaml

    if depth > YAML_MAX_DEPTH:
        raise ConfigError(f"nested deeper than {YAML_MAX_DEPTH} levels (or an alias that contains itself)")
    if id(node) not in memo:
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += _expanded_size(child, memo, depth + 1)
            if total > YAML_MAX_NODES:
                raise ConfigError(f"expands to more than {YAML_MAX_NODES} values (aliases repeat whole "
                                  "subtrees); write the values out")
        memo[id(node)] = total
    return memo[id(node)]


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file (yaml.SafeLoader: no tags, no code; duplicate keys, deep nesting and alias bombs
    refused), or a ConfigError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {what}")
    try:
        loader = _yaml_loader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None:
                _expanded_size(node, {})
            loaded = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}: malformed YAML{where}: {problem}") from None
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(path)!r}: nested deeper than {YAML_MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"config file {str(path)!r}: {str(exc).splitlines()[0][:200]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
    return loaded


def yaml_layers(path: str | Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """(file, mapping) for a YAML file and the ``base: other.yaml`` chain under it (relative to each file), the
    deepest base first; each mapping without its ``base`` key. Merge them in order (:func:`merge_mappings`)."""
    path = Path(path)
    raw = read_yaml(path)
    if "base" not in raw:
        return [(path, raw)]
    base_path = (path.parent / str(raw.pop("base"))).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base_path} includes itself")
    return yaml_layers(base_path, seen + (path.resolve(),)) + [(path, raw)]


def merge_mappings(*mappings) -> dict:
    """Later mappings over earlier ones: mappings merge key by key, anything else (lists included) is replaced."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge(*[OmegaConf.create(m) for m in mappings]), resolve=False)


def _override(item: str) -> dict:
    """One ``dotted.key=value`` as a nested mapping, its value read as YAML (a list key also takes ``a, b``)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. selection.strategy=random")
    key, text = (part.strip() for part in item.split("=", 1))
    cls, known, tp = _lookup(key)
    if tp is None or known < len(key.split(".")) - 1:
        raise _unknown_key(key)
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{next(iter(_field_types(tp)))}=...")
    optional = type(None) in typing.get_args(tp)
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
    except (OmegaConfBaseException, ValueError, yaml.YAMLError):  # not YAML: the text itself
        value = text
    if not text:
        value = None if optional else ""
    is_list = any(typing.get_origin(a) is list for a in (tp, *typing.get_args(tp)))
    if is_list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if value is None and not optional:
        raise _bad_value(key, text)
    return dotted_mapping(key, value)


def dotted_mapping(key: str, value) -> dict:
    """``{"a.b": v}`` as ``{"a": {"b": v}}``."""
    *sections, last = key.split(".")
    out = node = {}
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def _check_literal(node, prefix: str = "") -> None:
    """Interpolations stay text, so only a string field may hold one."""
    from omegaconf import DictConfig, OmegaConf

    for name in node:
        key = prefix + str(name)
        if OmegaConf.is_interpolation(node, name):
            _, _, tp = _lookup(key)
            if tp is not None and tp is not str and str not in typing.get_args(tp):
                raise _bad_value(key, OmegaConf.to_container(node, resolve=False)[name])
        elif isinstance(node._get_node(name), DictConfig) and node[name] is not None:
            _check_literal(node[name], key + ".")


def config_from(*mappings, overrides: Sequence[str] = ()) -> TrainConfig:
    """The TrainConfig of the defaults, then ``mappings`` (nested sections, e.g. from YAML), then dotted
    ``key=value`` overrides, checked key by key and value by value."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    layers = [OmegaConf.structured(TrainConfig)]
    try:
        for mapping in (*mappings, *(_override(item) for item in overrides)):
            for name, section in mapping.items():
                tp = _field_types(TrainConfig).get(name)
                if dataclasses.is_dataclass(tp) and section is not None and not isinstance(section, dict):
                    raise ConfigError(f"{name}: expected a mapping, got {section!r}")
            _check_shapes(mapping)
            layers.append(OmegaConf.create({k: v for k, v in mapping.items() if v is not None or k not in
                                            _field_types(TrainConfig)}))
        merged = OmegaConf.merge(*layers)
        _check_literal(merged)
        tree = OmegaConf.to_container(merged, resolve=False)  # OmegaConf's own instantiation would resolve ${...}
    except ConfigKeyError as exc:
        raise _unknown_key(exc.full_key) from None
    except OmegaConfBaseException as exc:
        key = exc.full_key or ""
        if not key or _lookup(key)[2] is None:
            raise ConfigError(f"{key or 'config'}: {str(exc).splitlines()[0]}") from None
        raise _bad_value(key, exc.value if hasattr(exc, "value") else None) from None
    return TrainConfig(**{name: section(**tree[name]) for name, section in _field_types(TrainConfig).items()})


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (optional; with its ``base:`` chain), apply ``key=value`` overrides, validate."""
    mappings = [raw for _, raw in yaml_layers(path)] if path is not None else []
    return config_from(*mappings, overrides=overrides)


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
