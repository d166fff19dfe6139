"""The fused linear path (hidden states + lm_head) against float64 references of hidden @ weight.T + bias."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prepo_kernels as pk
from prepo_kernels import (dispatch, linear_logprobs_entropy_chunked, linear_logprobs_entropy_triton,
                           logprobs_entropy_triton)
from reference import ref_linear_logits, ref_logprobs_entropy

INTERPRETED = not torch.cuda.is_available()
DEVICE_FOR_TRITON = "cpu" if INTERPRETED else "cuda"


def _dims(backend):
    """(rows, hidden size, large odd vocabulary): the Triton interpreter is slow, so it gets small shapes."""
    if backend == "triton" and INTERPRETED:
        return 8, 29, 293
    return 40, 61, 1013


def _vocab(backend, V):
    return _dims(backend)[2] if V == "big" else V


def _split_work(monkeypatch, V):
    """Force several row blocks and vocabulary slices (CPU path), splits and backward slices (Triton)."""
    monkeypatch.setattr(linear_logprobs_entropy_chunked, "ROW_BLOCK", 16)
    monkeypatch.setattr(linear_logprobs_entropy_chunked, "CHUNK_BYTES", 16 * 4 * (max(16, V // 3) + 16))
    monkeypatch.setattr(linear_logprobs_entropy_triton, "_INTERPRET_SPLITS", 3)
    monkeypatch.setattr(linear_logprobs_entropy_triton, "_BWD_SLICE_ELEMENTS_INTERPRET", 8 * 64)
    monkeypatch.setattr(linear_logprobs_entropy_triton, "BWD_SLICE_ELEMENTS", 40 * 256)


def _make(N, H, V, dtype, device, *, bias=False, ignore_frac=0.25, scale=1.0, lead=None):
    h = torch.randn(N, H) * scale
    w = torch.randn(V, H) / math.sqrt(H) * 3.0
    b = torch.randn(V) if bias else None
    t = torch.randint(0, V, (N,))
    t = torch.where(torch.rand(N) < ignore_frac, torch.full_like(t, -100), t)
    if lead is not None:
        h, t = h.reshape(*lead, H), t.reshape(lead)
    cast = (lambda x: x.to(dtype).to(device))
    return cast(h), cast(w), (cast(b) if b is not None else None), t.to(device)


def _reference(h, w, b, t, temperature, ignore_index=-100):
    z = ref_linear_logits(h.cpu(), w.cpu(), None if b is None else b.cpu())
    return ref_logprobs_entropy(z, t.cpu(), temperature, ignore_index)


def _tol(h, w, b, dtype, backend, temperature):
    """Forward tolerance from the rounding of the logits: fp32 accumulation, or bf16 logits on the CPU paths."""
    hd, wd = h.detach().cpu().double(), w.detach().cpu().double()
    bound = hd.abs() @ wd.abs().T  # |z| bound of every product sum, the scale of fp32 accumulation error
    if b is not None:
        bound = bound + b.detach().cpu().double().abs()
    zmax = bound.max().item()
    if dtype == torch.float32 or backend == "triton":  # Triton accumulates in fp32 and never rounds the logits
        return 1e-5 + 16 * 2.0**-24 * zmax / temperature
    return 1e-5 + 3 * 2.0**-9 * zmax / temperature  # logits rounded to bf16 once, as the model's own would be


def _grad_close(g, gr, dtype, zmax=0.0, temperature=1.0):
    """fp32: accumulation error. 16-bit: the logits are rounded to bf16 once (relative 2^-9), which moves every
    probability by up to a factor exp(2^-9 |z| / T), so the gradient's error grows with the largest |logit| ``zmax``."""
    scale = gr.abs().max().item() + 1e-12
    if dtype == torch.float32:
        torch.testing.assert_close(g.cpu().double(), gr, rtol=1e-4, atol=2e-5 * scale)
    else:
        rel = max(3e-2, 2 * 2.0**-9 * zmax / temperature)  # p and log p each move by up to 2^-9 |z| / T
        torch.testing.assert_close(g.cpu().double(), gr, rtol=3e-2, atol=rel * scale)


