"""``patchmmd theory``: the seed paper's theorem as a picture.

For two images (by default a crop of a shipped photo and a noisy copy of it), sweep the width ``N`` of the
random CNN, draw several seeds per width, and compare the finite-width distance with the analytic
infinite-width one (windowed MMD² with the arc-cosine kernel). Writes ``theory.csv`` (one row per width and
seed, each when its network is done, so an interrupted sweep keeps them), ``theory.md`` (a table per width) and
``theory.png`` (log-log plot of the mean absolute relative error against ``N`` with the fitted slope; the theory
says -1/2) into ``--out``, a folder that must be new or empty unless ``--overwrite``
(:func:`patchmmd.cli._common.prepare_output_dir`).
"""

from __future__ import annotations

import csv
import math
import sys
from typing import TYPE_CHECKING

import click

from ..io import output_file
from . import main
from ._common import InputFile, prepare_output_dir, shown

if TYPE_CHECKING:
    import torch

    from ..theory.nngp import FirstLayer

DEFAULT_WIDTHS = "16,32,64,128,256,512,1024"
#: The first convolution's size: the defaults of RandomCNNDistance and infinite_cnn_distance, which the command uses.
KERNEL_SIZE = 3


#: Analytic distances up to this fraction of the crops' mean kernel value k(p, p) are float64 rounding of an exact 0:
#: the command refuses them (their relative errors would be noise over noise).
ZERO_DISTANCE = 1e-14

#: The largest width ``--widths`` takes (2**20 channels, some GiB per network on the default crop already): a
#: larger one failed deep in torch with a page of C++ stack in its message ("Overflow when unpacking long long").
MAX_WIDTH = 2**20


def _parse_widths(text: str) -> list[int]:
    try:
        widths = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--widths") from None
    if len(widths) < 2 or widths[0] < 1:
        raise click.BadParameter(f"need at least two positive widths, all different, got {text!r}",
                                 param_hint="--widths")
    if widths[-1] > MAX_WIDTH:
        raise click.BadParameter(f"a width is at most {MAX_WIDTH}, got {widths[-1]}", param_hint="--widths")
    return widths


