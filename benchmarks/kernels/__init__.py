"""Kernel microbenchmarks: one suite per fused op (``<op>.py``), timed by ``harness`` and run by ``run``; CPU-path views
and the Triton tile table's compile report (``triton_tiles``).
"""
