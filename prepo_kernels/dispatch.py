"""Backend choice for every fused op, in one place.

"auto" picks Triton on CUDA, native C++ on CPU when built, else torch; a backend named explicitly fails loudly.
float64 inputs run on "torch" and "native" (which compute in double); the Triton kernels compute in float32 only,
so "auto" never picks them for float64 and backend="triton" refuses it with a TypeError naming the dtype.
"""
from __future__ import annotations

import torch

from prepo_kernels import logprobs_entropy_native, logprobs_entropy_torch, logprobs_entropy_triton

BACKENDS = ("auto", "triton", "native", "torch")

_MODULES = {"torch": logprobs_entropy_torch, "triton": logprobs_entropy_triton, "native": logprobs_entropy_native}


def resolve(backend: str, device: torch.device, dtype: torch.dtype | None = None, name: str = "logits") -> str:
    """Turn a requested backend into the concrete one that will run, or raise saying why it cannot.

    ``dtype`` / ``name``: the inputs' dtype and the argument that carries it (for the float64 refusal of Triton).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    double = dtype == torch.float64
    if backend == "auto":
        if device.type == "cuda" and not double and logprobs_entropy_triton.usable_on(device)[0]:
            return "triton"
        if device.type == "cpu" and logprobs_entropy_native.native_available()[0]:
            return "native"
        return "torch"
    if backend == "triton":
        ok, why = logprobs_entropy_triton.usable_on(device)
        if not ok:
            raise RuntimeError(f"backend='triton' is unavailable: {why}")
        if double:
            raise TypeError(f"{name} is float64, which backend='triton' does not support (its kernels compute in "
                            "float32); use backend='torch' or 'native', or 'auto'")
    if backend == "native":
        if device.type != "cpu":
            raise RuntimeError(f"backend='native' runs on CPU tensors only, got {device.type}")
        ok, why = logprobs_entropy_native.native_available()
        if not ok:
            raise RuntimeError(f"backend='native' is unavailable: {why}")
    return backend


def module(name: str):
    """The backend module implementing forward/backward (see logprobs_entropy_torch for the contract)."""
    return _MODULES[name]
