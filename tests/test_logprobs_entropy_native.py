"""The C++ CPU kernels (prepo_kernels._C) beyond the shared backend matrix: tiles, threads, in-place, int64 offsets.

Each numeric test runs every inner-loop path in turn (AVX-512, AVX2, scalar: the `path` fixture forces it through
PREPO_CPU_CAPABILITY; a path this CPU lacks skips). Also the fallback when the extension is missing; that test runs
everywhere, the rest only where _C is built.
"""
import importlib
import math
import platform
import sys

import pytest
import torch

import prepo_kernels as pk
from prepo_kernels import dispatch
from prepo_kernels import logprobs_entropy_native as native
from reference import ref_logprobs_entropy

BUILT = pk.native_available()[0]
needs_native = pytest.mark.skipif(not BUILT, reason=f"prepo_kernels._C not built: {pk.native_available()[1]}")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
INF, NAN = float("inf"), float("nan")
TILE = 2048  # csrc/rows.h kTile: the forward's rescale happens at tile borders
PATHS = ["avx512_bf16", "avx512", "avx2", "scalar"]  # csrc/cpu_capability.h, best first
SUPPORTED = native.supported_cpu_capabilities()


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """The inner loops the test runs, forced through PREPO_CPU_CAPABILITY; skipped where this CPU lacks them."""
    if not BUILT:
        pytest.skip(f"prepo_kernels._C not built: {pk.native_available()[1]}")
    if request.param not in SUPPORTED:
        pytest.skip(f"this CPU lacks the {request.param} loops (it supports {SUPPORTED})")
    monkeypatch.setenv(native.CAPABILITY_ENV, request.param)
    assert pk.cpu_capability() == request.param
    return request.param


def _ref_grad(x, t, a, b, temperature=1.0, ignore_index=-100):
    xr = x.detach().double().requires_grad_(True)
    rlp, rent = ref_logprobs_entropy(xr, t, temperature, ignore_index)
    (g,) = torch.autograd.grad((a.double() * rlp).sum() + (b.double() * rent).sum(), xr)
    return rlp.detach(), rent.detach(), g


def _grad_tol(dtype, ref):
    if dtype == torch.float32:
        return dict(rtol=1e-4, atol=1e-5)
    # one rounding of the output to bf16 / fp16 (relative 2^-8 / 2^-11) dominates
    rel = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    return dict(rtol=2 * rel, atol=2 * rel * ref.abs().max().item())


def _fwd_bwd(x, t, temperature=1.0, ignore_index=-100, backend="native"):
    """lp, ent and the gradient of a random mix of both, plus the float64 reference of all three."""
    xx = x.clone().requires_grad_(True)
    lp, ent = pk.logprobs_and_entropy(xx, t, temperature=temperature, ignore_index=ignore_index, backend=backend)
    a, b = torch.randn(2, *t.shape)
    (g,) = torch.autograd.grad((a * lp).sum() + (b * ent).sum(), xx)
    return (lp, ent, g), _ref_grad(x, t, a, b, temperature, ignore_index)


def _assert_matches(out, ref, x, temperature=1.0):
    (lp, ent, g), (rlp, rent, rg) = out, ref
    big = x.float().masked_fill(~torch.isfinite(x.float()), 0).abs().max().item()
    tol = 1e-5 + 4e-7 * big / temperature
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=tol)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=tol)
    assert (lp <= 0).all(), "log-probs must be <= 0"
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), rg, **_grad_tol(x.dtype, rg))


# --- dispatch and the missing-extension fallback ---------------------------------------------------------------------

@needs_native
def test_auto_picks_native_on_cpu():
    assert dispatch.resolve("auto", torch.device("cpu")) == "native"
    x, t = torch.randn(5, 300), torch.randint(0, 300, (5,))
    auto = pk.logprobs_and_entropy(x, t)
    nat = pk.logprobs_and_entropy(x, t, backend="native")
    for u, v in zip(auto, nat):
        assert torch.equal(u, v)


