"""The baseline metrics of the evaluation harness (group ``"baselines"`` of :mod:`patchmmd.metrics.registry`).

They live in :mod:`.classic` (PSNR, SSIM, MS-SSIM), :mod:`.lpips` and :mod:`.dists`, on the trunks of
:mod:`.trunks` and the weight reader of :mod:`.weights`; this module gathers their public names.

===================  ===========================================================  =================
name                 what                                                         direction
===================  ===========================================================  =================
``psnr``             peak signal-to-noise ratio on [0, 1], dB (capped at 100 dB)  higher = similar
``ssim``             SSIM (pytorch-msssim: 11×11 Gaussian window, σ 1.5), on      higher = similar
                     the image as given, channels averaged
``ssim-downsampled`` SSIM after the reference code's scale step: average-pool by  higher = similar
                     ``f = max(1, round(min(H, W) / 256))`` (Wang et al.'s
                     ``ssim.m``, MATLAB's round: halves up; what published
                     LIVE numbers use)
``ms-ssim``          multi-scale SSIM (pytorch-msssim, 5 scales)                  higher = similar
``lpips-alex``       LPIPS v0.1 on an AlexNet trunk (local weight files only)     higher = different
``lpips-vgg``        LPIPS v0.1 on a VGG16 trunk (local weight files only)        higher = different
``dists``            DISTS on a VGG16 trunk with L2 pooling (local files only)    higher = different
===================  ===========================================================  =================

(The library's ``l2`` is mean squared error and ranks exactly like ``psnr``.)

**Weights: local files only, never a download.** The deep baselines need two files, passed as options
(``patchmmd eval ... --metric lpips-alex --metric-option backbone=PATH --metric-option weights=PATH``):

* ``backbone=``: the trunk's ``state_dict`` in torchvision's layout: a full torchvision checkpoint
  (``features.0.weight``, …, ``classifier.*`` ignored) or the ``features`` module's own (``0.weight``, …).
  AlexNet for ``lpips-alex`` (torchvision ``alexnet-owt-7be5be79.pth``), VGG16 for ``lpips-vgg`` and
  ``dists`` (``vgg16-397923af.pth``).
* ``weights=``: the small head. LPIPS: the ``lpips`` package's ``weights/v0.1/alex.pth`` or ``vgg.pth``
  (``lin0.model.1.weight`` … ``lin4.model.1.weight``, shapes ``(1, C, 1, 1)``). DISTS: its ``weights.pt``
  (``alpha`` and ``beta``, each ``(1, 1475, 1, 1)``).

Files are read by :func:`patchmmd.metrics.weights.load_weights` (``torch.load(path, weights_only=True)``:
tensors only, no code), and a file whose keys or shapes differ from the expected layout is refused with a
message listing the differences; so is a head with negative weights (trained LPIPS and DISTS weights are
non-negative) or DISTS weights that are all 0.

These modules import without pytorch-msssim; the SSIM metrics import it when built.

Example:
    >>> import torch
    >>> from patchmmd.metrics.registry import get_metric, get_spec
    >>> x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> get_metric("psnr")(x, x.clamp(0.1, 0.9)).shape
    torch.Size([2])
    >>> get_spec("psnr").higher_is_better, get_spec("psnr").group
    (True, 'baselines')
    >>> get_metric("lpips-alex")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    patchmmd.metrics.weights.WeightsError: metric 'lpips-alex' needs backbone=PATH: ...
"""

from __future__ import annotations

from .classic import ms_ssim, psnr, ssim
from .dists import DISTS
from .lpips import LPIPS
from .trunks import alexnet_features, vgg16_features
from .weights import WeightsError, load_weights

__all__ = [
    "DISTS", "LPIPS", "WeightsError", "alexnet_features", "load_weights", "ms_ssim", "psnr", "ssim", "vgg16_features",
]
