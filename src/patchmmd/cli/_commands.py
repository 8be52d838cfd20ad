"""Imports every subcommand module so that its commands register on :func:`patchmmd.cli.main`."""

# One line per subcommand module; keep sorted.
from . import compare, demo, evaluate, listing, score, tasks, theory  # noqa: F401
