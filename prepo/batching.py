"""Token sequences to model inputs: right-padded batches (or packed rows for flash-attention) and token-budget chunks.

A sequence is its token ids plus a 0/1 mask of the tokens whose log-prob counts (response tokens, or question tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE_INDEX = -100


@dataclass
class TokenSeq:
    """``ids`` and ``scored[t] == 1`` when log p(ids[t] | ids[:t]) counts (so ``scored[0]`` must be 0)."""

    ids: list[int]
    scored: list[int]

    def __post_init__(self):
        if len(self.ids) != len(self.scored):
            raise ValueError(f"scored: length {len(self.scored)} differs from ids length {len(self.ids)}")
        if not self.ids:
            raise ValueError("ids: empty sequence")
        if self.scored[0]:
            raise ValueError("scored: the first token has no context and cannot be scored")


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

    def model_kwargs(self) -> dict:
        return {} if self.position_ids is None else {"position_ids": self.position_ids}

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Model-layout per-position values -> (B, T) padded layout (0 off the mask)."""
        if self.unpack is None:
            return x
        return x.reshape(-1)[self.unpack] * self.mask


def collate_padded(seqs: Sequence[TokenSeq], pad_id: int, device=None) -> ModelBatch:
    """Right-padded (B, T) batch; targets[b, t] = ids[t + 1] where that token is scored, else -100."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s.ids)
        row = torch.as_tensor(s.ids, dtype=torch.long)
        ids[b, :n] = row
        attn[b, :n] = 1
        scored = torch.as_tensor(s.scored[1:], dtype=torch.bool)
        targets[b, :n - 1] = torch.where(scored, row[1:], torch.full_like(row[1:], IGNORE_INDEX))
    mask = (targets != IGNORE_INDEX).float()
    return ModelBatch(ids.to(device), attn.to(device), None, targets.to(device), mask.to(device))


def collate_packed(seqs: Sequence[TokenSeq], device=None) -> ModelBatch:
    """All sequences in one row with position ids restarting at 0 (flash-attention varlen; CUDA only)."""
    # --- packed branch: used only with attn_implementation="flash_attention_2" on CUDA ---
    padded = collate_padded(seqs, 0)
    lengths = [len(s.ids) for s in seqs]
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    valid = padded.attention_mask.bool()
    flat_ids = padded.input_ids[valid]
    flat_targets = padded.targets[valid]
    positions = torch.cat([torch.arange(n) for n in lengths])
    unpack = (starts[:, None] + torch.arange(padded.input_ids.shape[1])[None, :]).clamp_max(flat_ids.numel() - 1)
    return ModelBatch(flat_ids[None].to(device), None, positions[None].to(device), flat_targets[None].to(device),
                      padded.mask.to(device), unpack.to(device))


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
