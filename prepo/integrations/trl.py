"""PREPO inside TRL: a ``GRPOTrainer`` that trains on the current policy's prompt-perplexity window and scales each
rollout's advantage by its relative entropy. Install with ``pip install "prepo[trl]"``; see docs/integrations.md.

How it hooks into TRL 1.16 (the rest of GRPOTrainer is untouched):

- ``_get_train_sampler`` returns a :class:`PerplexityWindowSampler` that keeps TRL's ``RepeatSampler`` layout (each
  prompt ``num_generations`` times in a row, each generation batch ``num_iterations × steps_per_generation`` times,
  the same seeded order on every rank). The dataloader carries :class:`WindowSlot` stand-ins, not rows: accelerate's
  dataloader fetches one batch ahead, so choosing the prompts when the sampler is iterated would score them under
  the policy of one update ago. ``_generate_and_score_completions`` resolves the slots when the step generates, so
  the candidates are scored under the policy that is about to produce their rollouts.
- After TRL has computed its GRPO advantages, each rollout's are multiplied by w_i = H̄_i / H̄ (``entropy_weights``),
  from the per-token entropies of the rollout under the same policy (one no-grad forward through the fused head,
  ``prepo.logprobs.token_logprobs_entropy``: the LM head runs only at completion positions).
  H̄ is over the whole generation batch, gathered across ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from accelerate.utils import gather_object
from torch.utils.data import Dataset, IterableDataset, Sampler
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from prepo.algorithm import WEIGHTINGS, entropy_weights, ppl_window
from prepo.batching import TokenSeq
from prepo.integrations.prompts import SCORE_SPANS, encode_prompt
from prepo.logprobs import prompt_perplexities, token_logprobs_entropy
from prepo_kernels import IGNORE_INDEX


@dataclass
class PREPOConfig(GRPOConfig):
    """``GRPOConfig`` plus PREPO's options (all named ``prepo_*``)."""

    prepo_selection_ratio: float = field(default=0.2, metadata={
        "help": "K/|B|: each generation batch's K prompts are a window of |B| = K / ratio scored candidates."})
    prepo_weighting: str = field(default="entropy", metadata={
        "help": "Relative-entropy weights: 'entropy' (H̄ = mean of rollout means), 'entropy_token' (token-weighted "
                "H̄) or 'none'."})
    prepo_score_span: str = field(default="question", metadata={
        "help": "Tokens whose perplexity is scored: 'question' (the last user message only) or 'prompt' (all)."})
    prepo_score_batch_tokens: int = field(default=4096, metadata={
        "help": "Padded tokens per forward when scoring prompts."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.prepo_selection_ratio <= 1.0:
            raise ValueError(f"prepo_selection_ratio must be in (0, 1], got {self.prepo_selection_ratio}")
        if self.prepo_weighting not in WEIGHTINGS:
            raise ValueError(f"prepo_weighting must be one of {WEIGHTINGS}, got {self.prepo_weighting!r}")
        if self.prepo_score_span not in SCORE_SPANS:
            raise ValueError(f"prepo_score_span must be one of {SCORE_SPANS}, got {self.prepo_score_span!r}")
        if self.prepo_score_batch_tokens < 1:
            raise ValueError(f"prepo_score_batch_tokens must be >= 1, got {self.prepo_score_batch_tokens}")


@dataclass(frozen=True)
class WindowSlot:
    """What the training dataloader carries instead of a row: slot ``index`` of :class:`PerplexityWindowSampler`."""

    index: int


class _SlotDataset(Dataset):
    """Maps every index to a :class:`WindowSlot`; the rows are looked up once the window is known."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> WindowSlot:
        return WindowSlot(int(index))


@dataclass
class WindowRecord:
    """One step's selection: its candidates (dataset indices), their perplexities, ρ and the chosen window."""

    step: int
    rho: float
    candidates: list[int]
    ppl: list[float]
    window: list[int]

    @property
    def window_ppl(self) -> list[float]:
        by_index = dict(zip(self.candidates, self.ppl))
        return [by_index[i] for i in self.window]


class PerplexityWindowSampler(Sampler[int]):
    """TRL's GRPO sampling layout over window slots; each step's K prompts are a perplexity window of |B| candidates.

    Step s's candidates are the s-th block of ``candidates`` indices of a permutation of the dataset (seeded, a new
    one each epoch, identical on every rank; blocks that do not fill up are dropped, as in ``RepeatSampler``).
    Iterating yields slot numbers s·K + j (j < K), each ``num_generations`` times in a row, and step s's K·G slots
    ``repeat_count`` times. :meth:`resolve` maps a slot to a dataset index: the first call for a step scores its
    candidates with ``scorer(indices) -> perplexities`` and keeps ``ppl_window(ppl, K, progress())``.
    """

    def __init__(self, num_prompts: int, *, window: int, candidates: int, num_generations: int,
                 scorer: Callable[[list[int]], Sequence[float]], progress: Callable[[], float],
                 repeat_count: int = 1, shuffle: bool = True, seed: int | None = None):
        for name, value in (("window", window), ("num_generations", num_generations), ("repeat_count", repeat_count)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not window <= candidates <= num_prompts:
            raise ValueError(f"candidates={candidates} must be in [window={window}, num_prompts={num_prompts}]")
        self.num_prompts, self.k, self.num_candidates = num_prompts, window, candidates
        self.num_generations, self.repeat_count = num_generations, repeat_count
        self.scorer, self.progress, self.shuffle = scorer, progress, shuffle
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.records: list[WindowRecord] = []
        self._candidates: dict[int, list[int]] = {}
        self._windows: dict[int, list[int]] = {}
        self._next_step = 0

    def __len__(self) -> int:
        return (self.num_prompts // self.num_candidates) * self.k * self.num_generations * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_prompts, generator=self.generator).tolist()
        else:
            order = list(range(self.num_prompts))
        for block in range(self.num_prompts // self.num_candidates):
            step, self._next_step = self._next_step, self._next_step + 1
            self._candidates[step] = order[block * self.num_candidates:(block + 1) * self.num_candidates]
            for _ in range(self.repeat_count):
                for j in range(self.k):
                    yield from [step * self.k + j] * self.num_generations

    def window(self, step: int) -> list[int]:
        """Dataset indices of step ``step``'s window, ascending perplexity (scored on the first call)."""
        if step not in self._windows:
            if step not in self._candidates:
                raise ValueError(f"step {step} has not been drawn (or was already dropped)")
            cands = self._candidates[step]
            ppl = [float(v) for v in self.scorer(cands)]
            if len(ppl) != len(cands):
                raise ValueError(f"scorer returned {len(ppl)} perplexities for {len(cands)} candidates")
            rho = float(self.progress())
            chosen = [cands[i] for i in ppl_window(ppl, self.k, rho)]
            self._windows[step] = chosen
            self.records.append(WindowRecord(step, rho, list(cands), ppl, chosen))
            for old in [s for s in self._windows if s < step]:
                self._windows.pop(old)
                self._candidates.pop(old, None)
        return self._windows[step]

    def resolve(self, slot: int) -> int:
        """The dataset index behind slot ``slot`` (= step·K + j)."""
        step, j = divmod(int(slot), self.k)
        return self.window(step)[j]


class PREPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with PREPO's perplexity-window prompt selection and relative-entropy weighting.

    Takes the same arguments as ``GRPOTrainer``; ``args`` must be a :class:`PREPOConfig`. The train dataset must be
    map-style (prompts are picked by index). Logged under ``prepo/``: ``rollouts`` (generated so far, all ranks),
    ``ppl_window_lo``/``ppl_window_hi`` (the chosen window's perplexity range), ``rho``, and ``weight_min``/
    ``weight_max``/``weight_mean`` of the entropy weights.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PREPOConfig):
            raise TypeError(f"args must be a PREPOConfig, got {type(self.args).__name__}")
        self.window_sampler: PerplexityWindowSampler | None = None
        self.num_rollouts = 0

    # ---- prompt selection -----------------------------------------------------------------------------------
    def get_train_dataloader(self):
        if isinstance(self.train_dataset, IterableDataset):
            raise TypeError("train_dataset: PREPO picks prompts by index, so it needs a map-style dataset")
        return self._get_dataloader(dataset=_SlotDataset(len(self.train_dataset)), description="Training",
                                    batch_size=self._train_batch_size * self.args.steps_per_generation,
                                    sampler_fn=self._get_train_sampler, is_training=True)

    def _get_train_sampler(self, dataset=None) -> Sampler:
        k = self.args.generation_batch_size // self.num_generations
        num_candidates = max(k, round(k / self.args.prepo_selection_ratio))
        if num_candidates > len(self.train_dataset):
            raise ValueError(f"train_dataset has {len(self.train_dataset)} prompts, fewer than the {num_candidates} "
                             f"candidates a step needs (K={k}, prepo_selection_ratio={self.args.prepo_selection_ratio})")
        self.window_sampler = PerplexityWindowSampler(
            len(self.train_dataset), window=k, candidates=num_candidates, num_generations=self.num_generations,
            scorer=self._score_prompts, progress=self._progress,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset, seed=self.args.seed)
        return self.window_sampler

    def _progress(self) -> float:
        return self.state.global_step / max(self.state.max_steps, 1)

    def _score_prompts(self, indices: list[int]) -> list[float]:
        """Perplexities of the dataset prompts at ``indices``; each rank scores a share, all get every value."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = indices[rank::world]
        local = self.prompt_perplexities([self.train_dataset[i]["prompt"] for i in mine]) if mine else []
        ppl = [0.0] * len(indices)
        for r, values in enumerate(gather_object([local])):
            ppl[r::world] = values
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

    # ---- generation hook: resolve the window, then weight the advantages --------------------------------------
    def _generate_and_score_completions(self, inputs):
        if inputs and isinstance(inputs[0], WindowSlot):
            inputs = [dict(self.train_dataset[self.window_sampler.resolve(s.index)]) for s in inputs]
            record = self.window_sampler.records[-1]
            metrics = self._metrics["train"]
            metrics["prepo/ppl_window_lo"].append(min(record.window_ppl))
            metrics["prepo/ppl_window_hi"].append(max(record.window_ppl))
            metrics["prepo/rho"].append(record.rho)
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.num_rollouts += len(inputs) * self.accelerator.num_processes
            self._metrics["train"]["prepo/rollouts"] = [float(self.num_rollouts)]  # a running total, not a mean
            if self.args.prepo_weighting != "none":
                self._weight_advantages(output)
        return output

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
        metrics["prepo/weight_min"].append(weights.min().item())
        metrics["prepo/weight_max"].append(weights.max().item())
        metrics["prepo/weight_mean"].append(weights.mean().item())
