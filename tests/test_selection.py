"""Selection strategies (ppl window, random, dynamic sampling, GRESO, all), the candidate sampler and their state,
and a step's rounds as prepo.step.train_step runs them."""
import io
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import prepo.step
from prepo.config import SelectionConfig
from prepo.selection import Group, PromptSampler, SelectionContext, make_strategy, STRATEGIES
from prepo.step import Policy, Rewarded, Rollouts, TrainSet, train_step
from prepo.update import UpdateSettings


def _cfg(**kw):
    base = dict(strategy="ppl", num_candidates=10, k=3)
    base.update(kw)
    return SelectionConfig(**base)


def _ctx(step=0, total=10, kept=0, candidates=None, score=None):
    """A SelectionContext; with ``score`` (indices -> perplexities), the ``candidates``' perplexities."""
    ppl = None if score is None else list(score(candidates))
    return SelectionContext(step=step, total_steps=total, kept=kept, ppl=ppl)


def _fake_roll_out(pattern, group_size=4):
    """roll_out(indices, round) whose rewards per prompt come from ``pattern(index) -> list of G rewards``."""
    calls = []

    def roll_out(indices, round_):
        calls.append((list(indices), round_))
        return [Group(i, [SimpleNamespace(completion_ids=[1])] * group_size, list(pattern(i))) for i in indices]

    return roll_out, calls


def _collect(monkeypatch, strategy, sampler, roll_out, *, step=0, total_steps=5, score=None, seconds=(0.0, 0.0)):
    """A step's rounds through prepo.step.train_step, with ``roll_out(indices, round) -> groups`` as the roll-out
    and reward stages (taking ``seconds``), ``score`` (indices -> perplexities) as the prompt scorer and no update:
    its Collected."""
    def fake_roll_out(policy, prompts, indices, rollout_cfg, *, seed, step, round_):
        indices = list(indices)
        return Rollouts(indices, indices, roll_out(indices, round_) if indices else [], seconds[0])

    def fake_reward(examples, rollouts, dist):
        return Rewarded(rollouts.completions, seconds[1] if rollouts.indices else 0.0)

    monkeypatch.setattr(prepo.step, "roll_out", fake_roll_out)
    monkeypatch.setattr(prepo.step, "reward", fake_reward)
    monkeypatch.setattr(prepo.step, "prompt_scores", lambda policy, prompts, indices, budget: score(indices))
    monkeypatch.setattr(prepo.step, "update_policy", lambda policy, samples, lr: None)
    cfg = SimpleNamespace(run=SimpleNamespace(steps=total_steps, seed=0), rollout=None,
                          selection=SimpleNamespace(score_batch_tokens=1),
                          algorithm=SimpleNamespace(normalize_std=True), optim=SimpleNamespace(lr=0.0, warmup_steps=0))
    policy = Policy(torch.nn.Linear(1, 1), SimpleNamespace(param_groups=[{"lr": 0.0}]),
                    SimpleNamespace(sync_weights=lambda model: None), UpdateSettings())
    prompts = [SimpleNamespace(input_ids=[1, 2])] * sampler.num_prompts
    return train_step(cfg, step, 0, policy, strategy, sampler, TrainSet(prompts, prompts)).collected


def test_registry_has_every_strategy():
    assert set(STRATEGIES) == {"ppl", "random", "dynamic", "greso", "all"}
    for name in STRATEGIES:
        assert type(make_strategy(_cfg(strategy=name))) is STRATEGIES[name]


# --- ppl ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_candidates, k", [(10, 3), (7, 7), (13, 1), (20, 4)])
def test_ppl_takes_the_window_of_sorted_scores(num_candidates, k):
    strategy = make_strategy(_cfg(num_candidates=num_candidates, k=k))
    candidates = random.sample(range(1000), num_candidates)
    ppl = {c: random.uniform(1.5, 30.0) for c in candidates}
    total = 17
    for step in (0, random.randrange(1, total), total - 1):
        choice = strategy.choose(candidates, _ctx(step, total, candidates=candidates,
                                                  score=lambda idx: [ppl[i] for i in idx]))
        # independent reference: argsort + l = floor(step / (total - 1) * (|B| - K))
        order = [candidates[i] for i in np.argsort([ppl[c] for c in candidates], kind="stable")]
        start = math.floor(step / (total - 1) * (num_candidates - k) + 1e-9)
        assert choice.indices == order[start:start + k]
        chosen = [ppl[c] for c in choice.indices]
        assert choice.info["ppl_window_lo"] == min(chosen) and choice.info["ppl_window_hi"] == max(chosen)
        assert choice.info["ppl_candidates_lo"] == min(ppl.values())


