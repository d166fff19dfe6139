"""Rollout engines: sample n completions per prompt. The interface (RolloutEngine) and the transformers engine (HFEngine).

Engines take token ids (from prepo.tasks.prompts.encode_prompts) and return Rollout records in prompt-major order.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

# end-of-turn markers of common chat templates; those present in a tokenizer's vocabulary also stop generation
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class Rollout:
    """One sampled completion. ``completion_ids`` ends with the stop token when ``finished``; ``text`` omits it."""

    prompt_index: int
    sample_index: int
    completion_ids: list[int]
    text: str
    finished: bool


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[list[int]], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[Rollout]:
        """``n`` samples for each prompt, ordered prompt-major (all of prompt 0's samples first)."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights."""
        ...


def make_rollout(prompt_index: int, sample_index: int, tokens: Sequence[int], stops: set[int], tokenizer) -> Rollout:
    """A Rollout from generated tokens: cut after the first stop token (kept in the ids, left out of the text)."""
    tokens = list(tokens)
    cut = next((j for j, t in enumerate(tokens) if t in stops), None)
    finished = cut is not None
    completion = tokens[:cut + 1] if finished else tokens
    body = completion[:-1] if finished else completion
    return Rollout(prompt_index=prompt_index, sample_index=sample_index, completion_ids=completion,
                   text=tokenizer.decode(body, skip_special_tokens=True), finished=finished)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS of the tokenizer and the model's generation config, plus the chat template's end-of-turn token."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id]
    if model is not None and getattr(model, "generation_config", None) is not None:
        eos = model.generation_config.eos_token_id
        candidates += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()
    candidates += [vocab[t] for t in _END_OF_TURN if t in template and t in vocab]
    for i in candidates:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def stop_and_pad_ids(tokenizer, model, stop_ids: Sequence[int] | None) -> tuple[list[int], int]:
    """The stop tokens (``stop_ids``, else ``stop_token_ids``) and the padding token (the tokenizer's, else the first
    stop token)."""
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
    if not stops:
        raise ValueError("stop_ids: the tokenizer has no EOS token; pass stop_ids=")
    pad = tokenizer.pad_token_id
    return stops, int(pad if pad is not None else stops[0])


def in_chunks(prompts: Sequence[list[int]], n: int, size: int, seed: int | None, generate_chunk) -> list[Rollout]:
    """The rows (prompt, sample), prompt-major, in chunks of ``size``: ``generate_chunk(chunk's prompts, chunk)``
    returns each chunk's Rollouts. A seed: sampled in a forked RNG, leaving the caller's untouched; no seed: drawn
    from (and advancing) the global RNG, so repeated calls give fresh samples."""
    rows = [(p, s) for p in range(len(prompts)) for s in range(n)]
    out: list[Rollout] = []
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            out += generate_chunk([prompts[p] for p, _ in chunk], chunk)
    return out


def _check_sampling(prompts, n, max_new_tokens, temperature, top_p):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive int, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p!r}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts: prompt {i} is empty")


