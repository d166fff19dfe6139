"""PREPO inside the real TRL GRPOTrainer: the slot layout, the perplexity window under the current policy, weights in
the loss, and the random / dynamic / GRESO strategies (accounting, resume, 2 processes under gloo).

A tiny random Llama and a byte-level BPE tokenizer (tests/tiny_lm.py); no network. Skipped when ``trl`` is not installed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from prepo.integrations.trl import STATE_FILE, PREPOConfig, PREPOTrainer, SlotSampler, WindowSlot  # noqa: E402
from prepo.integrations.prompts import encode_prompt  # noqa: E402
from prepo.integrations.trl_rounds import check_fields, regroup  # noqa: E402
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: E402,F401 (autouse fixture)

HERE = Path(__file__).parent
WORDS = "what is the sum of two and three plus seven minus one times four five six eight nine zero".split()


# ---------------------------------------------------------------------------------------------------------------
# the slot layout alone
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,k,g,repeat", [(3, 2, 3, 2), (2, 3, 2, 1), (1, 1, 4, 3)])
def test_slot_sampler_keeps_trl_layout(steps, k, g, repeat):
    sampler = SlotSampler(steps, k=k, num_generations=g, repeat_count=repeat)
    for epoch in range(2):  # steps keep counting across epochs
        slots = list(sampler)
        assert len(slots) == len(sampler) == steps * k * g * repeat
        per_step = k * g * repeat
        for s in range(steps):
            step = epoch * steps + s
            expected = [step * k + j for j in range(k) for _ in range(g)] * repeat  # TRL's RepeatSampler layout
            assert slots[s * per_step:(s + 1) * per_step] == expected
    twin = SlotSampler(steps, k=k, num_generations=g, repeat_count=repeat)  # what another rank builds
    assert list(twin) + list(twin) == list(SlotSampler(steps, k=k, num_generations=g, repeat_count=repeat)) + slots


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="k must be"):
        SlotSampler(2, k=0, num_generations=2)
    with pytest.raises(ValueError, match="repeat_count"):
        SlotSampler(2, k=1, num_generations=2, repeat_count=0)
    for option, value in [("prepo_selection_ratio", 0.0), ("prepo_weighting", "entropy_max"),
                          ("prepo_strategy", "all"), ("prepo_max_rounds", 0), ("prepo_greso_p_min", 1.5),
                          ("prepo_greso_target_zero_variance", 1.0)]:
        with pytest.raises(ValueError, match=option):
            PREPOConfig(output_dir="unused", report_to="none", use_cpu=True, **{option: value})


def test_regroup_pads_to_the_batch_and_masks_filler_rows():
    """Rows of two rounds with different widths: the batch keeps each row's tokens, re-padded to the widest."""
    def round_output(prompt_lens, completion_lens, base):
        p, c = max(prompt_lens), max(completion_lens)
        out = {"prompt_ids": torch.full((len(prompt_lens), p), 0), "prompt_mask": torch.zeros(len(prompt_lens), p),
               "completion_ids": torch.full((len(prompt_lens), c), 0),
               "completion_mask": torch.zeros(len(prompt_lens), c, dtype=torch.long),
               "old_per_token_logps": torch.zeros(len(prompt_lens), c), "advantages": torch.randn(len(prompt_lens)),
               "num_items_in_batch": torch.tensor(0)}
        for i, (lp, lc) in enumerate(zip(prompt_lens, completion_lens)):
            out["prompt_ids"][i, p - lp:] = torch.arange(lp) + base + 10 * i
            out["prompt_mask"][i, p - lp:] = 1
            out["completion_ids"][i, :lc] = torch.arange(lc) + base + 10 * i + 5
            out["completion_mask"][i, :lc] = 1
            out["old_per_token_logps"][i, :lc] = -torch.rand(lc)
        return out

    outputs = [round_output([2, 3], [1, 4], 100), round_output([5, 1], [2, 2], 200)]
    wanted, masked = [(1, 0), (0, 1), (1, 1)], {(1, 1)}
    batch = regroup(outputs, wanted, masked, rank=0, world=1, pad_id=0, device="cpu")
    assert batch["prompt_ids"].shape == (3, 5) and batch["completion_ids"].shape == (3, 4)
    for row, (rnd, i) in enumerate(wanted):
        src = outputs[rnd]
        for name in ("prompt_ids", "prompt_mask"):  # left-padded
            n = int(src["prompt_mask"][i].sum())
            assert torch.equal(batch[name][row, -n:], src[name][i, -n:]) and not batch["prompt_mask"][row, :-n].any()
        n = int(src["completion_mask"][i].sum())
        for name in ("completion_ids", "old_per_token_logps"):  # right-padded
            assert torch.equal(batch[name][row, :n], src[name][i, :n])
        assert batch["completion_mask"][row].sum() == (0 if (rnd, i) in masked else n)
        assert batch["advantages"][row] == (0 if (rnd, i) in masked else src["advantages"][i])
    assert "num_items_in_batch" not in batch
    with pytest.raises(NotImplementedError, match="pixel_values"):
        check_fields({**outputs[0], "pixel_values": torch.zeros(1)})
    with pytest.raises(ValueError, match="equal shares"):
        regroup(outputs, wanted, masked, rank=0, world=2, pad_id=0, device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# the trainer, end to end
# ---------------------------------------------------------------------------------------------------------------
class _SpyTrainer(PREPOTrainer):
    """Records the policy at each generation, the advantages before/after weighting, and those the loss gets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations, self.weightings, self.loss_advantages, self.loss_inputs = [], [], [], []

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
        self.loss_inputs.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
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
    records, k, g = trainer.selection_records, 2, 4
    assert [r.rho for r in records] == [0.0, 1.0]  # ρ = step / (max_steps − 1): both ends of the order
    assert len(trainer.generations) == 2 and trainer.num_rollouts == 2 * k * g
    logged = [h for h in trainer.state.log_history if "prepo/rollouts" in h]
    assert [h["prepo/rollouts"] for h in logged] == [k * g, 2 * k * g]
    for key in ("prepo/ppl_window_lo", "prepo/ppl_window_hi", "prepo/weight_min", "prepo/weight_max"):
        assert all(key in h for h in logged)

    stale_gap = 0.0
    for step, (record, gen) in enumerate(zip(records, trainer.generations)):
        assert len(record.candidates) == 1 and record.rollouts == k * g and record.discarded == 0
        candidates, ppl = record.candidates[0], record.ppl[0]
        # the window is the ρ-slice of the candidates sorted by perplexity under the policy of that moment
        policy = _policy(trainer, gen["policy"])
        prompts = [trainer.train_dataset[i]["prompt"] for i in candidates]
        trl_ids = trainer._tokenize_prompts(prompts)[0]
        ref = [_reference_ppl(policy, list(ids), tokenizer(p[-1]["content"], add_special_tokens=False)["input_ids"])
               for ids, p in zip(trl_ids, prompts)]
        assert ppl == pytest.approx(ref, rel=1e-4)
        ranked = sorted(candidates, key=lambda i: ref[candidates.index(i)])
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


# ---------------------------------------------------------------------------------------------------------------
# the strategies: random, DAPO dynamic sampling, GRESO
# ---------------------------------------------------------------------------------------------------------------
def informative(qid: int) -> bool:
    """The stand-in reward below gives qid % 3 == 2 varied rewards; 0 (all 1) and 1 (all 0) are zero-variance."""
    return qid % 3 == 2


def qid_reward(completions, qid, **kwargs):
    """Rewards fixed by the prompt and the rollout's place in its group (so the same under any process layout)."""
    start = int(os.environ.get("RANK", "0")) * len(completions)  # rows are prompt-major, an equal share per rank
    return [1.0 if q % 3 == 0 else 0.0 if q % 3 == 1 else float((start + i) % 2) for i, q in enumerate(qid)]


def qid_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"item{i} what is {WORDS[i % len(WORDS)]}?"}], "qid": i}
            for i in range(n)]