def test_ppl_window_moves_up_with_progress():
    strategy = make_strategy(_cfg(num_candidates=10, k=2))
    candidates = list(range(10))
    score = lambda idx: [float(10 - i) for i in idx]  # noqa: E731  (candidate 9 has the lowest perplexity)
    assert strategy.choose(candidates, _ctx(0, 5, candidates=candidates, score=score)).indices == [9, 8]
    assert strategy.choose(candidates, _ctx(2, 5, candidates=candidates, score=score)).indices == [5, 4]  # l = 4
    assert strategy.choose(candidates, _ctx(3, 5, candidates=candidates, score=score)).indices == [3, 2]  # l = 6


@pytest.mark.parametrize("total", [2, 7, 240])
def test_ppl_window_covers_both_ends_of_the_candidate_order(total):
    """The first step trains on the K lowest-perplexity candidates, the last on the K highest (rho 0 and 1)."""
    num_candidates, k = 10, 2
    strategy = make_strategy(_cfg(num_candidates=num_candidates, k=k))
    ppl = [random.uniform(1, 30) for _ in range(num_candidates)]
    order = sorted(range(num_candidates), key=ppl.__getitem__)
    candidates = list(range(num_candidates))
    first = strategy.choose(candidates, _ctx(0, total, candidates=candidates, score=lambda idx: [ppl[i] for i in idx]))
    last = strategy.choose(candidates, _ctx(total - 1, total, candidates=candidates,
                                                             score=lambda idx: [ppl[i] for i in idx]))
    assert first.indices == order[:k] and first.info["rho"] == 0.0
    assert last.indices == order[-k:] and last.info["rho"] == 1.0
    assert _ctx(0, 1).rho == 0.0  # a one-step run


def _groups(pattern):
    """Groups from a string: c = all-correct, w = all-wrong, m = mixed."""
    rewards = {"c": [1.0] * 4, "w": [0.0] * 4, "m": [1.0, 0.0, 0.0, 1.0]}
    return [Group(i, [object()] * 4, rewards[p]) for i, p in enumerate(pattern)]


def test_adaptive_pace_moves_with_the_windows_groups_and_saves_its_position():
    from prepo.selection import pace_update

    strategy = make_strategy(_cfg(num_candidates=10, k=4, pace="adaptive", pace_gain=4.0))
    score = lambda idx: [float(i) for i in idx]  # noqa: E731  (candidate i has perplexity i)
    candidates = list(range(10))
    total = 11
    first = strategy.choose(list(range(10)), _ctx(0, total, candidates=candidates, score=score))
    assert first.indices == [0, 1, 2, 3] and first.info["rho"] == 0.0   # starts at the easy end
    strategy.keep(_groups("cccw"))          # solved 3/4, failed 1/4: rho += 4/10 * 0.5 = 0.2
    assert strategy.rho == pytest.approx(0.2)
    second = strategy.choose(candidates, _ctx(1, total, candidates=candidates, score=score))
    assert second.indices == [1, 2, 3, 4]  # l = floor(0.2 * 6)
    strategy.keep(_groups("mmmm"))          # all informative: stays
    assert strategy.rho == pytest.approx(0.2)
    strategy.keep(_groups("wwww"))          # nobody solves the window: moves back, clipped at 0
    assert strategy.rho == 0.0
    for _ in range(10):
        strategy.keep(_groups("cccc"))
    assert strategy.rho == 1.0              # clipped at 1
    state = strategy.state_dict()
    fresh = make_strategy(_cfg(num_candidates=10, k=4, pace="adaptive"))
    fresh.load_state_dict(state)
    assert fresh.rho == 1.0
    # the linear pace ignores the groups
    linear = make_strategy(_cfg(num_candidates=10, k=4))
    linear.choose(list(range(10)), _ctx(0, total, candidates=candidates, score=score))
    linear.keep(_groups("cccc"))
    assert linear.choose(list(range(10)), _ctx(0, total, candidates=candidates, score=score)).info["rho"] == 0.0
    assert pace_update(0.5, 0.25, 0.0, 4.0, 101) == pytest.approx(0.51)


