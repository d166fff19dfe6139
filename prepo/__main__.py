"""``python -m prepo`` runs the command-line interface (also the target of torchrun)."""
from prepo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
