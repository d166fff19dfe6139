"""The policy update and the prompt scorer on a tiny random Llama, against float64 plain-torch references.

Checks the entropy-weight rescaling trick (unnormalised H̄_i in the micro-batches, ÷H̄ at the end) against the explicit
weighted loss computed in one batch, for every weighting and aggregation mode, with KL and with several PPO epochs.
"""
import copy
import random

import pytest
import torch

import prepo_kernels as pk
from prepo.batching import TokenSeq, collate_packed, collate_padded, token_budget_chunks
from prepo.logprobs import prompt_perplexities
from prepo.update import UpdateSettings, accumulate_gradients, make_sample, policy_update
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: F401 (autouse fixture)

TOKENIZER = build_tokenizer()
VOCAB = len(TOKENIZER)


def tiny_llama(hidden=32):
    return build_model(TOKENIZER, hidden=hidden).train()


def _samples(n, zero_adv=1, group_size=None):
    """n random rollouts; with ``group_size`` they come in groups of that size sharing a prompt (group-major)."""
    out = []
    for i in range(n):
        if group_size is None or i % group_size == 0:
            prompt = [random.randrange(1, VOCAB) for _ in range(random.randint(2, 9))]
        completion = [random.randrange(1, VOCAB) for _ in range(random.randint(1, 7))]
        adv = 0.0 if i < zero_adv else random.gauss(0, 1)
        out.append(make_sample(prompt, completion, adv, None if group_size is None else i // group_size))
    if group_size is None:
        random.shuffle(out)
    return out


def _reference_loss(model, samples, *, weighting, aggregation, temperature, kl_coef=0.0, ref_model=None):
    """Explicit PREPO loss in one padded float64 batch: Σ_i w_i ℓ_i with w_i = H̄_i / H̄ computed up front."""
    batch = collate_padded([s.seq for s in samples], 0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double() / temperature
    logp = torch.log_softmax(logits, -1)
    safe = batch.targets.clamp_min(0)
    lp = logp.gather(-1, safe[..., None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    m = batch.mask.double()
    n_i = m.sum(1)
    h_i = ((ent * m).sum(1) / n_i).detach()
    if weighting == "none":
        w = torch.ones_like(h_i)
    elif weighting == "entropy":
        w = h_i / h_i.mean()
    else:
        w = h_i / ((h_i * n_i).sum() / n_i.sum())
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float64)[:, None]
    tok = -torch.exp(lp - lp.detach()) * adv          # ratio 1: the clip is inactive
    if kl_coef:
        with torch.no_grad():
            ref_logits = ref_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
            ref_lp = torch.log_softmax(ref_logits / temperature, -1).gather(-1, safe[..., None])[..., 0]
        d = ref_lp - lp
        tok = tok + kl_coef * (torch.exp(d) - d - 1)
    tok = tok * w[:, None]
    if aggregation == "token-mean":
        return (tok * m).sum() / m.sum(), w
    return ((tok * m).sum(1) / n_i).mean(), w


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _assert_grads_close(ours, ref, rtol=2e-3, atol=2e-4):
    """Gradient lists agree; ``atol`` is relative to the reference's largest entry."""
    scale = max(float(g.abs().max()) for g in ref)
    assert scale > 0
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.to(b.dtype), b, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("weighting", ["none", "entropy", "entropy_token"])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("grouped", [False, True], ids=["padded", "shared-prefix"])
def test_rescaling_trick_equals_explicit_weighted_loss(weighting, aggregation, grouped):
    model = tiny_llama()
    model64 = copy.deepcopy(model).double()
    group_size = random.randint(2, 4) if grouped else None
    samples = _samples(3 * group_size if grouped else random.randint(5, 9), group_size=group_size)
    temperature = random.choice([1.0, 0.7])
    longest = max(len(s.seq.input_ids) for s in samples)
    if grouped:  # the costliest group's cost (as the update counts it): it fits alone, so there are >= 2 chunks
        from prepo.batching import prompt_length

        groups = [samples[g:g + group_size] for g in range(0, len(samples), group_size)]
        budget = max(prompt_length(g[0].seq) + group_size * max(len(s.seq.input_ids) - prompt_length(s.seq) + 1
                                                                for s in g) for g in groups)
    else:
        budget = 2 * longest   # several micro-batches of uneven size
    settings = UpdateSettings(weighting=weighting, loss_aggregation=aggregation, temperature=temperature,
                              micro_batch_tokens=budget, pad_id=0)
    grads = accumulate_gradients(model, samples, settings)
    sweep, weights = grads.sweep, grads.weights.values
    assert sweep.group_size == group_size
    assert len(sweep.chunks) >= 2 and max(len(c) for c in sweep.chunks) > 1
    loss, w_ref = _reference_loss(model64, samples, weighting=weighting, aggregation=aggregation,
                                  temperature=temperature)
    loss.backward()
    _assert_grads_close(_grads(model), _grads(model64))
    torch.testing.assert_close(weights.double(), w_ref, rtol=1e-4, atol=1e-5)
    assert grads.totals.loss == pytest.approx(float(loss.detach()), rel=1e-3, abs=1e-6)


def test_full_update_with_kl_matches_reference_and_steps():
    model = tiny_llama()
    ref = tiny_llama()          # a different "initial" model so the KL has a gradient
    model64, ref64 = copy.deepcopy(model).double(), copy.deepcopy(ref).double()
    samples = _samples(6)
    settings = UpdateSettings(weighting="entropy", kl_coef=0.3, micro_batch_tokens=30, max_grad_norm=0.0, pad_id=0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = policy_update(model, opt, samples, settings, ref_model=ref)
    loss, _ = _reference_loss(model64, samples, weighting="entropy", aggregation="token-mean", temperature=1.0,
                              kl_coef=0.3, ref_model=ref64)
    loss.backward()
    _assert_grads_close(_grads(model), _grads(model64))
    assert stats.kl_mean > 0 and stats.clip_frac == 0.0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_several_epochs_keep_first_pass_weights():
    """ppo_epochs=2 with lr=0: both epochs see the same policy, so the gradient is the on-policy one."""
    model = tiny_llama()
    model64 = copy.deepcopy(model).double()
    samples = _samples(5)
    settings = UpdateSettings(weighting="entropy_token", ppo_epochs=2, micro_batch_tokens=40, max_grad_norm=0.0,
                              pad_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    stats = policy_update(model, opt, samples, settings)
    loss, w_ref = _reference_loss(model64, samples, weighting="entropy_token", aggregation="token-mean",
                                  temperature=1.0)
    loss.backward()
    _assert_grads_close(_grads(model), _grads(model64))
    torch.testing.assert_close(stats.weights.double(), w_ref, rtol=1e-4, atol=1e-5)


def test_skipping_zero_advantage_rollouts_keeps_the_unweighted_gradient():
    model = tiny_llama()
    samples = _samples(7, zero_adv=3)
    full = UpdateSettings(weighting="none", micro_batch_tokens=30, pad_id=0)
    accumulate_gradients(model, samples, full)
    g_full = _grads(model)
    skip = UpdateSettings(weighting="none", micro_batch_tokens=30, pad_id=0, skip_zero_advantage=True)
    sweep = accumulate_gradients(model, samples, skip).sweep
    assert sum(len(c) for c in sweep.chunks) == 4
    # same sums, different micro-batch composition: float rounding only
    _assert_grads_close(_grads(model), g_full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weighting", ["entropy", "entropy_token"])
@pytest.mark.parametrize("grouped", [False, True], ids=["padded", "shared-prefix"])
def test_skipped_rollouts_stay_out_of_the_entropy_weights(weighting, grouped):
    """skip_zero_advantage with entropy weights: H̄ and the weights are over the rollouts in the update only (their
    mean weight is 1), and the gradient is the explicit weighted loss over those rollouts."""
    model = tiny_llama()
    model64 = copy.deepcopy(model).double()
    if grouped:  # 3 groups of 3, the middle one all-zero advantages (a zero-variance group)
        samples = _samples(9, zero_adv=0, group_size=3)
        for smp in samples[3:6]:
            smp.advantage = 0.0
    else:
        samples = _samples(8, zero_adv=3)
    settings = UpdateSettings(weighting=weighting, micro_batch_tokens=40, pad_id=0, skip_zero_advantage=True)
    grads = accumulate_gradients(model, samples, settings)
    sweep, weights = grads.sweep, grads.weights.values
    active = [i for i, smp in enumerate(samples) if smp.advantage != 0.0]
    assert sweep.active == active and sum(len(c) for c in sweep.chunks) == len(active)
    lengths = torch.tensor([float(samples[i].num_tokens) for i in active])
    if weighting == "entropy":
        assert float(weights[active].mean()) == pytest.approx(1.0, rel=1e-6)
    else:
        assert float((weights[active] * lengths).sum() / lengths.sum()) == pytest.approx(1.0, rel=1e-6)
    # reference: the explicit loss over the rollouts in the update; token-mean over every rollout's tokens
    loss, w_ref = _reference_loss(model64, [samples[i] for i in active], weighting=weighting,
                                  aggregation="token-mean", temperature=1.0)
    all_tokens = sum(smp.num_tokens for smp in samples)
    (loss * float(lengths.sum()) / all_tokens).backward()
    _assert_grads_close(_grads(model), _grads(model64))
    torch.testing.assert_close(weights[active].double(), w_ref, rtol=1e-4, atol=1e-5)


def _token_logprobs(model, samples):
    """(log-probs (B, T), response mask (B, T)) of the samples under ``model``, float64, no gradient."""
    batch = collate_padded([s.seq for s in samples], 0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    lp = torch.log_softmax(logits, -1).gather(-1, batch.targets.clamp_min(0)[..., None])[..., 0]
    return lp, batch.mask.double()


def test_second_epoch_ratio_is_against_the_policy_before_the_first():
    """ppo_epochs=2 at lr > 0: epoch 2's ratio is π_after-epoch-1 / π_before (the old log-probs come from before
    the first epoch), so its clip fraction and loss match that reference, not a ratio of 1."""
    torch.manual_seed(0)
    random.seed(0)
    model = tiny_llama()
    samples = _samples(6, zero_adv=0)
    lr, eps_low, eps_high = 0.001, 0.2, 0.28
    settings = UpdateSettings(weighting="entropy", ppo_epochs=2, micro_batch_tokens=40, max_grad_norm=0.0, pad_id=0,
                              eps_low=eps_low, eps_high=eps_high)
    after_one = copy.deepcopy(model)
    old_lp, mask = _token_logprobs(model, samples)
    stats = policy_update(model, torch.optim.AdamW(model.parameters(), lr=lr), samples, settings)
    # the first epoch alone: the on-policy update with the same weights and the same optimizer
    on_policy = UpdateSettings(**{**settings.__dict__, "ppo_epochs": 1})
    policy_update(after_one, torch.optim.AdamW(after_one.parameters(), lr=lr), samples, on_policy)
    new_lp, _ = _token_logprobs(after_one, samples)
    ratio = torch.exp(new_lp - old_lp)
    clipped = ((ratio < 1 - eps_low) | (ratio > 1 + eps_high)).double()
    ref_clip = float((clipped * mask).sum() / mask.sum())
    assert 0.05 < ref_clip < 0.95  # the policy moved far enough for the clip to matter
    assert stats.clip_frac == pytest.approx(ref_clip, abs=1.5 / float(mask.sum()))
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float64)[:, None]
    surrogate = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    w = stats.weights.double()[:, None]
    ref_loss = float((surrogate * w * mask).sum() / mask.sum())
    assert stats.loss == pytest.approx(ref_loss, rel=2e-3, abs=1e-6)


def test_token_budget_chunks_and_packing():
    lengths = [random.randint(1, 12) for _ in range(30)]
    budget = 24
    chunks = token_budget_chunks(lengths, budget)
    assert sorted(i for c in chunks for i in c) == list(range(30))
    for c in chunks:
        assert len(c) * max(lengths[i] for i in c) <= budget or len(c) == 1
    seqs = [TokenSeq([random.randrange(VOCAB) for _ in range(n)], [0] + [random.randint(0, 1) for _ in range(n - 1)])
            for n in (3, 5, 2)]
    padded, packed = collate_padded(seqs, 0), collate_packed(seqs)
    assert packed.input_ids.shape == (1, 10)
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    # packed targets brought back to rows equal the padded targets on the mask
    back = packed.rows(packed.targets.float())
    torch.testing.assert_close(back, padded.targets.float() * padded.mask)
    with pytest.raises(ValueError, match="first token"):
        TokenSeq([1, 2], [1, 0])


@pytest.mark.parametrize("template", [False, True], ids=["free", "shared-template"])
def test_prompt_perplexity_matches_float64_and_fused_reference(template):
    model = tiny_llama()
    model64 = copy.deepcopy(model).double()

    prompts = []
    head = [random.randrange(1, VOCAB) for _ in range(random.randint(2, 8))]  # a template every prompt starts with
    for _ in range(9):
        if template:  # template, scored question, unscored tail
            q, tail = random.randint(1, 6), random.randint(0, 4)
            ids = head + [random.randrange(1, VOCAB) for _ in range(q + tail)]
            mask = [0] * len(head) + [1] * q + [0] * tail
        else:
            n = random.randint(2, 14)
            ids = [random.randrange(1, VOCAB) for _ in range(n)]
            mask = [0] + [random.randint(0, 1) for _ in range(n - 1)]
            mask[random.randrange(1, n)] = 1
        prompts.append(TokenSeq(ids, mask))
    ours = prompt_perplexities(model, prompts, pad_id=0, token_budget=30 if not template else 10_000)
    from prepo.batching import shared_prompt
    assert bool(shared_prompt(prompts)) == template  # the path taken
    for p, got in zip(prompts, ours):
        ids = torch.tensor([p.input_ids])
        with torch.no_grad():
            logits64 = model64(input_ids=ids).logits
            logits32 = model(input_ids=ids).logits
        targets = ids[:, 1:]
        mask = torch.tensor([p.score_mask[1:]], dtype=torch.float64)
        lp = torch.log_softmax(logits64[:, :-1], -1).gather(-1, targets[..., None])[..., 0]
        expected = torch.exp(-(lp * mask).sum() / mask.sum())
        assert float(got) == pytest.approx(float(expected), rel=1e-4)
        fused = pk.sequence_perplexity(logits32[:, :-1].contiguous(), targets, mask.float())
        assert float(got) == pytest.approx(float(fused), rel=1e-4)
    with pytest.raises(ValueError, match="no scored token"):
        prompt_perplexities(model, [TokenSeq([1, 2, 3], [0, 0, 0])], pad_id=0)


def test_token_logprobs_entropy_matches_float64_logits():
    """The policy forward (body, then the fused head at scored positions) gives the float64 logits' values."""
    from prepo.logprobs import token_logprobs_entropy

    model = tiny_llama()
    seqs = [TokenSeq([random.randrange(1, VOCAB) for _ in range(n)], [0] + [1] * (n - 1)) for n in (4, 9, 2)]
    batch = collate_padded(seqs, 0)
    with torch.no_grad():
        logits = model.double()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        model.float()
    logp = torch.log_softmax(logits / 0.8, -1)
    ref_lp = logp.gather(-1, batch.targets.clamp_min(0)[..., None])[..., 0] * batch.mask
    ref_ent = -(logp.exp() * logp).sum(-1) * batch.mask
    lp, ent = token_logprobs_entropy(model, batch.input_ids, batch.attention_mask, batch.targets, temperature=0.8)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-4, atol=1e-5)


def test_shared_prefix_batch_equals_padded_batch():
    """Prompt run once + KV cache repeated per rollout gives the padded batch's completion log-probs and entropies."""
    from prepo.batching import collate_shared_prefix
    from prepo.logprobs import batch_logprobs_entropy

    model = tiny_llama()
    g = random.randint(2, 5)
    samples = _samples(4 * g, zero_adv=0, group_size=g)
    seqs = [smp.seq for smp in samples]
    padded = collate_padded(seqs, 0)
    shared = collate_shared_prefix(seqs, g, 0)
    assert shared.prefix.input_ids.shape[0] == 4 and shared.input_ids.shape[0] == 4 * g
    with torch.no_grad():
        lp_p, ent_p = batch_logprobs_entropy(model, padded, temperature=0.9)
        lp_s, ent_s = batch_logprobs_entropy(model, shared, temperature=0.9)
    # same tokens scored: compare each row's scored values in order
    for b in range(len(seqs)):
        want = padded.mask[b].bool()
        got = shared.mask[b].bool()
        assert int(want.sum()) == int(got.sum()) == samples[b].num_tokens
        torch.testing.assert_close(lp_s[b][got], lp_p[b][want], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ent_s[b][got], ent_p[b][want], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="share a prompt"):
        collate_shared_prefix([seqs[0], seqs[-1]], 2, 0)


def test_gradient_checkpointing_falls_back_to_padded_rows():
    model = tiny_llama()
    samples = _samples(6, group_size=3)
    settings = UpdateSettings(weighting="entropy", micro_batch_tokens=64, pad_id=0)
    accumulate_gradients(model, samples, settings)
    want = _grads(model)
    model.gradient_checkpointing_enable()
    sweep = accumulate_gradients(model, samples, settings).sweep
    assert sweep.group_size is None
    _assert_grads_close(_grads(model), want, rtol=1e-4, atol=1e-5)


# --- behaviours a planted one-line bug once slipped past (issue #18) -----------------------------------------------

def _entropy_per_rollout(model, samples, temperature):
    """Each rollout's mean token entropy H̄_i over its response, float64, no gradient (independent of the op)."""
    batch = collate_padded([s.seq for s in samples], 0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double() / temperature
    logp = torch.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1)
    m = batch.mask.double()
    return (ent * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("grouped", [False, True], ids=["padded", "shared-prefix"])
def test_a_group_with_one_zero_advantage_rollout_stays_in_the_update(grouped):
    """skip_zero_advantage drops zero-variance groups only: in a group whose rewards differ, a rollout that happens
    to get advantage 0 (reward equal to the group mean) does not take its group's other rollouts out."""
    samples = _samples(9, zero_adv=0, group_size=3 if grouped else None)
    if grouped:
        samples[4].advantage = 0.0                     # group 1: one zero among two non-zero
        for smp in samples[6:9]:                       # group 2: all zero (zero variance)
            smp.advantage = 0.0
        expected = [0, 1, 2, 3, 4, 5]                  # whole groups: the zero rollout rides along with its group
    else:
        samples[4].advantage = 0.0
        expected = [i for i, smp in enumerate(samples) if smp.advantage != 0.0]
    model = tiny_llama()
    settings = UpdateSettings(weighting="entropy", micro_batch_tokens=40, pad_id=0, skip_zero_advantage=True)
    stats = policy_update(model, torch.optim.SGD(model.parameters(), lr=0.0), samples, settings)
    assert stats.active == expected
    assert sorted(i for i in range(len(samples)) if float(stats.weights[i]) != 1.0) == \
        [i for i in expected if float(stats.weights[i]) != 1.0]


@pytest.mark.parametrize("weighting", ["none", "entropy"])
def test_entropy_mean_is_over_the_rollouts_trained_on(weighting):
    """The logged entropy_mean is the mean of H̄_i over the rollouts in the update (skipped zero-advantage ones and
    empty completions excluded), checked against a float64 forward."""
    model = tiny_llama()
    samples = _samples(8, zero_adv=3)
    samples.append(make_sample([3, 4, 5], [], 0.7))      # an empty completion: no entropy to average
    # a low temperature spreads the random model's entropies, so skipped rollouts move the mean measurably
    settings = UpdateSettings(weighting=weighting, micro_batch_tokens=40, pad_id=0, skip_zero_advantage=True,
                              temperature=0.1)
    trained = [i for i, smp in enumerate(samples) if smp.advantage != 0.0 and smp.num_tokens > 0]
    model64 = copy.deepcopy(model).double()
    h = _entropy_per_rollout(model64, [samples[i] for i in trained], 0.1)
    stats = policy_update(model, torch.optim.SGD(model.parameters(), lr=0.0), samples, settings)
    assert stats.active == trained
    assert stats.entropy_mean == pytest.approx(float(h.mean()), rel=1e-5, abs=1e-5)
    everyone = _entropy_per_rollout(model64, [s for s in samples if s.num_tokens > 0], 0.1)
    assert abs(float(everyone.mean()) - float(h.mean())) > 1e-3, "the test needs skipped rollouts to matter"


def test_reported_kl_grad_norm_and_the_clipped_step():
    """kl_mean is the mean k3 over response tokens, grad_norm the norm before clipping, and the step applied is the
    gradient scaled to max_grad_norm (plain SGD at lr 1 makes the step the gradient itself)."""
    model, ref = tiny_llama(), tiny_llama()
    model64, ref64 = copy.deepcopy(model).double(), copy.deepcopy(ref).double()
    samples = _samples(6)
    loss, _ = _reference_loss(model64, samples, weighting="none", aggregation="token-mean", temperature=1.0,
                              kl_coef=0.2, ref_model=ref64)
    loss.backward()
    g_ref = _grads(model64)
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in g_ref)))
    lp, mask = _token_logprobs(model64, samples)
    ref_lp, _ = _token_logprobs(ref64, samples)
    d = ref_lp - lp
    kl = float(((torch.exp(d) - d - 1) * mask).sum() / mask.sum())
    limit = norm / 4
    settings = UpdateSettings(weighting="none", kl_coef=0.2, micro_batch_tokens=30, max_grad_norm=limit, pad_id=0)
    before = [p.detach().clone() for p in model.parameters()]
    stats = policy_update(model, torch.optim.SGD(model.parameters(), lr=1.0), samples, settings, ref_model=ref)
    assert stats.kl_mean == pytest.approx(kl, rel=1e-3)
    assert stats.grad_norm == pytest.approx(norm, rel=1e-3)
    steps = [(b - p.detach()).double() for b, p in zip(before, model.parameters())]
    _assert_grads_close(steps, [g * (limit / norm) for g in g_ref])


def _sgd_reference_step(model, samples, old_lp, weights, lr, eps_low, eps_high):
    """One plain-SGD step on the token-mean clipped surrogate of ``samples`` (float64 loss, ratio against
    ``old_lp``), written out in plain torch."""
    batch = collate_padded([s.seq for s in samples], 0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    lp = torch.log_softmax(logits, -1).gather(-1, batch.targets.clamp_min(0)[..., None])[..., 0]
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float64)[:, None]
    ratio = torch.exp(lp - old_lp)
    token = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv) * weights[:, None]
    m = batch.mask.double()
    loss = (token * m).sum() / m.sum()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


@pytest.mark.parametrize("weighting", ["none", "entropy"])
def test_mini_batches_step_once_per_part_against_the_old_policy(weighting):
    """algorithm.mini_batches=2: the batch splits into two halves of whole groups; the first is an on-policy step,
    the second's ratio is against the policy before the first (its log-probs and entropy weights come from one pass
    before any step, H̄ over the whole batch). Checked against two plain-SGD steps written out in float64."""
    torch.manual_seed(random.randrange(1000))
    model = tiny_llama()
    samples = _samples(8, zero_adv=0, group_size=2)
    lr, eps_low, eps_high = 0.5, 0.2, 0.28
    ref = copy.deepcopy(model)
    old_lp, mask = _token_logprobs(model, samples)
    with torch.no_grad():
        batch = collate_padded([s.seq for s in samples], 0)
        logp = torch.log_softmax(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double(),
                                 -1)
        h = (-(logp.exp() * logp).sum(-1) * mask).sum(1) / mask.sum(1)
    w = torch.ones(8, dtype=torch.float64) if weighting == "none" else h / h.mean()
    settings = UpdateSettings(weighting=weighting, mini_batches=2, micro_batch_tokens=30, max_grad_norm=0.0, pad_id=0,
                              eps_low=eps_low, eps_high=eps_high)
    stats = policy_update(model, torch.optim.SGD(model.parameters(), lr=lr), samples, settings)
    assert stats.optimizer_steps == 2 and stats.clipped_steps == 0
    torch.testing.assert_close(stats.weights.double(), w, rtol=1e-4, atol=1e-5)
    first, second = samples[:4], samples[4:]       # two groups each, in order
    start = copy.deepcopy(ref)
    _sgd_reference_step(ref, first, old_lp[:4, :_width(first)], w[:4], lr, eps_low, eps_high)
    _sgd_reference_step(ref, second, old_lp[4:, :_width(second)], w[4:], lr, eps_low, eps_high)
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(ref.parameters(), start.parameters()))
    assert moved > 1e-3   # the first step moved the policy, so the second part's ratio is not 1
    for ours, theirs in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-3, atol=2e-3 * moved)


def _width(samples) -> int:
    return max(len(s.seq.input_ids) for s in samples)


def test_mini_batch_parts_keep_groups_whole():
    from prepo.update import mini_batch_parts

    samples = _samples(12, zero_adv=0, group_size=3)       # 4 groups
    assert mini_batch_parts(samples, 2) == [list(range(6)), list(range(6, 12))]
    assert mini_batch_parts(samples, 3) == [list(range(6)), list(range(6, 12))]  # 4 groups: parts of 2, 2
    assert mini_batch_parts(samples, 10) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert mini_batch_parts(samples, 1) == [list(range(12))]
    loose = [make_sample([1, 2], [3], 1.0) for _ in range(5)]
    assert mini_batch_parts(loose, 2) == [[0, 1, 2], [3, 4]]


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("grouped", [False, True], ids=["padded", "shared-prefix"])
def test_an_empty_completion_takes_no_part(aggregation, grouped):
    """A rollout with no completion token is in no micro-batch (padded rows; a shared-prefix group keeps its row),
    is not among the rollouts in the update and counts in neither denominator: the gradient is the one of the other
    rollouts alone."""
    model = tiny_llama()
    model64 = copy.deepcopy(model).double()
    samples = _samples(6, zero_adv=0, group_size=3 if grouped else None)
    empty = samples[2]
    samples[2] = make_sample(empty.seq.input_ids[:empty.seq.score_mask.index(1)], [], 0.9, empty.group)
    settings = UpdateSettings(weighting="none", loss_aggregation=aggregation, micro_batch_tokens=30, pad_id=0)
    sweep = accumulate_gradients(model, samples, settings).sweep
    assert sweep.group_size == (3 if grouped else None) and sweep.active == [0, 1, 3, 4, 5]
    if not grouped:
        assert sorted(i for c in sweep.chunks for i in c) == [0, 1, 3, 4, 5]
    loss, _ = _reference_loss(model64, [s for s in samples if s.num_tokens], weighting="none",
                              aggregation=aggregation, temperature=1.0)
    loss.backward()
    _assert_grads_close(_grads(model), _grads(model64))


def test_budget_chunks_take_an_exact_fit_and_the_doctests_hold():
    import doctest

    import prepo.batching
    from prepo.batching import cost_budget_chunks

    assert cost_budget_chunks([3, 5], 8) == [[1, 0]] and cost_budget_chunks([3, 6], 8) == [[1], [0]]
    assert token_budget_chunks([4, 4], 8) == [[0, 1]] and token_budget_chunks([4, 5], 8) == [[1], [0]]
    assert doctest.testmod(prepo.batching).failed == 0


@pytest.mark.parametrize("training", [False, True])
def test_prompt_scoring_restores_the_models_mode(training):
    model = tiny_llama().train(training)
    prompts = [TokenSeq([5, 6, 7, 8], [0, 1, 1, 1]), TokenSeq([9, 10, 11], [0, 0, 1])]
    ppl = prompt_perplexities(model, prompts, pad_id=0)
    assert model.training == training and ppl.shape == (2,) and bool((ppl > 1).all())
