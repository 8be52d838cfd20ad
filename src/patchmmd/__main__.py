"""``python -m patchmmd`` and the ``patchmmd`` script: the command line (:mod:`patchmmd.cli`).

The command line needs the ``cli`` extra (click, Pillow, tqdm, matplotlib, pytorch-msssim); without click,
:func:`run` prints one line saying how to install it instead of a traceback.
"""

from __future__ import annotations

import sys

#: Printed (on stderr) when the command line is started without click installed.
MISSING_CLI = 'patchmmd: the command line needs the "cli" extra: pip install "patchmmd[cli]"'


def run() -> None:
    """Entry point of the ``patchmmd`` script and of ``python -m patchmmd``."""
    try:
        from .cli import main
    except ModuleNotFoundError as e:
        if e.name != "click":
            raise
        print(MISSING_CLI, file=sys.stderr)
        raise SystemExit(1) from None
    main(prog_name="patchmmd")


if __name__ == "__main__":
    run()
