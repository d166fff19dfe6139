"""Benchmark suite of the ``linear_logprobs_entropy`` op: log-probs + entropy from hidden [N, H] and lm_head [V, H].

Providers: prepo's backends, eager torch (matmul + log_softmax + entropy), chunked torch, TRL, Liger, verl.
"""
from __future__ import annotations

import math

import torch

from benchmarks.kernels import harness
from benchmarks.kernels.harness import Case, Floor, Provider, Suite
from benchmarks.kernels.logprobs_entropy import DTYPES, _importable, _native_ok, _triton_ok, eager_logprobs_entropy
from prepo_kernels import IGNORE_INDEX

# Rows per chunk of the "chunked torch" peer: activation checkpointing per chunk, the usual hand-written fix.
TORCH_CHUNK_ROWS = 256
# TRL's vocabulary tile for its chunked head (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16).
TRL_VOCAB_CHUNK = 32768


def _grid(device: str, quick: bool) -> dict:
    if device == "cuda":
        return {"N": [8192] if quick else [8192, 32768], "H": [4096], "V": [151936], "dtype": ["bf16"],
                "ignored": [0]}
    # SmolLM2-135M's head (H = 576, V = 49152) on 2048 tokens: a few seconds per call here already.
    # ignored = % of positions whose target is IGNORE_INDEX (prompt, padding): `--param ignored=0,50`
    return {"N": [2048], "H": [576], "V": [49152], "dtype": ["fp32"], "ignored": [0]}


def _make_case(p: dict) -> Case:
    N, H, V, dtype, ignored = int(p["N"]), int(p["H"]), int(p["V"]), str(p["dtype"]), int(p.get("ignored", 0))
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not 0 <= ignored < 100:
        raise ValueError(f"ignored is a percentage in [0, 100), got {ignored}")
    elem = torch.empty((), dtype=DTYPES[dtype]).element_size()
    name = f"N={N} H={H} V={V} {dtype}" + (f" ignored={ignored}%" if ignored else "")
    return Case(name, {"N": N, "H": H, "V": V, "dtype": dtype, "ignored": ignored},
                nbytes=(N + V) * H * elem, work_bytes=N * V * 4)


