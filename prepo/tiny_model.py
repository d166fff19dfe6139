"""The built-in testbed model ``tiny-arith``: a ~1 M-parameter Llama with a digit-level tokenizer, made here by a short
supervised stage on the ``tiny-arith`` task, deterministic for its recipe and cached under ~/.cache/prepo/.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prepo import tiny_arith

NAME = tiny_arith.TASK
_BUILD_VERSION = 1  # bump when the build procedure changes what a recipe produces
SPECIALS = ["<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the built weights (the cache key)."""

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
    digit_noise: float = 0.15       # each supervised answer digit is replaced by another with this probability:
                                    # the policy's answers are right in its mode but spread, which RL can sharpen
    # supervised mix (familiarity): sums frequent, differences rare, 3-digit sums rarer, three-term sums absent
    mix: tuple[tuple[str, float], ...] = (("add1", 0.12), ("add2", 0.20), ("add22", 0.30), ("add32", 0.08),
                                          ("add33", 0.04), ("sub1", 0.06), ("sub2", 0.08), ("sub22", 0.12))
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"version": _BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEFAULT_RECIPE = TinyRecipe()


def build_tokenizer():
    """Word-level tokenizer: one token per digit, operator, punctuation mark and template word; a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [str(d) for d in range(10)] + ["?", "."] + tiny_arith.WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Fuse()  # completions are digits: "1", "9" decode to "19"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>",
                                   additional_special_tokens=SPECIALS[2:5])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _model_config(recipe: TinyRecipe, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=4 * recipe.hidden,
                       num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                       num_key_value_heads=recipe.kv_heads, max_position_embeddings=128, tie_word_embeddings=True,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


def _noisy(answer: str, p: float, rng: random.Random) -> str:
    """``answer`` with each digit replaced by a different one with probability ``p`` (no new leading zero)."""
    out = []
    for i, ch in enumerate(answer):
        if rng.random() < p:
            choices = [d for d in "0123456789" if d != ch and not (d == "0" and i == 0 and len(answer) > 1)]
            ch = rng.choice(choices)
        out.append(ch)
    return "".join(out)


def supervised_batches(recipe: TinyRecipe, tokenizer):
    """The supervised stage's batches: (input_ids, labels, loss weights), right-padded, one tuple per step."""
    tiers, weights = zip(*recipe.mix)
    examples = tiny_arith.make_tiny_arith(recipe.steps * recipe.batch, recipe.seed, tiers, split="train",
                                          weights=weights)
    rng = random.Random(f"{NAME}/noise/{recipe.seed}")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "{q}"}], tokenize=False,
                                           add_generation_prompt=True)
    pre, post = prompt.split("{q}")
    prompts = [pre + ex.question + post for ex in examples]
    answers = [_noisy(ex.answer, recipe.digit_noise, rng) + " <|end|>" for ex in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
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
    """(model, tokenizer) after the supervised stage; same recipe, same weights (on the same torch build)."""
    from transformers import LlamaForCausalLM

    recipe = DEFAULT_RECIPE if recipe is None else recipe
    tokenizer = build_tokenizer()
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(_model_config(recipe, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.01)
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
    return model.eval(), tokenizer


def tiny_model_dir(recipe: TinyRecipe | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached model folder for ``recipe`` (default: DEFAULT_RECIPE), built (once, atomically) when missing."""
    from prepo.models import cache_root

    recipe = DEFAULT_RECIPE if recipe is None else recipe
    root = cache_root(cache_dir)
    target = root / f"{NAME}-{recipe.key()}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"building the {NAME} model into {target} (once; a few minutes on 2 cores)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    os.chmod(tmp, 0o755)
    try:
        model, tokenizer = train_tiny_model(recipe, log=log)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished build: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
