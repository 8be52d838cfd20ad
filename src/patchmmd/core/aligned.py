"""Aligned (position-by-position) terms of MMD++ (docs/method.md §3).

The windowed MMD is invariant to moving patches around inside a window and, with Π, blind to each
channel's patch mean. Two aligned terms restore what it lacks:

* ``Local``: ``mean_u [1 - exp(-D_u / (2 s_l²))]``, ``D_u`` the sum of squared differences over the
  ``k x k x C`` neighbourhood of ``u`` (zero padding of the difference map), ``s_l = sigma * k²``. It is
  half the aligned kernel distance ``mean_u ||k(p_u, .) - k(q_u, .)||²`` of that (uncentred) Gaussian kernel.
* ``L2``: the mean squared pixel difference, which pins absolute colour.

Both are computed on the [-1, 1] scale, like every term of the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .kernels import gaussian_bandwidth
from .patches import box_mean
from .validation import (
    OutOfRange,
    Reduction,
    check_patch_size,
    check_positive_float,
    check_reduction,
    prepare_pair,
    reduce,
)


def local_map(x: torch.Tensor, y: torch.Tensor, *, patch_size: int, sigma: float) -> torch.Tensor:
    """Per-pixel ``1 - exp(-D_u / (2 s_l²))`` of internal-scale images: ``(N, 1, H, W)``."""
    s = gaussian_bandwidth(sigma, patch_size)
    diff2 = (x - y).pow(2).sum(dim=1, keepdim=True)
    # Sum over the k x k neighbourhood, zero padding (box_mean: much faster than a convolution with ones).
    k, half = patch_size, patch_size // 2
    d = box_mean(diff2, (k, k), padding=(half, half)) * (k * k)
    return -torch.expm1(d * (-1.0 / (2.0 * s * s)))


def l2_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared difference, averaged over channels: ``(N, 1, H, W)``."""
    return (x - y).pow(2).mean(dim=1, keepdim=True)


def _prepared(x: torch.Tensor, y: torch.Tensor, value_range: Sequence[float], out_of_range: OutOfRange,
              min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    return prepare_pair(x, y, value_range=value_range, out_of_range=out_of_range, min_size=min_size)


def local_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    patch_size: int = 3,
    sigma: float = 0.1,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
) -> torch.Tensor:
    """The aligned patch term ``Local`` of MMD++: ``mean_u [1 - exp(-D_u / (2 s_l²))]``, ``s_l = sigma * k²``.

    Values lie in ``[0, 1)``; 0 only for identical images. Arguments as in :func:`patchmmd.patch_mmd`.

    Example:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> float(local_distance(x, x))
        0.0
        >>> y = x.clone(); y[..., 4, 4] = 1.0     # one pixel, all channels, 2 on the [-1, 1] scale
        >>> d = float(local_distance(x, y)) * 64  # 9 neighbourhoods see D = 3 * 2² = 12
        >>> round(d, 6) == round(9 * (1 - float(torch.exp(torch.tensor(-12 / (2 * 0.81))))), 6)
        True
    """
    check_patch_size(patch_size)
    check_positive_float("sigma", sigma)
    reduction = check_reduction(reduction)
    xs, ys, dtype = _prepared(x, y, value_range, out_of_range, patch_size)
    values = local_map(xs, ys, patch_size=patch_size, sigma=sigma).mean(dim=(1, 2, 3))
    return reduce(values.to(dtype), reduction)


def l2_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
) -> torch.Tensor:
    """Mean squared pixel difference on the [-1, 1] scale (4x the MSE of [0, 1] images).

    Example:
        >>> float(l2_distance(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)))
        1.0
    """
    reduction = check_reduction(reduction)
    xs, ys, dtype = _prepared(x, y, value_range, out_of_range)
    return reduce(l2_map(xs, ys).mean(dim=(1, 2, 3)).to(dtype), reduction)
