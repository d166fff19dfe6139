"""PREPO's prompt scorer: the current policy's perplexity of each prompt's scored tokens (the question by default).

Batched by a padded-token budget, under no_grad, through the fused per-token op (no logits are kept); a template
shared by every prompt of a batch (system prompt, worked examples) is run once and its KV cache reused.
"""
from __future__ import annotations

from typing import Sequence

import torch

from prepo.batching import TokenSeq, collate_padded, collate_shared_prefix, prompt_length, token_budget_chunks
from prepo.forward import batch_logprobs_entropy
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
            part = [seqs[i] for i in chunk]
            if _common_prompt(part):  # a shared template (system prompt, worked examples) runs once for the chunk
                batch = collate_shared_prefix(part, len(part), pad_id, device)
            else:
                batch = collate_padded(part, pad_id, device)
            lp, _ = batch_logprobs_entropy(model, batch)
            out[chunk] = reduce_perplexity(lp, batch.targets, None, -100).float().cpu()
    finally:
        model.train(was_training)
    return out


def _common_prompt(seqs) -> bool:
    """All sequences start with the same unscored tokens (at least 2) before their first scored one."""
    if len(seqs) < 2:
        return False
    n = prompt_length(seqs[0])
    return n >= 2 and all(prompt_length(s) == n and s.ids[:n] == seqs[0].ids[:n] for s in seqs)