def test_pace_option_is_checked():
    from prepo.config import SelectionConfig

    with pytest.raises(ValueError, match="selection.pace"):
        SelectionConfig(pace="exponential")
    with pytest.raises(ValueError, match="selection.pace_gain"):
        SelectionConfig(pace="adaptive", pace_gain=0.0)


def test_ppl_needs_the_candidates_perplexities():
    strategy = make_strategy(_cfg())
    assert strategy.scores_prompts and not make_strategy(_cfg(strategy="random")).scores_prompts
    with pytest.raises(ValueError, match="perplexities"):
        strategy.choose(list(range(10)), _ctx())
    with pytest.raises(ValueError, match="one each"):
        strategy.choose(list(range(10)), _ctx(candidates=list(range(9)), score=lambda idx: [1.0] * len(idx)))


# --- random / all -------------------------------------------------------------------------------------------------

def test_random_is_uniform_over_the_same_candidates():
    strategy = make_strategy(_cfg(strategy="random", num_candidates=5, k=2), seed=random.randrange(10**6))
    assert strategy.draw_size() == 5            # the same candidate batch size as ppl
    candidates = random.sample(range(100), 5)
    counts = dict.fromkeys(candidates, 0)
    trials = 5000
    for _ in range(trials):
        chosen = strategy.choose(candidates, _ctx()).indices
        assert len(chosen) == 2 and len(set(chosen)) == 2 and set(chosen) <= set(candidates)
        for c in chosen:
            counts[c] += 1
    # each candidate is picked with probability K/|B| = 0.4; binomial std = sqrt(5000 * 0.4 * 0.6) ≈ 35
    for c in candidates:
        assert abs(counts[c] - 0.4 * trials) < 5 * 35, counts


def test_all_trains_on_every_candidate(monkeypatch):
    strategy = make_strategy(_cfg(strategy="all", num_candidates=6, k=2))
    sampler = PromptSampler(50, seed=3)
    roll_out, calls = _fake_roll_out(lambda i: [i % 2, 0, 1, 0])
    got = _collect(monkeypatch, strategy, sampler, roll_out, step=0, total_steps=5)
    assert len(calls) == 1 and len(calls[0][0]) == 6
    assert [g.prompt_index for g in got.groups] == calls[0][0]
    assert got.rollouts == 24 and got.discarded == 0 and got.rounds == 1


# --- dynamic sampling ---------------------------------------------------------------------------------------------

def test_dynamic_drops_zero_variance_groups_and_counts_them(monkeypatch):
    k, g = 3, 4
    strategy = make_strategy(_cfg(strategy="dynamic", num_candidates=10, k=k, max_rounds=10))
    informative = lambda i: i % 3 == 0  # noqa: E731
    roll_out, calls = _fake_roll_out(lambda i: [1, 0, 0, 1] if informative(i) else [1, 1, 1, 1], g)
    got = _collect(monkeypatch, strategy, PromptSampler(90, seed=random.randrange(1000)), roll_out)
    drawn = [i for idx, _ in calls for i in idx]
    assert all(len(idx) == k for idx, _ in calls)                # K prompts per round
    assert [r for _, r in calls] == list(range(len(calls)))      # round numbers passed on
    kept_expected = [i for i in drawn if informative(i)][:k]
    assert [grp.prompt_index for grp in got.groups] == kept_expected
    assert all(not grp.zero_variance for grp in got.groups)
    assert got.rollouts == len(drawn) * g                        # every rollout generated counts
    assert got.discarded == got.rollouts - k * g
    # it stops in the first round that reaches K informative groups
    assert sum(informative(i) for i in [i for idx, _ in calls[:-1] for i in idx]) < k
    assert got.rounds == len(calls)


def test_dynamic_gives_up_after_max_rounds(monkeypatch):
    strategy = make_strategy(_cfg(strategy="dynamic", k=2, max_rounds=3))
    roll_out, calls = _fake_roll_out(lambda i: [0, 0, 0, 0])
    got = _collect(monkeypatch, strategy, PromptSampler(40), roll_out, step=1, total_steps=5)
    assert len(calls) == 3 and got.groups == [] and got.rollouts == 3 * 2 * 4 and got.discarded == 24