def test_fallback_when_extension_is_missing(monkeypatch):
    """With _C unimportable, prepo_kernels still works, "auto" runs torch, and the reason is reported."""
    # `from prepo_kernels import _C` now raises ImportError, as on a machine where the build was skipped
    monkeypatch.setitem(sys.modules, "prepo_kernels._C", None)
    monkeypatch.delattr(pk, "_C", raising=False)
    try:
        importlib.reload(native)
        ok, why = pk.native_available()
        assert not ok and why.startswith("prepo_kernels._C could not be imported (ModuleNotFoundError")
        assert pk.cpu_capability() is None and native.supported_cpu_capabilities() == []
        assert dispatch.resolve("auto", torch.device("cpu")) == "torch"
        x, t = torch.randn(3, 40), torch.randint(0, 40, (3,))
        lp, _ = pk.logprobs_and_entropy(x, t)
        torch.testing.assert_close(lp.double(), ref_logprobs_entropy(x, t)[0], rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="backend='native' is unavailable: prepo_kernels._C could not"):
            pk.logprobs_and_entropy(x, t, backend="native")
    finally:
        monkeypatch.undo()
        importlib.reload(native)
    assert pk.native_available()[0] == BUILT


def _cpuinfo_flags() -> set:
    with open("/proc/cpuinfo") as f:
        return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())


@needs_native
def test_capability_from_cpu_flags_and_override(monkeypatch):
    """Without an override the best path this CPU has runs (checked against the kernel's own CPU flags and torch's
    choice); PREPO_CPU_CAPABILITY forces a path, is read at every call, and a bad name or a missing path says so."""
    monkeypatch.delenv(native.CAPABILITY_ENV, raising=False)
    assert SUPPORTED == [p for p in PATHS if p in SUPPORTED] and SUPPORTED[-1] == "scalar"
    assert pk.cpu_capability() == SUPPORTED[0]
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        flags = _cpuinfo_flags()
        expect = {
            "avx512_bf16": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= flags,
            "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags,
            "avx2": {"avx2", "fma", "f16c"} <= flags,
            "scalar": True,
        }
        assert SUPPORTED == [p for p in PATHS if expect[p]]
        if torch.backends.cpu.get_cpu_capability() == "AVX512":
            assert "avx512" in SUPPORTED
    for name in ("auto", ""):
        monkeypatch.setenv(native.CAPABILITY_ENV, name)
        assert pk.cpu_capability() == SUPPORTED[0]
    x, t = torch.randn(3, 40), torch.randint(0, 40, (3,))
    monkeypatch.setenv(native.CAPABILITY_ENV, "avx1024")
    with pytest.raises(ValueError, match="PREPO_CPU_CAPABILITY must be one of auto, avx512_bf16, avx512, avx2, scalar"):
        pk.cpu_capability()
    with pytest.raises(ValueError, match="PREPO_CPU_CAPABILITY must be one of"):
        pk.logprobs_and_entropy(x, t, backend="native")
    for name in PATHS:
        monkeypatch.setenv(native.CAPABILITY_ENV, name)
        if name in SUPPORTED:
            assert pk.cpu_capability() == name
        else:  # forced on a CPU without it: an error, never an illegal instruction
            with pytest.raises(RuntimeError, match=f"PREPO_CPU_CAPABILITY={name}: this CPU .* lacks"):
                pk.logprobs_and_entropy(x, t, backend="native")


