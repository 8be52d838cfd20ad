"""The tests' one way to run the command line in-process: ``invoke("compare", a, b, "-m", "l2")``."""

from __future__ import annotations

from click.testing import CliRunner, Result

from patchmmd.cli import main


def invoke(*args: object) -> Result:
    """``patchmmd ARGS...`` run by click's test runner (each argument passed as ``str``)."""
    return CliRunner().invoke(main, [str(a) for a in args])
