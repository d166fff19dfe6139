"""Benchmarks of prepo: kernel microbenchmarks (``python -m benchmarks.kernels``, shared harness in ``harness``) and
training-efficiency runs; committed result tables live in ``benchmarks/results/``.
"""
