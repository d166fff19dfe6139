"""Every Triton launch the package can make compiles for sm_80 / sm_90 / sm_100 without spills, within shared memory.

The compilation runs on this CPU (no GPU) in a subprocess without TRITON_INTERPRET: benchmarks.kernels.triton_tiles.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from prepo_kernels import logprobs_entropy_triton, triton_tiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:
        return False
    return True


needs_compiler = pytest.mark.skipif(not (logprobs_entropy_triton.HAVE_TRITON and _nvidia_backend()),
                                    reason="triton with its NVIDIA backend (and ptxas) is not installed")


@needs_compiler
def test_every_launch_configuration_compiles_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernels.triton_tiles", "--check", "--out", "",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    problems = [line for line in proc.stderr.splitlines() if line.startswith("PROBLEM")]
    assert proc.returncode == 0, "\n".join(problems) or proc.stderr[-3000:]
    results = json.loads(out.read_text())
    # every family, every kernel, both specialisations (hinted and unhinted: issue #18 item 10); every configuration
    # the tables list was compiled for it
    assert {r["arch"] for r in results} == set(triton_tiles.ARCHS)
    forms = {("_logprobs_entropy_fwd_kernel", "aligned"), ("_logprobs_entropy_fwd_kernel", "unaligned"),
             ("_logprobs_entropy_bwd_kernel", "aligned"), ("_logprobs_entropy_bwd_kernel", "unaligned"),
             ("_linear_merge_kernel", "aligned"), ("_linear_merge_kernel", "unaligned"),
             ("_linear_fwd_kernel", "aligned"), ("_linear_fwd_kernel_unaligned", "unaligned"),
             ("_linear_dz_kernel", "aligned"), ("_linear_dz_kernel_unaligned", "unaligned")}
    for fam in triton_tiles.ARCHS:
        assert {(r["kernel"], r["hints"]) for r in results if r["arch"] == fam} == forms
        compiled = {(r["kernel"], r["tiles"]) for r in results if r["arch"] == fam}
        for table, name in ((triton_tiles.LINEAR_FWD, "_linear_fwd_kernel"),
                            (triton_tiles.LINEAR_DZ, "_linear_dz_kernel"),
                            (triton_tiles.LINEAR_FWD_UNALIGNED, "_linear_fwd_kernel_unaligned"),
                            (triton_tiles.LINEAR_DZ_UNALIGNED, "_linear_dz_kernel_unaligned")):
            for (f, _), options in table.items():
                if f == fam:
                    assert {(name, t.label()) for t in options} <= compiled
        assert {("_linear_merge_kernel", t.label()) for t in triton_tiles.MERGE} <= compiled
    for r in results:
        assert not r["error"] and r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert r["shared"] <= triton_tiles.SMEM_LIMIT[r["arch"]] and r["blocks_per_sm"] >= 1, r


def test_tables_cover_every_family_and_dtype():
    for fam in triton_tiles.ARCHS:
        for dtype, precision in ((torch.bfloat16, "tf32"), (torch.float16, "tf32"), (torch.float32, "tf32"),
                                 (torch.float32, "ieee")):
            for kernel, aligned in (("fwd", True), ("dz", True), ("fwd", False), ("dz", False)):
                options = triton_tiles.linear_tiles(kernel, fam, dtype, precision, aligned=aligned)
                assert options and len(set(options)) == len(options)
                # splits and backward slices are sized by the largest BLOCK_V: it must be a multiple of the others
                widths = [t.meta()["BLOCK_V"] for t in options]
                assert all(max(widths) % w == 0 for w in widths)
                assert all(min(t.meta()[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")) >= 16 for t in options)
        assert triton_tiles.logits_tiles(fam).meta()["BLOCK_V"] >= 16
    assert [triton_tiles.merge_tiles(s).meta()["BLOCK_S"] for s in (1, 16, 17, 256)] == [16, 16, 32, 256]


def test_family_of_compute_capabilities():
    assert [triton_tiles.family(*cc) for cc in ((8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0))] == \
        [80, 80, 80, 90, 100, 100, 80]


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="major"):
        triton_tiles.family(-1, 0)
    with pytest.raises(ValueError, match="splits"):
        triton_tiles.merge_tiles(triton_tiles.MAX_SPLITS + 1)
    with pytest.raises(ValueError, match="kernel"):
        triton_tiles.linear_tiles("bwd", 90, torch.bfloat16, "tf32")
    with pytest.raises(TypeError, match="hidden"):
        triton_tiles.linear_tiles("fwd", 90, torch.float64, "tf32")
    with pytest.raises(ValueError, match="fam"):
        with triton_tiles.recording(75):
            pass
    with pytest.raises(ValueError, match="options"):
        triton_tiles.launch(None, lambda meta: (1,), (), {}, ())


@pytest.mark.skipif(not logprobs_entropy_triton.HAVE_TRITON, reason="triton is not installed")
def test_autotune_candidates_are_the_table():
    """Where a key lists several configurations, the launch goes through triton.autotune with exactly those, keyed on
    kernel arguments (triton adds the tensors' dtypes to the key)."""
    from prepo_kernels import linear_logprobs_entropy_triton

    for kernel, name, key in ((linear_logprobs_entropy_triton._linear_fwd_kernel, "fwd", ("V", "H", "PRECISION")),
                              (linear_logprobs_entropy_triton._linear_dz_kernel, "dz", ("H", "PRECISION"))):
        options = triton_tiles.linear_tiles(name, 90, torch.bfloat16, "tf32")
        tuner = triton_tiles._autotuner(kernel, options, key)
        assert list(tuner.keys) == list(key) and set(key) <= set(kernel.arg_names)
        got = [(c.kwargs, c.num_warps, c.num_stages) for c in tuner.configs]
        assert got == [(t.meta(), t.num_warps, t.num_stages) for t in options]