# --- GRESO --------------------------------------------------------------------------------------------------------

def _greso(**kw):
    base = dict(strategy="greso", num_candidates=10, k=3, max_rounds=4, greso_p_easy=0.5, greso_p_hard=0.5,
                greso_target_zero_variance=0.25, greso_step=0.01, greso_p_min=0.05)
    base.update(kw)
    return make_strategy(SelectionConfig(**base), seed=random.randrange(10**6))


def test_greso_history_and_keep_probability():
    s = _greso()
    assert s.keep_probability(7) == 1.0                       # never seen: always rolled out
    s.keep([Group(7, [0] * 4, [1, 1, 1, 1]), Group(8, [0] * 4, [0, 0, 0, 0]), Group(9, [0] * 4, [0, 1, 0, 0])])
    assert s.history[7] == (1, True) and s.history[8] == (1, False) and s.history[9] == (0, False)
    p_easy, p_hard = s.p_easy, s.p_hard
    assert s.keep_probability(7) == pytest.approx(p_easy) and s.keep_probability(8) == pytest.approx(p_hard)
    s.keep([Group(7, [0] * 4, [1, 1, 1, 1])])
    assert s.history[7] == (2, True) and s.keep_probability(7) == pytest.approx(s.p_easy ** 2)
    s.keep([Group(7, [0] * 4, [1, 0, 1, 1])])                  # informative again: the streak resets
    assert s.history[7] == (0, False) and s.keep_probability(7) == 1.0


def test_greso_exploration_probability_adapts_toward_target():
    s = _greso(greso_target_zero_variance=0.3, greso_step=0.05)
    # 2 easy + 1 hard zero-variance out of 4: easy share 0.5 > 0.1 -> down; hard share 0.25 > 0.2 -> down
    kept = s.keep([Group(1, [0] * 2, [1, 1]), Group(2, [0] * 2, [1, 1]), Group(3, [0] * 2, [0, 0]),
                   Group(4, [0] * 2, [1, 0])])
    assert [g.prompt_index for g in kept] == [4]
    assert s.p_easy == pytest.approx(0.45) and s.p_hard == pytest.approx(0.45)
    # all informative: both shares 0 < targets -> up
    s.keep([Group(5, [0] * 2, [1, 0])])
    assert s.p_easy == pytest.approx(0.5) and s.p_hard == pytest.approx(0.5)
    # bounded by [p_min, 1]
    for _ in range(40):
        s.keep([Group(6, [0] * 2, [1, 1]), Group(7, [0] * 2, [0, 0])])
    assert s.p_easy == pytest.approx(0.05) and s.p_hard == pytest.approx(0.05)
    for _ in range(40):
        s.keep([Group(8, [0] * 2, [0, 1])])
    assert s.p_easy == 1.0 and s.p_hard == 1.0


def test_greso_skips_probabilistically_and_explores():
    s = _greso(num_candidates=4, k=4, greso_target_zero_variance=0.0)
    s.history = {0: (0, False), 1: (1, True), 2: (2, False), 3: (3, True)}
    s.p_easy, s.p_hard = 0.6, 0.3
    expected = [1.0, 0.6, 0.3 ** 2, 0.6 ** 3]
    trials = 6000
    counts = np.zeros(4)
    for _ in range(trials):
        for c in s.choose([0, 1, 2, 3], _ctx()).indices:
            counts[c] += 1
    freq = counts / trials
    for f, p in zip(freq, expected):
        assert abs(f - p) < 5 * math.sqrt(p * (1 - p) / trials) + 1e-9, (freq, expected)
    # an exploration probability of 0 skips every prompt with a zero-variance streak, never a fresh one
    s.p_easy = s.p_hard = 0.0
    for _ in range(50):
        assert s.choose([0, 1, 2, 3], _ctx()).indices == [0]


def test_greso_rolls_out_at_most_needed_over_one_minus_target():
    s = _greso(num_candidates=20, k=8, greso_target_zero_variance=0.25)
    choice = s.choose(list(range(20)), _ctx(kept=3))     # nothing in history: all 20 survive
    assert choice.indices == list(range(math.ceil(5 / 0.75)))
    assert choice.info["greso_skipped"] == 0