def strategy_args(out, strategy, *, steps, seed, k=2, g=4, save_steps=None, **extra):
    world = int(os.environ.get("WORLD_SIZE", "1"))  # K prompts a step under any layout
    return PREPOConfig(output_dir=str(out), per_device_train_batch_size=k * g // world, num_generations=g,
                       max_completion_length=6, max_steps=steps, learning_rate=1e-2, logging_steps=1,
                       report_to="none", save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
                       use_cpu=True, bf16=False, gradient_checkpointing=False, seed=seed, disable_tqdm=True,
                       prepo_strategy=strategy, prepo_selection_ratio=0.5, prepo_max_rounds=3,
                       prepo_weighting="none", **extra)


def _strategy_run(out, strategy, *, steps=3, seed=0, n=12, resume=None, trainer_class=None, **extra):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed, hidden=32).train()
    trainer = (trainer_class or _SpyTrainer)(
        model=model, reward_funcs=qid_reward, args=strategy_args(out, strategy, steps=steps, seed=seed, **extra),
        train_dataset=datasets.Dataset.from_list(qid_rows(n)), processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, tokenizer


def _qids_trained(trainer, tokenizer) -> list[int]:
    """The prompt of every row the loss saw with at least one loss token, read back from its token ids."""
    qids = []
    for inputs in trainer.loss_inputs:
        for ids, mask in zip(inputs["prompt_ids"], inputs["completion_mask"]):
            if mask.sum() > 0:
                qids.append(int(re.search(r"item(\d+) ", tokenizer.decode(ids, skip_special_tokens=True)).group(1)))
    return qids


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "dynamic", "greso"])
def test_strategy_trains_and_counts_every_rollout(tmp_path, strategy):
    k, g, steps = 2, 4, 3
    trainer, tokenizer = _strategy_run(tmp_path, strategy, steps=steps, seed=random.randrange(10_000))
    records = trainer.selection_records
    assert len(records) == steps == trainer.state.global_step
    logged = [h for h in trainer.state.log_history if "prepo/rollouts_step" in h]
    total = 0
    for record, h in zip(records, logged):
        rolled = [i for round_ in record.rolled_out for i in round_]
        assert record.rollouts == g * len(rolled) == h["prepo/rollouts_step"]
        total += record.rollouts
        assert h["prepo/rollouts"] == total and h["prepo/discarded"] == record.discarded
        assert h["prepo/rounds"] >= len(record.rolled_out)
        if strategy == "random":  # K of |B| = 4 candidates, one round, nothing discarded
            assert len(record.rolled_out) == 1 and len(rolled) == k == len(set(rolled)) and record.discarded == 0
            continue
        # filtering: the kept groups are the informative ones in roll-out order, cut to K; the rest is discarded
        useful = [i for i in rolled if informative(i)]
        assert record.kept == useful[:k]
        assert record.discarded == record.rollouts - g * len(record.kept)
        assert len(record.kept) + len(record.padded) == k
        assert all(not informative(i) for i in record.padded)
        assert h["prepo/rounds"] == 3 or len(useful) >= k  # stopped at K kept or at the round cap (a GRESO round
        # that skipped every candidate rolls out nothing and is in no rolled_out list)
        assert h["prepo/padded_groups"] == len(record.padded)
    assert trainer.num_rollouts == total
    # the loss never sees a zero-variance group with a loss token, and sees every kept group
    trained = _qids_trained(trainer, tokenizer)
    kept = [i for r in records for i in r.kept for _ in range(g)]
    if strategy == "random":
        assert sorted(trained) == sorted(kept)
    else:
        assert all(informative(q) for q in trained) and sorted(trained) == sorted(kept)