class HFEngine:
    """transformers ``generate`` with a KV cache, batched over prompts × samples in chunks of ``batch_size`` rows.

    Temperature 0 is greedy. Sampling is pure (no top-k, no repetition penalty, whatever the model's own
    generation_config says); with a seed it leaves the global RNG untouched, without one it advances it. Prompts
    are left-padded with an attention mask; completions are cut after the first stop token.
    """

    def __init__(self, model, tokenizer, *, batch_size: int | None = None, stop_ids: Sequence[int] | None = None,
                 share_prefix: int = 16):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        if not isinstance(share_prefix, int) or share_prefix < 0:
            raise ValueError(f"share_prefix: expected a non-negative int, got {share_prefix!r}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size or 64
        # a prompt prefix of at least this many tokens common to a whole chunk (chat template, system prompt, worked
        # examples, or one prompt's n samples) is run once and its KV cache shared by the rows; 0 turns it off
        self.share_prefix = share_prefix
        self.stop_ids, self.pad_id = stop_and_pad_ids(tokenizer, model, stop_ids)

    def sync_weights(self, model) -> None:
        if model is not self.model:
            raise ValueError("model: HFEngine samples from the model it was built with; pass that same object")

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[Rollout]:
        _check_sampling(prompts, n, max_new_tokens, temperature, top_p)
        return in_chunks(prompts, n, self.batch_size, seed, lambda chunk_prompts, chunk: self._generate_chunk(
            chunk_prompts, chunk, max_new_tokens, temperature, top_p))

    def _generate_chunk(self, prompts, chunk, max_new_tokens, temperature, top_p) -> list[Rollout]:
        from transformers import GenerationConfig

        device = next(self.model.parameters()).device
        shared = _common_prefix_length(prompts) if len(prompts) > 1 and self.share_prefix else 0
        shared = shared if shared >= self.share_prefix else 0
        # layout [shared prefix | left padding | rest of the prompt]: the prefix sits at the same columns in every row
        width = shared + max(len(p) - shared for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :shared] = torch.as_tensor(p[:shared], dtype=torch.long)
            mask[i, :shared] = 1
            ids[i, width - len(p) + shared:] = torch.as_tensor(p[shared:], dtype=torch.long)
            mask[i, width - len(p) + shared:] = 1
        sample = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
            top_p=top_p if sample else None, top_k=0 if sample else None, eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id, use_cache=True)
        # generate() fills every unset option from model.generation_config (a hub model's repetition_penalty, top_k,
        # min_length...), which would make the sampler differ from the policy: hide it for the call
        was_training, model_config = self.model.training, self.model.generation_config
        self.model.eval()
        self.model.generation_config = GenerationConfig(eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        try:
            extra = {}
            if shared:  # the common prefix once; generate() then prefills only the columns after it
                cache = self.model(input_ids=ids[:1, :shared].to(device), use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(prompts))
                extra["past_key_values"] = cache
            # synced_gpus off: transformers turns it on for FSDP models, but the trainer gathers the full weights
            # (prepo.distributed.full_weights) so each rank may stop when its own rows are done
            seqs = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config, synced_gpus=False, **extra)
        finally:
            self.model.generation_config = model_config
            self.model.train(was_training)
        stops = set(self.stop_ids)
        new = seqs[:, width:].tolist()
        return [make_rollout(p, s, tokens, stops, self.tokenizer) for (p, s), tokens in zip(chunk, new)]


def _common_prefix_length(prompts) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own for the prefill."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


# the choice of engine "auto", here beside the registry so that it needs no import of the engine it picks:
# the model types FastEngine (prepo.rollout_fast) runs, whose decoder layer is Llama's (pre-norm RMSNorm, rotary q/k,
# grouped-query attention, gated MLP)
SUPPORTED_MODEL_TYPES = ("llama",)


def fast_engine_supports(model) -> tuple[bool, str]:
    """Whether FastEngine can run ``model``, and why not."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return False, f"engine 'fast' runs {SUPPORTED_MODEL_TYPES} models, not {kind!r}"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in ("default", "linear", "llama3", "yarn", "longrope"):   # position-only: dynamic rope rescales
        return False, f"engine 'fast' does not run rope_type {rope!r}"
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb") or not hasattr(model, "lm_head"):
        return False, f"engine 'fast': {type(model).__name__} lacks Llama's model.layers / rotary_emb / lm_head"
    from prepo.distributed import is_sharded

    if is_sharded(model):
        return False, "engine 'fast' does not read FSDP-sharded weights"
    return True, ""


def prefer_fast_engine(model) -> bool:
    """The choice of engine "auto": the fast engine for a model it runs that lives on the CPU (where it is tested and
    measured: results/rollout-speed.md), transformers generate otherwise."""
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cpu" and fast_engine_supports(model)[0]


ENGINES = {"hf": HFEngine}
# engines in their own modules (heavy optional dependencies, or not needed by most callers), imported on first use:
# name -> (module, class)
_LAZY_ENGINES = {"fast": ("prepo.rollout_fast", "FastEngine"), "vllm": ("prepo.rollout_vllm", "VLLMEngine")}


def engine_names() -> list[str]:
    """The names ``make_engine`` accepts (``ENGINES``, the lazily imported ones and ``"auto"``)."""
    return sorted(ENGINES) + sorted(_LAZY_ENGINES) + ["auto"]


def make_engine(name: str, model, tokenizer, **kw) -> RolloutEngine:
    """Build a rollout engine by name: ``"hf"`` (transformers generate), ``"fast"`` (prepo.rollout_fast, Llama
    models), ``"vllm"``, or ``"auto"`` (``"fast"`` for a Llama model on the CPU, else ``"hf"``); ``kw`` go to its
    constructor."""
    if name == "auto":
        name = "fast" if prefer_fast_engine(model) else "hf"
    if name in ENGINES:
        return ENGINES[name](model, tokenizer, **kw)
    if name in _LAZY_ENGINES:
        module_name, class_name = _LAZY_ENGINES[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            raise NotImplementedError(f"engine {name!r} is not part of this build of prepo; use engine='hf'") from exc
        return getattr(module, class_name)(model, tokenizer, **kw)
    raise ValueError(f"name: unknown rollout engine {name!r}; known: {engine_names()}")
