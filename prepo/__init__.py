"""prepo: PREPO (prompt-perplexity schedule + relative-entropy weighting) on top of GRPO.

A lean RL training loop for LLMs with verifiable rewards, built on the fused ops in ``prepo_kernels``.
One training step, read top to bottom, is ``prepo.step.train_step``; ``prepo.trainer`` runs the steps.
"""
__version__ = "0.1.0"
