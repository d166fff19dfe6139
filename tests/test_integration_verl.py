"""PREPO's verl hooks: the ``prepo`` advantage estimator, the entropy hand-off and the perplexity window of the trainer.

Two layers. Always: against stand-ins with verl 0.9.1's call contracts (``register_adv_est`` in
verl/trainer/ppo/core_algos.py, ``register_trainer`` and ``PPOTrainer._compute_advantage``/``_next_train_batch`` in
verl/trainer/ppo/v1/trainer_base.py, the estimator kwargs of ``compute_advantage`` in verl/trainer/ppo/ray_trainer.py).
When verl's v1 stack imports (its own venv: it pins transformers < 5.11; `make test` builds .venv-verl from
tests/requirements-verl.txt and runs the ``real_verl`` tests there): against the real registries, verl's GRPO and
verl's real ``_compute_advantage`` with TransferQueue replaced by an in-memory store.
"""
from __future__ import annotations

import math
import os
import random
import sys
import types

import numpy as np
import pytest
import torch

import prepo.integrations.verl as pv
from prepo.algorithm import ppl_window


def _groups(num_groups, sizes=(2, 5)):
    uids, rows = [], 0
    for gi in range(num_groups):
        g = random.randint(*sizes)
        uids += [f"uid-{gi}"] * g
        rows += g
    random.shuffle(uids)  # verl's balance step reorders rows; groups need not be contiguous
    return uids


def _batch(uids, max_len=7):
    n = len(uids)
    lengths = torch.randint(0, max_len + 1, (n,))
    lengths[torch.randint(0, n, (1,))] = max_len
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    rewards = torch.zeros(n, max_len)
    score = torch.randint(0, 3, (n,)).float()
    last = (lengths - 1).clamp_min(0)
    rewards[torch.arange(n), last] = score * (lengths > 0)
    entropy = torch.rand(n, max_len) * 4 * mask
    return rewards, mask, entropy


def _reference(rewards, mask, entropy, uids, mode, normalize=True, eps=1e-6):
    """float64, row by row: GRPO (unbiased std) times H̄_i / H̄ over the rollouts with a response."""
    scores = rewards.double().sum(-1)
    adv = torch.zeros_like(scores)
    for uid in set(uids):
        rows = [i for i, u in enumerate(uids) if u == uid]
        s = scores[rows]
        if len(rows) > 1:
            adv[rows] = (s - s.mean()) / ((s.std() + eps) if normalize else 1.0)
    lengths = mask.double().sum(-1)
    if mode != "none":
        h = (entropy.double() * mask).sum(-1) / lengths.clamp_min(1)
        ok = lengths > 0
        h_bar = h[ok].mean() if mode == "entropy" else (h[ok] * lengths[ok]).sum() / lengths[ok].sum()
        w = torch.where(ok, h / h_bar, torch.ones_like(h))
        adv = adv * w
    return adv[:, None] * mask


@pytest.mark.parametrize("mode", ["entropy", "entropy_token", "none"])
@pytest.mark.parametrize("normalize", [True, False])
def test_prepo_advantage_matches_reference(mode, normalize):
    uids = _groups(random.randint(2, 6)) + ["lonely"]  # a one-rollout group gets 0
    rewards, mask, entropy = _batch(uids)
    config = {"prepo_weighting": mode, "norm_adv_by_std_in_grpo": normalize}
    index = np.array(uids, dtype=object)
    with pv.entropy_handoff(*pv.rollout_entropy_stats(entropy, mask)) as handoff:
        adv, ret = pv.prepo_advantage(token_level_rewards=rewards, response_mask=mask, config=config, index=index)
    expected = _reference(rewards, mask, entropy, uids, mode, normalize)
    torch.testing.assert_close(adv.double(), expected, rtol=1e-5, atol=1e-6)
    assert ret is adv
    assert (handoff.weights is None) == (mode == "none")


def test_prepo_advantage_rejects_bad_input():
    uids = _groups(2)
    rewards, mask, entropy = _batch(uids)
    index = np.array(uids, dtype=object)
    with pytest.raises(ValueError, match="trainer_mode=prepo"):  # weighting without the trainer's entropies
        pv.prepo_advantage(token_level_rewards=rewards, response_mask=mask, index=index)
    with pytest.raises(ValueError, match="hand-off has"):
        with pv.entropy_handoff(torch.ones(3), torch.ones(3)):
            pv.prepo_advantage(token_level_rewards=rewards, response_mask=mask, index=index)
    with pytest.raises(ValueError, match="index"):
        pv.prepo_advantage(token_level_rewards=rewards, response_mask=mask, config={"prepo_weighting": "none"})
    with pytest.raises(ValueError, match="prepo_weighting"):
        pv.prepo_advantage(token_level_rewards=rewards, response_mask=mask, index=index,
                           config={"prepo_weighting": "entropy_max"})
    with pytest.raises(ValueError, match="shapes"):
        pv.entropy_handoff(torch.ones(3), torch.ones(4)).__enter__()


