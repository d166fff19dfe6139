"""torchrun entry point for tests/test_distributed.py: `prepo train` with a deterministic stand-in reward.

A random tiny model solves nothing, so the reward is the parity of the completion's length (rewards vary within a
group). After training each rank writes its parameters' float64 sum and sum of squares to <output>/rank<R>.json.
"""
import json
import os
import sys

import prepo.rewards
import prepo.trainer
from prepo import cli


def parity_reward(examples, completions, *, timeout=5.0):
    return [float(len(text) % 2 == 0) for text in completions]


class Recording(prepo.trainer.Trainer):
    """The trainer, noting a checksum of this rank's parameters when training ends."""

    checksum: dict = {}

    def train(self):
        result = super().train()
        params = [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double()  # FSDP: DTensor shards
                  for p in self.model.parameters()]
        Recording.checksum = {"sum": float(sum(p.sum() for p in params)),
                              "sumsq": float(sum((p * p).sum() for p in params))}
        return result


def main(argv):
    prepo.rewards.score_rollouts = parity_reward
    prepo.trainer.Trainer = Recording  # cli.run_train imports it from prepo.trainer when it runs
    code = cli.run_train(argv)
    out = argv[argv.index("--output-dir") + 1]
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({**Recording.checksum, "world_size": int(os.environ.get("WORLD_SIZE", 1))}, fh)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
