"""`python -m engine`: see `engine.cli`."""

from engine.cli import run_program

raise SystemExit(run_program())
