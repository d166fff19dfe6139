"""Tests for prepo.rollout_fast's FastEngine: the same rollouts as HFEngine (greedy, seeded sampling, stop tokens,
chunking), the sampling distribution against a float64 reference, weights followed after updates, bad input."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from prepo.tasks.example import Example
from prepo.tasks.prompts import encode_prompts
from prepo.rollout import HFEngine, RolloutEngine, make_engine
from prepo.rollout_fast import FastEngine, _top_p_filter, fast_engine_supports, onednn_available
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: F401 (autouse fixture)

QUESTIONS = ["What is 12 + 7?", "Compute 3 * 4", "Natalia sold clips to 48 of her friends in April, and then?",
             "What is 1?", "Find the number of minutes the walk takes her."]
# the two matrix-product paths: F.linear (MKL) and oneDNN's prepacked matmul (the default on CPU where available)
PATHS = [False] + ([True] if onednn_available() else [])


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok, seed=random.randrange(10**6), init=0.5)   # peaky logits: greedy far from ties


@pytest.fixture(scope="module")
def prompts(tok):
    return [e.input_ids for e in encode_prompts(tok, [Example(str(i), q, "0") for i, q in enumerate(QUESTIONS)])]


def _ids(rollouts):
    return [(r.prompt_index, r.sample_index, r.completion_ids, r.text, r.finished) for r in rollouts]


@pytest.mark.parametrize("onednn", PATHS)
def test_same_rollouts_as_hf(model, tok, prompts, onednn):
    """Greedy and seeded sampling give HFEngine's rollouts: same logits up to float rounding, and the RNG drawn in
    the same order (one multinomial over the whole chunk a step), also when chunks split a prompt's samples."""
    mixed = prompts + [prompts[1], prompts[0][-1:]]                   # a prompt twice (prefilled once), a 1-token one
    for batch_size in (random.choice([3, 5, 7]), 64):
        hf = HFEngine(model, tok, batch_size=batch_size)
        fast = FastEngine(model, tok, batch_size=batch_size, onednn=onednn)
        for temperature, top_p in [(0.0, 1.0), (1.0, 1.0), (0.7, 0.8)]:
            seed = random.randrange(10**6)
            kw = dict(n=3, max_new_tokens=8, temperature=temperature, top_p=top_p, seed=seed)
            assert _ids(fast.generate(mixed, **kw)) == _ids(hf.generate(mixed, **kw)), (batch_size, temperature)
    alone = dict(n=2, max_new_tokens=4, temperature=1.0, seed=5)                 # a chunk of 1-token prompts only
    assert _ids(fast.generate([[7], [9]], **alone)) == _ids(hf.generate([[7], [9]], **alone))


def test_unseeded_draws_the_global_rng_like_hf(model, tok, prompts):
    seed = random.randrange(10**6)
    torch.manual_seed(seed)
    a = HFEngine(model, tok, batch_size=4).generate(prompts, n=2, max_new_tokens=6, temperature=1.0)
    after_hf = torch.get_rng_state()
    torch.manual_seed(seed)
    b = FastEngine(model, tok, batch_size=4).generate(prompts, n=2, max_new_tokens=6, temperature=1.0)
    assert _ids(a) == _ids(b)
    assert torch.equal(torch.get_rng_state(), after_hf)                # advanced by exactly as many draws
    state = torch.get_rng_state()
    c = FastEngine(model, tok).generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)                   # a seed leaves the caller's RNG untouched
    assert _ids(c) == _ids(FastEngine(model, tok).generate(prompts, n=2, max_new_tokens=6, temperature=1.0,
                                                           seed=seed))
    d = FastEngine(model, tok).generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=seed + 1)
    assert [r.completion_ids for r in c] != [r.completion_ids for r in d]


