"""``python -m patchmmd``: the command line (same as the ``patchmmd`` script)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="patchmmd")
