"""PREPO inside verl 0.9.1: the ``prepo`` advantage estimator (GRPO advantages × relative-entropy weights) and the
``prepo`` v1 trainer that hands the actor's per-token entropies to it and trains on a perplexity window of prompts.

verl 0.9.1 has no curriculum-sampler hook (``AbstractCurriculumSampler`` and ``data.sampler.class_path`` were removed
with the v1 trainer) and its advantage step gets only rewards, masks and uids (``compute_advantage`` in
``verl/trainer/ppo/ray_trainer.py``), although the actor's entropies sit in TransferQueue (written by
``PPOTrainer._compute_old_log_prob``). So the hooks are verl's own registries: ``register_adv_est("prepo")`` and
``register_trainer("prepo")`` (a subclass of the ``sync`` trainer overriding two methods). Importing this module
registers both; set ``VERL_USE_EXTERNAL_MODULES=prepo.integrations.verl`` so that verl imports it (``import verl``
does) in every process, the Ray TaskRunner included. Launch flags: docs/integrations.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from prepo.algorithm import (WEIGHTINGS, entropy_weights, group_advantages, ppl_window, progress, weight_stats,
                             window_stats)
from prepo.integrations.prompts import SCORE_SPANS, encode_prompt

NAME = "prepo"  # both the advantage estimator and the v1 trainer


def option(config, name: str, default: Any) -> Any:
    """``config.name`` for a verl DictConfig or dataclass config, ``default`` when absent (or ``config`` is None)."""
    if config is None:
        return default
    getter = getattr(config, "get", None)
    value = getter(name, default) if callable(getter) else getattr(config, name, default)
    return default if value is None else value


# ---------------------------------------------------------------------------------------------------------------
# entropy hand-off: the trainer reads the entropies, the estimator (called deep inside verl) uses them
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class EntropyHandoff:
    """Per-rollout mean token entropy and length, row-aligned with the batch verl passes to the estimator."""

    mean_entropy: torch.Tensor
    lengths: torch.Tensor
    weights: torch.Tensor | None = None  # set by the estimator, read back for logging


_HANDOFF: ContextVar[EntropyHandoff | None] = ContextVar("prepo_verl_entropy_handoff", default=None)


@contextmanager
def entropy_handoff(mean_entropy: torch.Tensor, lengths: torch.Tensor):
    """Make the entropies visible to :func:`prepo_advantage` for the duration of the block."""
    if mean_entropy.shape != lengths.shape or mean_entropy.dim() != 1:
        raise ValueError(f"mean_entropy {tuple(mean_entropy.shape)} and lengths {tuple(lengths.shape)} must be "
                         "equal 1-D shapes")
    handoff = EntropyHandoff(mean_entropy.detach().float().cpu(), lengths.detach().float().cpu())
    token = _HANDOFF.set(handoff)
    try:
        yield handoff
    finally:
        _HANDOFF.reset(token)


def rollout_entropy_stats(entropy: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean token entropy over the response mask, response length) per row of (bs, T) tensors."""
    if entropy.shape != response_mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and response_mask {tuple(response_mask.shape)} differ")
    m = response_mask.to(torch.float32)
    lengths = m.sum(dim=-1)
    return (entropy.float() * m).sum(dim=-1) / lengths.clamp_min(1.0), lengths


# ---------------------------------------------------------------------------------------------------------------
# the advantage estimator
# ---------------------------------------------------------------------------------------------------------------
def prepo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None, config=None,
                    epsilon: float = 1e-6, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """verl advantage estimator ``prepo``: GRPO group advantages times w_i = H̄_i / H̄, as (advantages, returns).

    Called by verl as ``fn(token_level_rewards=, response_mask=, config=, index=)`` (rewards and mask (bs, T), index
    the prompt uid of each row). Options from the ``algorithm`` config: ``norm_adv_by_std_in_grpo`` (default True)
    and ``prepo_weighting`` ("entropy", "entropy_token" or "none"; default "entropy"). A one-rollout group gets
    advantage 0 (verl's own GRPO gives it its raw score). The entropies come from :func:`entropy_handoff`, which the
    ``prepo`` trainer opens around verl's advantage step; without it a weighting other than "none" raises.
    """
    if index is None:
        raise ValueError("index: the prepo estimator groups rollouts by prompt uid and got none")
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must be equal (bs, T) shapes")
    if len(index) != token_level_rewards.shape[0]:
        raise ValueError(f"index has {len(index)} entries for {token_level_rewards.shape[0]} rows")
    mode = option(config, "prepo_weighting", "entropy")
    if mode not in WEIGHTINGS:
        raise ValueError(f"algorithm.prepo_weighting must be one of {WEIGHTINGS}, got {mode!r}")
    normalize = bool(option(config, "norm_adv_by_std_in_grpo", True))

    scores = token_level_rewards.sum(dim=-1)
    advantages = torch.zeros_like(scores)
    groups: dict[Any, list[int]] = defaultdict(list)
    for row, uid in enumerate(index):
        groups[uid].append(row)
    for rows in groups.values():
        rows_t = torch.tensor(rows, device=scores.device)
        advantages[rows_t] = group_advantages(scores[rows_t].unsqueeze(0), normalize_std=normalize, eps=epsilon)[0]

    if mode != "none":
        handoff = _HANDOFF.get()
        if handoff is None:
            raise ValueError("algorithm.prepo_weighting needs the actor's entropies: launch with "
                             "trainer.v1.trainer_mode=prepo (or wrap the call in entropy_handoff), or set "
                             "algorithm.prepo_weighting=none")
        if handoff.mean_entropy.numel() != scores.numel():
            raise ValueError(f"entropy hand-off has {handoff.mean_entropy.numel()} rollouts, the batch {scores.numel()}")
        weights = entropy_weights(handoff.mean_entropy, handoff.lengths, mode=mode)  # length 0: weight 1
        handoff.weights = weights
        advantages = advantages * weights.to(advantages)
    advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


