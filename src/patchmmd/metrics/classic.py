"""The classic image-quality scores: PSNR, SSIM and MS-SSIM — one implementation each.

The registry's ``psnr``, ``ssim``, ``ssim-downsampled`` and ``ms-ssim`` (group ``"baselines"``), the task
reports (:mod:`patchmmd.tasks.report`) and the ``ssim`` training loss (:mod:`patchmmd.tasks.losses`) all call
:func:`psnr`, :func:`ssim` and :func:`ms_ssim`. Inputs are image batches ``(N, C, H, W)`` on ``[0, 1]``; every
function returns one value per image, ``(N,)``, higher for more similar images, and is differentiable.

* :func:`psnr`: ``10·log10(1 / MSE)`` dB, computed in float64, capped at ``max_db`` (identical images give the cap).
* :func:`ssim`: pytorch-msssim's SSIM (11×11 Gaussian window, σ 1.5), channels averaged; ``downsample=True``
  first average-pools by ``f = max(1, round(min(H, W) / 256))`` as Wang et al.'s reference ``ssim.m`` does
  (MATLAB's ``round``: halves up).
* :func:`ms_ssim`: pytorch-msssim's 5-scale MS-SSIM.

This module imports without pytorch-msssim; the SSIM functions import it when called.

Example:
    >>> import torch
    >>> x = torch.zeros(1, 1, 4, 4)
    >>> psnr(x, x + 0.1).item(), psnr(x, x).item()
    (20.0, 100.0)
"""

from __future__ import annotations

import math
from functools import partial
from types import ModuleType

import torch
import torch.nn.functional as F

from ..core.validation import (
    OutOfRange,
    check_out_of_range,
    check_pair,
    check_positive_float,
    check_positive_int,
    full_precision,
)
from .registry import Metric, register

__all__ = ["MAX_PSNR", "check_batch", "check_win_size", "ms_ssim", "psnr", "ssim"]

#: The cap of :func:`psnr` in dB (what identical images score).
MAX_PSNR = 100.0


def check_batch(x: object, y: object, *, data_range: float | None = None, out_of_range: OutOfRange | None = None,
                min_size: int = 1, min_size_reason: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` as image batches ``(N, C, H, W)`` (a ``(C, H, W)`` image is a batch of one), checked as the
    package's own distances check theirs (:func:`patchmmd.core.validation.check_pair`): floating-point tensors
    of one shape, dtype and device, finite, with values in ``[0, data_range]`` (``[0, 1]`` when the caller has
    no ``data_range`` option: ``None``) unless ``out_of_range`` is ``"clamp"`` or ``"ignore"`` (training losses
    on network outputs that overshoot; ``None``: the caller has no such option, values must be in range), and
    sides of at least ``min_size`` (``min_size_reason`` says why). An out-of-range error names only the options
    the caller has."""
    hint = ("pass data_range=255 for images in [0, 255]" if data_range is not None
            else "this metric takes images in [0, 1]: divide 8-bit values by 255, map [-1, 1] images by (x + 1) / 2")
    if out_of_range is not None:
        hint += ", or out_of_range='clamp' / 'ignore' for network outputs that overshoot slightly"
    top = 1.0 if data_range is None else check_positive_float("data_range", data_range)
    return check_pair(x, y, value_range=(0.0, top), out_of_range="raise" if out_of_range is None else out_of_range,
                      min_size=min_size, min_size_reason=min_size_reason, range_hint=hint,
                      range_text=f"[0, data_range] = [0, {top:g}]" if data_range is not None else "[0, 1]")


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, max_db: float = MAX_PSNR) -> torch.Tensor:
    """PSNR in dB per image, ``10·log10(range² / MSE)``, capped at ``max_db`` (identical images give the cap).

    Computed in float64 and returned in the input's dtype, the package's rule (a bfloat16 result resolves 0.125 dB
    at 16 to 32 dB: pass float32 images for finer values).

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> psnr(x, x + 0.1).item()
        20.0
        >>> psnr(x, x).item()
        100.0
    """
    x, y = check_batch(x, y, data_range=data_range)
    data_range = check_positive_float("data_range", data_range)
    max_db = check_positive_float("max_db", max_db)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    # In logarithms, and the cap by a mask rather than a floor on the MSE: range² and range² · 10^(−max_db / 10)
    # overflow or underflow float64 for large ranges or caps (identical images then gave inf, and a NaN gradient).
    db = 10.0 * (2.0 * math.log10(data_range) - torch.log10(mse.clamp_min(torch.finfo(torch.float64).tiny)))
    return torch.where(mse == 0, max_db, db.clamp(max=max_db)).to(x.dtype)  # NaN stays NaN (unchecked calls)


def _msssim_module() -> ModuleType:
    try:
        import pytorch_msssim
    except ImportError as e:
        raise ImportError(
            "the SSIM baselines need pytorch-msssim: `pip install 'patchmmd[baselines]'` (or `pip install "
            "pytorch-msssim`)"
        ) from e
    return pytorch_msssim


def check_win_size(win_size: object) -> int:
    """``win_size`` if it is an odd integer >= 1 (the Gaussian window is centred on a pixel); else ``ValueError``
    (the SSIM metrics' option and the ``ssim`` loss's)."""
    try:
        win = check_positive_int("win_size", win_size)
    except ValueError:
        win = 0
    if win % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 1 (the window is centred on a pixel), got {win_size!r}")
    return win


