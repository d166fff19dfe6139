"""GRPO advantages, PREPO entropy weights, the clipped surrogate and the ppl window, against hand computations."""
import doctest
import math
import random

import pytest
import torch

from prepo import algorithm
from prepo.algorithm import (aggregate_loss, clipped_surrogate, entropy_baseline, entropy_weights, group_advantages,
                             ppl_window, window_start)


def test_doctests():
    assert doctest.testmod(algorithm).failed == 0


def test_window_positions():
    # |B| = 10, K = 2: l = floor(rho * 8)
    assert [window_start(10, 2, r) for r in (0.0, 0.25, 0.5, 0.99, 1.0)] == [0, 2, 4, 7, 8]
    # |B| not a multiple of K: |B| = 7, K = 3 -> l = floor(rho * 4)
    assert [window_start(7, 3, r) for r in (0.0, 0.3, 0.5, 0.8, 1.0)] == [0, 1, 2, 3, 4]
    assert window_start(5, 5, 0.7) == 0
    with pytest.raises(ValueError, match="k="):
        window_start(5, 6, 0.1)
    with pytest.raises(ValueError, match="k="):
        window_start(5, 0, 0.1)


@pytest.mark.parametrize("n, k", [(10, 3), (7, 7), (20, 4), (5, 1)])
def test_window_holds_k_candidates_when_progress_leaves_zero_one(n, k):
    """verl passes global_steps / total, TRL a user's progress(): ρ < 0 and ρ > 1 clip to the ends of the order."""
    ppl = [random.uniform(1, 30) for _ in range(n)]
    order = sorted(range(n), key=lambda i: ppl[i])
    for rho in (-0.5, -3.0, -1e-9):
        assert window_start(n, k, rho) == 0
        assert ppl_window(ppl, k, rho) == order[:k]
    for rho in (1.0 + 1e-9, 1.7, 40.0):
        assert window_start(n, k, rho) == n - k
        assert ppl_window(ppl, k, rho) == order[n - k:]


def test_ppl_window_selects_sorted_band():
    n, k = 23, 5
    ppl = [random.uniform(1, 30) for _ in range(n)]
    order = sorted(range(n), key=lambda i: ppl[i])
    for rho in (0.0, random.random(), 1.0):
        chosen = ppl_window(ppl, k, rho)
        start = math.floor(rho * (n - k))
        assert chosen == order[start:start + k]
        assert len(set(chosen)) == k
    lo = [ppl[i] for i in ppl_window(ppl, k, 0.0)]
    hi = [ppl[i] for i in ppl_window(ppl, k, 1.0)]
    assert max(lo) <= min(hi)
    with pytest.raises(ValueError, match="NaN"):
        ppl_window([1.0, float("nan")], 1, 0.0)


def test_group_advantages_hand_values():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    adv = group_advantages(r)
    # group 0: mean 0.25, unbiased std = sqrt(((0.75)^2 + 3 * 0.25^2) / 3) = 0.5
    torch.testing.assert_close(adv[0], torch.tensor([1.5, -0.5, -0.5, -0.5]), rtol=1e-5, atol=1e-5)
    assert (adv[1] == 0).all() and (adv[2] == 0).all()
    torch.testing.assert_close(adv[3], torch.tensor([1.0, -1.0, 0.0, 0.0]) / (math.sqrt(2 / 3) + 1e-6))
    torch.testing.assert_close(group_advantages(r, normalize_std=False)[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.ones(8))


def test_entropy_weights_mean_one_and_token_variant():
    h = torch.rand(16) * 3 + 0.1
    w = entropy_weights(h)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    torch.testing.assert_close(w, (h / h.mean()).float())
    n = torch.randint(1, 50, (16,)).float()
    wt = entropy_weights(h, n, mode="entropy_token")
    # the token-weighted variant preserves the total token count: Σ w_i |o_i| = Σ |o_i|
    torch.testing.assert_close((wt * n).sum(), n.sum(), rtol=1e-5, atol=1e-3)
    assert (entropy_weights(h, mode="none") == 1).all()
    assert (entropy_weights(torch.zeros(4)) == 1).all()
    hg = h.clone().requires_grad_(True)
    assert not entropy_weights(hg).requires_grad
    with pytest.raises(ValueError, match="lengths"):
        entropy_weights(h, mode="entropy_token")
    with pytest.raises(ValueError, match="weighting"):
        entropy_weights(h, mode="bogus")


@pytest.mark.parametrize("mode", ["entropy", "entropy_token"])
def test_zero_length_rollouts_get_weight_one_and_no_say_in_the_baseline(mode):
    """A rollout without response tokens has no entropy: weight 1, and H̄ is taken over the others (both
    integrations rely on this)."""
    h = torch.rand(6) * 3 + 0.1
    n = torch.tensor([3.0, 0.0, 5.0, 2.0, 0.0, 7.0])
    scored = n > 0
    h_in = h.clone()
    h_in[~scored] = 0.0
    w = entropy_weights(h_in, n, mode=mode)
    assert (w[~scored] == 1).all()
    torch.testing.assert_close(w[scored], entropy_weights(h[scored], n[scored], mode=mode))
    assert entropy_baseline(h_in, n, mode=mode) == pytest.approx(entropy_baseline(h[scored], n[scored], mode=mode))
    assert (entropy_weights(h, torch.zeros(6), mode=mode) == 1).all()
    assert entropy_baseline(h, torch.zeros(6), mode=mode) == 0.0


def test_clipped_surrogate_against_direct_formula():
    logp = torch.randn(4, 9) * 0.3
    old = logp + torch.randn(4, 9) * 0.3
    adv = torch.randn(4, 1)
    loss = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    for i in range(4):
        for j in range(9):
            s = math.exp(logp[i, j].item() - old[i, j].item())
            a = adv[i, 0].item()
            expected = -min(s * a, min(max(s, 0.8), 1.28) * a)
            assert abs(loss[i, j].item() - expected) < 1e-5


def test_aggregate_loss_modes():
    tl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(tl, m).item() == pytest.approx(10 / 4)
    assert aggregate_loss(tl, m, mode="seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(tl, m, num_tokens=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_loss(tl, m, mode="sum")


def test_ppl_window_breaks_ties_by_candidate_index():
    """Equal perplexities (a repeated question, a saturated scorer) order by candidate index, so a run's choice does
    not depend on the sort's stability or the scorer's batching."""
    ppl = [2.0, 1.0, 2.0, 1.0, 2.0, 1.0]
    assert ppl_window(ppl, 4, 0.0) == [1, 3, 5, 0]
    assert ppl_window(ppl, 4, 1.0) == [5, 0, 2, 4]
    assert ppl_window([7.0] * 5, 2, 0.5) == [1, 2]