@pytest.mark.parametrize("V", [1, 37, "big"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,bias", [(1.0, False), (0.7, True)])
def test_forward_matches_float64(backend, device, monkeypatch, V, dtype, temperature, bias):
    N, H, _ = _dims(backend)
    V = _vocab(backend, V)
    _split_work(monkeypatch, V)
    h, w, b, t = _make(N, H, V, dtype, device, bias=bias)
    lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=temperature, backend=backend)
    rlp, rent = _reference(h, w, b, t, temperature)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == t.shape
    tol = _tol(h, w, b, dtype, backend, temperature)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol)
    assert (lp <= 1e-6).all(), "log-probs must be <= 0"
    assert (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-4).all()
    ignored = t == -100
    assert (lp[ignored] == 0).all() and (ent[ignored] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V,bias", [(37, True), ("big", False), ("big", True)])
def test_gradients_random_mix(backend, device, monkeypatch, dtype, V, bias):
    N, H, _ = _dims(backend)
    V = _vocab(backend, V)
    _split_work(monkeypatch, V)
    h, w, b, t = _make(N, H, V, dtype, device, bias=bias)
    leaves = [x.clone().requires_grad_(True) for x in (h, w) + ((b,) if bias else ())]
    a, c = torch.randn(2, N).to(device)
    lp, ent = pk.linear_logprobs_and_entropy(leaves[0], leaves[1], t, bias=leaves[2] if bias else None,
                                             temperature=0.8, backend=backend)
    grads = torch.autograd.grad((a * lp).sum() + (c * ent).sum(), leaves)
    refs = [x.detach().cpu().double().requires_grad_(True) for x in leaves]
    rlp, rent = _reference(refs[0], refs[1], refs[2] if bias else None, t, 0.8)
    ref_grads = torch.autograd.grad((a.cpu().double() * rlp).sum() + (c.cpu().double() * rent).sum(), refs)
    zmax = ref_linear_logits(h.cpu().double(), w.cpu().double(), None if b is None else b.cpu().double())
    zmax = zmax.abs().max().item()
    for g, gr, leaf in zip(grads, ref_grads, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape and torch.isfinite(g).all()
        _grad_close(g, gr, dtype, zmax, 0.8)
    assert (grads[0][t == -100] == 0).all(), "ignored positions must get zero gradient"


def test_gradient_of_each_output_alone_and_frozen_inputs(backend, device):
    N, H, V = _dims(backend)
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True)
    for which in (0, 1):
        leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
        out = pk.linear_logprobs_and_entropy(leaves[0], leaves[1], t, bias=leaves[2], backend=backend)[which]
        grads = torch.autograd.grad(out.sum(), leaves)
        refs = [x.cpu().double().requires_grad_(True) for x in (h, w, b)]
        ref_grads = torch.autograd.grad(_reference(*refs, t, 1.0)[which].sum(), refs)
        for g, gr in zip(grads, ref_grads):
            _grad_close(g, gr, torch.float32)
    # a frozen head (scoring a policy's hidden states) and frozen hidden states (training the head alone)
    hh = h.clone().requires_grad_(True)
    (gh,) = torch.autograd.grad(pk.linear_logprobs_and_entropy(hh, w, t, bias=b, backend=backend)[0].sum(), hh)
    hr = h.cpu().double().requires_grad_(True)
    (ghr,) = torch.autograd.grad(_reference(hr, w, b, t, 1.0)[0].sum(), hr)
    _grad_close(gh, ghr, torch.float32)
    ww = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(pk.linear_logprobs_and_entropy(h, ww, t, backend=backend)[1].sum(), ww)
    wr = w.cpu().double().requires_grad_(True)
    (gwr,) = torch.autograd.grad(_reference(h, wr, None, t, 1.0)[1].sum(), wr)
    _grad_close(gw, gwr, torch.float32)


def test_non_contiguous_inputs_and_int32_targets(backend, device):
    N, H, V = _dims(backend)
    base = torch.randn(H, 2, N, device=device)
    h = base.permute(1, 2, 0)  # (2, N, H), stride(-1) != 1
    w = (torch.randn(H, V, device=device) / math.sqrt(H)).T  # (V, H) transposed view
    assert not h.is_contiguous() and not w.is_contiguous()
    t = torch.randint(0, V, (N, 4), device=device, dtype=torch.int32).T[::2]  # (2, N) strided int32
    t[0, 1] = -100
    hl, wl = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    lp, ent = pk.linear_logprobs_and_entropy(hl, wl, t, temperature=1.7, backend=backend)
    rh, rw = h.cpu().double().requires_grad_(True), w.cpu().double().requires_grad_(True)
    rlp, rent = _reference(rh, rw, None, t.long(), 1.7)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5)
    g = torch.autograd.grad((lp - 0.3 * ent).sum(), (hl, wl))
    gr = torch.autograd.grad((rlp - 0.3 * rent).sum(), (rh, rw))
    for a, b in zip(g, gr):
        _grad_close(a, b, torch.float32)