def _record_dicts(records):
    return [dataclasses.asdict(r) for r in records]


@pytest.mark.slow
def test_greso_state_survives_resume_from_checkpoint(tmp_path):
    seed = random.randrange(10_000)
    whole, _ = _strategy_run(tmp_path / "whole", "greso", steps=3, seed=seed, save_steps=1)
    checkpoint = tmp_path / "whole" / "checkpoint-1"
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    assert saved["strategy"]["history"] and saved["rollouts"] == whole.selection_records[0].rollouts

    resumed, _ = _strategy_run(tmp_path / "resumed", "greso", steps=3, seed=seed, resume=str(checkpoint))
    # the resumed run makes the same choices from step 1 on, ends in the same state, and trains the same weights
    assert _record_dicts(resumed.selection_records) == _record_dicts(whole.selection_records[1:])
    assert json.dumps(resumed.selection_state_dict(), sort_keys=True) == json.dumps(whole.selection_state_dict(), sort_keys=True)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="prepo_strategy"):
        resumed.load_selection_state_dict({**saved, "strategy_name": "dynamic"})


def selection_summary(trainer) -> dict:
    """What a run selected and counted, for comparing process layouts (tests/dist_trl.py writes it)."""
    return {"world": trainer.accelerator.num_processes, "records": _record_dicts(trainer.selection_records),
            "state": trainer.selection_state_dict(),
            "logged": [{k: v for k, v in h.items() if k.startswith("prepo/")} for h in trainer.state.log_history
                       if "prepo/rollouts" in h]}


def _launch(out: Path, nproc: int, strategy: str, steps: int, seed: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(HERE / "dist_trl.py"), str(out), strategy, str(steps), str(seed)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "selection.json").read_text())


@pytest.mark.slow
def test_two_processes_select_what_one_selects(tmp_path):
    """Under accelerate with gloo, 2 ranks make the same choices and counts as 1 (rows are regrouped across ranks).

    The sampled tokens differ (each rank draws its own random stream, as in TRL), so the weights are not compared;
    the stand-in reward depends only on the prompt and the rollout's place in its group.
    """
    seed = random.randrange(10_000)
    two = _launch(tmp_path / "two", 2, "greso", 2, seed)  # GRESO: rounds of varying size and a state to compare
    one = json.loads(json.dumps(selection_summary(_strategy_run(tmp_path / "one", "greso", steps=2, seed=seed)[0]),
                                sort_keys=True))
    assert (one["world"], two["world"]) == (1, 2)
    assert one["records"] == two["records"] and one["state"] == two["state"] and one["logged"] == two["logged"]
