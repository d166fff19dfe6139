"""Benchmark suite of the ``logprobs_entropy`` op: per-token log-probs + entropy from logits [N, V], fwd and fwd+bwd.

Providers: prepo backends, eager torch, torch.compile of it; on GPU TRL's own Triton kernel and Liger/flash-attn CE.
"""
from __future__ import annotations

import os

import torch

from benchmarks.kernels import harness
from benchmarks.kernels.harness import Case, Floor, Provider, Suite

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Logits of a trained LM have a spread of a few units; the scale only matters for how many exps underflow.
LOGIT_SCALE = 3.0
# "static": torch.compile per shape (after a dynamo reset, so no recompile limit is hit); "dynamic": one compile with
# symbolic shapes reused across cases (much less compile time; set by `benchmarks.kernels.run --compile dynamic`).
COMPILE_ENV = "PREPO_BENCH_COMPILE"


def _grid(device: str, quick: bool) -> dict:
    if quick:
        return {"N": [8192], "V": [151936], "dtype": ["bf16"]} if device == "cuda" else \
            {"N": [2048], "V": [49152], "dtype": ["fp32"]}
    # N = 8192 is left out on CPU: the eager peers alone would take minutes per case and ~40 GB at V = 151936
    return {"N": [2048, 8192] if device == "cuda" else [2048], "V": [32000, 49152, 151936], "dtype": ["fp32", "bf16"]}


def _make_case(p: dict) -> Case:
    N, V, dtype = int(p["N"]), int(p["V"]), str(p["dtype"])
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    elem = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return Case(f"N={N} V={V} {dtype}", {"N": N, "V": V, "dtype": dtype}, nbytes=N * V * elem, work_bytes=N * V * 4)


def _make_inputs(case: Case, device: str) -> dict:
    N, V, dtype = case.params["N"], case.params["V"], DTYPES[case.params["dtype"]]
    x = torch.empty(N, V, dtype=dtype, device=device)
    for s in range(0, N, 256):  # in row blocks: no fp32 temporary of the whole tensor
        x[s:s + 256] = torch.randn(min(256, N - s), V, device=device) * LOGIT_SCALE
    return {"logits": x, "targets": torch.randint(0, V, (N,), device=device)}


def _floor(case: Case, inputs: dict, device: str) -> Floor:
    f = harness.read_floor(inputs["logits"], device)
    return Floor(f.seconds, "one read of the logits: " + f.label)


# --- the op each provider runs ------------------------------------------------------------------------------------

def eager_logprobs_entropy(x: torch.Tensor, t: torch.Tensor):
    """What people write: fp32 log_softmax, gather the target, entropy from the full probability matrix."""
    logp = torch.log_softmax(x.float(), dim=-1)
    lp = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


def _runner(op: str, x: torch.Tensor, forward):
    """fwd: forward(x) without autograd; fwd+bwd: forward on a leaf view of x, then d(sum of outputs)/dx."""
    if op == "fwd":
        def run():
            with torch.no_grad():
                return forward(x)
        return run

    def run():
        xl = x.detach().requires_grad_(True)
        outs = forward(xl)
        return torch.autograd.grad(sum(o.sum() for o in outs), xl)
    return run


def with_cpu_capability(capability: str, run):
    """run, with the native kernels' inner loops forced to ``capability`` (PREPO_CPU_CAPABILITY) around each call;
    forward and backward both read it. "" leaves the choice to the CPU."""
    if not capability:
        return run
    from prepo_kernels.logprobs_entropy_native import CAPABILITY_ENV

    def forced():
        before = os.environ.get(CAPABILITY_ENV)
        os.environ[CAPABILITY_ENV] = capability
        try:
            return run()
        finally:
            if before is None:
                del os.environ[CAPABILITY_ENV]
            else:
                os.environ[CAPABILITY_ENV] = before
    return forced


def _prepo(backend: str, inplace: bool = False, capability: str = ""):
    def build(case, op, inp):
        import prepo_kernels as pk

        t = inp["targets"]
        return with_cpu_capability(capability, _runner(
            op, inp["logits"], lambda x: pk.logprobs_and_entropy(x, t, backend=backend, inplace_backward=inplace)))
    return build


def _eager(case, op, inp):
    t = inp["targets"]
    return _runner(op, inp["logits"], lambda x: eager_logprobs_entropy(x, t))


def _compiled(case, op, inp):
    dynamic = os.environ.get(COMPILE_ENV, "static") == "dynamic"
    if not dynamic:
        torch._dynamo.reset()  # a fresh static compile per case, never the recompile limit's eager fallback
    fn = torch.compile(eager_logprobs_entropy, dynamic=dynamic)
    t = inp["targets"]
    return _runner(op, inp["logits"], lambda x: fn(x, t))


def _fresh_buffer(case, op, inp):
    """Not an implementation: the cost of a new logits-sized buffer written once, which every out-of-place backward
    pays (first-touch page faults: the OS zeroes each page, under a hypervisor at a high price per 4 KiB page)."""
    x = inp["logits"]
    return lambda: (torch.empty_like(x).fill_(0.0),)


def _liger(case, op, inp):
    from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss

    loss = LigerCrossEntropyLoss(reduction="sum")
    t = inp["targets"]
    return _runner(op, inp["logits"], lambda x: (loss(x, t),))