def test_score_tensors_layout():
    encoded = [([5, 6, 7, 8, 9], [0, 0, 1, 1, 0]), ([1, 2, 3], [0, 1, 1]), ([4, 4, 4, 4, 4, 4, 4], [0, 0, 0, 1, 0, 1, 0])]
    t = pv.score_tensors(encoded, pad_id=0)
    for row, (ids, mask) in enumerate(encoded):
        live = t["attention_mask"][row].bool()
        assert t["input_ids"][row][live].tolist() == ids  # prompt + response is the prompt, padding aside
        first = mask.index(1)
        resp = t["responses"][row][:len(ids) - first].tolist()
        assert resp == ids[first:]
        assert t["response_mask"][row][:len(ids) - first].tolist() == mask[first:]
        assert t["response_mask"][row].sum().item() == sum(mask)
        assert t["position_ids"][row][live].tolist() == list(range(len(ids)))
    assert t["prompts"].shape[1] + t["responses"].shape[1] == t["input_ids"].shape[1]


# ---------------------------------------------------------------------------------------------------------------
# stand-ins with verl 0.9.1's contracts
# ---------------------------------------------------------------------------------------------------------------
class _Cfg(dict):
    __getattr__ = dict.__getitem__


class _Rows:
    """A TensorDict-like batch of prompts: ``["raw_prompt"]`` and indexing by a tensor of rows."""

    def __init__(self, prompts):
        self.prompts = list(prompts)

    def __getitem__(self, key):
        if isinstance(key, str):
            return {"raw_prompt": self.prompts}[key]
        return _Rows([self.prompts[i] for i in key.tolist()])


def _stand_in_verl():
    estimators, trainers = {}, {}

    def register_adv_est(name_or_enum):  # verl/trainer/ppo/core_algos.py:116
        def decorator(fn):
            if name_or_enum in estimators and estimators[name_or_enum] != fn:
                raise ValueError(f"Adv estimator {name_or_enum} has already been registered")
            estimators[name_or_enum] = fn
            return fn
        return decorator

    def register_trainer(name):  # verl/trainer/ppo/v1/trainer_base.py:1999
        def decorator(cls):
            trainers[name] = cls
            return cls
        return decorator

    class SyncTrainer:  # the two PPOTrainer methods prepo overrides, with their contracts
        def __init__(self, config, store, dataset):
            self.config, self.store, self.dataset, self.cursor = config, store, dataset, 0
            self.global_steps, self.total_training_steps = 0, 1

        def _compute_advantage(self, batch, metrics):
            data = sys.modules["transfer_queue"].kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id,
                select_fields=["uid", "response_mask", "rm_scores"]).to_padded_tensor()
            fn = estimators[self.config.algorithm["adv_estimator"]]
            adv, ret = fn(token_level_rewards=data["rm_scores"], response_mask=data["response_mask"],
                          config=self.config.algorithm, index=np.array(data["uid"], dtype=object))
            self.store["advantages"] = adv
            return batch

        def _next_train_batch(self, num_prompts=None):
            num_prompts = num_prompts or self.config.data["train_batch_size"]
            fetch = self.config.data.get("gen_batch_size") or self.config.data["train_batch_size"]
            assert num_prompts % fetch == 0, "verl fetches whole gen_batch_size chunks"
            rows = [self.dataset[(self.cursor + i) % len(self.dataset)] for i in range(num_prompts)]
            self.cursor += num_prompts
            return _Rows(rows)

    return estimators, trainers, register_adv_est, register_trainer, SyncTrainer


@pytest.fixture
def fake_transfer_queue(monkeypatch):
    store = {}

    class _Fetched(dict):
        def to_padded_tensor(self):
            return self

    def kv_batch_get(keys, partition_id, select_fields):
        return _Fetched({f: store[f] for f in select_fields if f in store})

    monkeypatch.setitem(sys.modules, "transfer_queue", types.SimpleNamespace(kv_batch_get=kv_batch_get))
    return store


