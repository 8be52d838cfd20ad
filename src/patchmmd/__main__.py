"""``python -m patchmmd`` and the ``patchmmd`` script: the command line (:mod:`patchmmd.cli`).

The command line needs the ``cli`` extra (click, Pillow, tqdm, matplotlib, pytorch-msssim, scipy); without one
of them, :func:`run` prints one line saying how to install it instead of a traceback. The package's warnings are
shown as one line each (:func:`one_line_warning`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import Any

#: Printed (on stderr) when the command line is started without one of :data:`CLI_MODULES` installed.
MISSING_CLI = 'patchmmd: the command line needs the "cli" extra: pip install "patchmmd[cli]"'
#: The modules of the ``cli`` extra's distributions (click, Pillow, tqdm, matplotlib, pytorch-msssim, scipy):
#: looked up (not imported) before the command line starts, so a command never fails half-way for want of one.
CLI_MODULES = ("click", "PIL", "tqdm", "matplotlib", "pytorch_msssim", "scipy")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None, *, default: Any = warnings.formatwarning) -> str:
    r"""How the command line shows a warning this package issues: one line ``patchmmd: warning: ... (Category)``,
    without the file, line number and source line Python prints (a user's unusable ``PATCHMMD_CACHE_DIR`` is not
    a bug in ``runtime.py``). Warnings from other packages keep Python's format (``default``).

    Example:
        >>> one_line_warning(RuntimeWarning("patchmmd: the cache folder x cannot be used;\n  compiling"),
        ...                  RuntimeWarning, _PACKAGE_DIR + "runtime.py", 111)
        'patchmmd: warning: the cache folder x cannot be used; compiling (RuntimeWarning)\n'
    """
    if not os.path.abspath(filename).startswith(_PACKAGE_DIR):
        return str(default(message, category, filename, lineno, line))
    text = " ".join(str(message).split()).removeprefix("patchmmd: ")
    return f"patchmmd: warning: {text} ({category.__name__})\n"


def run() -> None:
    """Entry point of the ``patchmmd`` script and of ``python -m patchmmd``."""
    if any(importlib.util.find_spec(name) is None for name in CLI_MODULES):
        print(MISSING_CLI, file=sys.stderr)
        raise SystemExit(1)
    from .cli import main

    warnings.formatwarning = one_line_warning  # this process is the command line's alone
    main(prog_name="patchmmd")


if __name__ == "__main__":
    run()
