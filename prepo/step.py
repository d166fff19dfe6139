"""One training step, read top to bottom: choose → roll out → reward → keep → advantages → weights → update → metrics
row (:func:`train_step`); each stage is a function here returning a small record. ``prepo.trainer`` runs the steps.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from prepo.algorithm import group_advantages, weight_stats
from prepo.distributed import Dist, full_weights
from prepo.logprobs import prompt_perplexities
from prepo.metrics import peak_rss_mb
from prepo.selection import Choice, Collected, Group, PromptSampler, Round, SelectionContext, Strategy
from prepo.update import Sample, UpdateSettings, UpdateStats, make_sample, policy_update


@dataclass
class Policy:
    """The policy and what moves it: the model, its optimizer, the engine that samples from it, the update settings,
    the KL reference (None without KL) and the ranks it is spread over."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    engine: object                 # a prepo.rollout engine
    settings: UpdateSettings
    ref_model: torch.nn.Module | None = None
    dist: Dist = field(default_factory=Dist)


@dataclass
class TrainSet:
    """What a step draws from: the training examples (with their answers) and their encoded prompts, index-aligned."""

    examples: Sequence             # prepo.tasks.example.Example
    prompts: Sequence              # prepo.tasks.prompts.encode_prompts of the examples


@dataclass
class Rollouts:
    """The roll-out stage: G completions (prepo.rollout.Rollout) per prompt of this rank's share of the round."""

    indices: list[int]             # every prompt of the round
    mine: list[int]                # this rank's share (all of them outside torchrun)
    completions: list[list]        # per prompt of ``mine``, its G Rollouts
    seconds: float


@dataclass
class Rewarded:
    """The reward stage: every prompt's group of rollouts with their rewards, from all ranks, in prompt order."""

    groups: list[Group]
    seconds: float


@dataclass
class StepResult:
    """A finished step: its metrics row, what it collected and the update (None when it kept no group)."""

    row: dict
    collected: Collected
    update: UpdateStats | None


def train_step(cfg, step: int, rollouts_before: int, policy: Policy, strategy: Strategy, sampler: PromptSampler,
               data: TrainSet, interrupts=None) -> StepResult:
    """Step ``step`` (0-based; ``rollouts_before`` rollouts generated before it) of the run ``cfg`` (a TrainConfig).

    Changes the policy's weights (one optimizer step per mini-batch and epoch), the strategy's and sampler's state
    and the global RNGs. ``interrupts``: an object whose ``hold()`` is called right before the weights start to
    change (the trainer then holds Ctrl-C / SIGTERM until the step is committed).
    """
    t_start = time.perf_counter()

    # choose → roll out → reward → keep, round after round: dynamic sampling and GRESO drop zero-variance groups and
    # go round again until K groups are kept or selection.max_rounds is reached; the other strategies take one round.
    # FSDP: with the full weights gathered, so ranks may run different numbers of forwards.
    rounds: list[Round] = []
    kept = 0
    with full_weights(policy.model):
        while not rounds or not strategy.enough(kept, len(rounds)):
            choice = choose(strategy, sampler, SelectionContext(step, cfg.run.steps, kept), policy, data.prompts,
                            cfg.selection.score_batch_tokens)
            rollouts = roll_out(policy, data.prompts, choice.indices, cfg.rollout,
                                seed=cfg.run.seed, step=step, round_=len(rounds))
            rewarded = reward(data.examples, rollouts, policy.dist)
            rounds.append(Round(choice, rewarded.groups, strategy.keep(rewarded.groups), rollouts.seconds,
                                rewarded.seconds))
            kept += len(rounds[-1].kept)
    collected = Collected.of(rounds, strategy)  # filtering strategies: the kept groups cut to K

    # from here the weights change: the trainer holds interruptions until the step is committed
    t_update = time.perf_counter()
    if interrupts is not None:
        interrupts.hold()
    update = None
    if collected.groups:
        # GRPO advantages per group, one update sample per rollout
        advantages = group_advantage_table(collected.groups, cfg.algorithm.normalize_std)
        samples = build_samples(collected.groups, data.prompts, advantages)
        # weights → update: PREPO's w_i = H̄_i / H̄ need each rollout's entropy under the current policy, which the
        # update's own forward measures (prepo.update.rollout_weights, no extra pass); then clip and AdamW step(s)
        update = update_policy(policy, samples, learning_rate(cfg.optim, step))
    policy.engine.sync_weights(policy.model)
    t_end = time.perf_counter()

    row = metrics_row(step + 1, rollouts_before + collected.rollouts, collected, update,
                      lr=policy.optimizer.param_groups[0]["lr"], time_update=t_end - t_update,
                      time_step=t_end - t_start)
    return StepResult(row, collected, update)