# ---------------------------------------------------------------------------------------------------------------
# the v1 trainer: entropies to the estimator, prompts by perplexity window
# ---------------------------------------------------------------------------------------------------------------
def make_trainer_class(base: type) -> type:
    """Subclass verl's v1 trainer ``base`` (``PPOTrainerSync`` when registered) with PREPO's two hooks.

    ``_compute_advantage`` reads the actor's entropies (already in TransferQueue) and opens the hand-off around
    verl's own advantage step; ``_next_train_batch`` draws |B| = K / ``algorithm.prepo_selection_ratio`` candidate
    prompts (rounded up to whole ``gen_batch_size`` fetches), scores them with :meth:`score_prompts` under the
    current actor and keeps the ``ppl_window`` at ρ = global_steps / total_training_steps. Both act only when
    ``algorithm.adv_estimator == "prepo"``; ``prepo_selection_ratio = 1`` turns the window off.
    """

    class PREPOTrainerV1(base):
        prepo_rollouts = 0
        prepo_window_metrics: dict | None = None

        def _prepo_enabled(self) -> bool:
            return str(option(self.config.algorithm, "adv_estimator", "")) == NAME

        # ---- entropies -> advantage estimator --------------------------------------------------------------
        def _compute_advantage(self, batch, metrics: dict):
            if not self._prepo_enabled():
                return super()._compute_advantage(batch, metrics)
            mean_entropy, lengths = self.rollout_entropies(batch)
            with entropy_handoff(mean_entropy, lengths) as handoff:
                batch = super()._compute_advantage(batch, metrics)
            if handoff.weights is not None:
                metrics.update({f"prepo/{key}": value for key, value in weight_stats(handoff.weights).items()})
            self.prepo_rollouts += sum(not tag.get("is_padding", False) for tag in batch.tags)
            metrics["prepo/rollouts"] = self.prepo_rollouts
            metrics.update(self.prepo_window_metrics or {})
            return batch

        def rollout_entropies(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
            """Mean entropy and length of each rollout of ``batch`` (a KVBatchMeta), from TransferQueue."""
            import transfer_queue as tq

            corr = option(self.config.algorithm, "rollout_correction", None)
            if option(corr, "bypass_mode", False):
                raise ValueError("algorithm.rollout_correction.bypass_mode skips the actor forward that computes "
                                 "the entropies PREPO weights by; turn it off or set algorithm.prepo_weighting=none")
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                   select_fields=["entropy", "response_mask"]).to_padded_tensor()
            return rollout_entropy_stats(data["entropy"], data["response_mask"])

        # ---- perplexity window over the prompts -----------------------------------------------------------
        def _next_train_batch(self, num_prompts: int | None = None):
            ratio = float(option(self.config.algorithm, "prepo_selection_ratio", 0.2))
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"algorithm.prepo_selection_ratio must be in (0, 1], got {ratio}")
            if not self._prepo_enabled() or ratio == 1.0:
                return super()._next_train_batch(num_prompts)
            k = num_prompts or self.config.data.train_batch_size
            fetch = self.config.data.get("gen_batch_size", None) or self.config.data.train_batch_size
            candidates = super()._next_train_batch(math.ceil(k / ratio / fetch) * fetch)
            ppl = self.score_prompts(candidates)
            # verl counts steps from 1 (the first step is 1, the last total_training_steps): rho 0 there, 1 here
            rho = min(1.0, max(0.0, progress(self.global_steps - 1, self.total_training_steps)))
            keep = ppl_window(ppl, k, rho)
            self.prepo_window_metrics = {**{f"prepo/{key}": value for key, value in window_stats(ppl, keep).items()},
                                         "prepo/rho": rho}
            return candidates[torch.tensor(keep)]

        @torch.no_grad()
        def score_prompts(self, candidates) -> list[float]:
            """Question-token perplexity of each candidate's ``raw_prompt`` under the current actor (T = 1).

            The prompt is split at its first scored token: the part before is the "prompt", the rest the
            "response" whose log-probs the actor's ``compute_log_prob`` returns (verl's padded → no-padding
            recipe, as its trainer uses for reference log-probs).
            """
            from verl import DataProto
            from verl.utils import tensordict_utils as tu
            from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

            span = option(self.config.algorithm, "prepo_score_span", "question")
            if span not in SCORE_SPANS:
                raise ValueError(f"algorithm.prepo_score_span must be one of {SCORE_SPANS}, got {span!r}")
            kwargs = dict(self.config.data.get("apply_chat_template_kwargs", None) or {})
            encoded = [encode_prompt(self.tokenizer, list(p), span=span, chat_template_kwargs=kwargs)
                       for p in candidates["raw_prompt"]]
            tensors = score_tensors(encoded, pad_id=self.tokenizer.pad_token_id)
            batch_td = left_right_2_no_padding(DataProto.from_dict(tensors=tensors).to_tensordict())
            tu.assign_non_tensor(batch_td, calculate_entropy=False, compute_loss=False, temperature=1.0)
            output = self.actor_rollout_wg.compute_log_prob(batch_td)
            log_probs = no_padding_2_padding(tu.get(output, "log_probs"), batch_td).float()
            mask = tensors["response_mask"].float()
            return torch.exp(-(log_probs * mask).sum(-1) / mask.sum(-1)).tolist()

    PREPOTrainerV1.__qualname__ = PREPOTrainerV1.__name__ = f"PREPO{base.__name__}"
    return PREPOTrainerV1