def test_stand_in_trainer_hands_entropies_to_the_estimator(fake_transfer_queue):
    estimators, trainers, register_adv_est, register_trainer, base = _stand_in_verl()
    registered = pv.register(register_adv_est, register_trainer, base)
    assert estimators[pv.NAME] is pv.prepo_advantage and trainers[pv.NAME] is registered["trainer"]
    pv.register(register_adv_est, register_trainer, base)  # idempotent, as verl's registry demands

    uids = _groups(4)
    rewards, mask, entropy = _batch(uids)
    fake_transfer_queue.update(uid=uids, response_mask=mask, rm_scores=rewards, entropy=entropy)
    config = _Cfg(algorithm=_Cfg(adv_estimator="prepo", prepo_weighting="entropy_token"), data=_Cfg())
    trainer = trainers[pv.NAME](config, fake_transfer_queue, dataset=[])
    batch = types.SimpleNamespace(keys=[f"k{i}" for i in range(len(uids))], tags=[{}] * len(uids), partition_id="t")
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    expected = _reference(rewards, mask, entropy, uids, "entropy_token")
    torch.testing.assert_close(fake_transfer_queue["advantages"].double(), expected, rtol=1e-5, atol=1e-6)
    assert metrics["prepo/rollouts"] == len(uids)
    assert metrics["prepo/weight_min"] <= 1.0 <= metrics["prepo/weight_max"]

    config.algorithm["adv_estimator"] = "grpo"  # another estimator: the trainer steps aside
    estimators["grpo"] = lambda **kw: (kw["token_level_rewards"], kw["token_level_rewards"])
    trainer._compute_advantage(batch, metrics := {})
    assert metrics == {} and fake_transfer_queue["advantages"] is rewards


@pytest.mark.parametrize("step,total", [(1, 10), (5, 10), (10, 10)])
def test_stand_in_trainer_window(step, total):
    """verl's global_steps runs 1..total_training_steps: the first step's window is the lowest-perplexity one,
    the last step's the highest (rho = (step - 1) / (total - 1))."""
    estimators, trainers, register_adv_est, register_trainer, base = _stand_in_verl()
    cls = pv.register(register_adv_est, register_trainer, base)["trainer"]
    ppl_of = {f"q{i}": random.uniform(1.0, 30.0) for i in range(40)}

    class Scored(cls):
        def score_prompts(self, candidates):  # the actor's perplexities; here a known table
            return [ppl_of[p] for p in candidates["raw_prompt"]]

    k, fetch, ratio = 3, 3, 0.3
    config = _Cfg(algorithm=_Cfg(adv_estimator="prepo", prepo_selection_ratio=ratio),
                  data=_Cfg(train_batch_size=k, gen_batch_size=fetch))
    dataset = list(ppl_of)
    random.shuffle(dataset)
    trainer = Scored(config, {}, dataset)
    trainer.global_steps, trainer.total_training_steps = step, total
    chosen = trainer._next_train_batch()["raw_prompt"]
    num_candidates = math.ceil(k / ratio / fetch) * fetch  # 12: whole gen_batch_size fetches
    candidates = dataset[:num_candidates]
    ranked = sorted(candidates, key=ppl_of.get)
    rho = (step - 1) / (total - 1)
    start = math.floor(rho * (num_candidates - k) + 1e-9)
    assert chosen == ranked[start:start + k]
    assert chosen == [candidates[i] for i in ppl_window([ppl_of[c] for c in candidates], k, rho)]
    assert trainer.prepo_window_metrics["prepo/rho"] == pytest.approx(rho)
    if step == 1:
        assert chosen == ranked[:k]
    if step == total:
        assert chosen == ranked[-k:]
    config.algorithm["prepo_selection_ratio"] = 1.0  # window off: verl's own batch
    assert trainer._next_train_batch()["raw_prompt"] == dataset[num_candidates:num_candidates + k]
    config.algorithm["prepo_selection_ratio"] = 0.0
    with pytest.raises(ValueError, match="prepo_selection_ratio"):
        trainer._next_train_batch()


# ---------------------------------------------------------------------------------------------------------------
# the real verl (only where it imports: not in the main venv)
# ---------------------------------------------------------------------------------------------------------------
def _real_verl():
    """verl's v1 stack, or a skip where it does not import; `make test` runs these tests again in .venv-verl with
    PREPO_REQUIRE_VERL=1, where a failed import is an error, never a silent skip."""
    try:
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.v1 import get_trainer_cls
        from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    except ImportError as exc:
        if os.environ.get("PREPO_REQUIRE_VERL") == "1":
            raise RuntimeError(f"PREPO_REQUIRE_VERL=1 but verl 0.9.1's v1 stack does not import ({exc}): "
                               "see tests/requirements-verl.txt") from exc
        pytest.skip(f"verl 0.9.1's v1 stack does not import here ({exc}); `make test` runs it in .venv-verl")
    return core_algos, get_trainer_cls, PPOTrainerSync