# --- the stages -----------------------------------------------------------------------------------------------------

def choose(strategy: Strategy, sampler: PromptSampler, ctx: SelectionContext, policy: Policy, prompts: Sequence,
           score_batch_tokens: int) -> Choice:
    """The choose stage: draw the round's candidates, score them under the current policy when the strategy asks
    (PREPO's prompt perplexity; under torchrun each rank scores its block), and let the strategy choose."""
    t0 = time.perf_counter()
    candidates = sampler.draw(strategy.draw_size())
    if strategy.scores_prompts:
        ctx = dataclasses.replace(ctx, ppl=prompt_scores(policy, prompts, candidates, score_batch_tokens))
    return dataclasses.replace(strategy.choose(candidates, ctx), seconds=time.perf_counter() - t0)


def prompt_scores(policy: Policy, prompts: Sequence, indices: Sequence[int], token_budget: int) -> list[float]:
    """Perplexities of the prompts at ``indices``; under torchrun each rank scores its block and all ranks get all."""
    mine = policy.dist.shard(indices)
    ppl = prompt_perplexities(policy.model, [prompts[i] for i in mine], pad_id=policy.settings.pad_id,
                              token_budget=token_budget)
    return policy.dist.gather(ppl.tolist())


def step_seed(seed: int, step: int, round_: int, *more: int) -> int:
    """A generation seed per (run seed, step, round[, prompt]): a resumed run samples what the original would have."""
    return int(np.random.SeedSequence([seed, step, round_, *more]).generate_state(1)[0])


def roll_out(policy: Policy, prompts: Sequence, indices: Sequence[int], rollout_cfg, *, seed: int, step: int,
             round_: int) -> Rollouts:
    """The roll-out stage: G completions of each chosen prompt (none when nothing was chosen), seeded by
    :func:`step_seed`. Under torchrun each rank rolls out its block of prompts, seeded per prompt, so samples do not
    depend on the number of ranks."""
    t0 = time.perf_counter()
    indices = list(indices)
    if not indices:
        return Rollouts([], [], [], 0.0)
    if policy.dist.active:
        mine = policy.dist.shard(indices)
        completions = [generate(policy.engine, prompts, [i], rollout_cfg, step_seed(seed, step, round_, i))[0]
                       for i in mine]
    else:
        mine, completions = indices, generate(policy.engine, prompts, indices, rollout_cfg,
                                              step_seed(seed, step, round_))
    return Rollouts(indices, mine, completions, time.perf_counter() - t0)


def generate(engine, prompts: Sequence, indices: Sequence[int], rollout_cfg, seed: int) -> list[list]:
    """G completions for each of the prompts at ``indices``: a list (per prompt) of G Rollouts."""
    outs = engine.generate([list(prompts[i].input_ids) for i in indices], n=rollout_cfg.group_size,
                           max_new_tokens=rollout_cfg.max_new_tokens, temperature=rollout_cfg.temperature,
                           top_p=rollout_cfg.top_p, seed=seed)
    groups: list[list] = [[] for _ in indices]
    for r in outs:
        groups[r.prompt_index].append(r)
    return groups


def reward(examples: Sequence, rollouts: Rollouts, dist: Dist) -> Rewarded:
    """The reward stage: each rank scores its rollouts, and every rank gets every group."""
    t0 = time.perf_counter()
    if not rollouts.indices:
        return Rewarded([], 0.0)
    groups = dist.gather(reward_groups(examples, rollouts.mine, rollouts.completions))
    return Rewarded(groups, time.perf_counter() - t0)


