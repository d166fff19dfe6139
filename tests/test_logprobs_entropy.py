"""The logits-path ops against a float64 reference, on every available backend, with nasty inputs."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prepo_kernels as pk
from reference import ref_logprobs_entropy


def _tol(x, temperature):
    # fp32 rounding of z = x / T grows with |z|: allow a few ulps of the largest |z| on top of 1e-5
    big = x.detach().float().abs().masked_fill(~torch.isfinite(x.detach().float()), 0).max().item()
    return 1e-5 + 4e-7 * big / temperature


def _make(n_lead, V, dtype, device, scale=3.0, neg_inf_frac=0.0, ignore_frac=0.2, gen=None):
    x = torch.randn(*n_lead, V, generator=gen) * scale
    if neg_inf_frac > 0 and V > 1:
        drop = torch.rand(*n_lead, V, generator=gen) < neg_inf_frac
        drop[..., 0] = False  # keep at least one finite column per row
        x = x.masked_fill(drop, float("-inf"))
    t = torch.randint(0, V, n_lead, generator=gen)
    if neg_inf_frac > 0:
        t = torch.where(torch.isinf(x.gather(-1, t.unsqueeze(-1)).squeeze(-1)), torch.zeros_like(t), t)
    t = torch.where(torch.rand(n_lead, generator=gen) < ignore_frac, torch.full_like(t, -100), t)
    return x.to(dtype).to(device), t.to(device)


def _rows(backend):
    return 6 if backend == "triton" and not torch.cuda.is_available() else 48


@pytest.mark.parametrize("V", [1, 7, 3000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_forward_matches_float64(backend, device, V, dtype, temperature):
    x, t = _make((_rows(backend),), V, dtype, device)
    lp, ent = pk.logprobs_and_entropy(x, t, temperature=temperature, backend=backend)
    rlp, rent = ref_logprobs_entropy(x.cpu(), t.cpu(), temperature)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32 and lp.shape == t.shape
    tol = _tol(x, temperature)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol)
    assert (lp <= 1e-6).all(), "log-probs must be <= 0"
    assert (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-4).all()


@pytest.mark.parametrize("V", [7, 1031])
def test_large_magnitude_and_neg_inf(backend, device, V):
    x, t = _make((_rows(backend),), V, torch.float32, device, scale=3e3, neg_inf_frac=0.4)
    lp, ent = pk.logprobs_and_entropy(x, t, temperature=1.3, backend=backend)
    rlp, rent = ref_logprobs_entropy(x.cpu(), t.cpu(), 1.3)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    tol = _tol(x, 1.3)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol)


def test_entropy_does_not_cancel_when_lse_is_huge(backend, device):
    # every logit ~ 1e4 with spread 1: lse ~ 1e4 >> H; lse - E[z] in fp32 would lose all digits of H
    V = 513
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    x = (1e4 + torch.randn(4, V, generator=g)).to(device)
    t = torch.randint(0, V, (4,)).to(device)
    ent = pk.token_entropy(x, backend=backend)
    _, rent = ref_logprobs_entropy(x.cpu(), t.cpu())
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [7, 2053])
def test_gradients_random_mix(backend, device, dtype, V):
    x, t = _make((2, _rows(backend) // 2), V, dtype, device, neg_inf_frac=0.1)
    x.requires_grad_(True)
    a, b = torch.randn(2, *t.shape).to(device)
    lp, ent = pk.logprobs_and_entropy(x, t, temperature=0.8, backend=backend)
    (gx,) = torch.autograd.grad((a * lp).sum() + (b * ent).sum(), x)
    xr = x.detach().cpu().double().requires_grad_(True)
    rlp, rent = ref_logprobs_entropy(xr, t.cpu(), 0.8)
    (gr,) = torch.autograd.grad((a.cpu().double() * rlp).sum() + (b.cpu().double() * rent).sum(), xr)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert torch.isfinite(gx).all()
    if dtype == torch.float32:
        torch.testing.assert_close(gx.cpu().double(), gr, rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(gx.cpu().double(), gr, rtol=2e-2, atol=1e-2 * gr.abs().max().item())
    ignored = t == -100
    assert (gx[ignored] == 0).all(), "ignored positions must get zero gradient"


def test_gradient_of_each_output_alone(backend, device):
    x, t = _make((_rows(backend),), 301, torch.float32, device)
    for which in (0, 1):
        xx = x.clone().requires_grad_(True)
        out = pk.logprobs_and_entropy(xx, t, backend=backend)[which]
        (g,) = torch.autograd.grad(out.sum(), xx)
        xr = x.cpu().double().requires_grad_(True)
        (gr,) = torch.autograd.grad(ref_logprobs_entropy(xr, t.cpu())[which].sum(), xr)
        torch.testing.assert_close(g.cpu().double(), gr, rtol=1e-4, atol=1e-6)
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pk.token_logprobs(xx, t, backend=backend).sum(), xx)
    assert torch.isfinite(g).all()


def test_non_contiguous_and_3d(backend, device):
    V = 97
    base = torch.randn(V, 3, _rows(backend), device=device)
    x = base.permute(1, 2, 0)  # (3, N, V) with stride(-1) != 1
    assert not x.is_contiguous()
    t_base = torch.randint(0, V, (_rows(backend), 3 * 2), device=device)
    t = t_base.T[::2]  # (3, N) non-contiguous targets
    lp, ent = pk.logprobs_and_entropy(x, t, temperature=1.7, backend=backend)
    rlp, rent = ref_logprobs_entropy(x.cpu(), t.cpu(), 1.7)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=1e-5)
    # row-strided view (stride(0) > V) with unit stride along V, gradients too
    wide = torch.randn(_rows(backend), 2 * V, device=device)
    xv = wide[:, 3:3 + V].requires_grad_(False)
    xv = xv.clone().requires_grad_(True)
    view = xv[:, :]  # still a leaf's view; exercise the wrapper on int32 targets
    t32 = torch.randint(0, V, (_rows(backend),), device=device, dtype=torch.int32)
    lp2, _ = pk.logprobs_and_entropy(view, t32, backend=backend)
    rlp2, _ = ref_logprobs_entropy(view.detach().cpu(), t32.cpu().long())
    torch.testing.assert_close(lp2.cpu().double(), rlp2, rtol=1e-5, atol=1e-5)


def test_inplace_backward(backend, device):
    x, t = _make((_rows(backend),), 211, torch.float32, device)
    ref_x = x.clone().requires_grad_(True)
    lp, ent = pk.logprobs_and_entropy(ref_x, t, backend=backend)
    (g_ref,) = torch.autograd.grad(lp.sum() - 0.5 * ent.sum(), ref_x)
    leaf = x.clone().requires_grad_(True)
    buf = leaf * 1.0  # a non-leaf whose buffer the caller gives up
    lp2, ent2 = pk.logprobs_and_entropy(buf, t, backend=backend, inplace_backward=True)
    (lp2.sum() - 0.5 * ent2.sum()).backward()
    torch.testing.assert_close(leaf.grad, g_ref, rtol=1e-5, atol=1e-6)
    assert buf.data_ptr() == buf.data_ptr()


def test_all_ignored_rows(backend, device):
    x = torch.randn(4, 33, device=device, requires_grad=True)
    t = torch.full((4,), -100, device=device)
    lp, ent = pk.logprobs_and_entropy(x, t, backend=backend)
    assert (lp == 0).all() and (ent == 0).all()
    (g,) = torch.autograd.grad(lp.sum() + ent.sum(), x)
    assert (g == 0).all()
    custom = torch.tensor([5, 7, 7, 0], device=device)
    lp, ent = pk.logprobs_and_entropy(x, custom, ignore_index=7, backend=backend)
    assert lp[1] == 0 and lp[2] == 0 and lp[0] != 0


def test_torch_compile_fullgraph(backend, device):
    def loss(x, t):
        lp, ent = pk.logprobs_and_entropy(x, t, temperature=1.1, backend=backend)
        return (lp * 2).sum() + ent.sum() + pk.sequence_perplexity(x.unsqueeze(0), t.unsqueeze(0)).sum()

    x, t = _make((_rows(backend),), 67, torch.float32, device, ignore_frac=0.0)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    xc = x.clone().requires_grad_(True)
    out = compiled(xc, t)
    out.backward()
    xe = x.clone().requires_grad_(True)
    ref = loss(xe, t)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    V=st.integers(1, 300),
    temperature=st.floats(0.25, 4.0),
    scale=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_reference(n, V, temperature, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, V, generator=g) * scale
    t = torch.randint(0, V, (n,), generator=g)
    lp, ent = pk.logprobs_and_entropy(x, t, temperature=temperature)
    rlp, rent = ref_logprobs_entropy(x, t, temperature)
    tol = _tol(x, temperature)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=tol)
    # invariants: lp <= 0, 0 <= H <= log V, and exp(lp) summed over all targets is 1
    assert (lp <= 1e-6).all() and (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-4).all()
    all_t = torch.arange(V).expand(n, V)
    total = pk.token_logprobs(x.unsqueeze(1).expand(n, V, V), all_t, temperature=temperature).exp().sum(-1)
    torch.testing.assert_close(total, torch.ones(n), rtol=1e-4, atol=1e-4)


class TestBadInput:
    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="targets"):
            pk.logprobs_and_entropy(torch.randn(4, 10), torch.zeros(5, dtype=torch.long))

    def test_float_targets(self):
        with pytest.raises(TypeError, match="targets"):
            pk.logprobs_and_entropy(torch.randn(4, 10), torch.zeros(4))

    def test_int_logits(self):
        with pytest.raises(TypeError, match="logits"):
            pk.logprobs_and_entropy(torch.zeros(4, 10, dtype=torch.long), torch.zeros(4, dtype=torch.long))

    @pytest.mark.parametrize("bad", [10, 11, -1, -101])
    def test_target_out_of_range(self, backend, bad):
        t = torch.tensor([0, bad, 3])
        with pytest.raises(ValueError, match="targets"):
            pk.logprobs_and_entropy(torch.randn(3, 10), t, backend=backend)

    @pytest.mark.parametrize("temp", [0.0, -1.0, float("nan"), float("inf")])
    def test_bad_temperature(self, temp):
        with pytest.raises(ValueError, match="temperature"):
            pk.token_entropy(torch.randn(3, 10), temperature=temp)

    def test_temperature_type(self):
        with pytest.raises(TypeError, match="temperature"):
            pk.token_entropy(torch.randn(3, 10), temperature="hot")

    def test_empty_vocab(self):
        with pytest.raises(ValueError, match="V = 0"):
            pk.logprobs_and_entropy(torch.randn(3, 0), torch.zeros(3, dtype=torch.long))

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="backend"):
            pk.token_entropy(torch.randn(3, 10), backend="cuda")

    def test_triton_on_cpu_without_interpreter(self, monkeypatch):
        from prepo_kernels import logprobs_entropy_triton

        monkeypatch.setattr(logprobs_entropy_triton, "interpret_mode", lambda: False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            pk.token_entropy(torch.randn(3, 10), backend="triton")

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to put tensors on two devices")
    def test_device_mismatch(self):
        with pytest.raises(ValueError, match="targets"):
            pk.logprobs_and_entropy(torch.randn(3, 10, device="cuda"), torch.zeros(3, dtype=torch.long))


# --- rows without a finite log-sum-exp: NaN on every backend (NON_FINITE_ROWS in prepo_kernels/logprobs_entropy_torch) ---

INF, NAN = float("inf"), float("nan")
DTYPES_ALL = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _skip_float64_on_triton(backend, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend refuses float64 (test_float64_refused_by_triton)")


def _poisoned(V, dtype, device, gen):
    """Rows the ops must flag among clean ones: +inf at the target, +inf elsewhere, several +inf with and without the
    target, NaN, all -inf, +inf in the last column (the ragged tail), an ignored row with +inf and NaN (0, no
    gradient), and clean rows with -inf masked columns (one whose target is masked: lp = -inf)."""
    x = torch.randn(11, V, generator=gen) * 3
    t = torch.randint(0, V, (11,), generator=gen)
    col = lambda i, k: int((t[i] + k) % V)  # noqa: E731
    x[0, col(0, 0)] = INF
    x[1, col(1, 1)] = INF
    x[2, [col(2, 0), col(2, 2), col(2, 4)]] = INF
    x[3, [col(3, 1), col(3, 3)]] = INF
    x[4, col(4, 2)] = NAN
    x[5] = -INF
    x[6, col(6, 1)], x[6, col(6, 2)], t[6] = INF, NAN, -100
    x[7, V - 1], t[7] = INF, 0
    x[8, 1::2], t[8] = -INF, 1  # target on a masked column
    x[9, 1::3], t[9] = -INF, 0
    return x.to(dtype).to(device), t.to(device)


def _finite_max(g):
    g = g[torch.isfinite(g)]
    return g.abs().max().item() if g.numel() else 0.0


# the Triton interpreter runs numpy, which warns on every inf - inf and log(0) these rows are made of
_NUMPY_WARNINGS = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@_NUMPY_WARNINGS
@pytest.mark.parametrize("V", [7, 1031])
@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_non_finite_rows_give_nan_and_nan_gradients(backend, device, V, dtype):
    _skip_float64_on_triton(backend, dtype)
    x, t = _poisoned(V, dtype, device, torch.Generator().manual_seed(V))
    xx = x.clone().requires_grad_(True)
    lp, ent = pk.logprobs_and_entropy(xx, t, temperature=0.7, backend=backend)
    a, b = torch.randn(2, *t.shape).to(device)
    (g,) = torch.autograd.grad((a * lp).sum() + (b * ent).sum(), xx)  # no crash, whatever the NaNs
    xr = x.cpu().double().requires_grad_(True)
    rlp, rent = ref_logprobs_entropy(xr, t.cpu(), 0.7)
    (gr,) = torch.autograd.grad((a.cpu().double() * rlp).sum() + (b.cpu().double() * rent).sum(), xr)
    flagged = torch.zeros(11, dtype=torch.bool)
    flagged[[0, 1, 2, 3, 4, 5, 7]] = True  # row 6 is ignored, rows 8-10 are clean
    assert torch.isnan(rlp[flagged]).all() and torch.isfinite(rlp[9:]).all()
    tol = _tol(x, 0.7)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol, equal_nan=True)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol, equal_nan=True)
    assert lp[6] == 0 and ent[6] == 0 and lp[8] == -INF
    assert torch.isnan(g[flagged]).all(), "a flagged row's gradient is NaN in every column"
    assert (g[6] == 0).all(), "an ignored row gets a zero gradient, NaN and +inf logits or not"
    assert torch.isfinite(g[~flagged]).all()
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(g.cpu().double(), gr, rtol=1e-4, atol=1e-5, equal_nan=True)
    else:
        torch.testing.assert_close(g.cpu().double(), gr, rtol=2e-2, atol=1e-2 * _finite_max(gr), equal_nan=True)


@_NUMPY_WARNINGS
def test_non_finite_rows_single_plus_inf(backend, device):
    """The issue's case: one +inf logit. At the target or elsewhere, lp and entropy are NaN on every backend."""
    x = torch.tensor([[0.0, INF, 1.0], [0.0, INF, 1.0], [0.0, INF, 1.0]], device=device)
    lp, ent = pk.logprobs_and_entropy(x, torch.tensor([1, 0, -100], device=device), backend=backend)
    assert torch.isnan(lp[:2]).all() and torch.isnan(ent[:2]).all() and lp[2] == 0 and ent[2] == 0
    assert torch.isnan(pk.sequence_perplexity(x[None], torch.tensor([[1, 0, 2]], device=device), backend=backend))