def score_tensors(encoded: list[tuple[list[int], list[int]]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """verl's padded actor-batch layout for scoring prompts: each prompt split at its first scored token.

    ``prompts`` (left-padded) hold the tokens before it, ``responses`` (right-padded) the rest, ``response_mask`` the
    scored ones among them; ``input_ids``, ``attention_mask`` and ``position_ids`` cover both.
    """
    heads, tails, masks = [], [], []
    for ids, mask in encoded:
        first = mask.index(1)
        heads.append(ids[:first])
        tails.append(ids[first:])
        masks.append(mask[first:])
    p_len, r_len = max(len(h) for h in heads), max(len(t) for t in tails)
    n = len(encoded)
    prompts = torch.full((n, p_len), pad_id, dtype=torch.long)
    responses = torch.full((n, r_len), pad_id, dtype=torch.long)
    attention = torch.zeros((n, p_len + r_len), dtype=torch.long)
    response_mask = torch.zeros((n, r_len), dtype=torch.long)
    for row, (head, tail, mask) in enumerate(zip(heads, tails, masks)):
        prompts[row, p_len - len(head):] = torch.tensor(head)
        responses[row, :len(tail)] = torch.tensor(tail)
        attention[row, p_len - len(head):p_len + len(tail)] = 1
        response_mask[row, :len(mask)] = torch.tensor(mask)
    position_ids = (attention.cumsum(dim=-1) - 1).clamp_min(0)
    return {"prompts": prompts, "responses": responses, "response_mask": response_mask,
            "input_ids": torch.cat([prompts, responses], dim=1), "attention_mask": attention,
            "position_ids": position_ids}


# ---------------------------------------------------------------------------------------------------------------
# registration with verl
# ---------------------------------------------------------------------------------------------------------------
REGISTERED: dict[str, Any] = {}  # what register() did: estimator / trainer class, or why not
_TRAINER_CLASSES: dict[type, type] = {}


def register(register_adv_est=None, register_trainer=None, trainer_base: type | None = None) -> dict[str, Any]:
    """Register the ``prepo`` estimator and v1 trainer with verl (idempotent); the arguments default to verl's own.

    The trainer needs verl's v1 stack (TransferQueue); where it does not import, only the estimator is registered
    and ``REGISTERED["trainer"]`` holds the reason.
    """
    if register_adv_est is None:
        from verl.trainer.ppo.core_algos import register_adv_est
    register_adv_est(NAME)(prepo_advantage)
    REGISTERED["estimator"] = prepo_advantage
    if register_trainer is None or trainer_base is None:
        try:
            from verl.trainer.ppo.v1 import register_trainer as verl_register_trainer
            from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
        except ImportError as exc:
            REGISTERED["trainer"] = f"not registered: verl's v1 trainer does not import ({exc})"
            return REGISTERED
        register_trainer = register_trainer or verl_register_trainer
        trainer_base = trainer_base or PPOTrainerSync
    if trainer_base not in _TRAINER_CLASSES:  # one subclass per base, so registering again is a no-op
        _TRAINER_CLASSES[trainer_base] = make_trainer_class(trainer_base)
    cls = _TRAINER_CLASSES[trainer_base]
    register_trainer(NAME)(cls)
    REGISTERED["trainer"] = cls
    return REGISTERED


try:  # registers when verl is importable; importing this module without verl is fine (tests, docs)
    register()
except ImportError as _exc:
    REGISTERED["estimator"] = f"not registered: verl does not import ({_exc})"