def test_ignored_rows_never_reach_the_head(backend, device):
    """NaN hidden states at ignored positions (e.g. fully masked padding) must not leak into anything."""
    N, H, V = _dims(backend)
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, ignore_frac=0.5)
    t[0], t[1] = -100, 3
    poisoned = torch.where((t == -100).unsqueeze(-1), torch.full_like(h, float("nan")), h).requires_grad_(True)
    wl, bl = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    lp, ent = pk.linear_logprobs_and_entropy(poisoned, wl, t, bias=bl, backend=backend)
    gh, gw, gb = torch.autograd.grad(lp.sum() + ent.sum(), (poisoned, wl, bl))
    clean = torch.where((t == -100).unsqueeze(-1), torch.zeros_like(h), h)
    rlp, rent = _reference(clean, w, b, t, 1.0)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5)
    assert torch.isfinite(gw).all() and torch.isfinite(gb).all() and torch.isfinite(gh).all()
    assert (gh[t == -100] == 0).all()


def test_all_ignored_and_custom_ignore_index(backend, device):
    N, H, V = _dims(backend)
    h, w, b, _ = _make(N, H, V, torch.float32, device, bias=True)
    leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
    t = torch.full((N,), -100, device=device)
    lp, ent = pk.linear_logprobs_and_entropy(leaves[0], leaves[1], t, bias=leaves[2], backend=backend)
    assert (lp == 0).all() and (ent == 0).all()
    for g in torch.autograd.grad(lp.sum() + ent.sum(), leaves):
        assert (g == 0).all()
    # a real vocabulary id as ignore_index; -100 is then an out-of-range target
    t = torch.randint(0, V, (N,), device=device)
    t[:3] = torch.tensor([5, 5, 0])
    lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, ignore_index=5, backend=backend)
    rlp, rent = _reference(h, w, b, t, 1.0, ignore_index=5)
    assert lp[0] == 0 and lp[1] == 0 and lp[2] != 0
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="targets"):
        pk.linear_logprobs_and_entropy(h, w, torch.full((N,), -100, device=device), ignore_index=5, backend=backend)


def test_large_logits_and_entropy_without_cancellation(backend, device):
    N, H, V = _dims(backend)
    h, w, _, t = _make(N, H, V, torch.float32, device, scale=200.0)  # |z| in the hundreds to thousands
    lp, ent = pk.linear_logprobs_and_entropy(h, w, t, temperature=1.3, backend=backend)
    rlp, rent = _reference(h, w, None, t, 1.3)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    tol = _tol(h, w, None, torch.float32, backend, 1.3)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol)
    # logits ~ 1e4 with spread ~ 1: lse >> H, so lse - E[z] in fp32 would lose every digit of the entropy
    hs = torch.randn(N, H, device=device) * 0.3
    b = torch.full((V,), 1e4, device=device)
    ent = pk.linear_logprobs_and_entropy(hs, w, t, bias=b, backend=backend)[1]
    rent = _reference(hs, w, b, t, 1.0)[1]
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-4, atol=3e-3)


def test_matches_the_logits_path(backend, device):
    """Same numbers as logprobs_and_entropy on the materialised logits, including 3-D inputs."""
    N, H, V = _dims(backend)
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, lead=(2, N // 2))
    lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=0.9, backend=backend)
    lp2, ent2 = pk.logprobs_and_entropy(h @ w.T + b, t, temperature=0.9, backend=backend)
    assert lp.shape == t.shape
    torch.testing.assert_close(lp, lp2, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent, ent2, rtol=1e-5, atol=2e-5)


