"""Every launch configuration the Triton launchers can choose, per GPU architecture and dtype, and the one launch path.

The launchers (``logprobs_entropy_triton``, ``linear_logprobs_entropy_triton``) pick from here;
``benchmarks.kernels.triton_tiles`` compiles all of it.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

# Architectures whose launch configurations are compiled and checked (benchmarks.kernels.triton_tiles and its test):
# sm_80 (A100), sm_90 (H100 / H200), sm_100 (B200). Every other device runs the configurations of its family.
ARCHS = (80, 90, 100)


def family(major: int, minor: int = 0) -> int:
    """The configuration family of a compute capability: 90 (Hopper), 100 (datacenter Blackwell), else 80.

    Family 80 also serves sm_86 / sm_89 (Ampere and Ada consumer parts) and sm_120 (consumer Blackwell): same
    mma.sync instructions and 64K registers per SM, but only 99 KiB of shared memory per block, so family 80's
    configurations are checked against that smaller limit (``SMEM_LIMIT``).
    """
    if not isinstance(major, int) or not isinstance(minor, int) or major < 0 or minor < 0:
        raise ValueError(f"major, minor: expected a compute capability like (9, 0), got ({major!r}, {minor!r})")
    if major == 9:
        return 90
    if major in (10, 11):
        return 100
    return 80


# Opt-in shared memory per block (bytes) each family's configurations must fit: family 80 at its smallest member
# (sm_86 / sm_89 / sm_120: 99 KiB; A100 itself allows 163 KiB), H100 227 KiB, B200 227 KiB.
SMEM_LIMIT = {80: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}


@dataclass(frozen=True)
class Tiles:
    """One launch configuration: the kernel's tile constexprs plus num_warps and num_stages."""

    constexprs: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def of(cls, num_warps: int, num_stages: int, **constexprs: int) -> "Tiles":
        return cls(tuple(constexprs.items()), num_warps, num_stages)

    def meta(self) -> dict:
        return dict(self.constexprs)

    def kwargs(self) -> dict:
        return dict(self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.constexprs) + f" w{self.num_warps} s{self.num_stages}"


def _lin(bn, bv, bh, warps, stages, group=8) -> Tiles:
    return Tiles.of(warps, stages, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, GROUP_R=group)


