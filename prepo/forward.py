"""Policy forward for training and scoring: per-token log-probs and entropies of given targets, no full logits kept.

The one place the trainer and the prompt scorer call the model, so switching the fused op is a one-line change.
"""
from __future__ import annotations

import torch

import prepo_kernels as pk
from prepo.distributed import is_sharded

IGNORE_INDEX = -100


def _fallback(model, input_ids, attention_mask, targets, temperature, **body_kwargs):
    """Model body, then the LM head only at positions with a target, then the fused logits-path op."""
    body = getattr(model, model.base_model_prefix)
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **body_kwargs)
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(out.last_hidden_state[keep])
    lp_kept, ent_kept = pk.logprobs_and_entropy(logits, targets[keep], temperature=temperature)
    lp = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    ent = torch.zeros_like(lp)
    return lp.masked_scatter(keep, lp_kept), ent.masked_scatter(keep, ent_kept)


def token_logprobs_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           targets: torch.Tensor, *, temperature: float = 1.0,
                           **body_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(targets), entropy) per position, float32 (B, T), 0 where ``targets == -100``; differentiable.

    ``targets[b, t]`` is the token predicted at position t (``input_ids`` shifted left). ``body_kwargs`` go to the
    model body (e.g. ``position_ids`` for packed rows).
    """
    hf = getattr(pk, "hf", None)
    if hf is not None:  # an FSDP2-sharded model gathers its parameters in the whole model's forward: go through it
        return hf.causal_lm_logprobs_and_entropy(model, input_ids, attention_mask, targets, temperature=temperature,
                                                 via_model_forward=is_sharded(model), **body_kwargs)
    return _fallback(model, input_ids, attention_mask, targets, temperature, **body_kwargs)


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
