"""The policy's per-token log-probs and entropies of given targets (the update's forward) and prompt perplexities
(PREPO's scorer), through the fused op: no full logits are kept; the one place the trainer calls the model.
"""
from __future__ import annotations

from typing import Sequence

import torch

import prepo_kernels as pk
from prepo.batching import collate_padded, collate_shared_prefix, shared_prompt, token_budget_chunks
from prepo.distributed import is_sharded
from prepo_kernels import IGNORE_INDEX
from prepo_kernels.sequence_perplexity import reduce_perplexity


def token_logprobs_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           targets: torch.Tensor, *, temperature: float = 1.0,
                           **body_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(targets), entropy) per position, float32 (B, T), 0 where ``targets == IGNORE_INDEX``; differentiable.

    ``targets[b, t]`` is the token predicted at position t (``input_ids`` shifted left). ``body_kwargs`` go to the
    model body (e.g. ``position_ids`` for packed rows). An FSDP2-sharded model gathers its parameters in the whole
    model's forward, so it goes through that.
    """
    return pk.hf.causal_lm_logprobs_and_entropy(model, input_ids, attention_mask, targets, temperature=temperature,
                                                via_model_forward=is_sharded(model), **body_kwargs)


def prefix_cache(model, prefix):
    """Run the shared prompts once (with gradient) and repeat their KV cache for each sequence of the group."""
    body = getattr(model, model.base_model_prefix)
    out = body(input_ids=prefix.input_ids, attention_mask=prefix.attention_mask, position_ids=prefix.position_ids,
               use_cache=True)
    cache = out.past_key_values
    if cache is None:
        raise ValueError("model: returned no KV cache (gradient checkpointing on?); the shared-prefix forward needs one")
    cache.batch_repeat_interleave(prefix.repeats)
    return cache


def batch_logprobs_entropy(model, batch, *, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """token_logprobs_entropy for a ``prepo.batching.ModelBatch`` (padded, packed or shared-prefix), in (B, T) rows."""
    kwargs = batch.model_kwargs()
    if batch.prefix is not None:
        kwargs["past_key_values"] = prefix_cache(model, batch.prefix)
    lp, ent = token_logprobs_entropy(model, batch.input_ids, batch.attention_mask, batch.targets,
                                     temperature=temperature, **kwargs)
    return batch.rows(lp), batch.rows(ent)


@torch.no_grad()
def prompt_perplexities(model, prompts: Sequence, *, pad_id: int, token_budget: int = 4096) -> torch.Tensor:
    """exp(−mean log p) over each prompt's ``score_mask`` tokens (the question by default); float32 (n,) on the CPU.

    ``prompts`` are ``prepo.batching.TokenSeq`` records; a prompt whose mask selects nothing raises ValueError.
    Batched by a padded-token budget; a template shared by every prompt of a batch (system prompt, worked examples)
    is run once and its KV cache reused. The model's train/eval mode is restored afterwards.
    """
    for i, p in enumerate(prompts):
        if not any(p.score_mask):
            raise ValueError(f"prompts: prompt {i} has no scored token")
    out = torch.empty(len(prompts), dtype=torch.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for chunk in token_budget_chunks([len(p.input_ids) for p in prompts], token_budget):
            part = [prompts[i] for i in chunk]
            if len(part) > 1 and shared_prompt(part):  # a shared template runs once for the chunk
                batch = collate_shared_prefix(part, len(part), pad_id, device)
            else:
                batch = collate_padded(part, pad_id, device)
            lp, _ = batch_logprobs_entropy(model, batch)
            out[chunk] = reduce_perplexity(lp, batch.targets, None, IGNORE_INDEX).float().cpu()
    finally:
        model.train(was_training)
    return out
