"""Train inside TRL with prepo's prompt selection: ``PREPOTrainer`` is ``trl.GRPOTrainer`` plus a strategy and weights.

    pip install "prepo[trl]"
    python examples/trl_prepo.py --steps 20                     # PREPO on SmolLM2-135M-Instruct, built-in arith task
    python examples/trl_prepo.py --steps 20 --strategy dynamic  # DAPO dynamic sampling (or random, greso)
    python examples/trl_prepo.py --model Qwen/Qwen2.5-Math-1.5B --steps 500 --k 16

Everything GRPOConfig accepts works as usual; prepo adds ``prepo_strategy`` ("ppl", "random", "dynamic", "greso"),
``prepo_selection_ratio`` (K/|B|, paper: 0.2), ``prepo_max_rounds`` (dynamic/greso), ``prepo_weighting``
("entropy", "entropy_token", "none"; the baselines use "none" here) and ``prepo_score_span`` ("question" or
"prompt"). Metrics appear in TRL's logs under ``prepo/`` (rollouts, rollouts_step, discarded, rounds, ...).
"""
from __future__ import annotations

import argparse

import torch
from datasets import Dataset

from prepo.tasks.arith import ARITH_SYSTEM_PROMPT, make_arith
from prepo.integrations.trl import TRL_STRATEGIES, PREPOConfig, PREPOTrainer
from prepo.models import DEFAULT_MODEL, load_model_and_tokenizer
from prepo.rewards import numeric_reward


def arith_dataset(n: int, seed: int) -> Dataset:
    """TRL's conversational format: a ``prompt`` column of messages plus the columns the reward reads."""
    rows = [{"prompt": [{"role": "system", "content": ARITH_SYSTEM_PROMPT}, {"role": "user", "content": e.question}],
             "answer": e.answer} for e in make_arith(n, seed, split="train")]
    return Dataset.from_list(rows)


def correctness(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's number equals the gold answer (prepo.rewards.numeric_reward)."""
    return [numeric_reward(c[-1]["content"], a) for c, a in zip(completions, answer)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="alias, GGUF file, local folder or hub name")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strategy", default="ppl", choices=TRL_STRATEGIES,
                   help="ppl: PREPO's perplexity window with entropy weights; random / dynamic / greso: the baselines")
    p.add_argument("--k", type=int, default=4, help="prompts per step (K); |B| = K / selection ratio candidates")
    p.add_argument("--max-rounds", type=int, default=4, help="dynamic/greso: generation rounds per step at most")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=2000, help="size of the arith training set")
    p.add_argument("--output-dir", default="runs/trl-prepo")
    p.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is present")
    a = p.parse_args(argv)

    on_cpu = a.cpu or not torch.cuda.is_available()  # TRL defaults to bf16, which needs a GPU here
    model, tokenizer = load_model_and_tokenizer(a.model)
    args = PREPOConfig(
        output_dir=a.output_dir, max_steps=a.steps, per_device_train_batch_size=a.k * a.group_size,
        num_generations=a.group_size, max_completion_length=64, temperature=1.0, learning_rate=1e-6, beta=0.0,
        epsilon=0.2, epsilon_high=0.28, loss_type="dapo", logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=on_cpu, bf16=not on_cpu, prepo_strategy=a.strategy, prepo_selection_ratio=0.2,
        prepo_max_rounds=a.max_rounds, prepo_weighting="entropy" if a.strategy == "ppl" else "none",
        prepo_score_span="question")
    trainer = PREPOTrainer(model=model, reward_funcs=correctness, args=args,
                           train_dataset=arith_dataset(a.prompts, seed=0), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(a.output_dir)


if __name__ == "__main__":
    main()
