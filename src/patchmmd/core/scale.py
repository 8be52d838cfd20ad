"""The scale rule: at which resolutions the patch distances look at an image.

MMD++'s constants (3x3 patches, 32x32 windows, the kernel widths) were tuned on 64x64 crops (BAPPS). A
3x3 patch of a 768x512 photograph sees a far smaller part of the scene than a 3x3 patch of a 64x64 crop,
so the same formula applied at native resolution mostly measures pixel-level noise and ranks human
judgments poorly (docs/method.md §3). The rule, applied identically to both images:

1. **Working resolution.** Box-downsample by the integer factor ``f = max(1, round(min(H, W) / base_size))``
   (the form of the reference SSIM code's rule, there with 256), so that an image is looked at with about
   ``base_size`` pixels along its short side whatever its capture size. Default ``base_size = 128``:
   twice the 64-pixel crops the constants were tuned on.
2. **Pyramid.** From there, up to ``num_scales`` (default 2) levels, each a 2x box downsampling of the
   previous, averaged with fixed weights (equal by default). A level beyond the first is kept only if its
   short side is at least ``min_size`` (default 48 = window + stride: room for a 2x2 grid of 32x32
   windows at stride 16, so the MMD still compares several local distributions). The weights of the
   kept levels are renormalised to sum to 1. Since the working resolution of an image of 96 px or more has a
   short side between 96 and 191 pixels (up to 191 px ``f = 1`` keeps it; from 192 px on, ``f >= 2`` brings it
   to 96-160), its half always qualifies: every image of 96 px or more gets both levels.

Consequences: on a 64x64 input the rule keeps the one native level; a 768x512 photo is compared at 192x128
and 96x64; a 3840x2160 frame at 225x127 and 112x63. The default applies the rule to its aligned terms and
computes its windowed MMD at native resolution (docs/method.md §3.2). The choice of ``base_size`` and
``num_scales`` was made on development data only, for the pixelwise model (``scripts/scale_rule_dev.py`` prints
the sweep). ``base_size=None`` disables step 1 (native resolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .validation import check_positive_int

#: Most levels a pyramid may have: each halves the image, so a 33rd level would need an image side of
#: at least ``2**32`` pixels times ``min_size``.
MAX_SCALES = 32


@dataclass(frozen=True)
class Level:
    """One level of the pyramid: its total downsampling factor and its (renormalised) weight."""

    factor: int
    weight: float


def working_factor(height: int, width: int, base_size: int | None) -> int:
    """``max(1, round(min(H, W) / base_size))``; 1 when ``base_size`` is ``None``.

    Example:
        >>> working_factor(512, 768, 256), working_factor(64, 64, 256), working_factor(1080, 1920, 256)
        (2, 1, 4)
    """
    if base_size is None:
        return 1
    return max(1, round(min(height, width) / check_positive_int("base_size", base_size)))


def pyramid_levels(
    height: int,
    width: int,
    *,
    base_size: int | None,
    num_scales: int,
    min_size: int,
    scale_weights: Sequence[float] | None = None,
) -> list[Level]:
    """The levels the scale rule uses for an ``H x W`` image (at least one: the working resolution).

    Example:
        >>> [(lv.factor, lv.weight) for lv in pyramid_levels(512, 768, base_size=128, num_scales=2, min_size=48)]
        [(4, 0.5), (8, 0.5)]
        >>> [(lv.factor, lv.weight) for lv in pyramid_levels(2160, 3840, base_size=128, num_scales=2, min_size=48)]
        [(17, 0.5), (34, 0.5)]
        >>> [(lv.factor, lv.weight) for lv in pyramid_levels(64, 64, base_size=128, num_scales=2, min_size=48)]
        [(1, 1.0)]
    """
    f = working_factor(height, width, base_size)
    num_scales = check_positive_int("num_scales", num_scales, maximum=MAX_SCALES)
    min_size = check_positive_int("min_size", min_size)
    weights = list(scale_weights) if scale_weights is not None else [1.0] * num_scales
    if len(weights) != num_scales:
        raise ValueError(f"scale_weights must have num_scales={num_scales} entries, got {len(weights)}")
    kept = []
    for i, wt in enumerate(weights):
        factor = f * 2**i
        if i > 0 and min(height, width) // factor < min_size:
            break
        kept.append((factor, float(wt)))
    total = sum(wt for _, wt in kept)
    if total <= 0:
        raise ValueError(f"scale_weights of the levels used must sum to > 0, got {[wt for _, wt in kept]}")
    return [Level(factor, wt / total) for factor, wt in kept]


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Box (area) downsampling by an integer factor; trailing rows/columns that do not fill a box drop."""
    if factor == 1:
        return x
    return F.avg_pool2d(x, factor)


def upsample_map(m: torch.Tensor, factor: int, height: int, width: int) -> torch.Tensor:
    """Bring a map ``(N, 1, h, w)`` computed at ``factor`` back to ``height x width``, preserving its mean.

    Each value is repeated over its ``factor x factor`` box; pixels beyond the boxes get 0, and the map is
    rescaled so that its mean over ``height x width`` equals the mean of ``m``.
    """
    if factor == 1 and m.shape[-2:] == (height, width):
        return m
    h, w = m.shape[-2:]
    up = m.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    up = F.pad(up, (0, width - up.shape[-1], 0, height - up.shape[-2]))
    return up * (height * width / (h * w * factor * factor))