def reward_groups(examples: Sequence, indices: Sequence[int], rollouts: Sequence[Sequence]) -> list[Group]:
    """Score each rollout with its example's verifier; a verifier that raises becomes a RewardError naming the prompt."""
    from prepo.rewards import score_rollouts

    groups = []
    for i, rs in zip(indices, rollouts):
        rewards = score_rollouts([examples[i]] * len(rs), [r.text for r in rs])
        groups.append(Group(prompt_index=i, rollouts=list(rs), rewards=[float(x) for x in rewards]))
    return groups


def group_advantage_table(groups: Sequence[Group], normalize_std: bool) -> torch.Tensor:
    """(num_groups, G) GRPO advantages of the kept groups."""
    sizes = {len(g.rewards) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups have different sizes {sorted(sizes)}; every prompt needs G rollouts")
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    return group_advantages(rewards, normalize_std=normalize_std)


def build_samples(groups: Sequence[Group], prompts: Sequence, advantages: torch.Tensor) -> list[Sample]:
    """One update sample per rollout (prompt tokens + completion tokens, its advantage), group-major."""
    return [make_sample(prompts[g.prompt_index].input_ids, r.completion_ids, float(advantages[gi, j]), gi)
            for gi, g in enumerate(groups) for j, r in enumerate(g.rollouts)]


def learning_rate(optim_cfg, step: int) -> float:
    """Linear warm-up over ``warmup_steps`` steps, then constant."""
    if optim_cfg.warmup_steps <= 0:
        return optim_cfg.lr
    return optim_cfg.lr * min(1.0, (step + 1) / optim_cfg.warmup_steps)


def update_policy(policy: Policy, samples: Sequence[Sample], lr: float) -> UpdateStats:
    """The update stage at learning rate ``lr`` (prepo.update.policy_update: entropy weights, clipped surrogate,
    micro-batches, AdamW step(s))."""
    for group in policy.optimizer.param_groups:
        group["lr"] = lr
    return policy_update(policy.model, policy.optimizer, samples, policy.settings, ref_model=policy.ref_model,
                         dist=policy.dist)


def metrics_row(step: int, rollouts: int, collected: Collected, update: UpdateStats | None, *, lr: float,
                time_update: float, time_step: float) -> dict:
    """The ``train`` row of metrics.jsonl for step ``step`` (1-based; ``rollouts`` generated up to its end)."""
    rewards, lengths = collected.rewards, collected.completion_lengths
    trained = [r for g in collected.groups for r in g.rewards]
    groups = collected.groups
    weights = weight_stats(update.weights[update.active]) if update is not None and update.active else {}
    return {
        "kind": "train", "step": step, "rollouts": rollouts,
        "rollouts_step": collected.rollouts, "discarded_step": collected.discarded, "rounds": collected.rounds,
        "prompts": len(groups),
        "reward_mean": float(np.mean(rewards)) if rewards else None,
        "accuracy": float(np.mean([r >= 1.0 for r in rewards])) if rewards else None,
        "reward_trained_mean": float(np.mean(trained)) if trained else None,
        "zero_variance_frac": float(np.mean([g.zero_variance for g in groups])) if groups else None,
        "all_wrong_frac": float(np.mean([max(g.rewards) <= 0 for g in groups])) if groups else None,
        "completion_len_mean": float(np.mean(lengths)) if lengths else None,
        "entropy_mean": update.entropy_mean if update else None,
        "rollouts_in_update": len(update.active) if update else 0,
        "weight_min": weights.get("weight_min"), "weight_max": weights.get("weight_max"),
        **{key: collected.info.get(key) for key in ("ppl_window_lo", "ppl_window_hi", "ppl_selected_mean",
                                                    "ppl_candidates_lo", "ppl_candidates_hi")},
        **{k: v for k, v in collected.info.items() if k.startswith("greso_")},
        "loss": update.loss if update else None, "grad_norm": update.grad_norm if update else None,
        "optimizer_steps": update.optimizer_steps if update else 0,
        "clipped_steps": update.clipped_steps if update else 0, "rho": collected.info.get("rho"),
        "kl_mean": update.kl_mean if update else None, "clip_frac": update.clip_frac if update else None,
        "lr": lr, "tokens": update.tokens if update else 0,
        "time_select": collected.time_select, "time_generate": collected.time_generate,
        "time_reward": collected.time_reward, "time_update": time_update, "time_step": time_step,
        "peak_rss_mb": peak_rss_mb(),
    }
