"""Training losses: a distance name to a differentiable ``(x, y) -> scalar`` on ``[0, 1]`` images.

The loss names (:data:`LOSS_NAMES`) are the task-only losses :data:`TASK_LOSSES` plus every distance of the
metric registry whose spec says it is differentiable (:attr:`patchmmd.metrics.registry.MetricSpec.differentiable`,
lower = more similar): MMD++ and the patch MMDs, the theory's networks (``random-cnn``, ``random-vgg``,
``infinite-cnn``, ``vgg`` …) and the deep baselines (``lpips-alex``, ``lpips-vgg``, ``dists``). A registry loss is
the distance averaged over the batch. The task-only losses: ``l2`` and ``l1`` are the mean squared / absolute
pixel error on ``[0, 1]`` (this ``l2`` is the loss of the task experiments, not the registry's ``l2`` on
``[-1, 1]``), ``ssim`` is ``1 - SSIM`` (:func:`patchmmd.metrics.classic.ssim`, differentiable).

Out-of-range values: a network's output (or an image being optimised) may overshoot ``[0, 1]`` during
training. The distances that check their range are therefore built with ``out_of_range="ignore"``: values
outside the range are used as they are (the distances are defined on all reals after their linear map to
``[-1, 1]``), nothing is clipped and gradients flow everywhere. The experiments clamp to ``[0, 1]`` only what
they save and evaluate (and the generalized image mean projects its image back onto ``[0, 1]`` after every step).

The losses in :data:`LOSSES_NEEDING_WEIGHTS` need local weight files; nothing is ever downloaded. ``vgg`` takes
a pretrained VGG16 state dict (``weights=PATH``), and without a file :class:`MissingWeightsError` says so; the
deep baselines take ``backbone=PATH`` and ``weights=PATH`` (see :mod:`patchmmd.metrics.baselines`), and a
missing or bad file raises :class:`patchmmd.metrics.weights.WeightsError` (of which ``MissingWeightsError`` is
a subclass).

Example:
    >>> import torch
    >>> loss = make_loss("mmdpp")
    >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
    >>> v = loss(x, torch.rand(2, 3, 32, 32)); v.backward()
    >>> v.shape, bool(torch.isfinite(x.grad).all())
    (torch.Size([]), True)
    >>> LOSS_NAMES[:5]
    ('l2', 'l1', 'ssim', 'local', 'mmdpp')
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..metrics import classic
from ..metrics.registry import MetricSpec, check_option_names, get_metric, get_spec, metric_specs
from ..metrics.weights import WeightsError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Losses defined here rather than in the metric registry (they take precedence over a registry name).
TASK_LOSSES: tuple[str, ...] = ("l2", "l1", "ssim")
_GROUP_ORDER = ("patchmmd", "theory")  # then any other group (baselines …), alphabetically


def _registry_losses() -> list[MetricSpec]:
    """The registry's differentiable distances, by group (the package's own, the theory's, then the rest)."""
    specs = [s for s in metric_specs() if s.differentiable and not s.higher_is_better and s.name not in TASK_LOSSES]
    rank = {g: i for i, g in enumerate(_GROUP_ORDER)}
    return sorted(specs, key=lambda s: (rank.get(s.group, len(rank)), s.group, s.name))


def _takes_weights_file(spec: MetricSpec) -> bool:
    return spec.name == "vgg" or "weights" in inspect.signature(spec.factory).parameters


#: Loss names accepted by :func:`make_loss`: :data:`TASK_LOSSES`, then the registry's differentiable distances.
LOSS_NAMES: tuple[str, ...] = (*TASK_LOSSES, *(s.name for s in _registry_losses()))

#: Losses that need local weight files (``vgg``: ``weights=PATH``; LPIPS / DISTS: ``backbone=`` and ``weights=``).
LOSSES_NEEDING_WEIGHTS: tuple[str, ...] = tuple(s.name for s in _registry_losses() if _takes_weights_file(s))


class MissingWeightsError(WeightsError):
    """Weights were needed but not given: the ``vgg`` loss without a local weights file (or the file does not
    exist), or an :class:`~patchmmd.tasks.report.Evaluator` of deep distances without ``weights_dir``."""