@_NUMPY_WARNINGS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temperature_overflow_counts_as_plus_inf(backend, device, dtype):
    """logits / T overflowing the compute dtype is +inf: flagged in float32, a plain number in float64."""
    _skip_float64_on_triton(backend, dtype)
    x = torch.tensor([[2.5e38, 0.0, 1.0], [1.0, 0.0, 2.0]], dtype=dtype, device=device)
    t = torch.tensor([0, 2], device=device)
    lp, ent = pk.logprobs_and_entropy(x, t, temperature=0.5, backend=backend)
    rlp, rent = ref_logprobs_entropy(x.cpu(), t.cpu(), 0.5)
    assert torch.isnan(lp[0]) == (dtype == torch.float32) and torch.isfinite(lp[1])
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=1e-5, equal_nan=True)


# --- float64 (TRL's entropy_from_logits / selective_log_softmax accept it; gradcheck needs it) --------------------

@pytest.mark.parametrize("V", [1, 7, 3000, 4099])
def test_float64_matches_float64(backend, device, V):
    _skip_float64_on_triton(backend, torch.float64)
    x, t = _make((2, _rows(backend) // 2), V, torch.float64, device, scale=20.0, neg_inf_frac=0.2)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous rows
    t = t.transpose(0, 1).contiguous().transpose(0, 1)
    xx = x.clone().requires_grad_(True)
    lp, ent = pk.logprobs_and_entropy(xx, t, temperature=0.7, backend=backend)
    assert lp.dtype == ent.dtype == torch.float64
    a, b = torch.randn(2, *t.shape, dtype=torch.float64).to(device)
    (g,) = torch.autograd.grad((a * lp).sum() + (b * ent).sum(), xx)
    assert g.dtype == torch.float64
    xr = x.cpu().requires_grad_(True)
    rlp, rent = ref_logprobs_entropy(xr, t.cpu(), 0.7)
    (gr,) = torch.autograd.grad((a.cpu() * rlp).sum() + (b.cpu() * rent).sum(), xr)
    torch.testing.assert_close(lp.cpu(), rlp, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(ent.cpu(), rent, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(g.cpu(), gr, rtol=1e-10, atol=1e-12)


def test_gradcheck(backend, device):
    """torch.autograd.gradcheck in float64 on each backend that takes it: both outputs, T != 1, a -inf column,
    an ignored row, a vocabulary that is not a multiple of any tile."""
    if backend == "triton":
        pytest.skip("the triton backend refuses float64: test_float64_refused_by_triton")
    x = (torch.randn(5, 11, dtype=torch.float64, device=device) * 2)
    x[1, 3] = -INF
    t = torch.tensor([0, 4, -100, 10, 3], device=device)
    fn = lambda z: pk.logprobs_and_entropy(z, t, temperature=0.7, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),))
    ppl = lambda z: pk.sequence_perplexity(z.reshape(1, 5, 11), t.reshape(1, 5), backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(ppl, (x.detach().requires_grad_(True),))


def test_float64_refused_by_triton(device):
    from prepo_kernels import dispatch, logprobs_entropy_triton

    if not logprobs_entropy_triton.usable_on(torch.device(device))[0]:
        pytest.skip("triton unavailable")
    x = torch.randn(3, 10, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="logits is float64.*backend='triton'"):
        pk.logprobs_and_entropy(x, torch.zeros(3, dtype=torch.long, device=device), backend="triton")
    assert dispatch.resolve("auto", torch.device(device), torch.float64) != "triton"  # "auto" takes float64


def test_float64_fake_kernels_and_compile(backend, device):
    """The custom ops' fake kernels give float64 for float64 logits (opcheck), and torch.compile runs them."""
    _skip_float64_on_triton(backend, torch.float64)
    from prepo_kernels import logprobs_entropy as le

    x, t = _make((_rows(backend),), 67, torch.float64, device, ignore_frac=0.0)
    torch.library.opcheck(le._fwd_op, (x.clone().requires_grad_(True), t, 0.9, -100, backend))

    def loss(z, t):
        lp, ent = pk.logprobs_and_entropy(z, t, temperature=1.1, backend=backend)
        return (lp * 2).sum() + ent.sum() + pk.sequence_perplexity(z.unsqueeze(0), t.unsqueeze(0)).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = compiled(xc, t)
    out.backward()
    ref = loss(xe, t)
    ref.backward()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-12, atol=1e-12)


def test_torch_compile_dynamic_shapes_and_temperature(device):
    """fullgraph + dynamic=True with the temperature an argument, not a literal (issue #18 item 9): eager's values and
    gradients, and a second size runs the same graph. (A new temperature value compiles again: Dynamo specialises a
    float that reaches a custom op; tests/test_linear_logprobs_entropy.py runs two values and a bad one.)"""
    import torch._dynamo

    def loss(x, t, mask, temperature):
        lp, ent = pk.logprobs_and_entropy(x, t, temperature=temperature)
        ppl = pk.sequence_perplexity(x.unsqueeze(0), t.unsqueeze(0), mask.unsqueeze(0), temperature=temperature)
        return (lp * 2).sum() + ent.sum() + ppl.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=True)  # inductor, with the backend "auto" picks
    for i, (n, V) in enumerate([(5, 37), (9, 53)]):
        x, t = _make((n,), V, torch.float32, device, ignore_frac=0.0)
        t[1] = -100
        mask = (torch.arange(n, device=device) % 3 != 2).long()
        xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            out = compiled(xc, t, mask, 0.7)
            out.backward()
        ref = loss(xe, t, mask, 0.7)
        ref.backward()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
