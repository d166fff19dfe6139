"""PREPO inside TRL: a ``GRPOTrainer`` whose prompts come from prepo's selection strategies (the perplexity window,
random, DAPO dynamic sampling, GRESO) and whose advantages are scaled by relative entropy. See docs/integrations.md.

How it hooks into TRL 1.16 (the rest of GRPOTrainer is untouched):

- The training dataloader carries :class:`WindowSlot` stand-ins in TRL's ``RepeatSampler`` layout (each slot
  ``num_generations`` times in a row, each generation batch ``num_iterations × steps_per_generation`` times, the same
  on every rank), not rows: accelerate's dataloader fetches one batch ahead, so prompts chosen when the sampler is
  iterated would be scored under the policy of one update ago.
- ``_generate_and_score_completions`` runs a step's selection rounds when it generates (as prepo.step does): the
  strategy draws from a seeded ``PromptSampler`` (identical on every rank), chooses, and each round's prompts go
  through TRL's own generate-and-score; ``dynamic`` and ``greso`` drop zero-variance groups and go round again (up to
  ``prepo_max_rounds``), and the kept groups from all rounds are regrouped into one generation batch
  (``prepo.integrations.trl_rounds``). Every generated rollout is counted; the sampler's and strategy's state go into
  TRL's checkpoints.
- After that, each rollout's advantages are multiplied by w_i = H̄_i / H̄ (``entropy_weights``), from the per-token
  entropies of the rollout under the same policy (one no-grad forward through the fused head,
  ``prepo.logprobs.token_logprobs_entropy``: the LM head runs only at completion positions). H̄ is over the whole
  generation batch, gathered across ranks.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Iterator

import torch
from accelerate.utils import gather_object
from torch.utils.data import Dataset, IterableDataset, Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from prepo.algorithm import WEIGHTINGS, entropy_weights, progress, weight_stats
from prepo.batching import TokenSeq
from prepo.config import SelectionConfig
from prepo.integrations.prompts import SCORE_SPANS, encode_prompt
from prepo.integrations.trl_rounds import check_fields, regroup
from prepo.logprobs import prompt_perplexities, token_logprobs_entropy
from prepo.selection import Collected, Group, PromptSampler, Round, SelectionContext, make_strategy
from prepo_kernels import IGNORE_INDEX

TRL_STRATEGIES = ("ppl", "random", "dynamic", "greso")  # prepo.selection.STRATEGIES but "all" (that is GRPOTrainer)
STATE_FILE = "prepo_selection_state.json"


@dataclass
class PREPOConfig(GRPOConfig):
    """``GRPOConfig`` plus PREPO's options (all named ``prepo_*``)."""

    prepo_strategy: str = field(default="ppl", metadata={
        "help": "Which prompts a step trains on: 'ppl' (PREPO's perplexity window), 'random' (K of the same |B| "
                "candidates), 'dynamic' (DAPO: drop zero-variance groups, draw again) or 'greso' (skip prompts "
                "predicted zero-variance from their reward history, then as dynamic)."})
    prepo_selection_ratio: float = field(default=0.2, metadata={
        "help": "K/|B|: each generation batch's K prompts come from |B| = K / ratio candidates (ppl, random; greso "
                "draws |B| per round)."})
    prepo_pace: str = field(default=SelectionConfig.pace, metadata={
        "help": "ppl: how the window moves: 'linear' (ρ = step / (max_steps − 1), the paper) or 'adaptive' (by the "
                "solved/failed share of the window's groups, prepo.selection.pace_update)."})
    prepo_pace_gain: float = field(default=SelectionConfig.pace_gain, metadata={
        "help": "ppl, adaptive pace: ρ moves by gain / (max_steps − 1) × (solved − failed share)."})
    prepo_max_rounds: int = field(default=4, metadata={
        "help": "dynamic/greso: generation rounds per step before training on what was kept."})
    prepo_greso_p_easy: float = field(default=SelectionConfig.greso_p_easy, metadata={
        "help": "greso: initial exploration probability of all-correct prompts."})
    prepo_greso_p_hard: float = field(default=SelectionConfig.greso_p_hard, metadata={
        "help": "greso: initial exploration probability of all-wrong prompts."})
    prepo_greso_target_zero_variance: float = field(default=SelectionConfig.greso_target_zero_variance, metadata={
        "help": "greso: target share of zero-variance groups (1/3 easy, 2/3 hard)."})
    prepo_greso_step: float = field(default=SelectionConfig.greso_step, metadata={
        "help": "greso: exploration-probability adjustment per round."})
    prepo_greso_p_min: float = field(default=SelectionConfig.greso_p_min, metadata={
        "help": "greso: exploration probability floor."})
    prepo_weighting: str = field(default="entropy", metadata={
        "help": "Relative-entropy weights: 'entropy' (H̄ = mean of rollout means), 'entropy_token' (token-weighted "
                "H̄) or 'none'."})
    prepo_score_span: str = field(default="question", metadata={
        "help": "Tokens whose perplexity is scored: 'question' (the last user message only) or 'prompt' (all)."})
    prepo_score_batch_tokens: int = field(default=4096, metadata={
        "help": "Padded tokens per forward when scoring prompts."})

    def __post_init__(self):
        super().__post_init__()
        if self.prepo_strategy not in TRL_STRATEGIES:
            raise ValueError(f"prepo_strategy must be one of {TRL_STRATEGIES}, got {self.prepo_strategy!r}")
        if not 0.0 < self.prepo_selection_ratio <= 1.0:
            raise ValueError(f"prepo_selection_ratio must be in (0, 1], got {self.prepo_selection_ratio}")
        if self.prepo_weighting not in WEIGHTINGS:
            raise ValueError(f"prepo_weighting must be one of {WEIGHTINGS}, got {self.prepo_weighting!r}")
        if self.prepo_score_span not in SCORE_SPANS:
            raise ValueError(f"prepo_score_span must be one of {SCORE_SPANS}, got {self.prepo_score_span!r}")
        if self.prepo_score_batch_tokens < 1:
            raise ValueError(f"prepo_score_batch_tokens must be >= 1, got {self.prepo_score_batch_tokens}")
        self.selection_config(k=1, num_candidates=1)  # the strategy's own checks (max_rounds, greso_*), early

    def selection_config(self, *, k: int, num_candidates: int) -> SelectionConfig:
        """prepo's ``SelectionConfig`` for these options and TRL's batch (K prompts, |B| candidates)."""
        names = {f.name for f in fields(SelectionConfig)}
        options = {name[len("prepo_"):]: getattr(self, name) for name in vars(self)
                   if name.startswith("prepo_") and name[len("prepo_"):] in names}
        try:
            return SelectionConfig(**{**options, "strategy": self.prepo_strategy, "k": k,
                                      "num_candidates": num_candidates})
        except ValueError as err:  # name the option as the user spells it
            raise ValueError(str(err).replace("selection.", "prepo_")) from None