def test_linear_sequence_perplexity(backend, device):
    N, H, V = _dims(backend)
    B, T = 2, N // 2
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, ignore_frac=0.2, lead=(B, T))
    t[:, 1] = 1
    mask = (torch.rand(B, T, device=device) < 0.7).long()
    mask[:, 1] = 1
    hl = h.clone().requires_grad_(True)
    ppl = pk.linear_sequence_perplexity(hl, w, t, mask, bias=b, temperature=0.9, backend=backend)
    rh = h.cpu().double().requires_grad_(True)
    rlp, _ = _reference(rh, w, b, t, 0.9)
    keep = mask.cpu().double() * (t.cpu() != -100).double()
    ref = torch.exp(-(rlp * keep).sum(-1) / keep.sum(-1))
    torch.testing.assert_close(ppl.cpu().double(), ref, rtol=1e-5, atol=1e-5)
    _grad_close(torch.autograd.grad(ppl.sum(), hl)[0], torch.autograd.grad(ref.sum(), rh)[0], torch.float32)
    mask[1] = 0
    with pytest.raises(ValueError, match="row"):
        pk.linear_sequence_perplexity(h, w, t, mask, bias=b, backend=backend)
    with pytest.raises(ValueError, match="hidden"):
        pk.linear_sequence_perplexity(h[0], w, t[0], backend=backend)


def _unaligned_views(h):
    """hidden (N, 32) fp32 as the layouts Triton specialises differently: aligned, a row stride of 33, an inner
    stride of 2, a 4-byte offset, and H = 31; each with whether linear_logprobs_entropy_triton.aligned() holds."""
    N, H = h.shape
    wide = torch.zeros(N, H + 1, device=h.device)
    wide[:, :H] = h
    spread = torch.zeros(N, 2 * H, device=h.device)
    spread[:, ::2] = h
    flat = torch.zeros(N * H + 1, device=h.device)
    flat[1:] = h.reshape(-1)
    return [("aligned", h, True), ("row stride 33", wide[:, :H], False), ("inner stride 2", spread[:, ::2], False),
            ("4-byte offset", flat[1:].view(N, H), False), ("H = 31", h[:, :31].contiguous(), False)]


@pytest.mark.skipif(not logprobs_entropy_triton.usable_on(torch.device(DEVICE_FOR_TRITON))[0],
                    reason="triton unavailable")
def test_triton_unaligned_launches_take_the_unhinted_kernels(monkeypatch):
    """Issue #18 item 10: a launch Triton cannot give alignment hints runs the kernels' unhinted variant (the one
    benchmarks.kernels.triton_tiles compiles with its own tiles), forward and backward, with the same values."""
    from prepo_kernels import triton_tiles

    launched = []
    real_launch = triton_tiles.launch
    monkeypatch.setattr(triton_tiles, "launch", lambda kernel, *a, **kw: (launched.append(kernel),
                                                                         real_launch(kernel, *a, **kw))[1])
    L = linear_logprobs_entropy_triton
    N, V = 12, 97
    h0, w0, b0, t = _make(N, 32, V, torch.float32, DEVICE_FOR_TRITON, bias=True)
    for label, h, expect_aligned in _unaligned_views(h0):
        w = w0[:, :h.shape[1]].contiguous()
        assert L.aligned(h, w, b0) == expect_aligned, label
        launched.clear()
        leaves = [h.detach().requires_grad_(True), w.clone().requires_grad_(True), b0.clone().requires_grad_(True)]
        lp, ent = pk.linear_logprobs_and_entropy(*leaves[:2], t, bias=leaves[2], temperature=0.8, backend="triton")
        grads = torch.autograd.grad(lp.sum() + 0.5 * ent.sum(), leaves)
        want = ((L._linear_fwd_kernel, L._linear_dz_kernel) if expect_aligned else
                (L._linear_fwd_kernel_unaligned, L._linear_dz_kernel_unaligned))
        assert {k for k in launched if k is not L._linear_merge_kernel} == set(want), label
        refs = [x.detach().cpu().double().requires_grad_(True) for x in (h, w, b0)]
        rlp, rent = _reference(*refs, t, 0.8)
        ref_grads = torch.autograd.grad(rlp.sum() + 0.5 * rent.sum(), refs)
        tol = _tol(h, w, b0, torch.float32, "triton", 0.8)
        torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol)
        torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol)
        for g, gr in zip(grads, ref_grads):
            _grad_close(g, gr, torch.float32)