def test_greso_rounds_until_k_informative(monkeypatch):
    s = _greso(num_candidates=6, k=4, max_rounds=5)
    roll_out, calls = _fake_roll_out(lambda i: [1, 0] if i % 2 else [0, 0], 2)
    got = _collect(monkeypatch, s, PromptSampler(60, seed=1), roll_out, step=0, total_steps=3)
    assert len(got.groups) == 4 and all(g.prompt_index % 2 for g in got.groups)
    rolled = [i for idx, _ in calls for i in idx]
    assert got.rollouts == 2 * len(rolled) and got.discarded == got.rollouts - 8
    assert all(s.history[i][0] == (0 if i % 2 else 1) for i in rolled)


# --- sampler and state --------------------------------------------------------------------------------------------

def test_sampler_covers_each_epoch_without_repeats():
    n = 23
    sampler = PromptSampler(n, seed=random.randrange(1000))
    first = sampler.draw(5) + sampler.draw(5) + sampler.draw(5) + sampler.draw(5) + sampler.draw(3)
    assert sorted(first) == list(range(n))
    for _ in range(20):  # draws that straddle an epoch boundary never repeat an index within the draw
        d = sampler.draw(7)
        assert len(set(d)) == 7
    with pytest.raises(ValueError, match="cannot draw"):
        sampler.draw(n + 1)


def _weights_only_round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["random", "greso", "dynamic", "ppl", "all"])
def test_state_round_trip_reproduces_choices(name, monkeypatch):
    cfg = _cfg(strategy=name, num_candidates=8, k=3)
    a, sampler_a = make_strategy(cfg, seed=11), PromptSampler(40, seed=5)
    score = lambda idx: [float((i * 7919) % 97) for i in idx]  # noqa: E731
    roll_out, _ = _fake_roll_out(lambda i: [1, 1, 1, 1] if i % 4 == 0 else [0, 1, 0, 0])
    for step in range(3):
        _collect(monkeypatch, a, sampler_a, roll_out, step=step, total_steps=6, score=score)
    b, sampler_b = make_strategy(cfg, seed=999), PromptSampler(40, seed=5)
    b.load_state_dict(_weights_only_round_trip(a.state_dict()))
    sampler_b.load_state_dict(_weights_only_round_trip(sampler_a.state_dict()))
    for step in range(3, 6):
        ga = _collect(monkeypatch, a, sampler_a, roll_out, step=step, total_steps=6, score=score)
        gb = _collect(monkeypatch, b, sampler_b, roll_out, step=step, total_steps=6, score=score)
        assert [g.prompt_index for g in ga.groups] == [g.prompt_index for g in gb.groups]
        assert ga.rollouts == gb.rollouts


def test_collected_carries_every_generated_reward_length_and_timing(monkeypatch):
    """The step's record holds what every round generated (discarded groups too) and the times each round's
    roll-out and reward stages measured, so the trainer reads nothing back from elsewhere."""
    def roll_out(indices, round_):
        return [Group(i, [SimpleNamespace(completion_ids=[0] * (1 + round_))] * 2, [float(i % 2), 0.0])
                for i in indices]

    strategy = make_strategy(_cfg(strategy="dynamic", num_candidates=4, k=4, max_rounds=3))
    got = _collect(monkeypatch, strategy, PromptSampler(40, seed=3), roll_out, seconds=(1.5, 0.25))
    assert got.time_generate == pytest.approx(1.5 * got.rounds) and got.time_reward == pytest.approx(0.25 * got.rounds)
    assert got.rollouts == 2 * len(got.generated) and got.discarded == got.rollouts - 2 * len(got.groups)
    assert got.rewards == [r for g in got.generated for r in g.rewards]
    assert sorted(set(got.completion_lengths)) == list(range(1, got.rounds + 1))
    assert all(not g.zero_variance for g in got.groups) and any(g.zero_variance for g in got.generated)


# --- behaviours a planted one-line bug once slipped past (issue #18) -----------------------------------------------

