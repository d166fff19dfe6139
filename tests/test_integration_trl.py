"""PREPO inside the real TRL GRPOTrainer: window layout, perplexity order under the current policy, weights in the loss.

A tiny random Llama and a byte-level BPE tokenizer (tests/tiny_lm.py); no network. Skipped when ``trl`` is not installed.
"""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from prepo.integrations.trl import (  # noqa: E402
    PerplexityWindowSampler, PREPOConfig, PREPOTrainer, WindowSlot)
from prepo.integrations.prompts import encode_prompt  # noqa: E402
from tiny_lm import build_model, build_tokenizer  # noqa: E402

WORDS = "what is the sum of two and three plus seven minus one times four five six eight nine zero".split()


# ---------------------------------------------------------------------------------------------------------------
# the sampler alone
# ---------------------------------------------------------------------------------------------------------------
def _layout_sampler(n, k, b, g, repeat, seed, rho=0.0):
    scores = {i: random.random() * 50 for i in range(n)}
    calls = []

    def scorer(indices):
        calls.append(list(indices))
        return [scores[i] for i in indices]

    sampler = PerplexityWindowSampler(n, window=k, candidates=b, num_generations=g, scorer=scorer,
                                      progress=lambda: rho, repeat_count=repeat, seed=seed)
    return sampler, scores, calls


