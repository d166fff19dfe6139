"""Builds the optional C++ CPU kernels (csrc/) as prepo_kernels._C; everything else is in pyproject.toml.

If no compiler is available the extension is skipped and prepo_kernels falls back to its torch backend.
"""
import glob
import os

from setuptools import setup

ext_modules = []
cmdclass = {}
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
if sources and os.environ.get("PREPO_NO_NATIVE", "0") != "1":
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension

        ext_modules.append(
            CppExtension(
                "prepo_kernels._C",
                sources,
                # no -march=native / -ffast-math: the AVX-512 and AVX2 loops carry their own targets and are chosen at
                # run time (csrc/cpu_capability.cpp), so the build runs on any x86-64 CPU, and IEEE semantics keep the
                # -inf / NaN handling exact; no contraction
                # of a*b-c into one fma where the kernels round z = x/T on purpose (csrc/rows.h)
                extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
                extra_link_args=["-fopenmp"],
                optional=True,  # a failed compile leaves a working pure-Python install
            )
        )
        cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)
    except ImportError:  # torch missing at build time: no native kernels
        pass

setup(ext_modules=ext_modules, cmdclass=cmdclass)