@pytest.mark.parametrize("target", [0.0, 0.25, 0.5])
def test_greso_later_rounds_roll_out_only_what_is_still_needed(target, monkeypatch):
    """Each round rolls out ⌈(K − kept so far) / (1 − target)⌉ prompts (fresh prompts all survive), not K's worth."""
    k = 7
    s = _greso(num_candidates=30, k=k, max_rounds=6, greso_target_zero_variance=target)
    informative = {i for i in range(300) if i % 5 == 0}
    roll_out, calls = _fake_roll_out(lambda i: [1, 0] if i in informative else [1, 1], 2)
    got = _collect(monkeypatch, s, PromptSampler(300, seed=7), roll_out, step=0, total_steps=4)
    assert len(calls) >= 2, "the pattern should need more than one round"
    kept = 0
    for indices, _ in calls:
        assert len(indices) == math.ceil((k - kept) / (1 - target)), (target, kept, [len(c) for c, _ in calls])
        kept += sum(i in informative for i in indices)
    assert len(got.groups) == min(kept, k) and got.rounds == len(calls)


def test_greso_state_round_trips_every_field():
    """Every field of GRESO's saved state comes back as saved, each with a value no other field has (so a swap or
    a dropped field shows), and the restored strategy then chooses exactly as the original."""
    a = _greso(num_candidates=12, k=4, greso_p_easy=0.9, greso_p_hard=0.9)
    a.p_easy, a.p_hard = 0.37, 0.81
    a.history = {3: (2, True), 5: (4, False), 11: (1, True), 40: (3, False)}
    a.rng.random(17)  # move the generator away from its seed
    state = _weights_only_round_trip(a.state_dict())
    b = _greso(num_candidates=12, k=4, greso_p_easy=0.5, greso_p_hard=0.5)
    b.load_state_dict(state)
    assert (b.p_easy, b.p_hard) == (0.37, 0.81)
    assert b.history == a.history and all(type(z) is int and type(e) is bool for z, e in b.history.values())
    assert b.rng.bit_generator.state == a.rng.bit_generator.state
    for c in (3, 5, 11, 40, 7):
        assert b.keep_probability(c) == a.keep_probability(c)
    assert a.keep_probability(3) == pytest.approx(0.37 ** 2) and a.keep_probability(5) == pytest.approx(0.81 ** 4)
    candidates = [3, 5, 11, 40, 7, 8, 9, 10]
    for _ in range(20):
        assert a.choose(candidates, _ctx()).indices == b.choose(candidates, _ctx()).indices


def test_sampler_epochs_use_different_permutations_seeded_by_run_and_epoch():
    n = 31
    seed = random.randrange(1000)
    sampler = PromptSampler(n, seed=seed)
    epochs = [sampler.draw(n) for _ in range(4)]  # one whole epoch per draw
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert len({tuple(e) for e in epochs}) == 4, "consecutive epochs must reshuffle"
    again = PromptSampler(n, seed=seed)
    assert [again.draw(n) for _ in range(4)] == epochs          # deterministic for the run seed
    other = PromptSampler(n, seed=seed + 1)
    assert other.draw(n) != epochs[0]                            # and different for another seed
    # a draw that crosses the boundary: the end of one epoch's order, then the start of the next one's
    crossing = PromptSampler(n, seed=seed)
    crossing.draw(n - 3)
    d = crossing.draw(8)
    assert d[:3] == epochs[0][-3:] and d[3:] == [i for i in epochs[1] if i not in d[:3]][:5]
    assert crossing.state_dict()["epoch"] == 1


def test_greso_easy_and_hard_targets_are_one_and_two_thirds_of_the_target():
    """Zero-variance shares between target/3 and 2·target/3 move p_easy down (above its third) and p_hard up (below
    its two thirds)."""
    s = _greso(greso_target_zero_variance=0.3, greso_step=0.05)
    groups = ([Group(i, [0] * 2, [1, 1]) for i in range(3)] + [Group(10 + i, [0] * 2, [0, 0]) for i in range(3)]
              + [Group(20 + i, [0] * 2, [1, 0]) for i in range(14)])   # 0.15 easy, 0.15 hard
    kept = s.keep(groups)
    assert len(kept) == 14
    assert s.p_easy == pytest.approx(0.45) and s.p_hard == pytest.approx(0.55)


def test_dynamic_stops_in_the_round_that_reaches_k(monkeypatch):
    strategy = make_strategy(_cfg(strategy="dynamic", k=3, max_rounds=5))
    roll_out, calls = _fake_roll_out(lambda i: [1, 0, 0, 1])          # every group informative
    got = _collect(monkeypatch, strategy, PromptSampler(40, seed=2), roll_out, step=0, total_steps=5)
    assert len(calls) == 1 and got.rounds == 1 and len(got.groups) == 3 and got.discarded == 0
