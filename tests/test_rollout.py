"""Tests for prepo.rollout's HFEngine on a tiny random Llama: order, stop-token cut, left padding, seeding, top_p."""
from __future__ import annotations

import random

import pytest
import torch

from prepo.tasks.example import Example
from prepo.tasks.prompts import encode_prompts
from prepo.rollout import HFEngine, Rollout, RolloutEngine, make_engine, stop_token_ids
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: F401 (autouse fixture)

QUESTIONS = ["What is 12 + 7?", "Compute 3 * 4", "Natalia sold clips to 48 of her friends in April, and then?",
             "What is 1?", "Find the number of minutes the walk takes her."]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok, init=0.5)   # peaky logits: greedy choices are far from ties


@pytest.fixture(scope="module")
def prompts(tok):
    return [e.input_ids for e in encode_prompts(tok, [Example(str(i), q, "0") for i, q in enumerate(QUESTIONS)])]


def test_protocol_order_and_shapes(model, tok, prompts):
    engine = HFEngine(model, tok, batch_size=4)
    assert isinstance(engine, RolloutEngine)
    n, max_new = random.randint(2, 4), random.randint(3, 9)
    outs = engine.generate(prompts, n=n, max_new_tokens=max_new, temperature=1.0, seed=random.randrange(10**6))
    assert [(r.prompt_index, r.sample_index) for r in outs] == [(p, s) for p in range(len(prompts)) for s in range(n)]
    stops = set(engine.stop_ids)
    for r in outs:
        assert isinstance(r, Rollout) and 1 <= len(r.completion_ids) <= max_new
        assert all(t not in stops for t in r.completion_ids[:-1])          # nothing after a stop token
        assert r.finished == (r.completion_ids[-1] in stops)
        body = r.completion_ids[:-1] if r.finished else r.completion_ids
        assert r.text == tok.decode(body, skip_special_tokens=True)
        assert tok.pad_token_id not in r.completion_ids


def test_stop_token_cut(model, tok, prompts):
    rare = tok.convert_tokens_to_ids("<|endoftext|>")
    base = HFEngine(model, tok, stop_ids=[rare]).generate(prompts, n=1, max_new_tokens=12, temperature=0.0)
    longest = max(base, key=lambda r: len(r.completion_ids))
    # also stop on a token the model really produces mid-completion
    stop = longest.completion_ids[random.randint(1, len(longest.completion_ids) - 2)]
    assert stop != rare
    cut = HFEngine(model, tok, stop_ids=[rare, stop]).generate(prompts, n=1, max_new_tokens=12, temperature=0.0)
    for b, c in zip(base, cut):
        if stop in b.completion_ids:
            j = b.completion_ids.index(stop)
            assert c.completion_ids == b.completion_ids[:j + 1] and c.finished
            assert c.text == tok.decode(b.completion_ids[:j], skip_special_tokens=True)
        else:
            assert c.completion_ids == b.completion_ids and c.finished == b.finished
    assert any(c.finished for c in cut) and any(len(c.completion_ids) < 12 for c in cut)


def test_left_padding_equivalence(model, tok, prompts):
    engine = HFEngine(model, tok, batch_size=64)
    batched = engine.generate(prompts, n=2, max_new_tokens=10, temperature=0.0)
    assert len({len(p) for p in prompts}) > 2                             # really padded
    for i, p in enumerate(prompts):
        alone = engine.generate([p], n=1, max_new_tokens=10, temperature=0.0)[0]
        assert batched[2 * i].completion_ids == alone.completion_ids == batched[2 * i + 1].completion_ids
    # chunking the rows differently changes nothing either
    small = HFEngine(model, tok, batch_size=3).generate(prompts, n=2, max_new_tokens=10, temperature=0.0)
    assert [r.completion_ids for r in small] == [r.completion_ids for r in batched]


