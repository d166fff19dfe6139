"""Command-line interface: ``prepo train`` and ``prepo eval``.

Each sub-command lives in its own module with a ``main(argv)``; this file only routes to it.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("prepo.train_cli", "train a causal LM with PREPO or a baseline selection strategy"),
    "eval": ("prepo.eval_cli", "evaluate a model: avg@k, pass@k and maj@k on math benchmarks"),
}


def _usage() -> str:
    lines = ["usage: prepo {" + ",".join(COMMANDS) + "} [options]", ""]
    lines += [f"  {name:<6} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"prepo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"prepo {name}: not built yet", file=sys.stderr)
        return 0
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