def _check_ssim_size(x: torch.Tensor, win_size: int, scales: int, name: str) -> None:
    need = (win_size - 1) * 2 ** (scales - 1) if scales > 1 else win_size - 1
    if min(x.shape[-2:]) <= need:
        hint = "use `ssim`, or pass win_size=3 (images > 32 px)" if scales > 1 else "pass a smaller win_size"
        raise ValueError(
            f"{name} with win_size={win_size} needs images larger than {need} px on the short side, got "
            f"{tuple(x.shape[-2:])}: {hint}"
        )


def _downsampling_factor(side: int) -> int:
    """``ssim.m``'s ``f = max(1, round(side / 256))`` with MATLAB's ``round``, which rounds halves up (640 px: 3);
    Python's ``round`` rounds them to even (640 px: 2)."""
    return max(1, math.floor(side / 256 + 0.5))


@full_precision
def ssim(x: torch.Tensor, y: torch.Tensor, *, win_size: int = 11, downsample: bool = False,
         name: str = "ssim", out_of_range: OutOfRange = "raise") -> torch.Tensor:
    """SSIM per image (pytorch-msssim, Gaussian window of ``win_size`` px, σ 1.5; channels averaged): ``(N,)``.

    ``downsample=True`` first average-pools both images by ``f = max(1, round(min(H, W) / 256))`` (the reference
    code's scale step; what published LIVE numbers use; MATLAB's ``round``, halves up: 640 px gives 3). It is
    exactly ``ssim.m``'s step for ``f = 2`` and even sides; ``ssim.m`` (an ``f × f`` box filter with symmetric
    borders, then every ``f``-th pixel) keeps one more border row or column for odd sides, and its boxes are offset
    by one pixel for ``f ≥ 3``. ``name`` is the caller's name in error messages; ``out_of_range`` as in
    :func:`check_batch` (``"ignore"`` for the training loss).
    Computed and returned in float32 whatever the input dtype (pytorch-msssim's precision), inside an autocast
    region too (autocast is turned off here: its 16-bit convolutions cancel in ``E[x²] − μ²`` and gave SSIM > 1).
    """
    ms = _msssim_module()
    win_size = check_win_size(win_size)
    x, y = check_batch(x, y, out_of_range=out_of_range)
    x, y = x.float(), y.float()  # pool in float32 too, not in a 16-bit input's dtype
    if downsample:
        f = _downsampling_factor(min(x.shape[-2:]))
        if f > 1:
            x, y = F.avg_pool2d(x, f), F.avg_pool2d(y, f)
    _check_ssim_size(x, win_size, 1, name)
    return ms.ssim(x, y, data_range=1.0, size_average=False, win_size=win_size)


@full_precision
def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, win_size: int = 11) -> torch.Tensor:
    """Multi-scale SSIM per image (pytorch-msssim, 5 scales; images larger than ``16·(win_size − 1)`` px): ``(N,)``,
    computed and returned in float32 whatever the input dtype, inside an autocast region too (as :func:`ssim`)."""
    ms = _msssim_module()
    win_size = check_win_size(win_size)
    x, y = check_batch(x, y)
    _check_ssim_size(x, win_size, 5, "ms-ssim")
    return ms.ms_ssim(x.float(), y.float(), data_range=1.0, size_average=False, win_size=win_size)


@register("psnr", "peak signal-to-noise ratio in dB on [0, 1] (capped at 100 dB)", higher_is_better=True,
          group="baselines", differentiable=True)
def _psnr(*, max_db: float = MAX_PSNR, data_range: float = 1.0) -> Metric:
    # A partial of a module-level function, not a closure: a metric pickles (worker processes), as the package's
    # own distances do. The options are those psnr's errors name (data_range for images in [0, 255]).
    return partial(psnr, max_db=check_positive_float("max_db", max_db),
                   data_range=check_positive_float("data_range", data_range))


def _ssim_metric(win_size: int, downsample: bool, name: str, out_of_range: object) -> Metric:
    _msssim_module()  # fail when built, not when called
    return partial(ssim, win_size=win_size, downsample=downsample, name=name,  # picklable, as for psnr
                   out_of_range=check_out_of_range(out_of_range))


@register("ssim", "SSIM (pytorch-msssim, 11x11 Gaussian window) at the image's own resolution",
          higher_is_better=True, group="baselines", differentiable=True)
def _ssim(*, win_size: int = 11, out_of_range: OutOfRange = "raise") -> Metric:
    return _ssim_metric(check_win_size(win_size), False, "ssim", out_of_range)


@register("ssim-downsampled", "SSIM after the reference code's downsampling by round(min(H,W)/256)",
          higher_is_better=True, group="baselines", differentiable=True)
def _ssim_downsampled(*, win_size: int = 11, out_of_range: OutOfRange = "raise") -> Metric:
    return _ssim_metric(check_win_size(win_size), True, "ssim-downsampled", out_of_range)


@register("ms-ssim", "multi-scale SSIM (pytorch-msssim, 5 scales; images > 160 px)", higher_is_better=True,
          group="baselines", differentiable=True)
def _ms_ssim(*, win_size: int = 11) -> Metric:
    _msssim_module()
    return partial(ms_ssim, win_size=check_win_size(win_size))  # picklable, as for psnr