@needs_native
@pytest.mark.skipif("avx512_bf16" not in SUPPORTED, reason=f"this CPU lacks avx512_bf16 (it supports {SUPPORTED})")
def test_bf16_rounding_same_bits_with_and_without_avx512_bf16(monkeypatch):
    """The AVX512_BF16 instruction and the integer rounding of the avx512 path store the same bf16 gradients: ties
    to even, large and tiny values, NaN rows (the reference test of the gradients is test_masked_columns_ragged_rows)."""
    N, V = 12, 3 * 32 + 16 + 5  # pairs of vectors, one single vector and a masked tail
    x = (torch.randn(N, V) * torch.logspace(-3, 3, N)[:, None]).bfloat16()
    x[3, 7] = NAN
    t = torch.randint(0, V, (N,))
    lp, ent, lse, ez = native.forward(x, t, 0.9, -100)
    g = torch.randn(2, N) * torch.logspace(-30, 30, N)
    outs = []
    for name in ("avx512_bf16", "avx512"):
        monkeypatch.setenv(native.CAPABILITY_ENV, name)
        outs.append(native.backward(g[0], g[1], x, t, lse, ez, 0.9, -100, torch.empty_like(x)))
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
    assert torch.isnan(outs[0][3]).all() and torch.isfinite(outs[0][4:]).all()


