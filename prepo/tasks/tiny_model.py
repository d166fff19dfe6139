"""The built-in testbed models ``tiny-arith`` and ``tiny-chain``: ~1 M-parameter Llamas with a word-level tokenizer, made
here by a short supervised stage on their task, bit-identical for a recipe on any x86-64 CPU, cached under ~/.cache/prepo/.

Why in prepo.tasks: a testbed model is half of its task: its vocabulary is the task's words and its supervised stage is
the task's train split (with the task's own noise), so it imports the tasks and nothing else of prepo but the cache;
prepo.models only loads it by name. The cache folders (``<task>-<recipe key>``) do not depend on where this module is.

A name may carry a build seed: ``tiny-chain@1`` is the same recipe with ``seed=1`` (a second model for the benchmark).
The build runs in a child process (``python -m prepo.tasks.tiny_model``) with its kernels pinned (one thread, ATen's
portable kernels, MKL's conditional numerical reproducibility, eager attention), so the same recipe gives the same
weights whatever the CPU's vector unit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prepo.cache import cache_root, fill_once
from prepo.tasks import tiny_arith, tiny_chain

TASK_MODULES = {tiny_arith.TASK: tiny_arith, tiny_chain.TASK: tiny_chain}  # the tasks a testbed model is built for
NAMES = tuple(TASK_MODULES)
NAME = tiny_arith.TASK
_BUILD_VERSION = 3  # bump when the build procedure changes what a recipe produces (2: pinned kernels, task field;
                    # 3: tiny-chain's second design, see docs/efficiency.md)
SPECIALS = ["<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}")
# The environment of the build's child process: the kernels every x86-64 CPU runs the same way. ATen's DEFAULT
# capability compiles its vector code without AVX (the same instructions everywhere); MKL_CBWR=COMPATIBLE makes MKL's
# GEMM take one code path on every CPU; one thread fixes the order of every reduction.
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "PREPO_CPU_CAPABILITY": "scalar"}  # prepo's own kernels too, should the build ever call them


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the built weights (the cache key)."""

    task: str = "tiny-arith"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    steps: int = 1500               # supervised steps
    batch: int = 64                 # examples a step
    lr: float = 3e-3                # AdamW peak, linear warm-up then cosine to 10%
    warmup: int = 100
    question_weight: float = 0.1    # loss weight of prompt tokens: the policy models its questions (PREPO scores them)
                                    # without spending its capacity on their random digits
    digit_noise: float = 0.15       # tiny-arith: each supervised answer digit is replaced by another with this
                                    # probability: the policy's answers are right in its mode but spread (sharpening)
    slip: float = 0.0               # tiny-chain: probability that a step crossing 10 is written with the consistent
                                    # slip (dropped carry, missed borrow): a procedure RL can correct (teaching)
    # supervised mix (familiarity), (tier, weight) pairs
    mix: tuple[tuple[str, float], ...] = (("add1", 0.12), ("add2", 0.20), ("add22", 0.30), ("add32", 0.08),
                                          ("add33", 0.04), ("sub1", 0.06), ("sub2", 0.08), ("sub22", 0.12))
    max_positions: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASK_MODULES:
            raise ValueError(f"task: expected one of {NAMES}, got {self.task!r}")

    def key(self) -> str:
        blob = json.dumps({"version": _BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# tiny-chain: short chains dominate the mix (long ones rare and so unfamiliar), 60% of crossing steps slipped
RECIPES: dict[str, TinyRecipe] = {
    "tiny-arith": TinyRecipe(),
    "tiny-chain": TinyRecipe(task="tiny-chain", steps=1000, digit_noise=0.0, slip=0.6, max_positions=160,
                             mix=(("k1", 0.30), ("k2", 0.25), ("k3", 0.18), ("k4", 0.12), ("k5", 0.07),
                                  ("k6", 0.04), ("k7", 0.025), ("k8", 0.015))),
}


def is_tiny_name(name: str) -> bool:
    """Whether ``name`` names a built-in testbed model (``tiny-arith``, ``tiny-chain``, optionally ``@<build seed>``)."""
    return str(name).lower().split("@", 1)[0] in RECIPES


def recipe_for(name: str) -> TinyRecipe:
    """The recipe a model name stands for: ``tiny-chain`` or ``tiny-chain@<seed>`` (another build seed)."""
    base, _, seed = str(name).lower().partition("@")
    if base not in RECIPES:
        raise ValueError(f"name: unknown testbed model {name!r}; known: {sorted(RECIPES)} (optionally @<seed>)")
    recipe = RECIPES[base]
    if seed:
        if not seed.isdigit():
            raise ValueError(f"name: the build seed after '@' must be a non-negative integer, got {name!r}")
        recipe = dataclasses.replace(recipe, seed=int(seed))
    return recipe


def build_tokenizer(task: str = NAME):
    """Word-level tokenizer for ``task``: one token per digit, punctuation mark and wording word; a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if task not in TASK_MODULES:
        raise ValueError(f"task: expected one of {NAMES}, got {task!r}")
    words = list(dict.fromkeys(SPECIALS + [str(d) for d in range(10)] + ["?", "."] + TASK_MODULES[task].WORDS))
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Punctuation(behavior="isolated"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Fuse()  # completions are digits and signs: "1", "9" decode to "19"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>",
                                   additional_special_tokens=SPECIALS[2:5])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _model_config(recipe: TinyRecipe, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=4 * recipe.hidden,
                       num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                       num_key_value_heads=recipe.kv_heads, max_position_embeddings=recipe.max_positions,
                       tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


def _noisy(answer: str, p: float, rng: random.Random) -> str:
    """``answer`` with each digit replaced by a different one with probability ``p`` (no new leading zero)."""
    out = []
    for i, ch in enumerate(answer):
        if rng.random() < p:
            choices = [d for d in "0123456789" if d != ch and not (d == "0" and i == 0 and len(answer) > 1)]
            ch = rng.choice(choices)
        out.append(ch)
    return "".join(out)


def supervised_targets(recipe: TinyRecipe) -> list[tuple[str, str]]:
    """The supervised stage's (question, target answer) pairs, ``steps * batch`` of them, from the task's train split
    only (a held-out question never reaches the model): tiny-arith's answers with digit noise, tiny-chain's
    scratchpads with the slip."""
    tiers, weights = zip(*recipe.mix)
    task = TASK_MODULES[recipe.task]
    make = tiny_arith.make_tiny_arith if recipe.task == tiny_arith.TASK else tiny_chain.make_tiny_chain
    examples = make(recipe.steps * recipe.batch, recipe.seed, tiers, split="train", weights=weights)
    rng = random.Random(f"{task.TASK}/noise/{recipe.seed}")
    if recipe.task == tiny_arith.TASK:
        return [(ex.question, _noisy(ex.answer, recipe.digit_noise, rng)) for ex in examples]
    return [(ex.question, tiny_chain.scratchpad(ex.meta["start"], tiny_chain.parse_steps(ex.meta["steps"]),
                                                slip=recipe.slip, rng=rng)[0]) for ex in examples]


def supervised_batches(recipe: TinyRecipe, tokenizer):
    """The supervised stage's batches: (input_ids, loss weights), right-padded, one tuple per step."""
    pairs = supervised_targets(recipe)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "{q}"}], tokenize=False,
                                           add_generation_prompt=True)
    pre, post = prompt.split("{q}")
    p_ids = tokenizer([pre + q + post for q, _ in pairs], add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([a + " <|end|>" for _, a in pairs], add_special_tokens=False)["input_ids"]
    for s in range(recipe.steps):
        rows = range(s * recipe.batch, (s + 1) * recipe.batch)
        width = max(len(p_ids[i]) + len(a_ids[i]) for i in rows)
        ids = torch.full((recipe.batch, width), tokenizer.pad_token_id, dtype=torch.long)
        w = torch.zeros(recipe.batch, width)
        for r, i in enumerate(rows):
            seq = p_ids[i] + a_ids[i]
            ids[r, :len(seq)] = torch.tensor(seq)
            w[r, 1:len(p_ids[i])] = recipe.question_weight   # position t weights the prediction of token t
            w[r, len(p_ids[i]):len(seq)] = 1.0
        yield ids, w


def train_tiny_model(recipe: TinyRecipe | None = None, *, log=None):
    """(model, tokenizer) after the supervised stage; same recipe, same weights on the same kernels (``build_model``
    pins them, so that holds across CPUs too)."""
    from transformers import LlamaForCausalLM

    recipe = RECIPES[NAME] if recipe is None else recipe
    tokenizer = build_tokenizer(recipe.task)
    torch.manual_seed(recipe.seed)
    # eager attention: plain matmul + softmax, the same kernels on every CPU (sdpa picks per-CPU fused kernels)
    config = _model_config(recipe, tokenizer)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.01, foreach=False)
    model.train()
    t0 = time.perf_counter()
    for step, (ids, w) in enumerate(supervised_batches(recipe, tokenizer)):
        warm = min(1.0, (step + 1) / max(recipe.warmup, 1))
        cos = 0.1 + 0.45 * (1 + math.cos(math.pi * step / recipe.steps))
        for g in opt.param_groups:
            g["lr"] = recipe.lr * warm * cos
        logits = model(input_ids=ids, attention_mask=ids != tokenizer.pad_token_id).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="none").view_as(w[:, 1:])
        loss = (nll * w[:, 1:]).sum() / w[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None and (step + 1) % 250 == 0:
            log(f"  step {step + 1}/{recipe.steps}  loss {loss.item():.3f}  {time.perf_counter() - t0:.0f} s")
    model.config._attn_implementation = "sdpa"  # what loading uses; the weights do not depend on it
    return model.eval(), tokenizer


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 of the folder's model.safetensors: the fingerprint of a build recorded beside results."""
    h = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save(recipe: TinyRecipe, out: Path, log=None) -> None:
    """Train ``recipe`` and write model, tokenizer and recipe.json into the existing folder ``out``."""
    model, tokenizer = train_tiny_model(recipe, log=log)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    build = {"recipe": dataclasses.asdict(recipe), "key": recipe.key(), "torch": torch.__version__,
             "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
             "sha256": weights_sha256(out)}
    (out / "recipe.json").write_text(json.dumps(build, indent=1))


def build_model(recipe: TinyRecipe, out: str | os.PathLike, *, pinned: bool = True, env: dict | None = None,
                log=None) -> str:
    """Build ``recipe`` into the existing folder ``out`` in a child process (kernels pinned by PINNED_ENV unless
    ``pinned=False``; ``env`` adds variables on top); returns the weights' sha256."""
    child_env = {**os.environ, **(PINNED_ENV if pinned else {}), **(env or {})}
    cmd = [sys.executable, "-m", "prepo.tasks.tiny_model", "--out", str(out), "--recipe",
           json.dumps(dataclasses.asdict(recipe))]
    proc = subprocess.run(cmd, env=child_env, stdout=subprocess.PIPE, stderr=None if log else subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the {recipe.task} model failed (exit {proc.returncode}): "
                           f"{(proc.stderr or '').strip()[-2000:]}")
    return json.loads((Path(out) / "recipe.json").read_text())["sha256"]


def model_folder(recipe: TinyRecipe | str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``recipe`` (or a name such as ``tiny-chain@1``) is cached, built or not."""
    recipe = recipe_for(recipe) if isinstance(recipe, str) else recipe
    return cache_root(cache_dir) / f"{recipe.task}-{recipe.key()}"


def tiny_model_dir(recipe: TinyRecipe | str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached model folder for ``recipe`` (a TinyRecipe or a name such as ``tiny-chain@1``; default: the
    tiny-arith recipe), built (once, atomically, kernels pinned) when missing."""
    if recipe is None:
        recipe = RECIPES[NAME]
    elif isinstance(recipe, str):
        recipe = recipe_for(recipe)
    target = model_folder(recipe, cache_dir)
    if (target / "config.json").is_file():
        return target
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"building the {recipe.task} model (seed {recipe.seed}) into {target} (once; minutes on one core)")
    return fill_once(target, lambda folder: build_model(recipe, folder, log=log))


def _main(argv=None) -> int:
    """The build's child process: ``python -m prepo.tasks.tiny_model --out DIR --recipe JSON``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m prepo.tasks.tiny_model", description=_main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", required=True, help="the TinyRecipe's fields as JSON")
    args = p.parse_args(argv)
    fields = json.loads(args.recipe)
    fields["mix"] = tuple(tuple(m) for m in fields.get("mix", ()))
    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
    _save(TinyRecipe(**fields), Path(args.out), log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