# --- the fused linear path (linear_logprobs_entropy_triton): logits tiles from tl.dot, consumed in registers ----------
# Keyed by (family, dot kind): "16bit" (bf16 / fp16 inputs), "tf32" and "ieee" (fp32 inputs, by torch's TF32 setting).
# Rows x vocabulary tiles of 64 x 128 with 8 warps, or 64 x 64 with 4: 32 fp32 accumulator registers per thread, so
# the online-softmax epilogue's [BLOCK_N, BLOCK_V] temporaries fit beside them: at most 240 registers, no spill on any
# target (results/triton-tiles.md). 128 x 128 tiles (the previous choice) held 64 per thread and
# used all 255 registers, one block per SM, with spills on sm_90 / sm_100. fp32 tiles take half the hidden step (the
# same bytes per stage); "ieee" has no tensor cores (FMA dot, operands in registers): a 16-wide hidden step.
# Several entries for one key are all spill-free; triton.autotune picks among them per (V, H, dtype, precision) on
# the GPU at hand (the choice needs a real GPU: one 8-warp block per SM with wide tiles against 2-3 blocks of 4).
LINEAR_FWD: dict[tuple[int, str], tuple[Tiles, ...]] = {
    (80, "16bit"): (_lin(64, 128, 64, 8, 3), _lin(64, 64, 64, 4, 3)),
    (90, "16bit"): (_lin(64, 128, 64, 8, 4), _lin(64, 64, 64, 4, 4)),
    (100, "16bit"): (_lin(64, 128, 64, 8, 3), _lin(64, 64, 64, 4, 3)),  # 4 stages: 238 registers with Triton 3.6
    (80, "tf32"): (_lin(64, 128, 32, 8, 3),),
    (90, "tf32"): (_lin(64, 128, 32, 8, 3),),
    (100, "tf32"): (_lin(64, 128, 32, 8, 3),),
    (80, "ieee"): (_lin(64, 128, 16, 8, 3),),
    (90, "ieee"): (_lin(64, 128, 16, 8, 3),),
    (100, "ieee"): (_lin(64, 128, 16, 8, 3),),
}
# dZ tiles of the backward (same logits tile, a lighter epilogue, one bf16/fp32 tile stored).
LINEAR_DZ: dict[tuple[int, str], tuple[Tiles, ...]] = dict(LINEAR_FWD)
# Unaligned launches (linear_logprobs_entropy_triton.aligned() false: a row stride or H not a multiple of 16, a
# non-unit inner stride) run the kernels' unhinted variant: element-wise loads whose addresses take registers of their
# own. Compiled that way the forward's tiles above spill on sm_90 (fp32) and sm_100 (up to 448 B at 64x64, 4 warps);
# 64 x 64 tiles over 8 warps (16 accumulator registers a thread) do not, with a 16-wide hidden step for fp32 on
# sm_100 (32 spilled 8 B there). The dZ kernel's tiles fit unhinted as well.
LINEAR_FWD_UNALIGNED: dict[tuple[int, str], tuple[Tiles, ...]] = {
    **{(fam, "16bit"): (_lin(64, 64, 32, 8, 3),) for fam in ARCHS},
    **{(fam, "tf32"): (_lin(64, 64, 32 if fam != 100 else 16, 8, 3),) for fam in ARCHS},
    **{(fam, "ieee"): (_lin(64, 64, 16, 8, 3),) for fam in ARCHS},
}
LINEAR_DZ_UNALIGNED: dict[tuple[int, str], tuple[Tiles, ...]] = dict(LINEAR_DZ)
# The CPU interpreter runs numpy per tile: small tiles keep tests fast (tl.dot needs every dimension >= 16). A dict:
# tests may change an entry (linear_logprobs_entropy_triton._INTERPRET_TILES is this object).
LINEAR_INTERPRET = dict(BLOCK_N=16, BLOCK_V=64, BLOCK_H=32, GROUP_R=2, num_warps=1, num_stages=1)
# Forward splits of the vocabulary merged by one program per row; BLOCK_S = the power of two >= splits, >= 16.
MAX_SPLITS = 256
MERGE = tuple(Tiles.of(1, 1, BLOCK_S=s) for s in (16, 32, 64, 128, 256))
assert MERGE[-1].meta()["BLOCK_S"] >= MAX_SPLITS


def dot_kind(dtype: torch.dtype | str, precision: str) -> str:
    """"16bit", "tf32" or "ieee": the tl.dot flavour of ``dtype`` (torch dtype or "bf16" / "fp16" / "fp32")."""
    if dtype in (torch.bfloat16, torch.float16, "bf16", "fp16"):
        return "16bit"
    if dtype in (torch.float32, "fp32") and precision in ("tf32", "ieee"):
        return precision
    raise TypeError(f"hidden: no Triton tile configuration for dtype {dtype} with precision {precision!r}")


def linear_tiles(kernel: str, fam: int, dtype: torch.dtype, precision: str, *, aligned: bool = True
                 ) -> tuple[Tiles, ...]:
    """The configurations the fused linear launchers offer for ``kernel`` ("fwd" or "dz") on a GPU of family ``fam``,
    for an aligned launch or (``aligned=False``) the kernels' unhinted variant."""
    table = {"fwd": (LINEAR_FWD, LINEAR_FWD_UNALIGNED), "dz": (LINEAR_DZ, LINEAR_DZ_UNALIGNED)}
    if kernel not in table:
        raise ValueError(f"kernel: expected 'fwd' or 'dz', got {kernel!r}")
    return table[kernel][0 if aligned else 1][(fam, dot_kind(dtype, precision))]


def merge_tiles(splits: int) -> Tiles:
    if not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"splits: expected 1..{MAX_SPLITS}, got {splits}")
    return next(t for t in MERGE if t.meta()["BLOCK_S"] >= splits)