@needs_native
@pytest.mark.skipif(not {"avx512", "avx2"} <= set(SUPPORTED), reason=f"needs avx512 and avx2 (this CPU: {SUPPORTED})")
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_avx512_as_accurate_as_avx2(monkeypatch, temperature):
    """The AVX-512 loops (their exp: 2^(j/16) from a table; the forward's with ln2 in one float) miss the float64
    reference by no more than the AVX2 loops do (max and mean), in lp, entropy and gradient: fp32 rows of several
    tiles at logit scales 1, 4 and 30."""
    gen = torch.Generator().manual_seed(0)
    N, V = 96, 3 * TILE + 77
    x = torch.randn(N, V, generator=gen) * torch.tensor([1.0, 4.0, 30.0]).repeat_interleave(N // 3)[:, None]
    t = torch.randint(0, V, (N,), generator=gen)
    g = torch.randn(2, N, generator=gen)
    ref = _ref_grad(x, t, g[0], g[1], temperature)
    err = {}
    for name in ("avx512", "avx2"):
        monkeypatch.setenv(native.CAPABILITY_ENV, name)
        lp, ent, lse, ez = native.forward(x, t, temperature, -100)
        dx = native.backward(g[0], g[1], x, t, lse, ez, temperature, -100, torch.empty_like(x))
        err[name] = [(out.double() - r).abs() for out, r in zip((lp, ent, dx), ref)]
    for what, mine, theirs in zip(("lp", "entropy", "gradient"), err["avx512"], err["avx2"]):
        assert mine.max() <= 1.1 * theirs.max() and mine.mean() <= 1.1 * theirs.mean(), (what, mine.max(), theirs.max())


# --- numerics the shared matrix does not reach ------------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_huge_vocab(dtype, path):
    V = 151936 + 5  # Qwen-sized, not a multiple of the tile or the vector width
    x = (torch.randn(6, V) * 4).to(dtype)
    t = torch.randint(0, V, (6,))
    t[1] = -100
    out, ref = _fwd_bwd(x, t, temperature=0.9)
    _assert_matches(out, ref, x, 0.9)
    assert (out[2][1] == 0).all()


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
def test_running_max_moves_across_tiles(dtype, path):
    """Rows whose max grows tile after tile (a rescale at every border), starts after -inf tiles, or sits in a tail."""
    V = 3 * TILE + 13
    ramp = torch.linspace(-20.0, 20.0, V)
    x = torch.stack([
        ramp + 0.1 * torch.randn(V),                                            # max rises in every tile
        torch.cat([torch.full((TILE + 5,), -math.inf), torch.randn(V - TILE - 5)]),  # first tile all -inf
        torch.randn(V).index_fill_(0, torch.tensor([V - 1]), 30.0),            # max in the ragged tail
        ramp.flip(0) * 4,                                                     # max first, tiny terms after
    ]).to(dtype)
    t = torch.tensor([V - 2, TILE + 7, V - 1, 1])
    out, ref = _fwd_bwd(x, t, temperature=0.8)
    _assert_matches(out, ref, x, 0.8)
    assert (out[2][1, : TILE + 5] == 0).all(), "-inf columns get exactly zero gradient"


@needs_native
def test_entropy_no_cancellation_over_many_tiles(path):
    V = 5 * TILE + 3
    x = 2e4 + torch.randn(3, V)
    ent = pk.token_entropy(x, backend="native")
    rent = ref_logprobs_entropy(x, torch.zeros(3, dtype=torch.long))[1]
    torch.testing.assert_close(ent.double(), rent, rtol=1e-4, atol=3e-3)


@pytest.mark.parametrize("V", [TILE + 1001, 47])
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_columns_ragged_rows(dtype, V, path):
    """-inf columns (a masked target among them), an ignored row, a vector-width tail, T != 1 and T = 1."""
    x = (torch.randn(9, V) * 5).to(dtype)
    x[2, ::3] = -math.inf
    x[3, 1::2] = -math.inf
    t = torch.randint(0, V, (9,))
    t[2], t[3], t[4] = 1, 3, -100
    for temperature in (1.3, 1.0):
        out, ref = _fwd_bwd(x, t, temperature=temperature)
        _assert_matches(out, ref, x, temperature)


# --- threads, in-place, strides, offsets ------------------------------------------------------------------------

@needs_native
def test_many_rows_all_threads_bitwise_stable():
    """N large enough that every thread gets many row blocks; results do not depend on the thread count."""
    N, V = 6000, 333
    x = torch.randn(N, V) * 3
    t = torch.randint(0, V, (N,))
    t[::7] = -100
    out, ref = _fwd_bwd(x, t)
    _assert_matches(out, ref, x)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pk.logprobs_and_entropy(x, t, backend="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], out[0]) and torch.equal(one[1], out[1])


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_backward_matches_out_of_place(dtype, path):
    N, V = 33, 4099
    x = (torch.randn(N, V) * 3).to(dtype)
    t = torch.randint(0, V, (N,))
    t[5] = -100
    lp, ent, lse, ez = native.forward(x, t, 0.7, -100)
    g_lp, g_ent = torch.randn(2, N)
    out = torch.empty_like(x)
    native.backward(g_lp, g_ent, x, t, lse, ez, 0.7, -100, out)
    y = x.clone()
    native.backward(g_lp, g_ent, y, t, lse, ez, 0.7, -100, y)
    assert torch.equal(y, out), "in-place and out-of-place gradients must be identical"
    _, _, rg = _ref_grad(x, t, g_lp, g_ent, 0.7)
    torch.testing.assert_close(out.double(), rg, **_grad_tol(dtype, rg))
    assert (out[5] == 0).all()


@needs_native
def test_row_strided_inplace_touches_only_its_columns(path):
    N, V, pad = 7, 1000, 37
    wide = torch.randn(N, V + 2 * pad)
    view = wide[:, pad:pad + V]  # stride(0) = V + 2 pad > V
    x = view.clone()
    t = torch.randint(0, V, (N,))
    lp, ent, lse, ez = native.forward(view, t, 1.0, -100)
    rlp, rent = ref_logprobs_entropy(x, t)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=1e-5)
    edges = (wide[:, :pad].clone(), wide[:, pad + V:].clone())
    g = torch.ones(N)
    native.backward(g, g, view, t, lse, ez, 1.0, -100, view)
    assert torch.equal(wide[:, :pad], edges[0]) and torch.equal(wide[:, pad + V:], edges[1])
    _, _, rg = _ref_grad(x, t, g, g)
    torch.testing.assert_close(view.double(), rg, rtol=1e-4, atol=1e-5)


@needs_native
def test_ignore_index_far_out_of_range_is_never_read(path):
    """A gather at ignore_index = 2^40 would read far outside the buffer (a crash, not a wrong number)."""
    ign = 2 ** 40
    x = torch.randn(4, 50, requires_grad=True)
    t = torch.tensor([ign, 3, ign, 49])
    lp, ent = pk.logprobs_and_entropy(x, t, ignore_index=ign, backend="native")
    rlp, rent = ref_logprobs_entropy(x.detach(), t, ignore_index=ign)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(lp.sum() + ent.sum(), x)
    assert (g[0] == 0).all() and (g[2] == 0).all() and (g[1] != 0).any()


@needs_native
def test_int64_row_offsets(tmp_path, path):
    """Row 1 starts 2^31 + 17 elements in: int32 offsets would wrap. A sparse file keeps the test at a few pages."""
    V, stride = 1000, 2 ** 31 + 17
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate((stride + V) * 2)
    buf = torch.from_file(str(path), shared=False, size=stride + V, dtype=torch.bfloat16)
    x = buf.as_strided((2, V), (stride, 1))
    x.copy_((torch.randn(2, V) * 3).bfloat16())
    t = torch.tensor([3, V - 1])
    lp, ent, lse, ez = native.forward(x, t, 1.0, -100)
    rlp, rent = ref_logprobs_entropy(x.clone(), t)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=1e-5)
    ref_x = x.clone()
    g = torch.tensor([1.0, -2.0])
    native.backward(g, g, x, t, lse, ez, 1.0, -100, x)
    _, _, rg = _ref_grad(ref_x, t, g, g)
    torch.testing.assert_close(x.double(), rg, **_grad_tol(torch.bfloat16, rg))


