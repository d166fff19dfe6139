"""Benchmark suite of the ``sequence_perplexity`` op: exp(mean NLL) per row of logits [B, T, V], fwd and fwd+bwd.

Providers: prepo's backends, eager torch (fp32 log_softmax, gather, masked mean), torch.compile of it.
"""
from __future__ import annotations

import os

import torch

from benchmarks.kernels import harness, logprobs_entropy as logits_suite
from benchmarks.kernels.harness import Case, Provider, Suite
from prepo_kernels import IGNORE_INDEX

# Each row keeps a random length in [T / 2, T] and is right-padded with IGNORE_INDEX, as the prompt scorer's batches are.
MIN_KEPT_FRACTION = 0.5


def _grid(device: str, quick: bool) -> dict:
    if device == "cuda":
        return {"B": [8] if quick else [8, 32], "T": [1024], "V": [151936], "dtype": ["bf16"]}
    # a prompt-scoring batch of SmolLM2's vocabulary: ~0.1-0.4 GB of logits, well under a second per eager call
    return {"B": [4], "T": [256], "V": [32000] if quick else [32000, 49152], "dtype": ["fp32"] if quick else
            ["fp32", "bf16"]}


def _make_case(p: dict) -> Case:
    B, T, V, dtype = int(p["B"]), int(p["T"]), int(p["V"]), str(p["dtype"])
    if dtype not in logits_suite.DTYPES:
        raise ValueError(f"dtype must be one of {sorted(logits_suite.DTYPES)}, got {dtype!r}")
    if min(B, T, V) < 1:
        raise ValueError(f"B, T and V must be positive, got B={B} T={T} V={V}")
    elem = torch.empty((), dtype=logits_suite.DTYPES[dtype]).element_size()
    return Case(f"B={B} T={T} V={V} {dtype}", {"B": B, "T": T, "V": V, "dtype": dtype},
                nbytes=B * T * V * elem, work_bytes=B * T * V * 4)


def _make_inputs(case: Case, device: str) -> dict:
    B, T, V = (case.params[k] for k in ("B", "T", "V"))
    flat = logits_suite._make_inputs(logits_suite._make_case({"N": B * T, "V": V, "dtype": case.params["dtype"]}),
                                     device)
    targets = flat["targets"].view(B, T)
    kept = torch.randint(max(1, int(T * MIN_KEPT_FRACTION)), T + 1, (B, 1), device=device)
    targets[torch.arange(T, device=device).expand(B, T) >= kept] = IGNORE_INDEX
    return {"logits": flat["logits"].view(B, T, V), "targets": targets}


# --- the op each provider runs ------------------------------------------------------------------------------------

def eager_sequence_perplexity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What people write: fp32 log_softmax over the whole batch, gather the targets, exp of the masked mean NLL."""
    keep = (t != IGNORE_INDEX).float()
    lp = torch.log_softmax(x.float(), dim=-1).gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.exp(-(lp * keep).sum(-1) / keep.sum(-1))


def _prepo(backend: str):
    def build(case, op, inp):
        import prepo_kernels as pk

        t = inp["targets"]
        return logits_suite._runner(op, inp["logits"], lambda x: (pk.sequence_perplexity(x, t, backend=backend),))
    return build


def _eager(case, op, inp):
    t = inp["targets"]
    return logits_suite._runner(op, inp["logits"], lambda x: (eager_sequence_perplexity(x, t),))


def _compiled(case, op, inp):
    dynamic = os.environ.get(logits_suite.COMPILE_ENV, "static") == "dynamic"
    if not dynamic:
        torch._dynamo.reset()  # a fresh static compile per case, never the recompile limit's eager fallback
    fn = torch.compile(eager_sequence_perplexity, dynamic=dynamic)
    t = inp["targets"]
    return logits_suite._runner(op, inp["logits"], lambda x: (fn(x, t),))


# Extra memory each provider is expected to need, in fp32 B x T x V tensors (only to skip what cannot fit).
PROVIDERS = (
    Provider("prepo native", _prepo("native"), devices=("cpu",), available=logits_suite._native_ok,
             work_copies={"fwd+bwd": 1}),
    Provider("prepo triton", _prepo("triton"), devices=("cuda",), available=logits_suite._triton_ok,
             work_copies={"fwd+bwd": 1}),
    Provider("prepo torch backend", _prepo("torch"), work_copies={"fwd": 0.2, "fwd+bwd": 1.3}),
    Provider("eager torch", _eager, work_copies={"fwd": 2, "fwd+bwd": 4}),
    Provider("torch.compile", _compiled, work_copies={"fwd": 1, "fwd+bwd": 2}),
)

SUITE = harness.register(Suite(
    name="perplexity",
    title="Sequence perplexity: exp(mean NLL over the kept positions) per row of logits [B, T, V]",
    grid=_grid,
    make_case=_make_case,
    make_inputs=_make_inputs,
    providers=PROVIDERS,
    floor=logits_suite.SUITE.floor,                    # one read of the logits, as for the per-token op
    floor_multiple=logits_suite.SUITE.floor_multiple,
    baseline="eager torch",
    notes=(f"Temperature 1; each row keeps a random {MIN_KEPT_FRACTION:g}-1 of its positions, the rest are "
           f"IGNORE_INDEX ({IGNORE_INDEX}, right padding). fwd+bwd = forward, then the gradient of sum(perplexity) "
           "w.r.t. the logits (returned, not accumulated). The eager peer computes log_softmax over every position, "
           "padding included; prepo's op reads each row of logits once forward."),
))