# --- the logits path (logprobs_entropy_triton): one program per row streams the vocabulary ----------------------------
# 4096 fp32 values per program keep enough loads in flight to stream HBM; one size for every V (a small vocabulary
# just masks most of one tile), so one compilation per dtype.
LOGITS = {fam: Tiles.of(8, 3, BLOCK_V=4096) for fam in ARCHS}


def logits_tiles(fam: int) -> Tiles:
    """The logits-path configuration for a GPU of family ``fam``."""
    return LOGITS[fam]


def choices(kernel: str, fam: int, dtype: str, fixed: dict) -> tuple[Tiles, ...]:
    """Every configuration a launcher may run ``kernel`` (its function name) with on family ``fam``, for inputs of
    ``dtype`` ("bf16" / "fp16" / "fp32") and its launch-fixed constexprs: what the resource report compiles."""
    linear = {f"_linear_{k}_kernel{suffix}": (k, not suffix) for k in ("fwd", "dz") for suffix in ("", "_unaligned")}
    if kernel in linear:
        name, aligned = linear[kernel]
        return linear_tiles(name, fam, dtype, fixed["PRECISION"], aligned=aligned)
    if kernel == "_linear_merge_kernel":
        return MERGE
    if kernel in ("_logprobs_entropy_fwd_kernel", "_logprobs_entropy_bwd_kernel"):
        return (LOGITS[fam],)
    raise KeyError(f"kernel: {kernel!r} has no launch configurations in triton_tiles")


# --- the one launch path -------------------------------------------------------------------------------------------

class Launch(NamedTuple):
    """A launch as the launcher asked for it: ``fixed`` constexprs plus one of ``options`` (tiles)."""

    kernel: Any
    args: tuple
    fixed: dict
    options: tuple[Tiles, ...]
    grid: Callable[[dict], tuple]


_FORCED_FAMILY: list[int] = []
_RECORDERS: list[list[Launch]] = []


def device_family(device: torch.device) -> int:
    """The configuration family of a CUDA device (or the one ``recording`` forces)."""
    if _FORCED_FAMILY:
        return _FORCED_FAMILY[-1]
    return family(*torch.cuda.get_device_capability(device))


@contextlib.contextmanager
def recording(fam: int):
    """Within: launchers resolve configurations for family ``fam`` and record their launches instead of running them
    (they accept "meta" tensors then). Yields the list of ``Launch`` records."""
    if fam not in ARCHS:
        raise ValueError(f"fam: expected one of {ARCHS}, got {fam!r}")
    records: list[Launch] = []
    _FORCED_FAMILY.append(fam)
    _RECORDERS.append(records)
    try:
        yield records
    finally:
        _RECORDERS.pop()
        _FORCED_FAMILY.pop()


@functools.lru_cache(maxsize=None)
def _autotuner(kernel, options: tuple[Tiles, ...], key: tuple[str, ...]):
    import triton

    configs = [triton.Config(t.meta(), num_warps=t.num_warps, num_stages=t.num_stages) for t in options]
    return triton.autotune(configs=configs, key=list(key))(kernel)


def launch(kernel, grid: Callable[[dict], tuple], args: tuple, fixed: dict, options: tuple[Tiles, ...],
           tune_key: tuple[str, ...] = (), tune: bool = True) -> None:
    """Run ``kernel`` over ``grid(meta)`` with ``fixed`` constexprs and the tiles in ``options``: the only one, or the
    fastest for this ``tune_key`` (argument names; triton.autotune adds the tensors' dtypes) as measured once.
    ``tune=False`` (a launch too small for the choice to matter) runs the first option without measuring."""
    if not options:
        raise ValueError("options: no launch configuration given")
    if _RECORDERS:
        _RECORDERS[-1].append(Launch(kernel, tuple(args), dict(fixed), tuple(options), grid))
        return
    if len(options) == 1 or not tune:
        tiles = options[0]
        kernel[grid(tiles.meta())](*args, **fixed, **tiles.kwargs())
        return
    _autotuner(kernel, tuple(options), tuple(tune_key))[grid](*args, **fixed)