def test_stop_tokens_rows_finishing_at_different_steps(model, tok, prompts):
    """A stop token the model produces mid-completion: rows stop at different steps, finished rows leave the batch
    (compaction), and what is left still matches HFEngine."""
    hf = HFEngine(model, tok, batch_size=64)
    base = hf.generate(prompts, n=4, max_new_tokens=12, temperature=1.0, seed=1)
    counts: dict[int, int] = {}
    for r in base:
        for t in r.completion_ids[:-1]:
            counts[t] = counts.get(t, 0) + 1
    stops = [max(counts, key=counts.get), hf.stop_ids[0]]
    hf = HFEngine(model, tok, batch_size=64, stop_ids=stops)
    fast = FastEngine(model, tok, stop_ids=stops)
    lengths, unfinished = set(), False
    for seed in random.sample(range(10**6), 3):
        a = hf.generate(prompts, n=4, max_new_tokens=12, temperature=1.0, seed=seed)
        assert _ids(fast.generate(prompts, n=4, max_new_tokens=12, temperature=1.0, seed=seed)) == _ids(a)
        lengths |= {len(r.completion_ids) for r in a if r.finished}
        unfinished = unfinished or any(not r.finished for r in a)
    assert len(lengths) > 1 and unfinished         # really ragged (over the three draws: one may stop evenly)


def test_greedy_matches_a_float64_argmax_loop(model, tok, prompts):
    """An independent decoder: float64 copy of the model, full forward on the growing sequence, no cache, no padding."""
    wide = copy.deepcopy(model).double()
    rows = FastEngine(model, tok).generate(prompts, n=1, max_new_tokens=6, temperature=0.0)
    for p, r in zip(prompts, rows):
        ids = list(p)
        with torch.no_grad():
            for _ in range(len(r.completion_ids)):
                ids.append(int(wide(torch.tensor([ids])).logits[0, -1].argmax()))
        assert ids[len(p):] == r.completion_ids