# --- the C++ layer validates its own input ------------------------------------------------------------------------

@needs_native
class TestCppChecks:
    def setup_method(self):
        from prepo_kernels import _C

        self.C = _C
        self.x = torch.randn(4, 10)
        self.t = torch.tensor([0, 1, 2, 3])

    def test_dtypes(self):
        with pytest.raises(TypeError, match="logits must be float32, bfloat16, float16 or float64, got Long"):
            self.C.logprobs_entropy_fwd(self.x.long(), self.t, 1.0, -100)
        with pytest.raises(TypeError, match="targets must be Long"):
            self.C.logprobs_entropy_fwd(self.x, self.t.int(), 1.0, -100)
        lp, ent, lse, ez = self.C.logprobs_entropy_fwd(self.x.double(), self.t, 1.0, -100)
        assert lp.dtype == ent.dtype == lse.dtype == ez.dtype == torch.float64
        g = torch.ones(4)
        with pytest.raises(TypeError, match="grad_lp must be Double"):  # float64 logits: float64 vectors
            self.C.logprobs_entropy_bwd(g, g.double(), self.x.double(), self.t, lse, ez, 1.0, -100,
                                        torch.empty(4, 10, dtype=torch.float64))

    def test_shapes_and_strides(self):
        with pytest.raises(ValueError, match="2-D"):
            self.C.logprobs_entropy_fwd(self.x[None], self.t, 1.0, -100)
        with pytest.raises(ValueError, match="targets must have shape"):
            self.C.logprobs_entropy_fwd(self.x, self.t[:3], 1.0, -100)
        with pytest.raises(ValueError, match="unit stride"):
            self.C.logprobs_entropy_fwd(torch.randn(10, 4).T, self.t, 1.0, -100)

    def test_targets_and_temperature(self):
        with pytest.raises(ValueError, match="targets has value 10 at row 3"):
            self.C.logprobs_entropy_fwd(self.x, torch.tensor([0, 1, 2, 10]), 1.0, -100)
        with pytest.raises(ValueError, match="temperature"):
            self.C.logprobs_entropy_fwd(self.x, self.t, 0.0, -100)

    def test_backward_out(self):
        lp, ent, lse, ez = self.C.logprobs_entropy_fwd(self.x, self.t, 1.0, -100)
        g = torch.ones(4)
        with pytest.raises(TypeError, match="out must have the dtype"):
            self.C.logprobs_entropy_bwd(g, g, self.x, self.t, lse, ez, 1.0, -100, torch.empty(4, 10).bfloat16())
        with pytest.raises(ValueError, match="out must have the shape"):
            self.C.logprobs_entropy_bwd(g, g, self.x, self.t, lse, ez, 1.0, -100, torch.empty(4, 11))
        with pytest.raises(ValueError, match="overlap"):
            wide = torch.randn(4, 11)
            self.C.logprobs_entropy_bwd(g, g, wide[:, :10], self.t, lse, ez, 1.0, -100, wide[:, 1:])
        with pytest.raises(ValueError, match="grad_lp must have shape"):
            self.C.logprobs_entropy_bwd(g[:3], g, self.x, self.t, lse, ez, 1.0, -100, torch.empty(4, 10))


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
def test_logprob_never_positive(dtype, path):
    """lp <= 0 exactly (not within a tolerance): the row max must contribute exactly e^0 = 1 to the sum."""
    for V in (1, 2, 9, 2049):
        x = (torch.randn(64, V) * 40).to(dtype)
        t = torch.randint(0, V, (64,))
        for temperature in (0.3125, 0.7, 1.0, 3.3):
            lp, ent = pk.logprobs_and_entropy(x, t, temperature=temperature, backend="native")
            assert (lp <= 0).all() and (ent >= 0).all(), (V, temperature)


