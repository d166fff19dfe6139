"""Training benchmarks: rollout efficiency of PREPO against its baselines (runner, conditions, statistics, report), the
testbeds' starting point, rollout speed, a step beside TRL's, and the loop on a GPU.
"""
