"""LPIPS v0.1 (Zhang et al. 2018) on an AlexNet or VGG16 trunk, from local weight files only.

Registered as ``lpips-alex`` and ``lpips-vgg`` (group ``"baselines"``); both need two files, passed as options:
``backbone=`` the trunk in torchvision's layout (:func:`patchmmd.metrics.trunks.read_trunk`) and ``weights=``
the lpips package's ``weights/v0.1/alex.pth`` or ``vgg.pth`` (``lin0.model.1.weight`` … ``lin4.model.1.weight``,
shapes ``(1, C, 1, 1)``, non-negative as trained). Files are read by :func:`patchmmd.metrics.weights.load_weights`
(weights only, nothing downloaded). The metric is differentiable (gradients flow when an input requires them).

Example:
    >>> from patchmmd.metrics.registry import get_metric
    >>> get_metric("lpips-alex")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    patchmmd.metrics.weights.WeightsError: metric 'lpips-alex' needs backbone=PATH: ...
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..core.validation import OutOfRange, check_out_of_range, full_precision
from .classic import check_batch
from .registry import Metric, register
from .trunks import (
    ALEXNET_TAP_INDICES,
    VGG16_TAP_INDICES,
    alexnet_features,
    alexnet_taps,
    build_quietly,
    check_compute_dtype,
    check_rgb,
    conv_layers,
    freeze,
    load_trunk,
    min_side,
    module_metric,
    vgg16_features,
    vgg16_taps,
)
from .weights import WeightsError, WeightsPath, check_layout, check_nonnegative, load_weights

__all__ = ["LPIPS"]


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): unit-normalised trunk features, squared differences, learned 1×1 heads.

    Inputs are image batches in [0, 1], checked as the package's own distances check theirs (``out_of_range=
    "ignore"`` or ``"clamp"`` admits network outputs that overshoot, as the training losses do); they are
    mapped to [-1, 1] and shifted/scaled as LPIPS does. They are RGB (3 channels) or grayscale (1 channel: the
    distance of the image repeated in R, G and B). Output:
    one float32 distance per image ``(N,)`` (spatial average, summed over the five layers; the trunk runs in
    float32 whatever the input dtype, inside an autocast region too; in float64 after ``.double()``, and a module
    converted to 16 bits, ``.half()``, is refused with a ``TypeError``). Build it with
    :meth:`from_files` (or the registry's ``lpips-alex`` / ``lpips-vgg``).

    Example:
        >>> m = LPIPS("alex")  # random weights: for shape checks only
        >>> x = torch.rand(2, 3, 64, 64)
        >>> m(x, x).abs().max().item() < 1e-6, m(x, x.flip(-1)).shape
        (True, torch.Size([2]))
    """

    shift: torch.Tensor
    scale: torch.Tensor
    _CHANNELS: ClassVar[dict[str, tuple[int, ...]]] = {
        "alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

    def __init__(self, net: str = "alex", *, out_of_range: OutOfRange = "raise") -> None:
        super().__init__()
        if net not in self._CHANNELS:
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.out_of_range = check_out_of_range(out_of_range)
        features = alexnet_features() if net == "alex" else vgg16_features()
        self.features = features
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self._CHANNELS[net])
        #: The smallest side the trunk takes up to its last tap (31 px for AlexNet, 16 for VGG16).
        last_tap = (ALEXNET_TAP_INDICES if net == "alex" else VGG16_TAP_INDICES)[-1]
        self.min_side = min_side(list(features)[: last_tap + 1])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        freeze(self)

    @classmethod
    def from_files(cls, net: str, backbone: WeightsPath, weights: WeightsPath, *,
                   out_of_range: OutOfRange = "raise") -> LPIPS:
        """Build LPIPS from a torchvision trunk file and an LPIPS head file (see the module docstring)."""
        metric = f"lpips-{net}"
        m = build_quietly(lambda: cls(net, out_of_range=out_of_range))  # its random weights are replaced below
        load_trunk(m.features, backbone, metric=metric, arch="AlexNet" if net == "alex" else "VGG16")
        head = load_weights(weights, what=f"the LPIPS v0.1 linear heads (lpips package weights/v0.1/{net}.pth)",
                            metric=metric, option="weights")
        renamed: dict[str, torch.Tensor] = {}
        spelled: dict[str, str] = {}  # the file's key of each renamed one, for the messages
        for k, v in head.items():
            parts = k.split(".")
            if len(parts) == 4 and parts[0].startswith("lin") and parts[1] == "model" and parts[3] == "weight":
                name = f"{parts[0][3:]}.weight"
            else:
                name = k
            if name in spelled:  # lin0.model.0.weight and lin0.model.1.weight: which one is meant is unknown
                raise WeightsError(f"{metric}: weights file {weights} holds two weights of head {name}: "
                                   f"{spelled[name]} and {k}")
            renamed[name], spelled[name] = v, k
        check_layout(renamed, m.lins.state_dict(), metric=metric, option="weights", path=weights)
        check_nonnegative({spelled[k]: v for k, v in renamed.items()}, metric=metric, option="weights", path=weights,
                          why="LPIPS's linear heads are non-negative (the lpips package clamps them at 0 in training), "
                              "so that the distance is >= 0")
        m.lins.load_state_dict({k: v.float() for k, v in renamed.items()})
        freeze(m)
        return m

    @full_precision
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = check_batch(x, y, out_of_range=self.out_of_range, min_size=self.min_side,
                           min_size_reason=f"what the {'AlexNet' if self.net == 'alex' else 'VGG16'} trunk's strides "
                                           "and poolings need")
        check_rgb(x, f"lpips-{self.net}")
        check_compute_dtype(self, f"lpips-{self.net}")
        total = torch.zeros(x.shape[0], device=x.device)
        # Each image through the trunk on its own, as the lpips package does: a backward pass then runs through
        # the trunk of the images that need a gradient only (one pass over both computes the same function).
        for lin, fx, fy in zip(self.lins, self._taps(x), self._taps(y), strict=True):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy).pow(2)).mean((1, 2, 3))
        return total

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * x.float() - 1) - self.shift) / self.scale
        return alexnet_taps(h, self.features) if self.net == "alex" else vgg16_taps(h, conv_layers(self.features))


@register("lpips-alex", "LPIPS v0.1, AlexNet trunk; needs backbone=PATH and weights=PATH (local files)",
          group="baselines", differentiable=True)
def _lpips_alex(*, backbone: WeightsPath = None, weights: WeightsPath = None,
                out_of_range: OutOfRange = "raise") -> Metric:
    return module_metric(LPIPS.from_files("alex", backbone, weights, out_of_range=out_of_range))


@register("lpips-vgg", "LPIPS v0.1, VGG16 trunk; needs backbone=PATH and weights=PATH (local files)",
          group="baselines", differentiable=True)
def _lpips_vgg(*, backbone: WeightsPath = None, weights: WeightsPath = None,
                out_of_range: OutOfRange = "raise") -> Metric:
    return module_metric(LPIPS.from_files("vgg", backbone, weights, out_of_range=out_of_range))