def _make_inputs(case: Case, device: str) -> dict:
    N, H, V = (case.params[k] for k in ("N", "H", "V"))
    dtype = DTYPES[case.params["dtype"]]
    hidden = torch.randn(N, H, device=device).to(dtype)
    # lm_head-like scale: logits with a spread of a few units
    weight = (torch.randn(V, H, device=device) * (2.0 / math.sqrt(H))).to(dtype)
    targets = torch.randint(0, V, (N,), device=device)
    targets[torch.randperm(N, device=device)[: N * case.params["ignored"] // 100]] = IGNORE_INDEX
    keep = targets != IGNORE_INDEX
    # peers without an ignore_index score every position with a valid stand-in target and mask afterwards
    return {"hidden": hidden, "weight": weight, "targets": targets, "keep": keep, "safe": targets.clamp(min=0)}


def _floor(case: Case, inputs: dict, device: str) -> Floor:
    h, w = inputs["hidden"], inputs["weight"]
    seconds, _ = harness.median_seconds(lambda: h @ w.T, device)
    N, H, V = (case.params[k] for k in ("N", "H", "V"))
    return Floor(seconds, f"bare hidden @ weight.T, {2 * N * H * V / seconds / 1e12:.3g} TFLOP/s")


# --- the op each provider runs: forward(h, w) -> (lp, ent) -----------------------------------------------------------

def _runner(op: str, inp: dict, forward):
    """fwd: forward without autograd; fwd+bwd: then d(sum(lp) + sum(ent)) / d(hidden, weight) (returned)."""
    h, w = inp["hidden"], inp["weight"]
    if op == "fwd":
        def run():
            with torch.no_grad():
                return forward(h, w)
        return run

    def run():
        hl, wl = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
        outs = forward(hl, wl)
        return torch.autograd.grad(sum(o.sum() for o in outs), (hl, wl))
    return run


def _prepo(backend: str):
    def build(case, op, inp):
        import prepo_kernels as pk

        t = inp["targets"]
        return _runner(op, inp, lambda h, w: pk.linear_logprobs_and_entropy(h, w, t, backend=backend))
    return build


def _masked(inp, forward):
    """forward(h, w, safe_targets) on every position, then 0 at the ignored ones."""
    keep, safe = inp["keep"], inp["safe"]

    def run(h, w):
        return tuple(o * keep for o in forward(h, w, safe))
    return run


def _eager(case, op, inp):
    return _runner(op, inp, _masked(inp, lambda h, w, t: eager_logprobs_entropy(h @ w.T, t)))


def _chunked_torch(case, op, inp):
    from torch.utils.checkpoint import checkpoint

    def forward(h, w, t):
        outs = [checkpoint(lambda hc, tc: eager_logprobs_entropy(hc @ w.T, tc), h[s:s + TORCH_CHUNK_ROWS],
                           t[s:s + TORCH_CHUNK_ROWS], use_reentrant=False)
                for s in range(0, h.shape[0], TORCH_CHUNK_ROWS)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    return _runner(op, inp, _masked(inp, forward))


def _matmul(case, op, inp):
    """Only the GEMMs (no softmax): hidden @ weight.T forward, and its two backward GEMMs."""
    return _runner(op, inp, lambda h, w: (h @ w.T,))


def _trl(case, op, inp):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction, _use_triton

    keep = inp["keep"]

    def head(h, w, t):
        return tuple(ChunkedLogProbFunction.apply(h, w, None, t, 1.0, TRL_VOCAB_CHUNK, None, 1.0, ("entropy",))[:2])

    if not _use_triton(inp["hidden"].device):  # as TRL's trainer: every position through the head, then masked
        return _runner(op, inp, _masked(inp, head))

    def compact(h, w):  # ... and with Triton only the valid positions, scattered back
        return tuple(h.new_zeros(keep.shape, dtype=o.dtype).masked_scatter(keep, o)
                     for o in head(h[keep], w, inp["targets"][keep]))
    return _runner(op, inp, compact)


def _liger(case, op, inp):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    t = inp["targets"]
    return _runner(op, inp, lambda h, w: (liger_fused_linear_cross_entropy(h, w, t, reduction="sum"),))


def _verl(case, op, inp):
    import inspect

    from verl.utils.kernel.linear_cross_entropy import LinearCrossEntropy

    # the argument order has changed across verl releases: pass them by the names its forward declares
    params = list(inspect.signature(LinearCrossEntropy.forward).parameters.values())[1:]  # after ctx
    def forward(h, w, t):
        given = {"hidden": h, "weight": w, "labels": t, "reduction": "none", "temperature": 1.0}
        args = [given.get(p.name, None if p.default is inspect.Parameter.empty else p.default) for p in params]
        return tuple(LinearCrossEntropy.apply(*args))[:2]
    return _runner(op, inp, _masked(inp, forward))


# Extra memory each provider is expected to need, in fp32 N x V tensors (only to skip what cannot fit).
PROVIDERS = (
    Provider("prepo native", _prepo("native"), devices=("cpu",), available=_native_ok),
    Provider("prepo triton", _prepo("triton"), devices=("cuda",), available=_triton_ok),
    Provider("prepo torch backend", _prepo("torch")),
    Provider("bare matmul (GEMMs only)", _matmul, work_copies={"fwd": 1, "fwd+bwd": 2}),
    Provider("eager torch", _eager, work_copies={"fwd": 4, "fwd+bwd": 6}),
    Provider(f"chunked torch ({TORCH_CHUNK_ROWS} rows, checkpoint)", _chunked_torch),
    Provider("TRL ChunkedLogProbFunction", _trl, available=_importable("trl.kernels.chunked_logprob")),
    Provider("Liger fused linear CE (loss only)", _liger, devices=("cuda",),
             available=_importable("liger_kernel.transformers.functional")),
    Provider("verl linear_cross_entropy", _verl, devices=("cuda",),
             available=_importable("verl.utils.kernel.linear_cross_entropy")),
)

SUITE = harness.register(Suite(
    name="linear",
    title="Fused linear path: log-prob + entropy from hidden [N, H] and lm_head [V, H]",
    grid=_grid,
    make_case=_make_case,
    make_inputs=_make_inputs,
    providers=PROVIDERS,
    floor=_floor,
    floor_multiple=lambda op: 1.0 if op == "fwd" else 4.0,  # 2NHV FLOPs forward; 8NHV with the backward's recompute
    baseline="eager torch",
    efficiency_label="% of matmul FLOP/s",
    notes=("Temperature 1; all targets valid unless the case says ignored=x% (then prepo skips those positions, the "
           "peers without an ignore index score them and mask). fwd+bwd = forward, then the gradient of "
           "sum(lp) + sum(entropy) w.r.t. hidden and weight (returned: the peak extra memory includes those "
           "(N + V) x H gradients). x floor = time / bare hidden @ weight.T. TRL on CPU pushes every position "
           "through its head (as in its trainer); Liger computes the CE loss only. On GPU, % of matmul FLOP/s = the "
           "FLOP rate (2NHV fwd, 8NHV fwd+bwd) as a % of the bare matmul's (the floor line gives its TFLOP/s)."),
))