def _ssim_loss(win_size: int = 11, **unknown: Any) -> Loss:
    check_option_names("ssim", unknown, ["win_size"])
    win_size = classic.check_win_size(win_size)
    try:
        import pytorch_msssim  # noqa: F401
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the ssim loss needs pytorch-msssim (pip install pytorch-msssim)") from e

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < win_size:
            raise ValueError(f"the ssim loss needs images of at least win_size={win_size} px, got {tuple(x.shape)}")
        return 1.0 - classic.ssim(x, y, win_size=win_size, out_of_range="ignore").mean()

    return loss


def make_loss(name: str, *, weights: str | os.PathLike[str] | None = None, **options: Any) -> Loss:
    """A differentiable loss ``(x, y) -> scalar`` (batch mean) on ``[0, 1]`` images ``(N, C, H, W)``.

    Args:
        name: one of :data:`LOSS_NAMES`.
        weights: path of a local weights file: the VGG16 state dict (torchvision layout) of ``vgg``, or the
            head file of ``lpips-alex`` / ``lpips-vgg`` / ``dists`` (which also need ``backbone=PATH``);
            refused by the other losses.
        **options: options of the underlying distance (e.g. ``num_features=256`` for ``mmdpp``,
            ``width=128`` for ``random-cnn``, ``win_size=7`` for ``ssim``).

    Raises:
        ValueError: unknown name; ``weights`` given to a loss that takes no weight file; options of ``l2`` /
            ``l1`` (they take none); a bad option value (e.g. an even ``win_size`` for ``ssim``).
        TypeError: an option the loss's distance does not take (the message lists the valid ones).
        MissingWeightsError: ``vgg`` without ``weights``, or a weights file that does not exist.
        WeightsError: a missing or bad weight file of the other losses in :data:`LOSSES_NEEDING_WEIGHTS`.

    Example:
        >>> import torch
        >>> from patchmmd.tasks import make_loss
        >>> loss = make_loss("mmdpp", preset="loss")
        >>> out = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
        >>> value = loss(out, torch.full((2, 3, 32, 32), 0.5))
        >>> value.shape, bool(value > 0)
        (torch.Size([]), True)
        >>> value.backward(); bool(torch.isfinite(out.grad).all())
        True
        >>> make_loss("l2", window=3)
        Traceback (most recent call last):
        ...
        ValueError: the 'l2' loss takes no options, got ['window']
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if weights is not None and name not in LOSSES_NEEDING_WEIGHTS:
        raise ValueError(f"weights= is for the {', '.join(map(repr, LOSSES_NEEDING_WEIGHTS))} losses only, "
                         f"not {name!r}")
    if name == "l2":
        _no_options(name, options)
        return lambda x, y: F.mse_loss(*_same_shape(x, y))
    if name == "l1":
        _no_options(name, options)
        return lambda x, y: F.l1_loss(*_same_shape(x, y))
    if name == "ssim":
        return _ssim_loss(**options)
    if name == "vgg":
        if weights is None:
            raise MissingWeightsError(
                "the 'vgg' loss needs a local pretrained VGG16 weights file (torchvision layout; weights=PATH). "
                "patchmmd downloads nothing: save one with "
                "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), PATH)"
            )
        if not os.path.exists(weights):
            raise MissingWeightsError(f"VGG16 weights file not found: {os.fspath(weights)!r}")
    if weights is not None:
        options = {**options, "weights": os.fspath(weights)}
    if _checks_range(name):
        options = {"out_of_range": "ignore", **options}
    metric = get_metric(name, **options)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return metric(x, y).mean()

    return loss


def _checks_range(name: str) -> bool:
    """Whether the metric's factory takes ``out_of_range``: by name (the deep baselines) or among the options
    it forwards (the package's own distances)."""
    params = inspect.signature(get_spec(name).factory).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "out_of_range" for p in params)


def _same_shape(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``, or :class:`ValueError` if their shapes differ (as the registry's distances refuse them; the pixel
    losses would broadcast them silently)."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape (N, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"the {name!r} loss takes no options, got {sorted(options)}")
