"""PREPO's prompt scorer: the current policy's perplexity of each prompt's scored tokens (the question by default).

Batched by a padded-token budget, under no_grad, through the fused per-token op (no logits are kept).
"""
from __future__ import annotations

from typing import Sequence

import torch

from prepo.batching import TokenSeq, collate_padded, token_budget_chunks
from prepo.forward import token_logprobs_entropy
from prepo_kernels.perplexity import reduce_perplexity


@torch.no_grad()
def prompt_perplexities(model, prompts: Sequence, *, pad_id: int, token_budget: int = 4096) -> torch.Tensor:
    """exp(−mean log p) over each prompt's ``score_mask`` tokens; float32 (n,) on the CPU.

    ``prompts`` are ``prepo.data.EncodedPrompt`` records (``input_ids``, ``score_mask``); a prompt whose mask selects
    nothing raises ValueError. The model's train/eval mode is restored afterwards.
    """
    seqs = [TokenSeq(list(p.input_ids), list(p.score_mask)) for p in prompts]
    for i, s in enumerate(seqs):
        if not any(s.scored):
            raise ValueError(f"prompts: prompt {i} has no scored token")
    out = torch.empty(len(seqs), dtype=torch.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for chunk in token_budget_chunks([len(s.ids) for s in seqs], token_budget):
            batch = collate_padded([seqs[i] for i in chunk], pad_id, device)
            lp, _ = token_logprobs_entropy(model, batch.input_ids, batch.attention_mask, batch.targets)
            out[chunk] = reduce_perplexity(lp, batch.targets, None, -100).float().cpu()
    finally:
        model.train(was_training)
    return out