def test_real_verl_registries_and_grpo():
    core_algos, get_trainer_cls, sync = _real_verl()
    pv.register()
    assert core_algos.get_adv_estimator_fn(pv.NAME) is pv.prepo_advantage
    assert issubclass(get_trainer_cls(pv.NAME), sync)
    uids = _groups(5)
    rewards, mask, _ = _batch(uids)
    index = np.array(uids, dtype=object)
    ours, _ = pv.prepo_advantage(token_level_rewards=rewards, response_mask=mask, index=index,
                                 config={"prepo_weighting": "none"})
    theirs, _ = core_algos.compute_grpo_outcome_advantage(token_level_rewards=rewards.clone(), response_mask=mask,
                                                          index=index)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_real_verl_compute_advantage_gets_the_weights(monkeypatch):
    _, get_trainer_cls, _ = _real_verl()
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from tensordict.tensorclass import NonTensorStack
    from transfer_queue import KVBatchMeta
    import transfer_queue
    import verl.trainer.ppo.v1.trainer_base as trainer_base

    pv.register()
    g = 4
    uids = [f"u{i // g}" for i in range(3 * g)]
    rewards, mask, entropy = _batch(uids)
    mask[:, 0] = 1  # verl's nested layout has no empty responses
    rewards[:, 0] += torch.randint(0, 2, (len(uids),)).float()
    nested = lambda t: torch.nested.as_nested_tensor([row[:int(m.sum())] for row, m in zip(t, mask)],
                                                     layout=torch.jagged)
    store = {"response_mask": nested(mask), "rm_scores": nested(rewards), "entropy": nested(entropy),
             "old_log_probs": nested(torch.zeros_like(rewards)), "uid": NonTensorStack(*uids)}
    written = {}

    def kv_batch_get(keys, partition_id, select_fields):
        return TensorDict({f: store[f] for f in select_fields if f in store}, batch_size=[len(keys)])

    def kv_batch_put(keys, partition_id, fields=None, tags=None):
        written.update(dict(fields.items()))
        return KVBatchMeta(keys=list(keys), tags=[{}] * len(keys), partition_id=partition_id)

    for module in (trainer_base.tq, transfer_queue):
        monkeypatch.setattr(module, "kv_batch_get", kv_batch_get)
        monkeypatch.setattr(module, "kv_batch_put", kv_batch_put)
    trainer = object.__new__(get_trainer_cls(pv.NAME))  # verl's __init__ starts Ray; the method needs only config
    trainer.config = OmegaConf.create({
        "algorithm": {"adv_estimator": "prepo", "use_kl_in_reward": False, "gamma": 1.0, "lam": 1.0,
                      "norm_adv_by_std_in_grpo": True, "prepo_weighting": "entropy"},
        "actor_rollout_ref": {"rollout": {"n": g}}})
    keys = [f"{u}_{i % g}_0" for i, u in enumerate(uids)]
    metrics = {}
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="train"), metrics)
    got = written["advantages"].to_padded_tensor(0.0)
    expected = _reference(rewards, mask, entropy, uids, "entropy")
    torch.testing.assert_close(got.double(), expected[:, :got.shape[1]], rtol=1e-5, atol=1e-6)
    assert metrics["prepo/rollouts"] == len(uids) and "prepo/weight_max" in metrics


def test_real_verl_score_prompts_layout_with_an_emulated_actor():
    """score_prompts through verl's padding helpers; the actor worker is emulated by a tiny model (no Ray here)."""
    _, get_trainer_cls, _ = _real_verl()
    from omegaconf import OmegaConf
    from tensordict import TensorDict

    from tiny_lm import build_model, build_tokenizer

    pv.register()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden=32).double()

    class Actor:  # verl's contract: log_probs[t] = log p(ids[t + 1] | ids[:t + 1]) over each unpadded sequence
        def compute_log_prob(self, td):
            out = []
            for ids in td["input_ids"].unbind():
                logp = torch.log_softmax(model(input_ids=ids[None]).logits[0], dim=-1)
                nxt = torch.cat([ids[1:], ids[:1]])
                out.append(logp.gather(-1, nxt[:, None])[:, 0].float())
            return TensorDict({"log_probs": torch.nested.as_nested_tensor(out, layout=torch.jagged)},
                              batch_size=[len(out)])

    questions = [" ".join(random.choice(["what", "is", "12", "+", "7", "sold", "clips", "half"])
                          for _ in range(random.randint(2, 8))) + "?" for _ in range(5)]
    prompts = [[{"role": "system", "content": "Answer with a single number."}, {"role": "user", "content": q}]
               for q in questions]
    trainer = object.__new__(get_trainer_cls(pv.NAME))
    trainer.config = OmegaConf.create({"algorithm": {"adv_estimator": "prepo"}, "data": {}})
    trainer.tokenizer, trainer.actor_rollout_wg = tokenizer, Actor()
    got = trainer.score_prompts({"raw_prompt": prompts})
    for value, prompt, q in zip(got, prompts, questions):  # float64, located by the question's own token ids
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        qids = tokenizer(q, add_special_tokens=False)["input_ids"]
        start = max(s for s in range(len(ids) - len(qids) + 1) if ids[s:s + len(qids)] == qids)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        nll = [-logp[t - 1, ids[t]].item() for t in range(start, start + len(qids))]
        assert value == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)