def _trl(case, op, inp):
    """TRL 1.16's ``trl/kernels/logprob_entropy.py`` (what GRPOTrainer uses on CUDA): the same op, temperature 1."""
    from trl.kernels.logprob_entropy import selective_log_softmax_and_entropy

    t = inp["targets"]
    return _runner(op, inp["logits"], lambda x: selective_log_softmax_and_entropy(x, t, 1.0))


def _flash_attn(case, op, inp):
    from flash_attn.ops.triton.cross_entropy import cross_entropy_loss

    t = inp["targets"]
    return _runner(op, inp["logits"], lambda x: (cross_entropy_loss(x, t)[0],))


# --- availability -------------------------------------------------------------------------------------------------

def _native_ok(device):
    import prepo_kernels as pk

    return pk.native_available()


def _native_path_ok(capability: str):
    def check(device):
        from prepo_kernels import logprobs_entropy_native as native

        ok, why = native.native_available()
        if ok and capability not in native.supported_cpu_capabilities():
            return False, f"this CPU lacks the {capability} loops"
        return ok, why
    return check


def _triton_ok(device):
    from prepo_kernels import logprobs_entropy_triton

    return logprobs_entropy_triton.usable_on(torch.device(device))


def _trl_ok(device):
    if device != "cuda":  # a row on CPU too, so the table says why it is empty
        return False, "GPU only: a Triton kernel, and TRL has no CPU path for it"
    return _importable("trl.kernels.logprob_entropy")(device)


def _importable(module: str):
    def check(device):
        try:
            __import__(module)
            return True, ""
        except Exception as exc:  # not installed, or broken against this torch
            return False, f"{module} not importable ({type(exc).__name__})"
    return check


# Extra memory each provider is expected to need, in fp32 N x V tensors (only to skip what cannot fit).
PROVIDERS = (
    Provider("prepo native", _prepo("native"), devices=("cpu",), available=_native_ok,
             work_copies={"fwd+bwd": 1}),
    Provider("prepo native in-place", _prepo("native", inplace=True), ops=("fwd+bwd",), devices=("cpu",),
             available=_native_ok, mutates_inputs=True),
    # the AVX2 loops on a CPU that has AVX-512 too (benchmarks/kernels/logprobs_entropy_cpu_paths.py: every path side
    # by side)
    Provider("prepo native, avx2 loops", _prepo("native", capability="avx2"), ops=("fwd",), devices=("cpu",),
             available=_native_path_ok("avx2")),
    Provider("prepo native in-place, avx2 loops", _prepo("native", inplace=True, capability="avx2"),
             ops=("fwd+bwd",), devices=("cpu",), available=_native_path_ok("avx2"), mutates_inputs=True),
    Provider("prepo triton", _prepo("triton"), devices=("cuda",), available=_triton_ok, work_copies={"fwd+bwd": 1}),
    Provider("prepo triton in-place", _prepo("triton", inplace=True), ops=("fwd+bwd",), devices=("cuda",),
             available=_triton_ok, mutates_inputs=True),
    Provider("prepo torch backend", _prepo("torch"), work_copies={"fwd": 0.2, "fwd+bwd": 1.3}),
    Provider("(new gradient buffer: empty_like + fill_)", _fresh_buffer, ops=("fwd+bwd",), devices=("cpu",)),
    Provider("eager torch", _eager, work_copies={"fwd": 3, "fwd+bwd": 6}),
    Provider("torch.compile", _compiled, work_copies={"fwd": 1, "fwd+bwd": 3}),
    Provider("TRL logprob_entropy (Triton)", _trl, available=_trl_ok, work_copies={"fwd+bwd": 1}),
    Provider("liger-kernel CE (loss only)", _liger, devices=("cuda",), available=_importable("liger_kernel"),
             mutates_inputs=True, work_copies={"fwd+bwd": 1}),
    Provider("flash-attn CE (loss only)", _flash_attn, devices=("cuda",),
             available=_importable("flash_attn.ops.triton.cross_entropy"), work_copies={"fwd+bwd": 1}),
)

SUITE = harness.register(Suite(
    name="logits",
    title="Logits path: log-prob + entropy from logits [N, V]",
    grid=_grid,
    make_case=_make_case,
    make_inputs=_make_inputs,
    providers=PROVIDERS,
    floor=_floor,
    floor_multiple=lambda op: 1.0 if op == "fwd" else 3.0,  # fwd reads the logits; fwd+bwd reads twice, writes once
    baseline="eager torch",
    notes=("All targets valid, temperature 1. fwd+bwd = forward, then the gradient of sum(lp) + sum(entropy) w.r.t. "
           "the logits (returned, not accumulated). TRL's kernel (trl/kernels/logprob_entropy.py, TRL >= 1.16) computes the "
           "same two outputs and gradient; Liger and flash-attn compute the CE loss only (no entropy). "
           "prepo native runs the best loops this CPU has (prepo_kernels.cpu_capability()); the avx2 rows force those. "
           "On GPU, % of copy BW = (1 read for fwd, 2 reads + 1 write for fwd+bwd) / time / measured copy bandwidth."),
))
