"""Test-wide set-up: Triton runs in its CPU interpreter when no GPU is present (set before triton is imported)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import prepo_kernels as pk  # noqa: E402
from prepo_kernels import logprobs_entropy_triton  # noqa: E402


def available_backends(device="cpu"):
    dev = torch.device(device)
    names = ["torch"]
    if logprobs_entropy_triton.usable_on(dev)[0]:
        names.append("triton")
    if dev.type == "cpu" and pk.native_available()[0]:
        names.append("native")
    return names


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=available_backends(DEVICE))
def backend(request):
    return request.param


@pytest.fixture
def device():
    return DEVICE