@pytest.mark.skipif(not logprobs_entropy_triton.usable_on(torch.device(DEVICE_FOR_TRITON))[0],
                    reason="triton unavailable")
def test_triton_grouped_tile_order(monkeypatch):
    """Three row blocks in groups of two (a partial last group), three vocabulary splits, several dZ slices."""
    monkeypatch.setitem(linear_logprobs_entropy_triton._INTERPRET_TILES, "GROUP_R", 2)
    monkeypatch.setattr(linear_logprobs_entropy_triton, "_INTERPRET_SPLITS", 3)
    monkeypatch.setattr(linear_logprobs_entropy_triton, "_BWD_SLICE_ELEMENTS_INTERPRET", 40 * 64)
    N, H, V = (40, 29, 250) if INTERPRETED else (300, 61, 1013)
    h, w, b, t = _make(N, H, V, torch.float32, DEVICE_FOR_TRITON, bias=True)
    leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
    lp, ent = pk.linear_logprobs_and_entropy(*leaves[:2], t, bias=leaves[2], temperature=0.9, backend="triton")
    a, c = torch.randn(2, N).to(DEVICE_FOR_TRITON)
    grads = torch.autograd.grad((a * lp).sum() + (c * ent).sum(), leaves)
    refs = [x.detach().cpu().double().requires_grad_(True) for x in leaves]
    rlp, rent = _reference(*refs, t, 0.9)
    ref_grads = torch.autograd.grad((a.cpu().double() * rlp).sum() + (c.cpu().double() * rent).sum(), refs)
    tol = _tol(h, w, b, torch.float32, "triton", 0.9)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=tol)
    for g, gr in zip(grads, ref_grads):
        _grad_close(g, gr, torch.float32)


def _compiled_and_eager(loss, compiler, inputs, t):
    """((value, leaves), (value, leaves)) of loss(*leaves, t) compiled (fullgraph) and eager, backward run on both."""
    runs = []
    for fn in (torch.compile(loss, fullgraph=True, backend=compiler), loss):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        out = fn(*leaves, t)
        out.backward()
        runs.append((out, leaves))
    return runs


def test_torch_compile_fullgraph(backend, device):
    N, H, V = _dims(backend)

    def loss(h, w, b, t):
        lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=1.1, backend=backend)
        ppl = pk.linear_sequence_perplexity(h.unsqueeze(0), w, t.unsqueeze(0), bias=b, backend=backend)
        return (lp * 2).sum() + ent.sum() + ppl.sum()

    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, ignore_frac=0.0)
    t[1] = -100
    # inductor (slow to compile) for the backend "auto" picks here; aot_eager checks the others' graph capture
    compiler = "inductor" if backend == dispatch.resolve("auto", torch.device(device)) else "aot_eager"
    (out, leaves_c), (ref, leaves_e) = _compiled_and_eager(loss, compiler, (h, w, b), t)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, e in zip(leaves_c, leaves_e):  # the perplexity term is large: fp32 reordering shows at ~1e-6 of it
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-5 * e.grad.abs().max().item())


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), H=st.integers(1, 24), V=st.integers(1, 200), temperature=st.floats(0.25, 4.0),
       scale=st.floats(0.0, 20.0), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_matches_reference(n, H, V, temperature, scale, bias, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g) * scale
    w = torch.randn(V, H, generator=g)
    b = torch.randn(V, generator=g) if bias else None
    t = torch.randint(0, V, (n,), generator=g)
    lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=temperature, backend="torch")
    rlp, rent = _reference(h, w, b, t, temperature)
    tol = _tol(h, w, b, torch.float32, "torch", temperature)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=tol)
    assert (lp <= 1e-6).all() and (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-4).all()