# --- float64 (computed in double) and rows without a finite log-sum-exp, across tiles and both loop kinds ---------

def test_float64_in_double_across_tiles(path):
    """float64 rows over several tiles, a max that moves, -inf columns, a masked target, an ignored row, in place too:
    double all the way (a float32 pass would miss the reference by ~1e-7), whichever path is forced."""
    V = 2 * TILE + 77
    x = torch.randn(6, V, dtype=torch.float64) * 30
    x[1, : TILE + 3] = -INF
    x[2] += torch.linspace(-50, 50, V, dtype=torch.float64)
    x[3, ::5] = -INF
    t = torch.tensor([V - 1, TILE + 9, 5, 0, -100, TILE])
    out, ref = _fwd_bwd(x, t, temperature=0.7)
    lp, ent, lse, ez = native.forward(x, t, 0.7, -100)
    g = torch.randn(6, dtype=torch.float64)
    y = x.clone()
    native.backward(g, g, y, t, lse, ez, 0.7, -100, y)
    (lp, ent, gx), (rlp, rent, rg) = out, ref
    assert lp.dtype == ent.dtype == gx.dtype == torch.float64
    torch.testing.assert_close(lp, rlp, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(ent, rent, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(gx, rg, rtol=1e-10, atol=1e-12)
    assert lp[3] == -INF and torch.isfinite(gx).all()
    torch.testing.assert_close(y, _ref_grad(x, t, g, g, 0.7)[2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_non_finite_rows_across_tiles(dtype, path):
    """+inf / NaN in a later tile than the max (after a rescale), in the ragged tail, and an all -inf row: NaN out and
    a NaN gradient row on every path; the clean rows are untouched by them."""
    V = 3 * TILE + 13
    x = (torch.randn(6, V) * 4).to(dtype)
    x[0, 2 * TILE + 1] = INF  # +inf two tiles after the first max
    x[1, TILE + 5] = NAN
    x[2, V - 1] = INF  # in the tail
    x[3] = -INF
    t = torch.tensor([0, 2 * TILE + 1, V - 1, 3, 17, -100])
    x[5, 4] = INF  # ignored row: 0, zero gradient
    xx = x.clone().requires_grad_(True)
    lp, ent = pk.logprobs_and_entropy(xx, t, temperature=0.9, backend="native")
    (g,) = torch.autograd.grad(lp.sum() - 0.5 * ent.sum(), xx)
    rlp, rent = ref_logprobs_entropy(x.double(), t, 0.9)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=1e-4, equal_nan=True)
    assert torch.isnan(lp[:4]).all() and torch.isnan(ent[:4]).all() and torch.isfinite(lp[4])
    assert torch.isnan(g[:4]).all() and torch.isfinite(g[4]).all() and (g[5] == 0).all()
