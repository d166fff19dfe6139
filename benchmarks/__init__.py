"""Benchmarks of prepo: ``kernels/`` times the fused ops against other implementations, ``rl/`` measures training (rollout
efficiency, its statistics, rollout speed); what they write goes to the repository's ``results/`` (``RESULTS_DIR``).
"""
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
