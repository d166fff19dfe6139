"""Whole groups from several rounds of TRL generation outputs, as one generation batch (DAPO / GRESO inside TRL).

Rows move between ranks with ``gather_object`` and are padded again to the widths of the batch they end up in.
"""
from __future__ import annotations

import torch
from accelerate.utils import gather_object

# fields of GRPOTrainer._generate_and_score_completions' output (TRL 1.16, text-only) and their padding values;
# None = the tokenizer's pad id
PROMPT_FIELDS = {"prompt_ids": None, "prompt_mask": 0}                       # left-padded, (B, P)
COMPLETION_FIELDS = {"completion_ids": None, "completion_mask": 0, "tool_mask": 1, "old_per_token_logps": 0.0,
                     "sampling_per_token_logps": 0.0, "ref_per_token_logps": 0.0,
                     "importance_sampling_ratio": 1.0}                          # right-padded, (B, C) or (B, 1)
ROW_FIELDS = ("advantages",)                                                  # (B,)
BATCH_FIELDS = ("num_items_in_batch",)                                        # recomputed by the caller

Key = tuple[int, int]  # (round, row of that round's global batch)


def check_fields(output: dict) -> None:
    """Refuse outputs with fields this module cannot regroup (multimodal inputs) rather than drop them silently."""
    known = set(PROMPT_FIELDS) | set(COMPLETION_FIELDS) | set(ROW_FIELDS) | set(BATCH_FIELDS)
    unknown = sorted(set(output) - known)
    if unknown:
        raise NotImplementedError(f"prepo_strategy 'dynamic'/'greso' regroup rows across rounds and do not handle "
                                  f"the generation output fields {unknown} (multimodal inputs); use 'ppl' or 'random'")


def _row_fields(output: dict) -> list[str]:
    return [k for k in (*PROMPT_FIELDS, *COMPLETION_FIELDS, *ROW_FIELDS) if output.get(k) is not None]


def _owned(outputs: list[dict], wanted: list[Key], rank: int) -> dict[Key, dict[str, torch.Tensor]]:
    """The wanted rows this rank holds: rank r holds rows [r·n, (r+1)·n) of a round whose local outputs have n rows."""
    mine = {}
    for rnd, row in wanted:
        out = outputs[rnd]
        n = out["prompt_ids"].size(0)
        if rank * n <= row < (rank + 1) * n:
            mine[(rnd, row)] = {k: out[k][row - rank * n].detach().cpu() for k in _row_fields(out)}
    return mine


def _stack(rows: list[torch.Tensor], width: int, value, *, left: bool) -> torch.Tensor:
    padded = []
    for r in rows:
        pad = torch.full((width - r.size(0), *r.shape[1:]), value, dtype=r.dtype)
        padded.append(torch.cat([pad, r] if left else [r, pad]))
    return torch.stack(padded)


def regroup(outputs: list[dict], wanted: list[Key], masked: set[Key], *, rank: int, world: int, pad_id: int,
            device) -> dict:
    """This rank's share of the batch made of the ``wanted`` rows in that order (rank r: the r-th of ``world`` equal
    blocks). Rows in ``masked`` keep their tokens but get no loss tokens and advantage 0, as TRL does for truncated
    completions with ``mask_truncated_completions``. Every rank must call this with the same arguments but its own
    ``outputs``. Prompts are left-padded and completions right-padded to the widest row of the whole batch.
    """
    if len(wanted) % world:
        raise ValueError(f"{len(wanted)} rows do not split into {world} equal shares")
    rows: dict[Key, dict[str, torch.Tensor]] = {}
    for part in gather_object([_owned(outputs, wanted, rank)]):
        rows.update(part)
    missing = [key for key in wanted if key not in rows]
    if missing:
        raise RuntimeError(f"rows {missing[:4]} were not held by any rank")
    share = len(wanted) // world
    mine = wanted[rank * share:(rank + 1) * share]
    batch = {}
    for name in rows[wanted[0]]:
        values = [rows[key][name] for key in mine]
        if name in ROW_FIELDS:
            batch[name] = torch.stack(values)
            continue
        width = max(rows[key][name].size(0) for key in wanted)
        fill = PROMPT_FIELDS.get(name, COMPLETION_FIELDS.get(name))
        batch[name] = _stack(values, width, pad_id if fill is None else fill, left=name in PROMPT_FIELDS)
    drop = torch.tensor([key in masked for key in mine])
    for name in ("completion_mask", "tool_mask", "advantages"):
        if name in batch:
            value = batch[name]
            batch[name] = value.masked_fill(drop.view(-1, *[1] * (value.dim() - 1)), 0)
    return {name: value.to(device) for name, value in batch.items()}
