"""``pk.sequence_perplexity`` against its own float64 plain-torch reference, on every available backend.

Fresh random inputs per test: mask, ignore_index, temperature, bf16, -inf columns, non-contiguous, gradient, bad input.
"""
import pytest
import torch

import prepo_kernels as pk


def ref_perplexity(logits, targets, mask=None, temperature=1.0, ignore_index=-100):
    """exp(mean NLL over the kept positions) per row, in float64 with torch.log_softmax; independent of the ops."""
    z = logits.cpu().double() / temperature
    t = targets.cpu()
    keep = (t != ignore_index).double()
    if mask is not None:
        keep = keep * mask.cpu().double()
    lp = torch.log_softmax(z, dim=-1).gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    lp = torch.where(keep > 0, lp, torch.zeros_like(lp))
    return torch.exp(-(lp * keep).sum(-1) / keep.sum(-1))


def _inputs(B, T, V, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, V, generator=g) * 3
    t = torch.randint(0, V, (B, T), generator=g)
    return x.to(dtype).to(device), t.to(device), g


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_mask_and_ignore_index(backend, device, temperature):
    x, t, g = _inputs(3, 6, 57, device, seed=1)
    t[0, 0] = -100
    mask = (torch.rand(3, 6, generator=g) < 0.7).long().to(device)
    mask[:, 1] = 1
    ppl = pk.sequence_perplexity(x, t, mask, temperature=temperature, backend=backend)
    assert ppl.shape == (3,) and ppl.dtype == torch.float32
    torch.testing.assert_close(ppl.cpu().double(), ref_perplexity(x, t, mask, temperature), rtol=1e-5, atol=1e-5)
    no_mask = pk.sequence_perplexity(x, t, temperature=temperature, backend=backend)
    torch.testing.assert_close(no_mask.cpu().double(), ref_perplexity(x, t, None, temperature), rtol=1e-5, atol=1e-5)


def test_custom_ignore_index(backend, device):
    x, t, _ = _inputs(2, 5, 23, device, seed=2)
    t[0, 2] = 7
    t[1, :3] = 7
    ppl = pk.sequence_perplexity(x, t, ignore_index=7, backend=backend)
    torch.testing.assert_close(ppl.cpu().double(), ref_perplexity(x, t, ignore_index=7), rtol=1e-5, atol=1e-5)


def test_bfloat16(backend, device):
    x, t, _ = _inputs(2, 4, 129, device, dtype=torch.bfloat16, seed=3)
    ppl = pk.sequence_perplexity(x, t, backend=backend)
    assert ppl.dtype == torch.float32
    torch.testing.assert_close(ppl.cpu().double(), ref_perplexity(x.float(), t), rtol=1e-4, atol=1e-4)


def test_float64_stays_float64(device):
    x, t, _ = _inputs(2, 3, 31, device, dtype=torch.float64, seed=4)
    ppl = pk.sequence_perplexity(x, t, backend="torch")
    assert ppl.dtype == torch.float64
    torch.testing.assert_close(ppl.cpu(), ref_perplexity(x, t), rtol=1e-12, atol=1e-12)


def test_neg_inf_columns(backend, device):
    x, t, g = _inputs(2, 5, 40, device, seed=5)
    drop = torch.rand(2, 5, 40, generator=g) < 0.3
    drop[..., 0] = False
    drop.scatter_(-1, t.cpu().unsqueeze(-1), False)  # the targets stay finite
    x = x.masked_fill(drop.to(device), float("-inf"))
    ppl = pk.sequence_perplexity(x, t, backend=backend)
    torch.testing.assert_close(ppl.cpu().double(), ref_perplexity(x, t), rtol=1e-5, atol=1e-5)


def test_non_contiguous(backend, device):
    x, t, _ = _inputs(4, 6, 33, device, seed=6)
    xs, ts = x.transpose(0, 1), t.transpose(0, 1)  # (6, 4, V) and (6, 4), strided
    assert not xs.is_contiguous()
    ppl = pk.sequence_perplexity(xs, ts, backend=backend)
    torch.testing.assert_close(ppl.cpu().double(), ref_perplexity(xs, ts), rtol=1e-5, atol=1e-5)


def test_gradient(backend, device):
    x, t, g = _inputs(2, 4, 19, device, seed=7)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], device=device)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(pk.sequence_perplexity(x, t, mask, temperature=0.8, backend=backend).sum(), x)
    xr = x.detach().cpu().double().requires_grad_(True)
    (ref,) = torch.autograd.grad(ref_perplexity(xr, t, mask, 0.8).sum(), xr)
    torch.testing.assert_close(grad.cpu().double(), ref, rtol=1e-4, atol=1e-6)


class TestBadInput:
    def test_empty_row_names_the_row(self):
        x, t, _ = _inputs(2, 3, 10, "cpu")
        with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
            pk.sequence_perplexity(x, t, torch.tensor([[1, 0, 0], [0, 0, 0]]))

    def test_mask_shape(self):
        with pytest.raises(ValueError, match="mask"):
            pk.sequence_perplexity(torch.randn(2, 3, 10), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4))

    def test_needs_3d_logits(self):
        with pytest.raises(ValueError, match="logits"):
            pk.sequence_perplexity(torch.randn(3, 10), torch.zeros(3, dtype=torch.long))

    def test_targets_shape(self):
        with pytest.raises(ValueError, match="targets"):
            pk.sequence_perplexity(torch.randn(2, 3, 10), torch.zeros(2, 4, dtype=torch.long))

    def test_temperature(self):
        with pytest.raises((ValueError, TypeError), match="temperature"):
            pk.sequence_perplexity(torch.randn(2, 3, 10), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
