"""Registration of the theory module's distances (random and infinite CNNs, VGG16) in :mod:`patchmmd.metrics.registry`.

Metrics take ``[0, 1]`` images ``(N, C, H, W)`` and return ``(N,)`` distances. The random-CNN and
infinite-CNN metrics apply the scale rule of the default MMD++ (:mod:`patchmmd.core.scale`, the levels of
``get_config("default").levels(H, W)``): a 768x512 photo is box-downsampled to the rule's working
resolution (and pyramid levels, averaged with the rule's weights) before the network sees it, as MMD++
does; a 64x64 crop is used as is. Pass ``scale_rule=False`` for native resolution. The VGG metrics run at native
resolution by default (as LPIPS does); ``scale_rule=True`` applies the same rule. The modules behind them
default to ``reduction="mean"``; the factories build them with ``reduction="none"``, so a metric gives ``(N,)``.

Example:
    >>> import torch
    >>> from patchmmd.metrics.registry import get_metric
    >>> x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> float(get_metric("infinite-cnn", depth=1)(x, x))
    0.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..core.mmdpp import get_config
from ..core.scale import downsample
from ..core.validation import check_bool, check_image
from ..theory.cnn import RandomCNNDistance, VGGDistance
from ..theory.nngp import InfiniteCNNDistance
from .registry import Metric, check_option_names, register


def with_scale_rule(metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], enabled: bool = True) -> Metric:
    """Wrap a ``[0, 1]``-image metric so it runs at the levels of the default MMD++ scale rule.

    Each level box-downsamples both images by its factor; the level values are averaged with the rule's
    weights. Box downsampling keeps values inside ``[0, 1]``. Images that are not a valid pair by shape (or too
    small for the rule, which would not downsample them) go to ``metric`` as given, so that its error names the
    caller's images, not downsampled ones.
    """
    return _AtScaleRuleLevels(metric) if enabled else metric


class _AtScaleRuleLevels:
    """What :func:`with_scale_rule` returns: a class rather than a closure, so that the metric pickles (worker
    processes), as the registry's other metrics do."""

    def __init__(self, metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.metric = metric
        self.config = get_config("default")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xs, ys = check_image("x", x), check_image("y", y)
        if xs.shape != ys.shape or min(xs.shape[-2:]) < self.config.min_level_size:
            return self.metric(x, y)  # let the metric report the bad input (a small image has one level: factor 1)
        total = None
        for level in self.config.levels(x.shape[-2], x.shape[-1]):
            value = level.weight * self.metric(downsample(x, level.factor), downsample(y, level.factor))
            total = value if total is None else total + value
        assert total is not None
        return total


def _split(name: str, options: dict[str, Any], default_scale: bool, module: type) -> tuple[dict[str, Any], bool]:
    """The module's options (per-image values: ``reduction="none"``, which the caller cannot change) and the
    scale-rule switch; an option ``module`` does not take is a ``TypeError`` naming the metric and the valid ones
    (Python's own message names the class's ``__init__``)."""
    if "reduction" in options:
        raise TypeError(f"{name} takes no reduction option: a registry metric gives one value per image (N,)")
    check_option_names(name, options, {*inspect.signature(module).parameters, "scale_rule"} - {"reduction"})
    opts = {"reduction": "none", **options}
    return opts, check_bool("scale_rule", opts.pop("scale_rule", default_scale))


@register("random-cnn", "random-filter CNN (3x3 + 1x1 conv, ReLU, He, width 512), windowed pooling; under MMD++'s "
                       "scale rule (scale_rule=false: at full resolution)",
          group="theory", differentiable=True)
def _random_cnn(**options: Any) -> Metric:
    opts, scale = _split("random-cnn", options, True, RandomCNNDistance)
    return with_scale_rule(RandomCNNDistance(**opts), scale)


@register("random-cnn-zero-mean", "random-filter CNN with zero-mean first-layer filters; under the scale rule",
          group="theory", differentiable=True)
def _random_cnn_zero_mean(**options: Any) -> Metric:
    opts, scale = _split("random-cnn-zero-mean", options, True, RandomCNNDistance)
    if opts.get("first_layer", "zero_mean") != "zero_mean":  # it would silently become another metric
        raise ValueError(f"random-cnn-zero-mean has first_layer='zero_mean', got first_layer={opts['first_layer']!r}; "
                         "use random-cnn for another first layer")
    return with_scale_rule(RandomCNNDistance(**{"first_layer": "zero_mean", **opts}), scale)


@register("infinite-cnn", "infinitely wide random CNN: windowed MMD² with the arc-cosine (NNGP) kernel; under the "
                          "scale rule",
          group="theory", differentiable=True)
def _infinite_cnn(**options: Any) -> Metric:
    opts, scale = _split("infinite-cnn", options, True, InfiniteCNNDistance)
    return with_scale_rule(InfiniteCNNDistance(**opts), scale)


@register("random-vgg", "VGG16 trunk with random He filters, five taps, LPIPS-style unit normalisation",
          group="theory", differentiable=True)
def _random_vgg(**options: Any) -> Metric:
    opts, scale = _split("random-vgg", options, False, VGGDistance)
    if "weights" in opts:
        raise ValueError("random-vgg draws its filters from seed=; use the 'vgg' metric with weights= for pretrained")
    return with_scale_rule(VGGDistance(**opts), scale)


@register("vgg", "VGG16 trunk with pretrained filters from a local file (option weights=PATH)",
          group="theory", differentiable=True)
def _vgg(**options: Any) -> Metric:
    opts, scale = _split("vgg", options, False, VGGDistance)
    if opts.get("weights") is None:
        raise ValueError(
            "the 'vgg' metric needs weights=PATH, a local VGG16 state dict in torchvision's layout "
            "(nothing is downloaded); use 'random-vgg' for random filters"
        )
    return with_scale_rule(VGGDistance(**opts), scale)
