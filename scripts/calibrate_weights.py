"""Derive the default MMD++ term weights: each term measured in units of the mildest visible distortion.

The default distance has two terms of different nature: the shift-tolerant aligned terms
(``0.001 L2 + 0.05 Local``, the method's internal ratio) and the multi-bandwidth windowed MMD at native
resolution. Instead of weighting them by a sweep on human scores, each is divided by its value on the
mildest visible distortion of the shift check (:mod:`patchmmd.evaluation.shift`: Gaussian noise of
σ = 0.03 or a Gaussian blur of σ = 1 px, whichever the term counts less), median over the images shipped
with the package. A distance of about 1 is then "just visible" for either term, and neither dominates
by its units alone (docs/method.md §3.2, item 3).

    python scripts/calibrate_weights.py

prints the two constants and the resulting ``weight_l2``, ``weight_local`` and ``weight_mmd``; the
default preset in ``patchmmd.core.mmdpp`` holds the weights of the units rounded to three significant digits
(``weight_local = 0.05 / 4.37e-4 = 114``, where the unrounded unit prints 115), the MMD unit as measured with the
256 random features of that time (``19.9``; docs/method.md §3.2, item 3). It also prints the
unit of the SSIM term (``1 - SSIM``) at native resolution and one octave down, which only the training preset
uses, one unit per octave (``weight_ssim``), and what the training preset's MMD weight is in units of its
term (MMD² of contrast-normalised patches at the preset's two levels) on the same distortions.
"""

from __future__ import annotations

import argparse
import statistics

from patchmmd.core.mmdpp import get_config, mmdpp
from patchmmd.data import sample_image, sample_names
from patchmmd.evaluation.shift import shift_distances

L2_SHARE, LOCAL_SHARE = 0.001, 0.05  # the method's ratio of the two aligned terms (docs/method.md §3)


def unit(preset: str = "default", **terms: object) -> float:
    """Median over the shipped images of min(d(noise), d(blur)) for ``preset`` with ``terms`` weights."""
    cfg = get_config(preset, **terms)
    values = []
    for i, name in enumerate(sample_names()):
        d = shift_distances(lambda a, b: mmdpp(a, b, preset=cfg), sample_image(name), seed=i)
        values.append(min(d["noise"], d["blur"]))
    return statistics.median(values)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: no options (``--help`` describes the script; anything else is refused)."""
    return argparse.ArgumentParser(description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    aligned = unit(weight_l2=L2_SHARE, weight_local=LOCAL_SHARE, weight_mmd=0.0)
    mmd = unit(weight_l2=0.0, weight_local=0.0, weight_mmd=1.0)
    ssim = [unit(weight_l2=0.0, weight_local=0.0, weight_mmd=0.0, weight_ssim=(0.0,) * o + (1.0,)) for o in (0, 1)]
    print(f"aligned terms (0.001 L2 + 0.05 Local), mildest visible distortion: {aligned:.4g}")
    print(f"windowed MMD² (multi-bandwidth), mildest visible distortion:      {mmd:.4g}")
    print(f"weight_l2 = {L2_SHARE / aligned:.3g}, weight_local = {LOCAL_SHARE / aligned:.3g}, "
          f"weight_mmd = {1 / mmd:.3g}")
    print(f"SSIM term (1 - SSIM), native / one octave down, mildest visible:  {ssim[0]:.4g} / {ssim[1]:.4g}")
    print(f"weight_ssim (one unit per octave, the training preset's) = ({1 / ssim[0]:.3g}, {1 / ssim[1]:.3g})")
    cn = unit("loss", weight_l2=0.0, weight_local=0.0, weight_ssim=0.0, weight_mmd=1.0)
    w = get_config("loss").weight_mmd
    print(f"training preset's MMD² of contrast-normalised patches, mildest visible: {cn:.4g} "
          f"(its weight_mmd={w:g} is {w * cn:.3g} units)")


if __name__ == "__main__":
    main()
