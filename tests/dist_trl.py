"""torchrun entry point for tests/test_integration_trl.py: PREPOTrainer with a stand-in reward fixed by the prompt and
the rollout's place in its group, so every process layout sees the same rewards. Rank 0 writes what each step
selected and the selection state to <output>/selection.json.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_trl.py OUTPUT STRATEGY STEPS SEED
"""
import json
import sys
from pathlib import Path

import torch

from test_integration_trl import _strategy_run, selection_summary


def main(out: str, strategy: str, steps: str, seed: str) -> None:
    torch.set_num_threads(1)
    trainer, _ = _strategy_run(Path(out), strategy, steps=int(steps), seed=int(seed), trainer_class=None)
    if trainer.accelerator.is_main_process:
        (Path(out) / "selection.json").write_text(json.dumps(selection_summary(trainer), sort_keys=True))


if __name__ == "__main__":
    main(*sys.argv[1:])
