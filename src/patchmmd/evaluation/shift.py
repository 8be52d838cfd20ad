"""The shift check: how much a distance counts a small translation, relative to the mildest visible distortion.

People barely notice that an image moved by a pixel, but they do notice light noise or blur. For a photo
``x`` (``(C, H, W)``), :func:`shift_pairs` builds, from the crop ``ref = x[:, 2:-2, 2:-2]``:

* ``shift-1px``: the same crop displaced 1 px to the right (``x[:, 2:-2, 3:-1]``);
* ``shift-1px-diag``: displaced 1 px right and 1 px down;
* ``shift-2px``: displaced 2 px to the right;
* ``shift-0.5px``: displaced half a pixel to the right, by cubic interpolation (Keys, ``a = -0.5``: the crops
  at -1, 0, 1, 2 px weighted ``-1/16, 9/16, 9/16, -1/16``);
* ``noise``: ``ref`` plus Gaussian noise of σ = 0.03 (seeded), clipped to ``[0, 1]``;
* ``blur``: ``ref`` under a Gaussian blur of σ = 1 px (:func:`patchmmd.data.distortions.gaussian_blur`).

:func:`shift_ratios` evaluates a distance on them and returns, per shift, ``d(shift) / min(d(noise), d(blur))``:
the fraction of the mildest visible distortion that the shift counts for. The suite's check is a median
ratio of at most 0.15 for the 1 px shifts (docs/evaluation.md).

Example:
    >>> import torch
    >>> x = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    >>> pairs = shift_pairs(x, seed=0)
    >>> list(pairs), tuple(pairs["shift-1px"][1].shape)
    (['shift-1px', 'shift-1px-diag', 'shift-2px', 'shift-0.5px', 'noise', 'blur'], (3, 20, 20))
    >>> l2 = lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))
    >>> r = shift_ratios(l2, x, seed=0)
    >>> sorted(r) == sorted(SHIFTS), r["shift-2px"] > 1  # white noise moved 2 px: nothing in common
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.validation import check_seed

__all__ = ["BLUR_SIGMA", "MIN_SIZE", "NOISE_SIGMA", "SHIFTS", "shift_distances", "shift_pairs", "shift_ratios"]

#: The shifts, in the order they are reported.
SHIFTS: tuple[str, ...] = ("shift-1px", "shift-1px-diag", "shift-2px", "shift-0.5px")
#: The mildest visible distortions the shifts are compared with.
NOISE_SIGMA = 0.03
BLUR_SIGMA = 1.0
#: The smallest side a photo of the shift check may have (a 2 px margin each side and room for the shifts).
MIN_SIZE = 12

_M = 2  # margin of the reference crop


def _crop(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x[..., _M + dy : h - _M + dy, _M + dx : w - _M + dx]


def shift_pairs(x: torch.Tensor, *, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{kind: (ref, other)}`` for the shifts and the two distortions of the module docstring.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``x`` is not ``(C, H, W)`` or is smaller than :data:`MIN_SIZE` on a side, or ``seed`` is not an
            integer with ``0 <= seed < 2**63``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"the shift check expects a floating image in [0, 1], got {getattr(x, 'dtype', type(x))}")
    seed = check_seed(seed)
    if x.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"the shift check needs images of at least {MIN_SIZE} px, got {tuple(x.shape)}")
    from ..data.distortions import gaussian_blur

    ref = _crop(x, 0, 0)
    half = (9 * (_crop(x, 0, 0) + _crop(x, 0, 1)) - (_crop(x, 0, -1) + _crop(x, 0, 2))) / 16
    # The noise is drawn on the CPU (the same noise on every device) and only then moved to the image's device.
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(ref.shape, generator=g, dtype=ref.dtype, device="cpu").to(ref.device)
    noise = (ref + NOISE_SIGMA * noise).clamp(0, 1)
    others = {
        "shift-1px": _crop(x, 0, 1),
        "shift-1px-diag": _crop(x, 1, 1),
        "shift-2px": _crop(x, 0, 2),
        "shift-0.5px": half.clamp(0, 1),
        "noise": noise,
        "blur": gaussian_blur(ref, BLUR_SIGMA),
    }
    return {k: (ref, v.contiguous()) for k, v in others.items()}


def shift_distances(distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                    seed: int = 0) -> dict[str, float]:
    """``distance`` (a batch function ``(N, C, H, W) x 2 -> (N,)``, larger = more different) on every pair of
    :func:`shift_pairs`, computed as one batch."""
    pairs = shift_pairs(x, seed=seed)
    refs = torch.stack([p[0] for p in pairs.values()])
    others = torch.stack([p[1] for p in pairs.values()])
    with torch.no_grad():
        d = torch.as_tensor(distance(refs, others)).detach().double().reshape(-1).cpu()
    if d.numel() != len(pairs):
        raise ValueError(f"the distance returned {d.numel()} values for {len(pairs)} pairs")
    return {k: float(v) for k, v in zip(pairs, d, strict=True)}


def shift_ratios(distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                 seed: int = 0) -> dict[str, float]:
    """Per shift, ``d(shift) / min(d(noise), d(blur))`` (NaN when either is NaN or the
    minimum is not positive)."""
    return ratios(shift_distances(distance, x, seed=seed))


def ratios(d: dict[str, float]) -> dict[str, float]:
    """Per shift, ``d[shift] / min(d["noise"], d["blur"])`` from :func:`shift_distances`' values; NaN when either
    mild distance is NaN (``min`` would silently pick the other) or the minimum is not positive."""
    if math.isnan(d["noise"]) or math.isnan(d["blur"]):
        return {k: math.nan for k in SHIFTS}
    mild = min(d["noise"], d["blur"])
    return {k: (d[k] / mild if mild > 0 else math.nan) for k in SHIFTS}
