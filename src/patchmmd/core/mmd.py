"""Windowed maximum mean discrepancy between the patch distributions of two images (docs/method.md §2).

For each window ``ω`` (see :mod:`patchmmd.core.patches`) the biased (V-statistic) squared MMD between the
patches of ``x`` and of ``y`` centred in ``ω``::

    MMD²_ω = mean k(p, p') + mean k(q, q') - 2 mean k(p, q)

and the distance is the mean over windows. Two estimators compute it:

* ``"exact"``: every kernel value, window by window, in chunks that bound memory (float64 when the input
  is float64). The reference, and the metric for evaluation. Here.
* ``"rff"``: random Fourier features (:mod:`.rff`): one convolution, a cosine and an average pool, the fast
  estimator and training loss. Deterministic for a seed; relative error ``O(r^-1/2)``.

:func:`windowed_mmd2` dispatches between them; :func:`patch_mmd` is the public entry point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from .features import FEATURE_KINDS, FeatureKind, distinct_draws
from .kernels import MAX_KERNEL_ELEMENTS, GaussianKernel, Kernel, _checkpointed, mmd2_sets
from .patches import WindowGrid, contrast_normalized_patches, patch_rows, reflect_pad, window_grid, window_patch_sets
from .rff import DEFAULT_NUM_FEATURES, mmd_bandwidths, windowed_mmd2_rff
from .validation import (
    OutOfRange,
    Reduction,
    check_bool,
    check_patch_size,
    check_positive_int,
    check_reduction,
    check_seed,
    check_sigma,
    full_precision,
    prepare_pair,
    reduce,
)

Estimator = Literal["exact", "rff"]
ESTIMATORS = ("exact", "rff")


def windowed_mmd2_exact(
    x: torch.Tensor, y: torch.Tensor, grid: WindowGrid, kernel: Kernel, *, patch_size: int, center: bool
) -> torch.Tensor:
    """Exact squared MMD of every window, ``(N, C, H, W) x 2 -> (N, rows, cols)``.

    ``x`` and ``y`` are on the internal scale. Patches are extracted one band of window rows at a time and
    kernel values one chunk of windows at a time, so without gradients memory is bounded independently of the
    image size. With gradients the kernel values are recomputed in the backward pass instead of stored, but the
    windows' patch sets are kept for it: ``(window / stride)² C k²`` values per pixel of each image (108 for the
    defaults, in float64: about 0.9 kB a pixel, 0.2 GB an image at 512²), so memory grows with the image size;
    the ``"rff"`` estimator is the one to train with.
    """
    n_img = x.shape[0]
    d = x.shape[1] * patch_size * patch_size
    n = grid.patches_per_window
    xp, yp = reflect_pad(x, patch_size), reflect_pad(y, patch_size)
    band = max(1, MAX_KERNEL_ELEMENTS // max(1, n_img * grid.cols * n * d))
    per_chunk = max(1, MAX_KERNEL_ELEMENTS // (n * n))
    rows = []
    for r0 in range(0, grid.rows, band):
        r1 = min(grid.rows, r0 + band)
        start, stop = r0 * grid.stride_h, (r1 - 1) * grid.stride_h + grid.window_h
        sx = window_patch_sets(patch_rows(xp, patch_size, start, stop, center=center), grid, r0, r1)
        sy = window_patch_sets(patch_rows(yp, patch_size, start, stop, center=center), grid, r0, r1)
        vals = [_checkpointed(mmd2_sets, kernel, sx[i : i + per_chunk], sy[i : i + per_chunk])
                for i in range(0, sx.shape[0], per_chunk)]
        rows.append(torch.cat(vals).reshape(n_img, r1 - r0, grid.cols))
    return torch.cat(rows, dim=1)


def windowed_mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    patch_size: int,
    sigma: float | tuple[float, ...],
    window: int | None,
    stride: int,
    center: bool,
    estimator: Estimator,
    num_features: int,
    seed: int,
    features: FeatureKind,
    y_features: torch.Tensor | None = None,
    contrast_floor: float | None = None,
) -> tuple[torch.Tensor, WindowGrid]:
    """Per-window squared MMD of internal-scale images, and the window grid it lives on.

    ``y_features``: precomputed RFF window means of ``y`` (:func:`.rff.target_window_means`), RFF only.
    ``contrast_floor``: compare the contrast-normalised patches (:func:`.patches.contrast_normalized_patches`,
    docs/method.md §3.3) instead of the patches; ``sigma`` is then in units of their unit ball.
    """
    grid = window_grid(x.shape[-2], x.shape[-1], window, stride)
    bandwidth = mmd_bandwidths(sigma, patch_size, contrast_floor)
    if estimator == "exact" and contrast_floor is not None:
        # The C k²-channel image of the normalised patches, compared as 1x1 patches.
        x, y = (contrast_normalized_patches(t, patch_size, contrast_floor) for t in (x, y))
        patch_size, center = 1, False
    if estimator == "exact":
        # A tuple of widths is the mean of their Gaussian kernels, so its squared MMD is the mean of theirs.
        widths = bandwidth if isinstance(bandwidth, tuple) else (bandwidth,)
        values = torch.stack([
            windowed_mmd2_exact(x, y, grid, GaussianKernel(b), patch_size=patch_size, center=center) for b in widths
        ]).mean(dim=0)
    else:
        values = windowed_mmd2_rff(
            x, y, grid, patch_size=patch_size, bandwidth=bandwidth, num_features=num_features,
            seed=seed, features=features, center=center, y_features=y_features, contrast_floor=contrast_floor,
        )
    return values, grid


#: Most widths a multi-bandwidth kernel may have.
MAX_SIGMAS = 8


def check_sigmas(name: str, value: object) -> float | tuple[float, ...]:
    """One kernel width, or a tuple of 1 to :data:`MAX_SIGMAS` widths (the mean of their Gaussian kernels); a
    list or a 1-D NumPy array of widths is taken as that tuple.

    Example:
        >>> check_sigmas("sigma", 0.06), check_sigmas("sigma", [0.015, 0.06])
        (0.06, (0.015, 0.06))
    """
    if isinstance(value, np.ndarray) and value.ndim == 1:  # a NumPy sweep of widths, as a list of them
        value = value.tolist()
    if isinstance(value, tuple | list):
        if not 1 <= len(value) <= MAX_SIGMAS:
            raise ValueError(f"{name} must be a number or 1 to {MAX_SIGMAS} numbers, got {len(value)}")
        return tuple(check_sigma(name, v) for v in value)
    return check_sigma(name, value)


def check_mmd_options(
    *, patch_size: object, sigma: object, window: object, stride: object, estimator: object,
    num_features: object, features: object, seed: object, center: object = True,
) -> dict[str, Any]:
    """Validate the options shared by every windowed-MMD entry point and return them as plain Python values
    (``int``, ``float``, a tuple of widths, ``bool``), keyed by name (raises ``ValueError``).

    Besides each option's type and range: ``patch_size=1`` with ``center=True`` is refused, since
    centring a 1x1 patch leaves zero, so every distance would be exactly 0; and with ``estimator="rff"``, more
    kernel widths than the features have distinct frequencies (:func:`.features.distinct_draws`), since a width
    would get no feature and drop out of the kernel.

    Example:
        >>> import numpy as np
        >>> opts = check_mmd_options(patch_size=np.int64(3), sigma=[0.03, 0.06], window=None, stride=16,
        ...                          estimator="rff", num_features=128, features="stratified", seed=0)
        >>> opts["patch_size"], type(opts["patch_size"]).__name__, opts["sigma"]
        (3, 'int', (0.03, 0.06))
    """
    k = check_patch_size(patch_size)
    sigmas = check_sigmas("sigma", sigma)
    win = None if window is None else check_positive_int("window", window)
    step = check_positive_int("stride", stride)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    r = check_positive_int("num_features", num_features)
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    draws = distinct_draws(r, str(features))
    if estimator == "rff" and isinstance(sigmas, tuple) and len(sigmas) > draws:
        raise ValueError(
            f"num_features={r} {features!r} features have {draws} distinct frequencies, fewer than the "
            f"{len(sigmas)} kernel widths sigma={sigmas}: a width would get no feature; use num_features >= "
            f"{2 * len(sigmas) - 1 if features == 'stratified' else len(sigmas)}"
        )
    centred = check_bool("center", center)
    if centred and k == 1:
        raise ValueError(
            "patch_size=1 with center=True compares nothing: centring a 1x1 patch (removing its channel means) "
            "leaves zero, so the distance would be 0 for every pair; use patch_size >= 3 or center=False"
        )
    return dict(patch_size=k, sigma=sigmas, window=win, stride=step, center=centred, estimator=estimator,
                num_features=r, features=features, seed=check_seed(seed))


@full_precision
def patch_mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    patch_size: int = 3,
    sigma: float | Sequence[float] = 0.06,
    window: int | None = 32,
    stride: int = 16,
    center: bool = True,
    estimator: Estimator = "exact",
    num_features: int = DEFAULT_NUM_FEATURES,
    features: FeatureKind = "stratified",
    seed: int = 0,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
) -> torch.Tensor:
    """Windowed squared MMD between the local patch distributions of ``x`` and ``y``.

    The true V-statistic ``MMD²`` (not the follow-up code's half of it) of the Gaussian kernel
    ``exp(-||Π(p - q)||² / (2 s²))``, ``s = sigma * patch_size²``, averaged over ``window x window`` blocks
    of patch centres placed every ``stride`` pixels (``avg_pool2d`` placement); see docs/method.md §2.

    Args:
        x, y: images ``(N, C, H, W)`` or ``(C, H, W)`` with values in ``value_range``; ``H, W >= patch_size``.
            Windows larger than the image are clipped to it; ``window=None`` is one window over the image.
        patch_size: odd patch side ``k``; patches use reflect padding at the borders.
        sigma: kernel width per pixel on the [-1, 1] scale, or several: the mean of their Gaussian kernels
            (a multi-bandwidth kernel; its squared MMD is the mean of theirs).
        center: remove each channel's mean inside each patch (Π) before the kernel.
        estimator: ``"exact"`` (all kernel values; memory bounded without gradients, growing with the image size
            with them: :func:`windowed_mmd2_exact`) or ``"rff"`` (random features, the one to train with).
        num_features, features, seed: the ``"rff"`` estimator's feature count, law and seed.
        value_range: the range of valid pixel values; checked (``out_of_range``: ``"raise"``, ``"clamp"``
            or ``"ignore"``).
        reduction: ``"none"`` gives shape ``(N,)``; ``"mean"`` or ``"sum"`` a scalar.

    Returns:
        The distance, differentiable in both inputs; dtype of the input (16-bit inputs are computed in
        float32).

    Example:
        >>> x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
        >>> d = patch_mmd(x, x.flip(-1))  # mirroring moves patches, the distribution barely changes
        >>> d.shape, bool((d >= 0).all())
        (torch.Size([2]), True)
        >>> float(patch_mmd(x, x).max())
        0.0
    """
    opts = check_mmd_options(
        patch_size=patch_size, sigma=sigma, window=window, stride=stride, estimator=estimator,
        num_features=num_features, features=features, seed=seed, center=center,
    )
    reduction = check_reduction(reduction)
    xs, ys, out_dtype = prepare_pair(x, y, value_range=value_range, out_of_range=out_of_range,
                                     min_size=opts["patch_size"])
    values, _ = windowed_mmd2(xs, ys, **opts)
    return reduce(values.mean(dim=(1, 2)).to(out_dtype), reduction)
