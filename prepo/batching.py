"""Token sequences to model inputs: right-padded batches (or packed rows for flash-attention) and token-budget chunks.
A sequence is its token ids plus a 0/1 mask of the tokens whose log-prob counts (response tokens, or question tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from prepo_kernels import IGNORE_INDEX


@dataclass
class TokenSeq:
    """Token ids and which of them count: ``score_mask[t] == 1`` when log p(input_ids[t] | input_ids[:t]) does (so
    ``score_mask[0]`` is 0). An encoded prompt (the question's tokens count) and an update sample (the completion's)."""

    input_ids: list[int]
    score_mask: list[int]

    def __post_init__(self):
        if len(self.input_ids) != len(self.score_mask):
            raise ValueError(f"score_mask: length {len(self.score_mask)} differs from input_ids length "
                             f"{len(self.input_ids)}")
        if not self.input_ids:
            raise ValueError("input_ids: empty sequence")
        if self.score_mask[0]:
            raise ValueError("score_mask: the first token has no context and cannot be scored")


@dataclass
class Prefix:
    """Prompt tokens shared by a group of sequences: run once, their KV cache repeated ``repeats`` times per row."""

    input_ids: torch.Tensor          # (n, W) left-padded prompts without their last token
    attention_mask: torch.Tensor     # (n, W)
    position_ids: torch.Tensor       # (n, W)
    repeats: int                     # sequences per prompt (G)


@dataclass
class ModelBatch:
    """Model inputs for a list of sequences; ``targets``/``mask`` are per position (B, T) in the padded layout.

    Packed batches (one row, ``position_ids`` restarting per sequence) keep ``unpack``, the (B, T) index of each
    padded position into the packed row, so outputs are brought back to (B, T) with :meth:`rows`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    targets: torch.Tensor            # model-layout targets (what the forward op is given)
    mask: torch.Tensor               # (B, T) float 1.0 where a log-prob counts
    unpack: torch.Tensor | None = None
    prefix: Prefix | None = None     # shared prompts to run first (their cache continues into input_ids)

    def model_kwargs(self) -> dict:
        return {} if self.position_ids is None else {"position_ids": self.position_ids}

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Model-layout per-position values -> (B, T) padded layout (0 off the mask)."""
        if self.unpack is None:
            return x
        return x.reshape(-1)[self.unpack] * self.mask


def collate_padded(seqs: Sequence[TokenSeq], pad_id: int, device=None) -> ModelBatch:
    """Right-padded (B, T) batch; targets[b, t] = ids[t + 1] where that token is scored, else -100."""
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s.input_ids)
        row = torch.as_tensor(s.input_ids, dtype=torch.long)
        ids[b, :n] = row
        attn[b, :n] = 1
        scored = torch.as_tensor(s.score_mask[1:], dtype=torch.bool)
        targets[b, :n - 1] = torch.where(scored, row[1:], torch.full_like(row[1:], IGNORE_INDEX))
    mask = (targets != IGNORE_INDEX).float()
    return ModelBatch(ids.to(device), attn.to(device), None, targets.to(device), mask.to(device))


def collate_packed(seqs: Sequence[TokenSeq], device=None) -> ModelBatch:
    """All sequences in one row with position ids restarting at 0 (flash-attention varlen; CUDA only)."""
    # --- packed branch: used only with attn_implementation="flash_attention_2" on CUDA ---
    padded = collate_padded(seqs, 0)
    lengths = [len(s.input_ids) for s in seqs]
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    valid = padded.attention_mask.bool()
    flat_ids = padded.input_ids[valid]
    flat_targets = padded.targets[valid]
    positions = torch.cat([torch.arange(n) for n in lengths])
    unpack = (starts[:, None] + torch.arange(padded.input_ids.shape[1])[None, :]).clamp_max(flat_ids.numel() - 1)
    return ModelBatch(flat_ids[None].to(device), None, positions[None].to(device), flat_targets[None].to(device),
                      padded.mask.to(device), unpack.to(device))


def prompt_length(seq: TokenSeq) -> int:
    """Tokens before the first scored one (the whole sequence when nothing is scored)."""
    return next((t for t, m in enumerate(seq.score_mask) if m), len(seq.input_ids))


def shared_prompt(seqs: Sequence[TokenSeq]) -> int:
    """The length of the prompt every sequence starts with (its unscored tokens before the first scored one), or 0
    when they do not all share one of at least 2 tokens (a shared-prefix forward needs a token to continue from)."""
    n = prompt_length(seqs[0]) if seqs else 0
    first = seqs[0].input_ids[:n] if seqs else []
    if n < 2 or any(prompt_length(s) != n or s.input_ids[:n] != first for s in seqs):
        return 0
    return n


def collate_shared_prefix(seqs: Sequence[TokenSeq], group_size: int, pad_id: int, device=None) -> ModelBatch:
    """Groups of ``group_size`` consecutive sequences that share a prompt: the prompt minus its last token becomes a
    :class:`Prefix` (run once per group), each sequence keeps [last prompt token] + its completion (right-padded).

    The result equals the padded batch's log-probs of the completion tokens, at about 1/G of the prompt compute.
    """
    if group_size < 1 or len(seqs) % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {len(seqs)} sequences")
    groups = [seqs[i:i + group_size] for i in range(0, len(seqs), group_size)]
    prompts = []
    for g in groups:
        n = shared_prompt(g)
        if not n:
            raise ValueError("sequences of a group must share a prompt of at least 2 tokens")
        prompts.append(g[0].input_ids[:n])
    width = max(len(p) for p in prompts) - 1
    pre_ids = torch.full((len(groups), width), int(pad_id), dtype=torch.long)
    pre_mask = torch.zeros((len(groups), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        pre_ids[b, width - len(p) + 1:] = torch.as_tensor(p[:-1], dtype=torch.long)
        pre_mask[b, width - len(p) + 1:] = 1
    pre_pos = (pre_mask.cumsum(-1) - 1).clamp_min(0)
    suffixes = [TokenSeq(p[-1:] + s.input_ids[len(p):], [0] + s.score_mask[len(p):])
                for p, g in zip(prompts, groups) for s in g]
    body = collate_padded(suffixes, pad_id)
    starts = torch.tensor([len(p) - 1 for p in prompts]).repeat_interleave(group_size)
    positions = starts[:, None] + torch.arange(body.input_ids.shape[1])[None, :]
    attention = torch.cat([pre_mask.repeat_interleave(group_size, dim=0), body.attention_mask], dim=1)
    prefix = Prefix(pre_ids.to(device), pre_mask.to(device), pre_pos.to(device), group_size)
    return ModelBatch(body.input_ids.to(device), attention.to(device), positions.to(device), body.targets.to(device),
                      body.mask.to(device), prefix=prefix)


def cost_budget_chunks(costs: Sequence[int], budget: int) -> list[list[int]]:
    """Split indices into chunks whose summed cost stays within ``budget`` (largest first; oversize ones alone).

    >>> cost_budget_chunks([3, 5, 2, 5], 8)
    [[1], [3, 0], [2]]
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    chunks: list[list[int]] = []
    total = 0
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        if chunks and total + costs[i] <= budget:
            chunks[-1].append(i)
            total += costs[i]
        else:
            chunks.append([i])
            total = costs[i]
    return chunks


def token_budget_chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Split indices into chunks whose padded size (rows × longest) stays within ``budget`` tokens.

    Indices are taken longest first (less padding); a sequence longer than the budget gets a chunk of its own.

    >>> token_budget_chunks([3, 5, 2, 5], 10)
    [[1, 3], [0, 2]]
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chunks: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        if current and (len(current) + 1) * max(longest, n) > budget:
            chunks.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        chunks.append(current)
    return chunks
