"""Training losses: a distance name to a differentiable ``(x, y) -> scalar`` on ``[0, 1]`` images.

The perceptual losses reuse the library's distances (:class:`patchmmd.MMDPP` and the registry's
``random-cnn``, ``random-vgg``, ``infinite-cnn`` and ``vgg``); the loss is the distance averaged over the
batch. ``l2`` and ``l1`` are the mean squared / absolute pixel error on ``[0, 1]``, ``ssim`` is
``1 - SSIM`` (pytorch-msssim, differentiable).

Out-of-range values: a network's output (or an image being optimised) may overshoot ``[0, 1]`` during
training. The distances are therefore built with ``out_of_range="ignore"``: values outside the range are
used as they are (the distances are defined on all reals after their linear map to ``[-1, 1]``), nothing is
clipped and gradients flow everywhere. The experiments clamp to ``[0, 1]`` only what they save and
evaluate (and the generalized image mean projects its image back onto ``[0, 1]`` after every step).

``vgg`` needs a local pretrained VGG16 state dict (``weights=PATH``); nothing is ever downloaded, and
without a file :class:`MissingWeightsError` says so.

Example:
    >>> import torch
    >>> loss = make_loss("mmdpp")
    >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
    >>> v = loss(x, torch.rand(2, 3, 32, 32)); v.backward()
    >>> v.shape, bool(torch.isfinite(x.grad).all())
    (torch.Size([]), True)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Loss names accepted by :func:`make_loss`, in the order the docs list them.
LOSS_NAMES: tuple[str, ...] = (
    "l2", "l1", "ssim", "mmdpp", "mmdpp-followup", "random-cnn", "random-vgg", "infinite-cnn", "vgg",
)

#: Losses that are distances of the metric registry (built with ``out_of_range="ignore"``).
_REGISTRY_LOSSES = ("mmdpp", "mmdpp-followup", "random-cnn", "random-vgg", "infinite-cnn", "vgg")


class MissingWeightsError(ValueError):
    """The ``vgg`` loss was asked for without a local weights file (or the file does not exist)."""


def _ssim_loss(win_size: int = 11) -> Loss:
    try:
        import pytorch_msssim
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the ssim loss needs pytorch-msssim (pip install pytorch-msssim)") from e

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < win_size:
            raise ValueError(f"the ssim loss needs images of at least win_size={win_size} px, got {tuple(x.shape)}")
        return 1.0 - pytorch_msssim.ssim(x, y, data_range=1.0, size_average=True, win_size=win_size)

    return loss


def make_loss(name: str, *, weights: str | os.PathLike[str] | None = None, **options: Any) -> Loss:
    """A differentiable loss ``(x, y) -> scalar`` (batch mean) on ``[0, 1]`` images ``(N, C, H, W)``.

    Args:
        name: one of :data:`LOSS_NAMES`.
        weights: path of a local VGG16 state dict (torchvision layout); required by ``vgg``, refused by
            the others.
        **options: options of the underlying distance (e.g. ``num_features=256`` for ``mmdpp``,
            ``width=128`` for ``random-cnn``, ``win_size=7`` for ``ssim``).

    Raises:
        ValueError: unknown name or options; ``weights`` given to a loss other than ``vgg``.
        MissingWeightsError: ``vgg`` without ``weights``, or a weights file that does not exist.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if weights is not None and name != "vgg":
        raise ValueError(f"weights= is for the 'vgg' loss only, not {name!r}")
    if name == "l2":
        _no_options(name, options)
        return lambda x, y: F.mse_loss(x, y)
    if name == "l1":
        _no_options(name, options)
        return lambda x, y: F.l1_loss(x, y)
    if name == "ssim":
        return _ssim_loss(**options)
    if name == "vgg":
        if weights is None:
            raise MissingWeightsError(
                "the 'vgg' loss needs a local pretrained VGG16 weights file (torchvision layout; pass "
                "--weights PATH / weights=PATH). patchmmd downloads nothing: save one with "
                "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), PATH)"
            )
        if not os.path.exists(weights):
            raise MissingWeightsError(f"VGG16 weights file not found: {os.fspath(weights)!r}")
        options = {**options, "weights": os.fspath(weights)}
    from ..metrics.registry import get_metric

    metric = get_metric(name, **{"out_of_range": "ignore", **options})

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return metric(x, y).mean()

    return loss


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"the {name!r} loss takes no options, got {sorted(options)}")
