"""A few steps of ``prepo train`` on a small random Llama built here (no download, no network): the loop's GPU path once.

``python -m benchmarks.rl.gpu_train [--device cuda] [--steps 3] [--dtype bfloat16] [--out DIR]``
(benchmarks/gpu_suite.sh).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time

# The task every run here trains on: prepo's built-in integer arithmetic (numeric verifier: no math-verify needed).
TASK = "arith"


def build_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE trained on ``texts`` (any text still encodes), with a ChatML-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def save_model(folder: str, *, hidden: int = 256, layers: int = 2, seed: int = 0) -> str:
    """Tokenizer (trained on the task's questions and answers) + a random LlamaForCausalLM, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prepo.tasks.registry import make_builtin

    examples = make_builtin(TASK, 400, seed)
    tok = build_tokenizer([f"{e.question} The answer is {e.answer}." for e in examples])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _count_launches(counts: collections.Counter):
    """Wrap triton_tiles.launch so that every Triton kernel the run launches is counted by name."""
    from prepo_kernels import triton_tiles

    real = triton_tiles.launch

    def counting(kernel, *args, **kwargs):
        counts[getattr(kernel, "__name__", None) or kernel.fn.__name__] += 1
        return real(kernel, *args, **kwargs)

    triton_tiles.launch = counting


def overrides(model_dir: str, device: str, dtype: str, steps: int) -> list[str]:
    """The run: |B| = 8 prompts, K = 2, G = 4 completions of <= 16 tokens, HF engine, no evaluation."""
    return [f"model.name_or_path={model_dir}", f"model.dtype={dtype}", f"run.device={device}", f"run.steps={steps}",
            f"data.train={TASK}", "data.train_size=64", "data.eval_size=0", "eval.before=false",
            "selection.strategy=ppl", "selection.num_candidates=8", "selection.k=2", "rollout.engine=hf",
            "rollout.group_size=4", "rollout.max_new_tokens=16", "rollout.temperature=1.0", "optim.lr=1e-4",
            "run.progress=false", "run.save_every=0", "run.keep_checkpoints=1", "run.name=gpu-train"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", help="run folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps: expected >= 1, got {args.steps}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_train: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    from prepo import cli

    counts: collections.Counter = collections.Counter()
    _count_launches(counts)
    with tempfile.TemporaryDirectory(prefix="prepo-gpu-train-") as tmp:
        t0 = time.perf_counter()
        model_dir = save_model(os.path.join(tmp, "model"))
        run_dir = args.out or os.path.join(tmp, "run")
        print(f"model and tokenizer built in {time.perf_counter() - t0:.1f} s -> {model_dir}", flush=True)
        t1 = time.perf_counter()
        rc = cli.run_train(["--output-dir", run_dir, "--overwrite"] + overrides(model_dir, args.device, args.dtype,
                                                                                args.steps))
        print(f"prepo train exit code {rc} after {time.perf_counter() - t1:.1f} s", flush=True)
        rows = []
        metrics = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        steps = [r for r in rows if "time_step" in r]  # one row per training step (eval rows have no time_step)
        for r in steps:
            print("step", r.get("step"), {k: r[k] for k in ("loss", "reward_mean", "grad_norm", "time_step") if k in r})
    print("triton launches:", dict(counts) or "none", flush=True)
    problems = []
    if rc != 0:
        problems.append(f"prepo train exited with {rc}")
    if len(steps) < args.steps:
        problems.append(f"{len(steps)} training steps logged, expected {args.steps}")
    if any(r.get("loss") is not None and not math.isfinite(r["loss"]) for r in steps):
        problems.append("a non-finite loss")
    if args.device == "cuda" and not (counts.get("_linear_fwd_kernel") or counts.get("_linear_fwd_kernel_unaligned")):
        problems.append("the fused linear path never launched its Triton kernel on CUDA")
    for p in problems:
        print("gpu_train: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