@pytest.mark.parametrize("n,k,b,g,repeat,rho", [(23, 2, 10, 3, 2, 0.0), (17, 3, 5, 2, 1, 0.37), (7, 1, 7, 4, 3, 1.0)])
def test_sampler_layout_and_window(n, k, b, g, repeat, rho):
    seed = random.randrange(10_000)
    sampler, scores, calls = _layout_sampler(n, k, b, g, repeat, seed, rho)
    slots = list(sampler)
    assert len(slots) == len(sampler) == (n // b) * k * g * repeat
    per_step = k * g * repeat
    drawn = []
    for step in range(n // b):
        block = slots[step * per_step:(step + 1) * per_step]
        expected = [step * k + j for j in range(k) for _ in range(g)] * repeat  # TRL's RepeatSampler layout
        assert block == expected
        window = [sampler.resolve(s) for s in block[:k * g:g]]
        cands = calls[-1]
        assert len(cands) == b and len(set(cands)) == b
        drawn += cands
        ranked = sorted(cands, key=lambda i: scores[i])
        start = math.floor(rho * (b - k) + 1e-9)
        assert window == ranked[start:start + k]
        assert sampler.records[-1].window == window and sampler.records[-1].rho == rho
    assert len(calls) == n // b  # scored once per step, however many slots resolve
    assert len(set(drawn)) == len(drawn)  # an epoch never repeats a prompt
    # every rank builds the same sampler from the seed: same candidates
    twin, _, twin_calls = _layout_sampler(n, k, b, g, repeat, seed, rho)
    for slot in list(twin)[::per_step]:
        twin.resolve(slot)
    assert twin_calls == calls


def test_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="candidates"):
        PerplexityWindowSampler(5, window=2, candidates=6, num_generations=2, scorer=len, progress=float)
    with pytest.raises(ValueError, match="window"):
        PerplexityWindowSampler(5, window=0, candidates=4, num_generations=2, scorer=len, progress=float)
    sampler = PerplexityWindowSampler(6, window=2, candidates=3, num_generations=1,
                                      scorer=lambda idx: [1.0], progress=lambda: 0.0)
    with pytest.raises(ValueError, match="not been drawn"):
        sampler.resolve(0)
    next(iter(sampler))
    with pytest.raises(ValueError, match="3 candidates"):
        sampler.resolve(0)
    with pytest.raises(ValueError, match="prepo_selection_ratio"):
        PREPOConfig(output_dir="unused", prepo_selection_ratio=0.0, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="prepo_weighting"):
        PREPOConfig(output_dir="unused", prepo_weighting="entropy_max", report_to="none", use_cpu=True)


# ---------------------------------------------------------------------------------------------------------------
# the trainer, end to end
# ---------------------------------------------------------------------------------------------------------------
class _SpyTrainer(PREPOTrainer):
    """Records the policy at each generation, the advantages before/after weighting, and those the loss gets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations, self.weightings, self.loss_advantages = [], [], []

    def _generate_and_score_completions(self, inputs):
        snapshot = copy.deepcopy(self.model.state_dict())
        output = super()._generate_and_score_completions(inputs)
        self.generations.append({"policy": snapshot, "output": dict(output)})
        return output

    def _weight_advantages(self, output):
        before = output["advantages"].clone()
        super()._weight_advantages(output)
        self.weightings.append((before, output["advantages"]))

    def _compute_loss(self, model, inputs):
        self.loss_advantages.append(inputs["advantages"].detach().clone())
        return super()._compute_loss(model, inputs)


def _run(tmp_path, weighting, *, steps=2, k=2, g=4, n=12):
    rng = random.Random()
    questions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + "?" for _ in range(n)]
    tokenizer = build_tokenizer()
    rows = [{"prompt": [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": q}], "qid": i}
            for i, q in enumerate(questions)]
    generated = []

    def reward(completions, completion_ids, qid, **kwargs):
        generated.append(list(qid))
        return [float(sum(ids) % 7) / 7 for ids in completion_ids]

    args = PREPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=k * g, num_generations=g,
                       max_completion_length=8, max_steps=steps, learning_rate=3e-2, logging_steps=1,
                       report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                       gradient_checkpointing=False, seed=rng.randrange(10_000), disable_tqdm=True,
                       prepo_selection_ratio=0.2, prepo_weighting=weighting)
    model = build_model(tokenizer, hidden=32, init=0.5).train()  # peaky logits: entropy weights well away from 1
    trainer = _SpyTrainer(model=model, reward_funcs=reward, args=args,
                          train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer, generated, tokenizer


def _policy(trainer, state_dict):
    """A fresh float64 copy of the policy (a deepcopy of the trained model would keep TRL's patched forward)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(trainer.model.config)
    model.load_state_dict(state_dict)
    return model.double().eval()


@torch.no_grad()
def _reference_ppl(model, ids, question_ids):
    """Question-token perplexity in float64: the question's ids located in the prompt ids (no offsets)."""
    n = len(question_ids)
    start = max(s for s in range(len(ids) - n + 1) if ids[s:s + n] == question_ids)
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    nll = [-logp[t - 1, ids[t]] for t in range(max(start, 1), start + n)]
    return math.exp(sum(nll) / len(nll))


@torch.no_grad()
def _reference_weights(model, output, temperature, mode):
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    attn = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    c = output["completion_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -c - 1:-1].double() / temperature
    p = torch.softmax(logits, dim=-1)
    h = -(p * torch.log_softmax(logits, dim=-1)).sum(-1)
    m = output["completion_mask"].double()
    lengths = m.sum(-1)
    mean_h = (h * m).sum(-1) / lengths
    h_bar = mean_h.mean() if mode == "entropy" else (h * m).sum() / lengths.sum()
    return mean_h / h_bar


@pytest.mark.slow
def test_trl_trainer_window_follows_current_perplexity_and_weights_reach_loss(tmp_path):
    weighting = "entropy_token"  # the mode that also needs the lengths; "entropy" differs only inside entropy_weights
    trainer, generated, tokenizer = _run(tmp_path, weighting)
    sampler, k, g = trainer.window_sampler, 2, 4
    assert [r.rho for r in sampler.records] == [0.0, 0.5]
    assert len(trainer.generations) == 2 and trainer.num_rollouts == 2 * k * g
    logged = [h for h in trainer.state.log_history if "prepo/rollouts" in h]
    assert [h["prepo/rollouts"] for h in logged] == [k * g, 2 * k * g]
    for key in ("prepo/ppl_window_lo", "prepo/ppl_window_hi", "prepo/weight_min", "prepo/weight_max"):
        assert all(key in h for h in logged)

    stale_gap = 0.0
    for step, (record, gen) in enumerate(zip(sampler.records, trainer.generations)):
        # the window is the ρ-slice of the candidates sorted by perplexity under the policy of that moment
        policy = _policy(trainer, gen["policy"])
        prompts = [trainer.train_dataset[i]["prompt"] for i in record.candidates]
        trl_ids = trainer._tokenize_prompts(prompts)[0]
        ref = [_reference_ppl(policy, list(ids), tokenizer(p[-1]["content"], add_special_tokens=False)["input_ids"])
               for ids, p in zip(trl_ids, prompts)]
        assert record.ppl == pytest.approx(ref, rel=1e-4)
        ranked = sorted(record.candidates, key=lambda i: ref[record.candidates.index(i)])
        start = math.floor(record.rho * (len(ranked) - k) + 1e-9)
        assert record.window == ranked[start:start + k]
        assert generated[step] == [i for i in record.window for _ in range(g)]  # TRL generated those prompts
        if step == 1:  # the previous policy gives other values: scoring one update late would be caught above
            first = _policy(trainer, trainer.generations[0]["policy"])
            stale = [_reference_ppl(first, list(ids), tokenizer(p[-1]["content"], add_special_tokens=False)["input_ids"])
                     for ids, p in zip(trl_ids, prompts)]
            stale_gap = max(abs(a - b) / b for a, b in zip(stale, ref))
        # the advantages are TRL's times w_i = H̄_i / H̄ under the same policy, and those reach the loss
        before, after = trainer.weightings[step]
        w = _reference_weights(policy, gen["output"], trainer.temperature, weighting)
        assert w.std() > 1e-3, "weights too uniform for the check to mean anything"
        torch.testing.assert_close(after.double(), before.double() * w, rtol=1e-4, atol=1e-6)
        assert torch.equal(gen["output"]["advantages"], after)
        torch.testing.assert_close(trainer.loss_advantages[step].sort().values, after.sort().values)
    assert stale_gap > 1e-3


@pytest.mark.slow
def test_trl_trainer_without_weighting_keeps_trl_advantages(tmp_path):
    trainer, _, _ = _run(tmp_path, "none", steps=1)
    out = trainer.generations[0]["output"]
    logged = torch.tensor(list(trainer._logs["advantages"]), dtype=out["advantages"].dtype)
    torch.testing.assert_close(out["advantages"], logged)  # TRL's own advantages, untouched
    assert trainer.weightings == []
    assert all("prepo/weight_min" not in h for h in trainer.state.log_history)


def test_encode_prompt_masks_the_question():
    tokenizer = build_tokenizer()
    prompt = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "what is two plus three?"}]
    ids, mask = encode_prompt(tokenizer, prompt)
    assert ids == tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
    text = "".join(tokenizer.decode([i]) for i, m in zip(ids, mask) if m)
    assert text == "what is two plus three?"
    ids_all, mask_all = encode_prompt(tokenizer, prompt, span="prompt")
    assert ids_all == ids and mask_all == [0] + [1] * (len(ids) - 1)
    with pytest.raises(TypeError, match="prompt"):
        encode_prompt(tokenizer, 42)
    with pytest.raises(ValueError, match="span"):
        encode_prompt(tokenizer, prompt, span="answer")
    with pytest.raises(ValueError, match="user message"):
        encode_prompt(tokenizer, [{"role": "system", "content": "answer briefly"}])
    assert isinstance(WindowSlot(3), WindowSlot)
