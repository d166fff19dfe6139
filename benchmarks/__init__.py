"""Benchmarks of prepo: ``kernels/`` times the fused ops against other implementations, ``rl/`` measures training (rollout
efficiency, its statistics, rollout speed); what they write goes to the repository's ``results/`` (``RESULTS_DIR``).
"""
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def model_slug(model: str) -> str:
    """A folder name for a model: ``tiny-chain@1`` → ``tiny-chain-b1`` (build seed 1), a path → its last part."""
    return Path(str(model).rstrip("/")).name.replace("@", "-b")
