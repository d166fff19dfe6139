"""The policy update: micro-batched clipped-surrogate gradients with PREPO's entropy weights, then clip and step.
Weights w_i = H̄_i / H̄ cost no extra forward: gradients carry H̄_i and are divided by H̄ (see rollout_weights).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from prepo.algorithm import aggregate_loss, clipped_surrogate, entropy_baseline, entropy_weights
from prepo.batching import (TokenSeq, collate_packed, collate_padded, collate_shared_prefix, cost_budget_chunks,
                            prompt_length, shared_prompt, token_budget_chunks)
from prepo.distributed import Dist
from prepo.logprobs import batch_logprobs_entropy


@dataclass
class Sample:
    """One rollout ready for the update: prompt + completion tokens (completion scored) and its advantage."""

    seq: TokenSeq
    advantage: float
    group: int | None = None            # rollouts of one prompt share a group id (enables the shared-prefix forward)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.seq.score_mask))


def make_sample(prompt_ids: Sequence[int], completion_ids: Sequence[int], advantage: float,
                group: int | None = None) -> Sample:
    ids = list(prompt_ids) + list(completion_ids)
    return Sample(TokenSeq(ids, [0] * len(prompt_ids) + [1] * len(completion_ids)), float(advantage), group)


@dataclass
class UpdateSettings:
    """Everything the update needs besides the model, optimizer and samples."""

    weighting: str = "entropy"          # none | entropy | entropy_token
    eps_low: float = 0.2
    eps_high: float = 0.28
    loss_aggregation: str = "token-mean"
    kl_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batches: int = 1               # optimizer steps per epoch, each over its part of the groups
    skip_zero_advantage: bool = False
    temperature: float = 1.0            # the sampling temperature: log-probs and entropies of π_θ(·)/T
    micro_batch_tokens: int = 4096
    max_grad_norm: float = 1.0
    pad_id: int = 0
    packed: bool = False                # one packed row per micro-batch (flash-attention on CUDA)
    shared_prefix: bool = True          # run each group's prompt once and reuse its KV cache (exact; not with packed)

    @classmethod
    def from_config(cls, config, **runtime) -> UpdateSettings:
        """From a ``prepo.config.TrainConfig``: the ``algorithm`` keys of the same names, the sampling temperature,
        ``optim.micro_batch_tokens`` and ``optim.max_grad_norm``; ``runtime``: pad_id, packed, shared_prefix."""
        names = {f.name for f in dataclasses.fields(cls)}
        algorithm = {k: v for k, v in dataclasses.asdict(config.algorithm).items() if k in names}
        return cls(**algorithm, temperature=config.rollout.temperature,
                   micro_batch_tokens=config.optim.micro_batch_tokens, max_grad_norm=config.optim.max_grad_norm,
                   **runtime)


@dataclass
class UpdateStats:
    loss: float
    grad_norm: float                    # before clipping; the mean over the optimizer steps
    entropy_mean: float | None          # mean over the rollouts in the update of H̄_i (None if none took part)
    entropy_baseline: float             # H̄ the weights are divided by (1.0 when weighting is none)
    weights: torch.Tensor               # (n,) w_i actually applied, in sample order (1 for skipped samples)
    active: list[int]                   # samples that took part (all but skipped zero-advantage / empty ones)
    kl_mean: float
    clip_frac: float
    micro_batches: int
    tokens: int
    optimizer_steps: int = 1            # ppo_epochs × mini-batches
    clipped_steps: int = 0              # optimizer steps whose gradient norm exceeded max_grad_norm (was clipped)


@dataclass(frozen=True)
class LossTotals:
    """Sums over the micro-batches of a sweep: the loss, the KL (token sum) and the clipped tokens."""

    loss: float = 0.0
    kl: float = 0.0
    clipped: float = 0.0

    def __add__(self, other: LossTotals) -> LossTotals:
        return LossTotals(self.loss + other.loss, self.kl + other.kl, self.clipped + other.clipped)


@dataclass
class Weights:
    """The entropy-weight stage: w (n,) float32 per sample (1 outside ``active``) and H̄, the baseline they divide
    by (1.0 when weighting is none or nothing is active, 0.0 when every rollout is deterministic)."""

    values: torch.Tensor
    baseline: float


def _seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def _k3(lp: torch.Tensor, ref_lp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref) per token: e^(ref−lp) − (ref−lp) − 1 ≥ 0."""
    d = ref_lp - lp
    return torch.exp(d) - d - 1.0