def _default_pair(crop: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    import torch

    from ..data import sample_image

    x = sample_image("astronaut", dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y, "astronaut (shipped) vs a copy with Gaussian noise (std 0.1, seed 0)"


def _center_crop(t: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    c = min(crop, h, w)
    top, left = (h - c) // 2, (w - c) // 2
    return t[..., top : top + c, left : left + c]


@main.command("theory")
@click.argument("image1", required=False, type=InputFile())
@click.argument("image2", required=False, type=InputFile())
@click.option("--widths", default=DEFAULT_WIDTHS, show_default=True, help="comma-separated network widths N")
@click.option("--seeds", default=16, show_default=True, type=click.IntRange(1), help="random networks per width")
@click.option("--depth", default=2, show_default=True, type=click.IntRange(1), help="number of ReLU layers L")
@click.option("--crop", default=64, show_default=True, type=click.IntRange(3),
              help="centre crop side (pixels) taken from both images")
@click.option("--window", default=32, show_default=True, type=click.IntRange(1), help="pooling window")
@click.option("--stride", default=16, show_default=True, type=click.IntRange(1), help="pooling stride")
@click.option("--first-layer", type=click.Choice(["he", "zero_mean", "patch_norm"]), default="he",
              show_default=True)
@click.option("--out", "out_dir", default="theory-out", show_default=True, type=click.Path(file_okay=False),
              help="directory for theory.csv, theory.md and theory.png (refused if not empty, unless --overwrite)")
@click.option("--overwrite", is_flag=True, help="Write into --out even if it exists and is not empty.")
def theory(
    image1: str | None, image2: str | None, widths: str, seeds: int, depth: int, crop: int, window: int, stride: int,
    first_layer: FirstLayer, out_dir: str, overwrite: bool,
) -> None:
    """Finite random CNN distance vs its infinite-width closed form (error ~ N^-1/2).

    IMAGE1 and IMAGE2 are read as RGB (as `compare` reads them) and compared on their square centre crops of
    --crop pixels (of the shorter side if that is shorter), which must have the same size; without them, a
    shipped photo and a noisy copy are used.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..io import ImageReadError, load_image
    from ..scoring import printable_paths
    from ..scoring.output import readable_text
    from ..theory.cnn import RandomCNNDistance
    from ..theory.nngp import infinite_cnn_distance

    width_list = _parse_widths(widths)
    if (image1 is None) != (image2 is None):
        raise click.UsageError("give two images, or none for the shipped sample pair")
    if image1 is None or image2 is None:  # both None (checked above)
        x, y, label = _default_pair(crop)
    else:
        try:  # a file that cannot be read: one line, as `compare` says it (exit status 1)
            x, y = load_image(image1, dtype=torch.float64), load_image(image2, dtype=torch.float64)
        except ImageReadError as e:
            raise click.ClickException(printable_paths(str(e), (image1, image2))) from None
        # names that are not UTF-8 as \xNN: theory.md is UTF-8, and a lone surrogate failed its write after the sweep
        label = f"{readable_text(image1)} vs {readable_text(image2)}"
    x, y = _center_crop(x, crop).unsqueeze(0), _center_crop(y, crop).unsqueeze(0)
    if x.shape != y.shape:  # images that do not match: a failure (exit status 1), as in `compare`
        raise click.ClickException(f"the crops differ in size: {tuple(x.shape[1:])} vs {tuple(y.shape[1:])}")
    if min(x.shape[-2:]) < KERNEL_SIZE:  # images unfit for the check, as ones that do not match: exit status 1
        raise click.ClickException(
            f"the images are too small: their crops are {x.shape[-2]}x{x.shape[-1]} pixels, and the network's "
            f"{KERNEL_SIZE}x{KERNEL_SIZE} patches need at least {KERNEL_SIZE}x{KERNEL_SIZE}"
        )
    pooling = (window, stride)
    exact = float(infinite_cnn_distance(x, y, depth=depth, pooling=pooling, first_layer=first_layer))
    # The size of the kernel values, mean_u k(p_u, p_u) over both crops: the aligned distance to a mid-grey image,
    # whose patches are 0 on the network's [-1, 1] scale (k(p, 0) = 0 without biases). The analytic distance is a
    # difference of means of kernel values: where the exact value is 0, float64 rounding leaves up to about 6e-17
    # of this (measured; crops of 32-128 px, windows 8 to global), so the floor 1e-14 keeps a margin of over 100.
    grey = torch.full_like(x, 0.5)
    scale = sum(float(infinite_cnn_distance(t, grey, depth=depth, pooling=None, first_layer=first_layer))
                for t in (x, y)) / 2
    if exact <= ZERO_DISTANCE * scale:
        raise click.ClickException(
            f"the analytic distance of the two crops is {exact:.3g}, float64 rounding of their kernel values (about "
            f"{scale:.3g}): the crops are identical (or, with --first-layer zero_mean, differ by a constant per colour "
            "channel, which zero-mean filters do not see): nothing to compare"
        )
    out = prepare_output_dir(out_dir, overwrite=overwrite)  # checked before the long sweep
    rows = []
    # Each row is written when its network is done, so that an interrupted or failed sweep keeps the finished rows.
    with open(output_file(out / "theory.csv"), "w", newline="", encoding="utf-8") as f, torch.no_grad():
        w = csv.DictWriter(f, fieldnames=["width", "seed", "finite", "analytic", "rel_error"])
        w.writeheader()
        # the bar on stderr, and only for a terminal: a log or a pipe gets no carriage-return frames
        for width in tqdm(width_list, desc="widths", unit="width", file=sys.stderr, disable=not sys.stderr.isatty()):
            for seed in range(seeds):
                net = RandomCNNDistance(width=width, depth=depth, pooling=pooling, first_layer=first_layer, seed=seed)
                d = float(net(x, y))
                rows.append({"width": width, "seed": seed, "finite": d, "analytic": exact,
                             "rel_error": abs(d - exact) / exact})
                w.writerow(rows[-1])
                f.flush()
    per = {wd: [r for r in rows if r["width"] == wd] for wd in width_list}
    mae = np.array([np.mean([r["rel_error"] for r in per[wd]]) for wd in width_list])
    mean_d = np.array([np.mean([r["finite"] for r in per[wd]]) for wd in width_list])
    std_d = np.array([np.std([r["finite"] for r in per[wd]]) for wd in width_list])
    slope, intercept = np.polyfit(np.log(width_list), np.log(mae), 1)
    lines = [
        "# Finite random CNN vs infinite-width closed form",
        "",
        f"Images: {label}; centre crop {x.shape[-2]}x{x.shape[-1]}; depth {depth}; first layer {first_layer}; "
        f"pooling window {window}, stride {stride}; {seeds} seeds per width.",
        "",
        f"Analytic distance (windowed MMD² with the arc-cosine kernel): {exact:.6g}",
        "",
        "| width N | mean finite distance | std over seeds | mean abs relative error |",
        "|---:|---:|---:|---:|",
        *(f"| {wd} | {m:.6g} | {s:.3g} | {e:.4f} |"
          for wd, m, s, e in zip(width_list, mean_d, std_d, mae, strict=True)),
        "",
        f"Fitted log-log slope of the error: {slope:.3f} (theory: -0.5). "
        f"Error at the largest width (N = {width_list[-1]}): {mae[-1]:.4f}.",
    ]
    output_file(out / "theory.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(width_list, mae, "o-", label="mean |finite - analytic| / analytic")
    for wd in width_list:
        ax.loglog([wd] * len(per[wd]), [max(r["rel_error"], 1e-12) for r in per[wd]], ".", color="0.6", ms=3)
    fit = np.exp(intercept) * np.asarray(width_list, dtype=float) ** slope
    ax.loglog(width_list, fit, "--", label=f"fit: slope {slope:.2f}")
    ref = mae[0] * (np.asarray(width_list, dtype=float) / width_list[0]) ** -0.5
    ax.loglog(width_list, ref, ":", color="k", label="N^-1/2")
    ax.set_xlabel("width N (channels)")
    ax.set_ylabel("relative error")
    ax.set_title(f"Random CNN -> infinite CNN (depth {depth})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_file(out / "theory.png"), dpi=120)
    plt.close(fig)
    click.echo("\n".join(lines[4:]))
    written = ", ".join(shown(out / name) for name in ("theory.csv", "theory.md", "theory.png"))
    click.echo(f"wrote {written}", err=True)  # as `demo`
    if not math.isfinite(slope):
        raise click.ClickException("the fitted slope is not finite")
