"""Input validation shared by every fused op.

Bad input raises ValueError/TypeError naming the argument, before any kernel runs.
"""
from __future__ import annotations

import math
import numbers

import torch

IGNORE_INDEX = -100  # a target that is not scored (prompt, padding): every op's default ignore_index
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int64, torch.int32)


def check_temperature(temperature) -> float:
    """The temperature as a float; under torch.compile a traced (symbolic) value passes through unchecked: every op
    that takes it checks it again in its own body, which runs on the concrete value (see the custom ops)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (numbers.Real, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    if torch.compiler.is_compiling():
        return temperature * 1.0  # math.isfinite / float() would break dynamo's graph on a symbolic float
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return t


def check_ignore_index(ignore_index) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return int(ignore_index)


def check_float_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in and return: float64 for float64 inputs, float32 for every other float."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_targets(targets, lead_shape, device, name: str = "targets") -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must be int64 or int32, got {targets.dtype}")
    if tuple(targets.shape) != tuple(lead_shape):
        raise ValueError(f"{name} has shape {tuple(targets.shape)}, expected {tuple(lead_shape)}")
    if targets.device != device:
        raise ValueError(f"{name} is on {targets.device} but the inputs are on {device}")


def check_logits(logits, targets=None) -> int:
    """Validate logits (..., V) [and targets (...)]; return V."""
    check_float_tensor(logits, "logits")
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension (..., V)")
    V = logits.shape[-1]
    if V == 0:
        raise ValueError("logits has an empty vocabulary dimension (V = 0)")
    if targets is not None:
        check_targets(targets, logits.shape[:-1], logits.device)
    return V


def check_target_range(targets: torch.Tensor, V: int, ignore_index: int, name: str = "targets") -> None:
    """Data-dependent check, run inside the ops (so it also fires under torch.compile)."""
    if targets.numel() == 0:
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bool(bad.any()):
        first = targets[bad][0].item()
        raise ValueError(
            f"{name} has value {first} outside [0, {V}) that is not ignore_index={ignore_index}"
        )


def check_mask(mask, shape, device) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but the inputs are on {device}")