class TestBadInput:
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long)

    @pytest.mark.parametrize("kwargs,exc,name", [
        (dict(hidden=torch.randn(4, 7)), ValueError, "hidden"),
        (dict(weight=torch.randn(10)), ValueError, "weight"),
        (dict(weight=torch.randn(0, 8)), ValueError, "V = 0"),
        (dict(hidden=torch.randn(4, 0), weight=torch.randn(10, 0)), ValueError, "H = 0"),
        (dict(hidden=torch.zeros(4, 8, dtype=torch.long)), TypeError, "hidden"),
        (dict(weight=torch.randn(10, 8, dtype=torch.bfloat16)), TypeError, "weight"),
        (dict(bias=torch.randn(11)), ValueError, "bias"),
        (dict(bias=torch.randn(10, dtype=torch.float64)), TypeError, "bias"),
        (dict(bias=torch.randn(10, dtype=torch.bfloat16)), TypeError, "bias"),
        (dict(bias=[0.0] * 10), TypeError, "bias"),
        (dict(targets=torch.zeros(5, dtype=torch.long)), ValueError, "targets"),
        (dict(targets=torch.zeros(4)), TypeError, "targets"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(backend="cuda"), ValueError, "backend"),
    ])
    def test_rejected(self, kwargs, exc, name):
        args = dict(hidden=self.h, weight=self.w, targets=self.t)
        args.update(kwargs)
        with pytest.raises(exc, match=name):
            pk.linear_logprobs_and_entropy(**args)

    @pytest.mark.parametrize("bad", [10, 11, -1, -101])
    def test_target_out_of_range(self, backend, bad):
        with pytest.raises(ValueError, match="targets"):
            pk.linear_logprobs_and_entropy(self.h, self.w, torch.tensor([0, bad, 3, -100]), backend=backend)

    def test_triton_on_cpu_without_interpreter(self, monkeypatch):
        from prepo_kernels import logprobs_entropy_triton

        monkeypatch.setattr(logprobs_entropy_triton, "interpret_mode", lambda: False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            pk.linear_logprobs_and_entropy(self.h, self.w, self.t, backend="triton")

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to put tensors on two devices")
    def test_device_mismatch(self):
        with pytest.raises(ValueError, match="weight"):
            pk.linear_logprobs_and_entropy(self.h.cuda(), self.w, self.t.cuda())


# --- rows without a finite log-sum-exp (NON_FINITE_ROWS) and masked vocabulary slices -----------------------------

INF, NAN = float("inf"), float("nan")
# the Triton interpreter runs numpy, which warns on every inf - inf and log(0) these rows are made of
_NUMPY_WARNINGS = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _fwd_bwd_vs_reference(h, w, b, t, backend, temperature=0.8):
    """(lp, ent, grads) of the op and of the float64 reference, for a random mix of both outputs."""
    leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
    lp, ent = pk.linear_logprobs_and_entropy(leaves[0], leaves[1], t, bias=leaves[2], temperature=temperature,
                                             backend=backend)
    a, c = torch.randn(2, t.shape[0]).to(h.device)
    grads = torch.autograd.grad((a * lp).sum() + (c * ent).sum(), leaves)
    refs = [x.detach().cpu().double().requires_grad_(True) for x in (h, w, b)]
    rlp, rent = _reference(*refs, t, temperature)
    ref_grads = torch.autograd.grad((a.cpu().double() * rlp).sum() + (c.cpu().double() * rent).sum(), refs)
    return (lp, ent, grads), (rlp, rent, ref_grads)


@_NUMPY_WARNINGS
def test_non_finite_logits_are_flagged(backend, device, monkeypatch):
    """Hidden rows with +inf, NaN or -inf give logits with +-inf / NaN: NaN lp and entropy for those rows, NaN in every
    gradient they reach (their hidden rows, all of dW and db); clean rows and ignored rows are untouched."""
    N, H, V = _dims(backend)
    _split_work(monkeypatch, V)
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, ignore_frac=0.0)
    t[0] = -100
    h[0, 0] = INF  # ignored: never reaches the head
    h[1, 0], h[2, 3], h[3, 1] = INF, NAN, -INF
    (lp, ent, grads), (rlp, rent, ref_grads) = _fwd_bwd_vs_reference(h, w, b, t, backend)
    assert torch.isnan(lp[1:4]).all() and torch.isnan(ent[1:4]).all() and lp[0] == 0 and ent[0] == 0
    assert torch.isfinite(lp[4:]).all() and torch.isfinite(ent[4:]).all()
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5, equal_nan=True)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5, equal_nan=True)
    gh, gw, gb = grads
    assert torch.isnan(gh[1:4]).all() and (gh[0] == 0).all() and torch.isfinite(gh[4:]).all()
    assert torch.isnan(gw).all() and torch.isnan(gb).all()
    torch.testing.assert_close(gh.cpu().double(), ref_grads[0], rtol=1e-4, atol=2e-5, equal_nan=True)