@dataclass(frozen=True)
class WindowSlot:
    """What the training dataloader carries instead of a row: slot ``index`` (= step·K + j) of :class:`SlotSampler`."""

    index: int


class _SlotDataset(Dataset):
    """Maps every index to a :class:`WindowSlot`; the rows are looked up once the step generates."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> WindowSlot:
        return WindowSlot(int(index))


class SlotSampler(Sampler[int]):
    """TRL's GRPO sampling layout over slots: per step, slots s·K + j (j < K) ``num_generations`` times each in a
    row, the step's K·G slots ``repeat_count`` times; ``steps`` steps an epoch. Deterministic, so identical on every
    rank; which prompt a slot stands for is decided when the step generates.
    """

    def __init__(self, steps: int, *, k: int, num_generations: int, repeat_count: int = 1):
        for name, value in (("steps", steps), ("k", k), ("num_generations", num_generations),
                            ("repeat_count", repeat_count)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.steps, self.k, self.num_generations, self.repeat_count = steps, k, num_generations, repeat_count
        self._next_step = 0

    def __len__(self) -> int:
        return self.steps * self.k * self.num_generations * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.steps):
            step, self._next_step = self._next_step, self._next_step + 1
            for _ in range(self.repeat_count):
                for j in range(self.k):
                    yield from [step * self.k + j] * self.num_generations


class _OrderedPromptSampler(PromptSampler):
    """``PromptSampler`` in dataset order every epoch (TRL's ``shuffle_dataset=False``)."""

    def _order(self, epoch: int):
        return range(self.num_prompts)


@dataclass
class StepRecord:
    """One step's selection: each round's candidates and what was rolled out, what was kept and what it cost."""

    step: int
    rho: float
    candidates: list[list[int]] = field(default_factory=list)  # per round, scored ones (ppl) only
    ppl: list[list[float]] = field(default_factory=list)
    rolled_out: list[list[int]] = field(default_factory=list)  # per round, dataset indices rolled out
    kept: list[int] = field(default_factory=list)               # prompts trained on, in batch order
    padded: list[int] = field(default_factory=list)             # zero-variance groups in the batch with no loss tokens
    rollouts: int = 0
    discarded: int = 0
    info: dict = field(default_factory=dict)

    @property
    def window(self) -> list[int]:
        return self.kept


class PREPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with prepo's prompt selection (``prepo_strategy``) and relative-entropy weighting.

    Takes the same arguments as ``GRPOTrainer``; ``args`` must be a :class:`PREPOConfig`. The train dataset must be
    map-style (prompts are picked by index). Logged under ``prepo/``: ``rollouts`` (generated so far, all ranks),
    ``rollouts_step`` and ``discarded`` (this step), ``rounds``, ``padded_groups`` (dynamic/greso: zero-variance groups
    that fill a batch without loss tokens when the round cap is hit), ``rho``, the strategy's own numbers
    (``ppl_window_lo``/``ppl_window_hi``, ``greso_skipped``/``greso_p_easy``/``greso_p_hard``) and
    ``weight_min``/``weight_max``/``weight_mean`` of the entropy weights.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PREPOConfig):
            raise TypeError(f"args must be a PREPOConfig, got {type(self.args).__name__}")
        if isinstance(self.train_dataset, IterableDataset):
            raise TypeError("train_dataset: PREPO picks prompts by index, so it needs a map-style dataset")
        self.k = self.args.generation_batch_size // self.num_generations
        num_candidates = max(self.k, round(self.k / self.args.prepo_selection_ratio))
        self.selection = self.args.selection_config(k=self.k, num_candidates=num_candidates)
        if num_candidates > len(self.train_dataset):
            raise ValueError(f"train_dataset has {len(self.train_dataset)} prompts, fewer than the {num_candidates} "
                             f"candidates a step needs (K={self.k}, prepo_selection_ratio="
                             f"{self.args.prepo_selection_ratio})")
        self.strategy = make_strategy(self.selection, seed=self.args.seed)
        sampler_class = PromptSampler if self.shuffle_dataset else _OrderedPromptSampler
        self.prompt_sampler = sampler_class(len(self.train_dataset), seed=self.args.seed)
        self.slot_sampler: SlotSampler | None = None
        self.selection_records: list[StepRecord] = []
        self.num_rollouts = 0

    # ---- the layout: slots, resolved when the step generates -------------------------------------------------
    def get_train_dataloader(self):
        return self._get_dataloader(dataset=_SlotDataset(len(self.train_dataset)), description="Training",
                                    batch_size=self._train_batch_size * self.args.steps_per_generation,
                                    sampler_fn=self._get_train_sampler, is_training=True)

    def _get_train_sampler(self, dataset=None) -> Sampler:
        steps = max(1, len(self.train_dataset) // self.strategy.draw_size())  # one epoch ≈ one pass over the prompts
        self.slot_sampler = SlotSampler(steps, k=self.k, num_generations=self.num_generations,
                                        repeat_count=self.num_iterations * self.args.steps_per_generation)
        return self.slot_sampler

    def _score_prompts(self, indices) -> list[float]:
        """Perplexities of the dataset prompts at ``indices``; each rank scores a share, all get every value."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = list(indices)
        mine = indices[rank::world]
        local = self.prompt_perplexities([self.train_dataset[i]["prompt"] for i in mine]) if mine else []
        ppl = [0.0] * len(indices)
        for r, values in enumerate(gather_object([local])):
            ppl[r::world] = values
        record = self.selection_records[-1]
        record.candidates.append(indices)
        record.ppl.append(ppl)
        return ppl

    def prompt_perplexities(self, prompts: list) -> list[float]:
        """Perplexity of each prompt's scored tokens (``prepo_score_span``) under the current policy (T = 1)."""
        encoded = []
        for p in prompts:
            ids, mask = encode_prompt(self.processing_class, p, span=self.args.prepo_score_span,
                                      chat_template=self.chat_template, tools=self.tools or None,
                                      chat_template_kwargs=self.chat_template_kwargs)
            encoded.append(TokenSeq(ids, mask))
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            ppl = prompt_perplexities(self.model, encoded, pad_id=self._tokenizer.pad_token_id,
                                      token_budget=self.args.prepo_score_batch_tokens)
        return ppl.tolist()

    # ---- generation: select (maybe over rounds), then weight the advantages ------------------------------------
    def _generate_and_score_completions(self, inputs):
        if not (inputs and isinstance(inputs[0], WindowSlot)):  # evaluation: the eval dataloader's own rows
            return super()._generate_and_score_completions(inputs)
        output = self._select_and_generate()
        if self.args.prepo_weighting != "none":
            self._weight_advantages(output)
        return output

    def _select_and_generate(self) -> dict:
        """One step's generation batch: draw → score → choose → TRL's generate-and-score → keep, round after round
        (dynamic, greso) until K groups are kept or prepo_max_rounds is reached."""
        step, total = self.state.global_step, max(self.state.max_steps, 1)
        record = StepRecord(step=step, rho=progress(step, total))
        self.selection_records.append(record)
        outputs: list[dict] = []
        rounds: list[Round] = []
        kept = 0
        while not rounds or not self.strategy.enough(kept, len(rounds)):
            candidates = self.prompt_sampler.draw(self.strategy.draw_size())
            ppl = self._score_prompts(candidates) if self.strategy.scores_prompts else None
            choice = self.strategy.choose(candidates, SelectionContext(step, total, kept, ppl))
            groups = self._roll_out_round(choice.indices, outputs, record) if choice.indices else []
            rounds.append(Round(choice, groups, self.strategy.keep(groups)))
            kept += len(rounds[-1].kept)
        collected = Collected.of(rounds, self.strategy)
        output = self._batch_of(collected, outputs, record)
        record.rollouts, record.discarded = collected.rollouts, collected.discarded
        record.info = dict(collected.info)
        record.rho = float(collected.info.get("rho", record.rho))  # the adaptive pace keeps its own ρ
        self.num_rollouts += collected.rollouts
        metrics = self._metrics["train"]
        metrics["prepo/rollouts"] = [float(self.num_rollouts)]  # a running total, not a mean
        metrics["prepo/rollouts_step"].append(float(collected.rollouts))
        metrics["prepo/discarded"].append(float(collected.discarded))
        metrics["prepo/rounds"].append(float(collected.rounds))
        metrics["prepo/rho"].append(record.rho)
        if self.strategy.filters_after_reward:
            metrics["prepo/padded_groups"].append(float(len(record.padded)))
        for key in ("ppl_window_lo", "ppl_window_hi", "greso_skipped", "greso_p_easy", "greso_p_hard"):
            if key in collected.info:
                metrics[f"prepo/{key}"].append(float(collected.info[key]))
        return output

    def _roll_out_round(self, indices: list[int], outputs: list[dict], record: StepRecord) -> list[Group]:
        """TRL's generate-and-score for ``indices`` (each G times, prompt-major, an equal share per rank).

        A round whose G·len(indices) rows do not split evenly over the ranks rolls out the longest prefix that does
        (greso only: dynamic, ppl and random roll out K prompts, which TRL's batch sizes already make divisible).
        """
        g, world, rank = self.num_generations, self.accelerator.num_processes, self.accelerator.process_index
        unit = world // math.gcd(g, world)
        indices = indices[:len(indices) - len(indices) % unit]
        if not indices:
            return []
        rows = [i for i in indices for _ in range(g)]
        share = len(rows) // world
        inputs = [dict(self.train_dataset[i]) for i in rows[rank * share:(rank + 1) * share]]
        self._round_rewards = None
        output = super()._generate_and_score_completions(inputs)
        rewards = self._round_rewards  # every rank's rows, set by _calculate_rewards
        rnd = len(outputs)
        outputs.append(output)
        record.rolled_out.append(list(indices))
        groups = []
        for j, index in enumerate(indices):
            group = rewards[j * g:(j + 1) * g]
            finite = [float(r) for r in group if not math.isnan(r)]
            groups.append(Group(index, [(rnd, j * g + t) for t in range(g)], finite or [0.0]))
        return groups

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # the reward GRPO normalises (multi_objective_aggregation="sum_then_normalize"); NaN = unscorable
        weighted = rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = weighted.nansum(dim=1).masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))
        self._round_rewards = rewards.tolist()
        return rewards_per_func

    def _batch_of(self, collected: Collected, outputs: list[dict], record: StepRecord) -> dict:
        """The generation batch: the kept groups (then zero-variance ones with no loss tokens up to K groups)."""
        kept = collected.groups
        record.kept = [grp.prompt_index for grp in kept]
        rows = self.k * self.num_generations
        if len(outputs) == 1 and [r for grp in kept for r in grp.rollouts] == [(0, i) for i in range(rows)] \
                and len(record.rolled_out[0]) == self.k:
            return outputs[0]  # one round of K prompts, all kept: TRL's own output
        if not outputs:
            raise RuntimeError(f"prepo_strategy={self.args.prepo_strategy!r} rolled out nothing in "
                               f"{collected.rounds} rounds (every candidate skipped): raise prepo_max_rounds or "
                               f"prepo_greso_p_min")
        check_fields(outputs[0])
        kept_ids = {id(grp) for grp in kept}
        spare = [grp for grp in collected.generated if id(grp) not in kept_ids]
        fill = [spare[i % len(spare)] for i in range(self.k - len(kept))] if spare else []
        record.padded = [grp.prompt_index for grp in fill]
        wanted = [r for grp in kept + fill for r in grp.rollouts]
        if len(wanted) != rows:  # nothing spare to fill up with
            raise RuntimeError(f"{len(wanted)} rollouts for a batch of {rows}")
        masked = {r for grp in fill for r in grp.rollouts}
        batch = regroup(outputs, wanted, masked, rank=self.accelerator.process_index,
                        world=self.accelerator.num_processes, pad_id=self._tokenizer.pad_token_id,
                        device=self.accelerator.device)
        loss_mask = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
        batch["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return batch

    # ---- the strategy's state in TRL's checkpoints -----------------------------------------------------------
    def selection_state_dict(self) -> dict:
        return {"strategy_name": self.args.prepo_strategy, "prompt_sampler": self.prompt_sampler.state_dict(),
                "strategy": self.strategy.state_dict(), "rollouts": self.num_rollouts}

    def load_selection_state_dict(self, state: dict) -> None:
        if state["strategy_name"] != self.args.prepo_strategy:
            raise ValueError(f"checkpoint was written with prepo_strategy={state['strategy_name']!r}, this run has "
                             f"{self.args.prepo_strategy!r}")
        self.prompt_sampler.load_state_dict(state["prompt_sampler"])
        self.strategy.load_state_dict(state["strategy"])
        self.num_rollouts = int(state["rollouts"])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(self.selection_state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = os.path.join(checkpoint, STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"resume_from_checkpoint: {path} is missing (not a PREPOTrainer checkpoint?)")
            with open(path) as f:
                self.load_selection_state_dict(json.load(f))

    # ---- relative-entropy weights ---------------------------------------------------------------------------
    @torch.no_grad()
    def rollout_entropies(self, output: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token entropy (at the sampling temperature) and length of each rollout in a generation output."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        mask = completion_mask if "tool_mask" not in output else completion_mask * output["tool_mask"]
        ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attn = torch.cat([output["prompt_mask"], completion_mask], dim=1)
        targets = torch.full_like(ids, IGNORE_INDEX)  # position t predicts ids[t + 1]: only completion tokens count
        targets[:, -completion_ids.size(1) - 1:-1] = completion_ids.masked_fill(mask == 0, IGNORE_INDEX)
        sums = []
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for start in range(0, ids.size(0), self.args.per_device_train_batch_size):
                rows = slice(start, start + self.args.per_device_train_batch_size)
                with self.accelerator.autocast():
                    _, entropy = token_logprobs_entropy(self.model, ids[rows], attn[rows], targets[rows],
                                                        temperature=self.temperature)
                sums.append(entropy.sum(dim=-1))
        lengths = mask.sum(dim=-1).float()
        return torch.cat(sums) / lengths.clamp_min(1.0), lengths

    def _weight_advantages(self, output: dict) -> None:
        """Multiply this rank's advantages by w_i = H̄_i / H̄, H̄ taken over the rollouts of every rank."""
        mean_entropy, lengths = self.rollout_entropies(output)
        all_entropy, all_lengths = self.accelerator.gather(mean_entropy), self.accelerator.gather(lengths)
        # a rollout with no loss tokens gets weight 1 and no say in H̄
        weights = entropy_weights(all_entropy, all_lengths, mode=self.args.prepo_weighting).to(all_entropy)
        n = mean_entropy.numel()
        rank = self.accelerator.process_index
        local = weights[rank * n:(rank + 1) * n]
        advantages = output["advantages"]
        local = local.to(advantages.device, advantages.dtype)
        output["advantages"] = advantages * (local if advantages.dim() == 1 else local.unsqueeze(1))
        metrics = self._metrics["train"]
        for key, value in weight_stats(weights).items():
            metrics[f"prepo/{key}"].append(value)