class _Pass:
    """One micro-batched forward/backward sweep over the samples that take part.

    Under data parallelism every rank sees all ``samples`` (so global denominators and the set of rollouts that
    take part need no communication) and runs the micro-batches of its own contiguous block of groups.
    """

    def __init__(self, model, samples, settings: UpdateSettings, ref_model=None, dist: Dist = Dist()):
        self.model, self.samples, self.s, self.ref_model = model, samples, settings, ref_model
        self.device = next(model.parameters()).device
        skip = settings.skip_zero_advantage
        # gradient checkpointing turns the KV cache off, so the shared-prefix forward needs it off too
        shared = settings.shared_prefix and not settings.packed and not getattr(model, "is_gradient_checkpointing", False)
        self.group_size = _group_size(samples) if shared else None
        if self.group_size:  # whole groups per micro-batch, costed as prompt + G × (last prompt token + completion)
            groups = [list(range(g, g + self.group_size)) for g in range(0, len(samples), self.group_size)]
            groups = [g for g in groups if not (skip and all(samples[i].advantage == 0.0 for i in g))]
            participants = [i for g in groups for i in g]
            groups = _owned_groups(groups, samples, dist)
            costs = [prompt_length(samples[g[0]].seq) + self.group_size *
                     max(len(samples[i].seq.input_ids) - prompt_length(samples[i].seq) + 1 for i in g) for g in groups]
            self.chunks = [[i for j in chunk for i in groups[j]]
                           for chunk in cost_budget_chunks(costs, settings.micro_batch_tokens)]
        else:
            participants = [i for i, smp in enumerate(samples)
                            if smp.num_tokens > 0 and not (skip and smp.advantage == 0.0)]
            mine = [i for g in _owned_groups([[i] for i in participants], samples, dist) for i in g]
            lengths = [len(samples[i].seq.input_ids) for i in mine]
            self.chunks = [[mine[j] for j in chunk] for chunk in token_budget_chunks(lengths, settings.micro_batch_tokens)]
        # samples whose entropy enters H̄ and the reported weights (on every rank: all of them, not only its own)
        self.active = sorted(i for i in participants if samples[i].num_tokens > 0)
        self.dist = dist
        # FSDP: every rank runs as many micro-batches as the busiest; the extra ones repeat a chunk with weight 0
        self.rounds = dist.lockstep(len(self.chunks))
        self.filler = (self.chunks[:1] or [self.active[:1]])[0]
        # global denominators: every sample counts, skipped ones included, so micro-batch losses add up to the batch loss
        self.num_tokens = sum(smp.num_tokens for smp in samples)
        self.num_seqs = sum(1 for smp in samples if smp.num_tokens > 0)

    def steps(self):
        """(chunk, real) for each micro-batch this rank runs; real=False: a lockstep filler (loss times 0)."""
        for j in range(self.rounds):
            yield (self.chunks[j], True) if j < len(self.chunks) else (self.filler, False)

    def backward(self, lp, old_lp, batch, chunk, weights, real: bool) -> LossTotals:
        """Backward of one micro-batch's loss; returns its totals. A lockstep filler (``real=False``) runs the same
        graph with weight 0 and counts nothing: it only keeps FSDP's collectives in step across ranks."""
        loss, totals = self.loss(lp, old_lp, batch, chunk, weights)
        if not real:
            (loss * 0.0).backward()
            return LossTotals()
        loss.backward()
        return LossTotals(float(loss.detach()), totals.kl, totals.clipped)

    def batch(self, chunk):
        seqs = [self.samples[i].seq for i in chunk]
        if self.group_size:
            return collate_shared_prefix(seqs, self.group_size, self.s.pad_id, self.device)
        if self.s.packed:
            return collate_packed(seqs, self.device)
        return collate_padded(seqs, self.s.pad_id, self.device)

    def advantages(self, chunk) -> torch.Tensor:
        return torch.tensor([self.samples[i].advantage for i in chunk], dtype=torch.float32, device=self.device)[:, None]

    @torch.no_grad()
    def reference_logprobs(self, batch) -> torch.Tensor:
        lp, _ = batch_logprobs_entropy(self.ref_model, batch, temperature=self.s.temperature)
        return lp

    def loss(self, lp, old_lp, batch, chunk, weights) -> tuple[torch.Tensor, LossTotals]:
        """One micro-batch's loss and its KL and clipped-token counts (the loss total is the caller's)."""
        s = self.s
        token_loss = clipped_surrogate(lp, old_lp, self.advantages(chunk), eps_low=s.eps_low, eps_high=s.eps_high)
        kl_sum = 0.0
        if s.kl_coef > 0:
            kl = _k3(lp, self.reference_logprobs(batch))
            kl_sum = float((kl.detach() * batch.mask).sum())
            token_loss = token_loss + s.kl_coef * kl
        ratio = torch.exp(lp.detach() - old_lp)
        clipped = ((ratio < 1 - s.eps_low) | (ratio > 1 + s.eps_high)).float()
        # w_i scales rollout i's whole loss (surrogate and KL alike); constants, no gradient through them
        loss = aggregate_loss(token_loss * weights[:, None], batch.mask, mode=s.loss_aggregation,
                              num_tokens=self.num_tokens, num_seqs=self.num_seqs)
        return loss, LossTotals(0.0, kl_sum, float((clipped * batch.mask).sum()))