def _nucleus_reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """float64 probabilities of pure sampling: softmax(logits / T) restricted to the smallest set of most likely
    tokens holding at least top_p of the mass, renormalised."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    order = torch.argsort(p, descending=True)
    before = torch.cumsum(p[order], 0) - p[order]                      # mass of the more likely tokens
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[before < top_p]] = True
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


def test_sampling_distribution_matches_float64_softmax(tok, prompts):
    """First and second tokens of many samples of one prompt: empirical frequencies vs the float64 reference."""
    model = build_model(tok, seed=random.randrange(10**6), init=0.2)   # tens to hundreds of tokens in the nucleus
    wide = copy.deepcopy(model).double()
    p = random.choice(prompts)
    temperature, top_p, n = random.choice([0.8, 1.2]), 0.9, 6000
    rows = FastEngine(model, tok).generate([p], n=n, max_new_tokens=2, temperature=temperature, top_p=top_p,
                                           seed=random.randrange(10**6))
    with torch.no_grad():
        ref1 = _nucleus_reference(wide(torch.tensor([p])).logits[0, -1], temperature, top_p)
    first = torch.tensor([r.completion_ids[0] for r in rows])
    _assert_frequencies(first, ref1)
    common = int(torch.mode(first).values)                             # then the second token after the commonest
    second = torch.tensor([r.completion_ids[1] for r in rows if r.completion_ids[0] == common
                           and len(r.completion_ids) > 1])
    with torch.no_grad():
        ref2 = _nucleus_reference(wide(torch.tensor([p + [common]])).logits[0, -1], temperature, top_p)
    _assert_frequencies(second, ref2)


def _assert_frequencies(samples: torch.Tensor, ref: torch.Tensor) -> None:
    """Each token expected >= 10 times within 5 sigma of its probability, the rarer ones pooled likewise, and none
    sampled outside the nucleus."""
    n = len(samples)
    count = torch.bincount(samples, minlength=len(ref)).double()
    assert count[ref == 0].sum() == 0                                  # nothing outside the nucleus
    assert (ref > 0).sum() > 3                                         # a real distribution, not a near-argmax
    big = ref * n >= 10
    freq = torch.cat([count[big], count[~big].sum()[None]]) / n
    expect = torch.cat([ref[big], ref[~big].sum()[None]])
    sigma = (expect * (1 - expect) / n).sqrt()
    assert ((freq - expect).abs() <= 5 * sigma + 1e-9).all(), ((freq - expect).abs() / sigma).max()


def test_top_p_filter_is_transformers_rule():
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = torch.randn(7, 41) * 3
    scores[0, :20] = float("-inf")                                     # masked logits
    scores[1, 5:9] = scores[1, 4]                                      # ties
    for top_p in (1e-9, 0.3, 0.9, 0.999):
        assert torch.equal(_top_p_filter(scores, top_p), TopPLogitsWarper(top_p)(None, scores))


def test_follows_weight_updates(tok, prompts):
    """Weights are reread after any in-place change (an optimizer step, load_state_dict), never sampled stale."""
    model = build_model(tok, seed=random.randrange(10**6), init=0.5)
    fast, hf = FastEngine(model, tok), HFEngine(model, tok)
    kw = dict(n=2, max_new_tokens=6, temperature=0.0)
    before = fast.generate(prompts, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.tensor([prompts[0]])).logits.square().mean().backward()
    opt.step()
    assert _ids(fast.generate(prompts, **kw)) == _ids(hf.generate(prompts, **kw)) != _ids(before)
    model.load_state_dict(build_model(tok, seed=random.randrange(10**6), init=0.5).state_dict())
    assert _ids(fast.generate(prompts, **kw)) == _ids(hf.generate(prompts, **kw))


def test_bfloat16_model(tok, prompts):
    model = build_model(tok, seed=random.randrange(10**6), init=0.5).to(torch.bfloat16)
    rows = FastEngine(model, tok).generate(prompts, n=2, max_new_tokens=5, temperature=1.0, seed=1)
    greedy = FastEngine(model, tok).generate(prompts, n=1, max_new_tokens=5, temperature=0.0)
    reference = HFEngine(model, tok).generate(prompts, n=1, max_new_tokens=5, temperature=0.0)
    assert len(rows) == 2 * len(prompts) and all(1 <= len(r.completion_ids) <= 5 for r in rows)
    # bfloat16 rounding differs between the two attention codes: the first greedy token agrees
    assert [r.completion_ids[0] for r in greedy] == [r.completion_ids[0] for r in reference]


def test_registry_and_errors(model, tok, prompts):
    engine = make_engine("fast", model, tok, batch_size=2)
    assert isinstance(engine, FastEngine) and isinstance(engine, RolloutEngine) and engine.batch_size == 2
    assert isinstance(make_engine("auto", model, tok), FastEngine)
    engine.sync_weights(model)
    with pytest.raises(ValueError, match="model"):
        engine.sync_weights(build_model(tok))
    with pytest.raises(ValueError, match="batch_size"):
        FastEngine(model, tok, batch_size=0)
    with pytest.raises(ValueError, match="onednn"):
        FastEngine(model, tok, onednn="yes")
    for kw, name in [(dict(n=0), "n"), (dict(max_new_tokens=0), "max_new_tokens"),
                     (dict(temperature=-1), "temperature"), (dict(top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=name):
            engine.generate(prompts, **(dict(n=1, max_new_tokens=2, temperature=1.0) | kw))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], n=1, max_new_tokens=2, temperature=1.0)
    assert engine.generate([], n=2, max_new_tokens=2, temperature=1.0) == []
    # a model that is not Llama-shaped: refused by name, and "auto" falls back to transformers generate
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert not fast_engine_supports(gpt2)[0]
    with pytest.raises(ValueError, match="model: engine 'fast' runs"):
        FastEngine(gpt2, tok)
    assert isinstance(make_engine("auto", gpt2, tok), HFEngine)


def test_training_with_the_fast_engine_matches_hf(tmp_path, monkeypatch):
    """`prepo train` with rollout.engine=fast logs the same steps and evaluations as with hf: same rollouts from
    the policy as the update changes it (the engine rereads the weights after every optimizer step)."""
    import prepo.rewards
    from prepo import cli
    from test_trainer import _TIMING, _fake_scores, _overrides, _rows
    from tiny_lm import save_model_folder

    monkeypatch.setattr(prepo.rewards, "score_rollouts", _fake_scores)
    folder = save_model_folder(tmp_path / "model")
    runs = {}
    for engine in ("hf", "fast"):
        out = tmp_path / engine
        assert cli.run_train(["--output-dir", str(out), "--max-steps", "3", *_overrides(folder), "eval.every=3",
                              f"rollout.engine={engine}", "run.seed=11"]) == 0
        runs[engine] = [{k: v for k, v in r.items() if k not in _TIMING}
                        for r in _rows(out, "train") + _rows(out, "eval")]
    assert runs["fast"] == runs["hf"] and len(runs["hf"]) >= 5
