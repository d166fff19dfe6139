"""Command-line interface: ``prepo train`` and ``prepo eval``.

Sub-commands parse their own arguments and hand a validated config to the training loop or the evaluator.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a causal LM with PREPO", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        print("prepo train: not built yet (the training loop lands with its issue)")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