def _owned_groups(groups: list[list[int]], samples, dist: Dist) -> list[list[int]]:
    """This rank's contiguous block of groups (by the samples' group ids; a sample without one is its own group)."""
    if dist.world_size == 1:
        return groups
    keys = sorted({_group_key(samples, g[0]) for g in groups})
    lo, hi = dist.bounds(len(keys))
    mine = set(keys[lo:hi])
    return [g for g in groups if _group_key(samples, g[0]) in mine]


def _group_key(samples, i: int):
    group = samples[i].group
    return (0, group, 0) if group is not None else (1, 0, i)


def _group_size(samples) -> int | None:
    """G when the samples are whole consecutive groups of equal size G > 1 with prompts of 2+ tokens, else None."""
    ids = [smp.group for smp in samples]
    if not samples or None in ids:
        return None
    size = ids.count(ids[0])
    if size < 2 or len(ids) % size:
        return None
    for start in range(0, len(ids), size):
        block = samples[start:start + size]
        if any(smp.group != block[0].group for smp in block) or not shared_prompt([smp.seq for smp in block]):
            return None
    return size


def _zero_grad(params):
    for p in params:
        p.grad = None


def _reduce(dist: Dist, params, totals: LossTotals, mean_entropy: torch.Tensor | None = None) -> LossTotals:
    """Sum gradients and per-sample entropies (each rank filled its own, in place) over ranks; the loss totals
    summed over ranks."""
    dist.sync_gradients(params)  # also gives untouched parameters zero gradients (they still take an AdamW step)
    if mean_entropy is not None:
        dist.all_reduce_sum_(mean_entropy)
    clipped, kl, loss = dist.sum_floats([totals.clipped, totals.kl, totals.loss])
    return LossTotals(loss, kl, clipped)


class NonFiniteError(RuntimeError):
    """The loss, the gradients (the optimizer did not step) or, with ``weights``, the weights are not finite."""

    def __init__(self, message: str, *, weights: bool = False):
        super().__init__(message)
        self.weights = weights


