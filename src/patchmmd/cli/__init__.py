"""The ``patchmmd`` command line (click). Each subcommand lives in a module of this package.

Subcommand modules are imported at the bottom of this file; each defines its commands with
``@main.command(...)`` (or ``main.add_command``). They import heavy or optional dependencies inside the
command function, so ``patchmmd --help`` stays fast. The command line needs the ``cli`` extra
(``pip install "patchmmd[cli]"``: click, Pillow, tqdm, and matplotlib and pytorch-msssim for the figures and
SSIM); the ``patchmmd`` script and ``python -m patchmmd`` start it through :func:`patchmmd.__main__.run`, which
says so in one line when click is missing.
"""

from __future__ import annotations

import click

from .. import __version__
from ._common import ErrorMappingGroup


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``: this package's version, PyTorch's and whether the compiled CPU kernels are in use (computed
    only here: it may load, even compile, them)."""
    if not value or ctx.resilient_parsing:
        return
    import torch

    from ..runtime import compiled_kernels_status

    click.echo(f"patchmmd, version {__version__}\ntorch {torch.__version__}\n"
               f"compiled kernels: {compiled_kernels_status()}")
    ctx.exit()


@click.group(cls=ErrorMappingGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version (with PyTorch's, and whether the compiled CPU kernels are in use) and exit.")
def main() -> None:
    """patchmmd: perceptual image distances as the MMD between local patch distributions.

    No network and no downloaded weights: every distance is computed from the images and a seed.
    """


# Subcommand modules (each registers its commands on `main` when imported).
from . import _commands  # noqa: E402, F401