def test_seeded_sampling(model, tok, prompts):
    engine = HFEngine(model, tok, batch_size=8)
    seed = random.randrange(10**6)
    state = torch.get_rng_state()
    a = engine.generate(prompts, n=3, max_new_tokens=8, temperature=1.0, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)                       # the caller's RNG is untouched
    b = engine.generate(prompts, n=3, max_new_tokens=8, temperature=1.0, seed=seed)
    c = engine.generate(prompts, n=3, max_new_tokens=8, temperature=1.0, seed=seed + 1)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert [r.completion_ids for r in a] != [r.completion_ids for r in c]
    # samples differ within a group (the model is random, so 3 equal 8-token samples are essentially impossible)
    assert len({tuple(r.completion_ids) for r in a if r.prompt_index == 0}) > 1
    # no seed: the global RNG is used and advanced, so two calls give different samples
    d = engine.generate(prompts, n=3, max_new_tokens=8, temperature=1.0)
    assert not torch.equal(torch.get_rng_state(), state)
    e = engine.generate(prompts, n=3, max_new_tokens=8, temperature=1.0)
    assert [r.completion_ids for r in d] != [r.completion_ids for r in e]
    # a vanishing top_p keeps only the top token: greedy
    greedy = engine.generate(prompts, n=1, max_new_tokens=8, temperature=0.0)
    nucleus = engine.generate(prompts, n=1, max_new_tokens=8, temperature=1.0, top_p=1e-9, seed=seed)
    assert [r.completion_ids for r in nucleus] == [r.completion_ids for r in greedy]


def test_greedy_matches_a_manual_argmax_loop(model, tok, prompts):
    """An independent decoder: full forward on the growing sequence, argmax, no cache, no padding."""
    engine = HFEngine(model, tok)
    p = random.choice(prompts)
    got = engine.generate([p], n=1, max_new_tokens=6, temperature=0.0)[0].completion_ids
    ids = list(p)
    with torch.no_grad():
        for _ in range(len(got)):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].double().argmax()))
    assert ids[len(p):] == got


def test_stop_ids_and_errors(model, tok, prompts):
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, model) == [end]          # eos; <|endoftext|> is not in the ChatML template
    other = build_tokenizer()
    other.eos_token = "<|endoftext|>"
    assert stop_token_ids(other) == [other.convert_tokens_to_ids("<|endoftext|>"), end]  # + the end-of-turn token
    engine = make_engine("hf", model, tok, batch_size=2)
    assert isinstance(engine, HFEngine) and engine.batch_size == 2
    engine.sync_weights(model)
    with pytest.raises(ValueError, match="model"):
        engine.sync_weights(build_model(tok))
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("nope", model, tok)
    for kw, name in [(dict(n=0), "n"), (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"),
                     (dict(top_p=0.0), "top_p")]:
        args = dict(n=1, max_new_tokens=2, temperature=1.0) | kw
        with pytest.raises(ValueError, match=name):
            engine.generate(prompts, **args)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], n=1, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        HFEngine(model, tok, batch_size=0)


def test_model_generation_config_is_ignored(tok, prompts):
    """A hub model's generation_config (banned tokens, penalties, top-k...) must not change what the policy samples."""
    from transformers import GenerationConfig

    model = build_model(tok, init=0.5)
    engine = HFEngine(model, tok)
    p = random.choice(prompts)
    plain = engine.generate([p], n=1, max_new_tokens=6, temperature=0.0)[0].completion_ids
    hostile = GenerationConfig(suppress_tokens=sorted(set(plain)), repetition_penalty=3.0, min_length=400, top_k=1,
                               temperature=0.01, eos_token_id=tok.eos_token_id)
    model.generation_config = hostile
    got = engine.generate([p], n=1, max_new_tokens=6, temperature=0.0)[0].completion_ids
    assert model.generation_config is hostile
    assert got == plain                                                     # nothing banned, no penalty
    ids = list(p)
    with torch.no_grad():
        for _ in range(len(got)):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ids[len(p):] == got
    samples = engine.generate([p], n=6, max_new_tokens=6, temperature=1.0, seed=random.randrange(10**6))
    assert len({tuple(r.completion_ids) for r in samples}) > 1              # not top_k=1 / temperature 0.01