@_NUMPY_WARNINGS
def test_plus_inf_bias_flags_every_kept_row(backend, device, monkeypatch):
    """bias = +inf at one column (at some rows' target, elsewhere for the others), then at two columns."""
    N, H, V = _dims(backend)
    _split_work(monkeypatch, V)
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, ignore_frac=0.3)
    t[1], t[2] = V - 1, 0
    for cols in ([V - 1], [0, V // 2]):
        bb = b.clone()
        bb[cols] = INF
        (lp, ent, grads), (rlp, rent, _) = _fwd_bwd_vs_reference(h, w, bb, t, backend)
        kept = t != -100
        assert torch.isnan(lp[kept]).all() and torch.isnan(ent[kept]).all()
        assert (lp[~kept] == 0).all() and (ent[~kept] == 0).all()
        torch.testing.assert_close(lp.cpu().double(), rlp, equal_nan=True)
        gh, gw, gb = grads
        assert torch.isnan(gh[kept]).all() and (gh[~kept] == 0).all() and torch.isnan(gw).all()


@_NUMPY_WARNINGS
def test_masked_vocabulary_slices(backend, device, monkeypatch):
    """bias = -inf on the first half of the vocabulary (whole slices / splits of it): finite numbers that match the
    reference, a target inside the mask gives lp = -inf with a finite gradient, and no NaN anywhere."""
    N, H, V = _dims(backend)
    _split_work(monkeypatch, V)
    h, w, b, t = _make(N, H, V, torch.float32, device, bias=True, ignore_frac=0.2)
    b[: V // 2 + 1] = -INF
    t = torch.where(t == -100, t, torch.randint(V // 2 + 1, V, t.shape, device=device))
    t[1] = 3  # a masked target
    (lp, ent, grads), (rlp, rent, ref_grads) = _fwd_bwd_vs_reference(h, w, b, t, backend)
    assert lp[1] == -INF and not torch.isnan(lp).any() and torch.isfinite(ent).all()
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5)
    for g, gr in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        _grad_close(g, gr, torch.float32)


# --- float64 on the CPU backends; Triton refuses it ------------------------------------------------------------------

def _skip_triton_float64(backend):
    if backend == "triton":
        pytest.skip("the triton backend refuses float64: test_float64_refused_by_triton")


@pytest.mark.parametrize("bias", [False, True])
def test_float64_matches_float64(backend, device, monkeypatch, bias):
    _skip_triton_float64(backend)
    N, H, V = _dims(backend)
    _split_work(monkeypatch, V)  # several row blocks and vocabulary slices, merged in double
    h, w, b, t = _make(N, H, V, torch.float64, device, bias=True, scale=4.0)
    b = b if bias else None
    leaves = [x.clone().requires_grad_(True) for x in (h, w) + ((b,) if bias else ())]
    lp, ent = pk.linear_logprobs_and_entropy(leaves[0], leaves[1], t, bias=leaves[2] if bias else None,
                                             temperature=0.7, backend=backend)
    assert lp.dtype == ent.dtype == torch.float64
    a, c = torch.randn(2, N, dtype=torch.float64).to(device)
    grads = torch.autograd.grad((a * lp).sum() + (c * ent).sum(), leaves)
    refs = [x.detach().cpu().requires_grad_(True) for x in leaves]
    rlp, rent = _reference(refs[0], refs[1], refs[2] if bias else None, t, 0.7)
    ref_grads = torch.autograd.grad((a.cpu() * rlp).sum() + (c.cpu() * rent).sum(), refs)
    torch.testing.assert_close(lp.cpu(), rlp, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(ent.cpu(), rent, rtol=1e-12, atol=1e-11)
    for g, gr in zip(grads, ref_grads):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g.cpu(), gr, rtol=1e-10, atol=1e-12)


def test_gradcheck(backend, device, monkeypatch):
    """torch.autograd.gradcheck of hidden, weight and bias together, over two vocabulary slices and an ignored row."""
    _skip_triton_float64(backend)
    monkeypatch.setattr(linear_logprobs_entropy_chunked, "CHUNK_BYTES", 1024)  # float64, 4 rows: slices of 16 columns, 16 + 4
    assert linear_logprobs_entropy_chunked.plan(4, 20, 3, torch.float64) == (4, 16)
    h, w, b, t = _make(5, 3, 20, torch.float64, device, bias=True, ignore_frac=0.0)
    t[2] = -100
    fn = lambda h, w, b: pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=0.7,  # noqa: E731
                                                        backend=backend)
    assert torch.autograd.gradcheck(fn, tuple(x.requires_grad_(True) for x in (h, w, b)))


def test_float64_refused_by_triton():
    if not logprobs_entropy_triton.usable_on(torch.device(DEVICE_FOR_TRITON))[0]:
        pytest.skip("triton unavailable")
    h, w, _, t = _make(4, 8, 10, torch.float64, DEVICE_FOR_TRITON)
    with pytest.raises(TypeError, match="hidden is float64.*backend='triton'"):
        pk.linear_logprobs_and_entropy(h, w, t, backend="triton")
    assert dispatch.resolve("auto", torch.device(DEVICE_FOR_TRITON), torch.float64, "hidden") != "triton"


def test_float64_fake_kernels_and_compile(backend, device):
    _skip_triton_float64(backend)
    from prepo_kernels import linear_logprobs_entropy

    N, H, V = _dims(backend)
    h, w, b, t = _make(N, H, V, torch.float64, device, bias=True, ignore_frac=0.0)
    t[1] = -100
    torch.library.opcheck(linear_logprobs_entropy._fwd_op, tuple(x.clone().requires_grad_(True) for x in (h, w, b)) +
                          (t, 1.1, -100, backend))

    def loss(h, w, b, t):
        lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=1.1, backend=backend)
        return (lp * 2).sum() + ent.sum()

    (out, leaves_c), (ref, leaves_e) = _compiled_and_eager(loss, "aot_eager", (h, w, b), t)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-12, atol=1e-12)


def test_torch_compile_dynamic_shapes_and_temperature():
    """fullgraph + dynamic=True with the temperature an argument, not a literal (issue #18 item 9): the linear ops give
    eager's values and gradients; a second size runs the same graph, a new temperature compiles once more (Dynamo
    specialises a float that reaches a custom op), a bad one is still refused."""
    import torch._dynamo

    def loss(h, w, b, t, temperature):
        lp, ent = pk.linear_logprobs_and_entropy(h, w, t, bias=b, temperature=temperature)
        ppl = pk.linear_sequence_perplexity(h.unsqueeze(0), w, t.unsqueeze(0), bias=b, temperature=temperature)
        return (lp * 2).sum() + ent.sum() + ppl.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend="aot_eager")
    for N, H, V, temperature, same_graph in [(6, 13, 37, 0.7, False), (11, 13, 37, 0.7, True), (4, 9, 23, 1.9, False)]:
        h, w, b, t = _make(N, H, V, torch.float32, "cpu", bias=True, ignore_frac=0.0)
        t[2] = -100
        with torch._dynamo.config.patch(error_on_recompile=same_graph):
            (out, leaves_c), (ref, leaves_e) = _run_both((compiled, loss), (h, w, b), t, temperature)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for a, e in zip(leaves_c, leaves_e):
            torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-5 * e.grad.abs().max().item())
    for bad in (float("nan"), -0.5):
        with pytest.raises(ValueError, match="temperature"):
            compiled(h, w, b, t, bad)


def _run_both(fns, inputs, t, temperature):
    """(value, leaves) of fn(*leaves, t, temperature) for each of ``fns``, backward run on each."""
    runs = []
    for fn in fns:
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        out = fn(*leaves, t, temperature)
        out.backward()
        runs.append((out, leaves))
    return runs