def _step(model, optimizer, max_grad_norm: float, loss: float = 0.0) -> float:
    """Clip and step; every parameter has its (rank-summed) gradient from _reduce. A non-finite loss or gradient
    norm raises NonFiniteError before the step (the weights stay as they were)."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    if not (math.isfinite(norm) and math.isfinite(loss)):
        _zero_grad(params)
        raise NonFiniteError(f"the loss ({loss}) or the gradient norm ({norm}) is not finite; the optimizer did not "
                             "step")
    optimizer.step()
    return norm


def rollout_weights(samples: Sequence[Sample], mean_entropy: torch.Tensor, active: Sequence[int],
                    mode: str) -> Weights:
    """The entropy-weight stage, from the rollouts' mean entropies H̄_i (``mean_entropy``, as the update's own forward
    measured them): w_i = H̄_i / H̄ for the ``active`` rollouts (prepo.algorithm.entropy_weights), 1 for the others."""
    weights = torch.ones(len(samples), dtype=torch.float32)
    if mode == "none" or not active:
        return Weights(weights, 1.0)
    lengths = torch.tensor([samples[i].num_tokens for i in active], dtype=torch.float64)
    h = mean_entropy[active]
    weights[active] = entropy_weights(h.float(), lengths.float(), mode=mode)
    return Weights(weights, entropy_baseline(h, lengths, mode=mode))


@dataclass
class Gradients:
    """One on-policy sweep's result: gradients are in the parameters; here are the loss totals, the rollouts' mean
    entropies H̄_i, the entropy weights applied and the sweep (its micro-batches and the samples that took part)."""

    totals: LossTotals
    mean_entropy: torch.Tensor          # (n,) float64
    weights: Weights
    sweep: _Pass


def _sweep(model, sweep: _Pass, settings: UpdateSettings, dist: Dist, params,
           weights: torch.Tensor | None) -> tuple[LossTotals, torch.Tensor]:
    """One forward/backward over the micro-batches: gradients of Σ_i c_i·ℓ_i summed over ranks, with c_i the
    rollout's H̄_i from this very forward (detached) when ``weights`` is None, else ``weights[i]``.
    Returns the loss totals and the per-sample mean entropies H̄_i."""
    _zero_grad(params)
    mean_entropy = torch.zeros(len(sweep.samples), dtype=torch.float64)  # each rank fills its own; _reduce sums
    totals = LossTotals()
    for chunk, real in sweep.steps():
        batch = sweep.batch(chunk)
        lp, ent = batch_logprobs_entropy(model, batch, temperature=settings.temperature)
        h_i = _seq_mean(ent.detach(), batch.mask)
        c = h_i if weights is None else weights[chunk].to(h_i)
        totals = totals + sweep.backward(lp, lp.detach(), batch, chunk, c, real)
        if real:
            mean_entropy[chunk] = h_i.double().cpu()
    return _reduce(dist, params, totals, mean_entropy), mean_entropy


def accumulate_gradients(model, samples: Sequence[Sample], settings: UpdateSettings, *, ref_model=None,
                         dist: Dist = Dist()) -> Gradients:
    """On-policy single update (old log-probs = current, detached): accumulate the weighted loss's gradient.

    With weighting on, rollout i's loss carries its unnormalised H̄_i (detached, from this very forward), then the
    entropy-weight stage (:func:`rollout_weights`) gives H̄ and the summed gradient is divided by it:
    Σ_i (H̄_i/H̄)·∇ℓ_i exactly, with no extra forward pass. If every rollout has zero entropy (H̄ = 0) the sweep is
    redone with weights 1, as entropy_weights prescribes.
    Data parallel (``dist``): each rank runs its own groups; entropies and gradients are summed over ranks before
    H̄ is taken, so the result does not depend on the number of ranks.
    """
    sweep = _Pass(model, samples, settings, ref_model, dist)
    params = [p for p in model.parameters() if p.requires_grad]
    ones = Weights(torch.ones(len(samples), dtype=torch.float32), 1.0)
    if settings.weighting == "none":
        return Gradients(*_sweep(model, sweep, settings, dist, params, ones.values), ones, sweep)
    totals, mean_entropy = _sweep(model, sweep, settings, dist, params, None)  # gradients of Σ_i H̄_i·ℓ_i
    weights = rollout_weights(samples, mean_entropy, sweep.active, settings.weighting)
    if weights.baseline > 0:
        for p in params:
            if p.grad is not None:
                p.grad.div_(weights.baseline)
        return Gradients(dataclasses.replace(totals, loss=totals.loss / weights.baseline), mean_entropy, weights, sweep)
    return Gradients(*_sweep(model, sweep, settings, dist, params, ones.values), ones, sweep)


def policy_update(model, optimizer, samples: Sequence[Sample], settings: UpdateSettings, *,
                  ref_model=None, dist: Dist = Dist()) -> UpdateStats:
    """Gradient(s) of the clipped surrogate over ``samples`` and the optimizer step(s); the model ends in train mode.

    ``ppo_epochs == 1`` and ``mini_batches == 1``: on-policy, one optimizer step (see accumulate_gradients).
    Otherwise (the paper's regime, verl's ppo_mini_batch_size): one no-grad pass gives the old log-probs and the old
    policy's H̄_i; the weights w_i = H̄_i/H̄ (H̄ over the whole batch) stay constant; each epoch splits the batch into
    ``mini_batches`` parts of whole groups and takes one optimizer step per part, so the policy moves between
    them and the ratio's clip acts. Each part's loss is normalised over its own tokens.
    ``dist``: data-parallel job (prepo.distributed); every rank passes all samples and trains on its own groups.
    """
    if not samples:
        raise ValueError("samples: nothing to train on")
    model.train()
    if (settings.ppo_epochs, settings.mini_batches) != (1, 1):
        return _multi_step(model, optimizer, samples, settings, ref_model, dist)
    grads = accumulate_gradients(model, samples, settings, ref_model=ref_model, dist=dist)
    norm = _step(model, optimizer, settings.max_grad_norm, grads.totals.loss)
    sweep = grads.sweep
    return _update_stats(grads.totals, grads.mean_entropy, grads.weights, sweep.active, [norm], settings,
                         micro_batches=len(sweep.chunks), tokens=sweep.num_tokens)


def _update_stats(totals: LossTotals, mean_entropy: torch.Tensor, weights: Weights, active: list[int],
                  norms: list[float], settings: UpdateSettings, *, micro_batches: int, tokens: int) -> UpdateStats:
    limit = settings.max_grad_norm
    return UpdateStats(
        loss=totals.loss, grad_norm=float(sum(norms) / len(norms)),
        entropy_mean=float(mean_entropy[active].mean()) if active else None,
        entropy_baseline=weights.baseline, weights=weights.values, active=active,
        kl_mean=totals.kl / max(tokens, 1), clip_frac=totals.clipped / max(tokens, 1),
        micro_batches=micro_batches, tokens=tokens, optimizer_steps=len(norms),
        clipped_steps=sum(limit > 0 and n > limit for n in norms))


def mini_batch_parts(samples: Sequence[Sample], parts: int) -> list[list[int]]:
    """Sample indices split into at most ``parts`` contiguous runs of whole groups (group ids; a sample without one is
    its own group), as even as the groups allow.

    >>> mini_batch_parts([make_sample([1], [2], 0.0, g) for g in (0, 0, 1, 1, 2, 2)], 2)
    [[0, 1, 2, 3], [4, 5]]
    """
    keys, groups = [], {}
    for i, smp in enumerate(samples):
        key = ("g", smp.group) if smp.group is not None else ("s", i)
        if key not in groups:
            keys.append(key)
            groups[key] = []
        groups[key].append(i)
    per = -(-len(keys) // max(1, min(parts, len(keys))))
    return [[i for key in keys[j:j + per] for i in groups[key]] for j in range(0, len(keys), per)]


def _multi_step(model, optimizer, samples, settings, ref_model, dist: Dist) -> UpdateStats:
    """Old log-probs and H̄_i in one no-grad pass, then ``ppo_epochs`` × (one optimizer step per mini-batch)."""
    parts = mini_batch_parts(samples, settings.mini_batches)
    sweeps = [_Pass(model, [samples[i] for i in part], settings, ref_model, dist) for part in parts]
    params = [p for p in model.parameters() if p.requires_grad]
    mean_entropy = torch.zeros(len(samples), dtype=torch.float64)
    old: list[list[torch.Tensor]] = []
    with torch.no_grad():
        model.eval()
        for part, sweep in zip(parts, sweeps):
            old.append([])
            for chunk, real in sweep.steps():
                batch = sweep.batch(chunk)
                lp, ent = batch_logprobs_entropy(model, batch, temperature=settings.temperature)
                old[-1].append(lp)
                if real:
                    mean_entropy[[part[i] for i in chunk]] = _seq_mean(ent, batch.mask).double().cpu()
        model.train()
    dist.all_reduce_sum_(mean_entropy)
    active = sorted(part[i] for part, sweep in zip(parts, sweeps) for i in sweep.active)
    weights = rollout_weights(samples, mean_entropy, active, settings.weighting)
    epoch = LossTotals()
    norms: list[float] = []
    for _ in range(settings.ppo_epochs):
        epoch = LossTotals()   # the last epoch's totals are reported
        for part, sweep, part_old in zip(parts, sweeps, old):
            _zero_grad(params)
            totals = LossTotals()
            part_weights = weights.values[part]
            for (chunk, real), old_lp in zip(sweep.steps(), part_old):
                batch = sweep.batch(chunk)
                lp, _ = batch_logprobs_entropy(model, batch, temperature=settings.temperature)
                totals = totals + sweep.backward(lp, old_lp, batch, chunk, part_weights[chunk].to(lp.device), real)
            totals = _reduce(dist, params, totals)
            norms.append(_step(model, optimizer, settings.max_grad_norm, totals.loss))
            epoch = epoch + totals
    epoch = dataclasses.replace(epoch, loss=epoch.loss / len(parts))  # the mean of the parts' (token-normalised) losses
    return _update_stats(epoch, mean_entropy, weights, active, norms, settings,
                         micro_batches=sum(len(sweep.chunks) for sweep in sweeps),
                         tokens=sum(sweep.num_tokens for sweep in sweeps))
