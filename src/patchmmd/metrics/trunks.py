"""The convolutional trunks of the package: one AlexNet and one VGG16, in torchvision's ``features`` layout.

* :func:`alexnet_features` / :func:`vgg16_features` build the trunk as an ``nn.Sequential`` whose
  ``state_dict`` keys are torchvision's (``0.weight``, ``0.bias``, …), so a torchvision checkpoint loads
  into it (:func:`load_trunk` / :func:`read_trunk`, through the one weight reader
  :func:`patchmmd.metrics.weights.load_weights`).
* :func:`vgg16_taps` runs the VGG16 trunk from a list of ``(weight, bias)`` convolutions to its five taps
  ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` (LPIPS's choice), with max pooling or any other pooling
  between the stages (DISTS's L2 pooling). LPIPS-VGG, DISTS and :class:`patchmmd.theory.cnn.VGGDistance`
  (random or pretrained filters) all run it; :func:`alexnet_taps` is its AlexNet counterpart.

Example:
    >>> import torch
    >>> f = vgg16_features()
    >>> len(f), len(conv_layers(f))
    (31, 13)
    >>> [t.shape[1] for t in vgg16_taps(torch.rand(1, 3, 32, 32), conv_layers(f))]
    [64, 128, 256, 512, 512]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Metric
from .weights import WeightsPath, check_layout, load_weights

__all__ = [
    "ALEXNET_TAP_INDICES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_CONFIG",
    "VGG16_CONV_INDICES",
    "VGG16_TAPS",
    "VGG16_TAP_INDICES",
    "Layer",
    "alexnet_features",
    "alexnet_taps",
    "build_quietly",
    "check_compute_dtype",
    "check_rgb",
    "conv_layers",
    "freeze",
    "load_trunk",
    "module_metric",
    "read_trunk",
    "vgg16_conv_shapes",
    "vgg16_features",
    "vgg16_layout",
    "vgg16_taps",
]

_M = TypeVar("_M", bound=nn.Module)

#: One convolution: weight ``(out, in, k, k)`` and bias ``(out,)`` or ``None``.
Layer = tuple[torch.Tensor, "torch.Tensor | None"]

#: torchvision's ``vgg16().features`` configuration (numbers: conv output channels; "M": 2x2 max pool).
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: Indices in ``vgg16().features`` of the 13 convolutions.
VGG16_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: The five taps (the ReLUs after these convolutions; LPIPS's choice) and their indices in ``features``.
VGG16_TAPS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
VGG16_TAP_INDICES: tuple[int, ...] = (3, 8, 15, 22, 29)
_VGG16_TAP_AFTER_CONV = (1, 3, 6, 9, 12)  # 0-based conv numbers whose ReLU is a tap
_VGG16_POOL_AFTER_CONV = (1, 3, 6, 9)  # pooling after these convs (before the next tap); the last pool is unused
#: ImageNet normalisation that torchvision's pretrained trunks expect (inputs in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: torchvision's ``alexnet().features`` (conv indices 0, 3, 6, 8, 10).
#: ``(in, out, kernel, stride, padding)`` of a convolution, or "relu" / "pool".
_ALEX: tuple[tuple[int, int, int, int, int] | str, ...] = (
    (3, 64, 11, 4, 2), "relu", "pool", (64, 192, 5, 1, 2), "relu", "pool", (192, 384, 3, 1, 1), "relu",
    (384, 256, 3, 1, 1), "relu", (256, 256, 3, 1, 1), "relu", "pool",
)
#: The ReLUs of ``alexnet().features`` that LPIPS taps.
ALEXNET_TAP_INDICES: tuple[int, ...] = (1, 4, 7, 9, 11)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk in torchvision's ``features`` layout (random weights; load your own).

    Example:
        >>> [k for k in alexnet_features().state_dict()][:2]
        ['0.weight', '0.bias']
    """
    layers: list[nn.Module] = []
    for spec in _ALEX:
        if isinstance(spec, tuple):
            cin, cout, k, s, p = spec
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        elif spec == "relu":
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(3, 2))
    return nn.Sequential(*layers)


def vgg16_conv_shapes() -> list[tuple[int, int]]:
    """``(out_channels, in_channels)`` of VGG16's 13 convolutions (all 3x3, padding 1)."""
    shapes, cin = [], 3
    for v in VGG16_CONFIG:
        if v != "M":
            shapes.append((int(v), cin))
            cin = int(v)
    return shapes


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional trunk in torchvision's ``features`` layout (31 modules; random weights).

    Example:
        >>> len(vgg16_features()), sorted(vgg16_features().state_dict())[:2]
        (31, ['0.bias', '0.weight'])
    """
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


def min_side(layers: Iterable[nn.Module]) -> int:
    """The smallest input side for which every convolution and pooling of ``layers`` (in order) leaves at least one
    pixel: ``floor((s + 2 p − d (k − 1) − 1) / stride) + 1 >= 1`` at each. Below it PyTorch stops with "Output size
    is too small"; the metrics check it first and say what they need.

    Example:
        >>> min_side(alexnet_features()[: ALEXNET_TAP_INDICES[-1] + 1]), min_side(vgg16_features()[:30])
        (31, 16)
    """
    def first(v: int | tuple[int, ...]) -> int:
        return v if isinstance(v, int) else v[0]

    layers = list(layers)
    side = 1
    while True:
        s = side
        for m in layers:
            if isinstance(m, nn.Conv2d | nn.MaxPool2d):
                k, st, p, d = (first(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))  # type: ignore[arg-type]
                s = (s + 2 * p - d * (k - 1) - 1) // st + 1
                if s < 1:
                    break
        if s >= 1:
            return side
        side += 1


def conv_layers(features: nn.Sequential) -> list[Layer]:
    """The ``(weight, bias)`` of every ``Conv2d`` of a trunk, in order (the tensors themselves, not copies)."""
    return [(m.weight, m.bias) for m in features if isinstance(m, nn.Conv2d)]


def vgg16_taps(
    x: torch.Tensor, layers: Sequence[Layer], *, pools: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None
) -> list[torch.Tensor]:
    """The five tap feature maps (``relu1_2 … relu5_3``) of the VGG16 trunk with convolutions ``layers``.

    ``x`` is the trunk's input (normalised as the weights expect). ``pools``: the four poolings between the
    stages (default: 2x2 max pooling, VGG16's own). Each tap is what torchvision's ``features[:i + 1](x)``
    gives for the tap index ``i`` in :data:`VGG16_TAP_INDICES`.
    """
    taps = []
    h = x
    stage = 0
    for i, (w, b) in enumerate(layers):
        h = torch.relu(F.conv2d(h, w, b, padding=1))
        if i in _VGG16_TAP_AFTER_CONV:
            taps.append(h)
        if i in _VGG16_POOL_AFTER_CONV:
            h = F.max_pool2d(h, 2) if pools is None else pools[stage](h)
            stage += 1
    return taps


def alexnet_taps(x: torch.Tensor, features: nn.Sequential) -> list[torch.Tensor]:
    """The five ReLU feature maps of an AlexNet trunk that LPIPS taps (:data:`ALEXNET_TAP_INDICES`)."""
    taps = []
    h = x
    for i, layer in enumerate(features):
        h = layer(h)
        if i in ALEXNET_TAP_INDICES:
            taps.append(h)
            if len(taps) == len(ALEXNET_TAP_INDICES):
                break
    return taps


def vgg16_layout() -> dict[str, torch.Tensor]:
    """The ``state_dict`` layout of :func:`vgg16_features` as shape-only (``meta``) tensors, to check files against."""
    layout = {}
    for idx, (cout, cin) in zip(VGG16_CONV_INDICES, vgg16_conv_shapes(), strict=True):
        layout[f"{idx}.weight"] = torch.empty(cout, cin, 3, 3, device="meta")
        layout[f"{idx}.bias"] = torch.empty(cout, device="meta")
    return layout


def read_trunk(
    path: WeightsPath, expected: Mapping[str, torch.Tensor], *, metric: str, arch: str,
    option: str = "backbone", hint: str = "",
) -> dict[str, torch.Tensor]:
    """Read a torchvision trunk file and check it against ``expected`` (a ``features`` state dict's layout).

    Accepts a full torchvision checkpoint (``features.<i>.*``; ``classifier.*`` is ignored) or the
    ``features`` module's own state dict (``<i>.*``). The keys and shapes must be the trunk's exactly;
    messages name the keys as the file spells them. Returns the tensors under the ``features`` keys (``<i>.*``).
    """
    sd = load_weights(path, what=f"the {arch} trunk's state_dict in torchvision's layout", metric=metric,
                      option=option, hint=hint)
    prefix = ""
    if any(k.startswith("features.") for k in sd):  # a full torchvision checkpoint: keep the trunk
        prefix = "features."
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    check_layout(sd, {prefix + k: v for k, v in expected.items()}, metric=metric, option=option, path=path)
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def load_trunk(features: nn.Sequential, path: WeightsPath, *, metric: str, arch: str) -> None:
    """Read a torchvision trunk file (see :func:`read_trunk`) into ``features``, in place."""
    expected = features.state_dict()
    trunk = read_trunk(path, expected, metric=metric, arch=arch)
    features.load_state_dict({k: v.to(expected[k].dtype) for k, v in trunk.items()})


def check_rgb(x: torch.Tensor, metric: str) -> None:
    """Refuse image batches ``(N, C, H, W)`` whose ``C`` is neither 3 (RGB, what the trunks take) nor 1 (grayscale,
    broadcast over the three colour channels: the same values as the image repeated in R, G and B, as the lpips
    package gives); without it a 4-channel (RGBA) image stopped in a broadcasting error."""
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"x and y must have 3 channels (RGB) or 1 (grayscale) for {metric}, got {x.shape[1]} channels (for RGBA "
            "images, drop the alpha channel with x[:, :3])"
        )


def check_compute_dtype(module: nn.Module, metric: str) -> None:
    """Refuse a metric module whose weights were converted to 16 bits (``m.half()``, ``m.to(torch.bfloat16)``): it
    computes in float32 whatever the input dtype (in float64 after ``m.double()``), and its 16-bit weights stopped
    the call in PyTorch's "Input type (float) and bias type (c10::Half) should be the same"."""
    dtype = next(module.parameters()).dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{metric}'s weights were converted to {dtype}, but it computes in float32 (16-bit inputs are promoted; "
            "autocast is turned off inside it): convert the module back with .float()"
        )


def build_quietly(build: Callable[[], _M]) -> _M:
    """``build()`` without touching the global random state: a module built only to load weights into draws its
    throwaway initial weights from a forked generator, so building a metric leaves the caller's random stream
    (the next ``torch.rand``) as it was."""
    with torch.random.fork_rng(devices=[]):
        return build()


def freeze(module: nn.Module) -> None:
    """No gradients to ``module``'s parameters, and eval mode (a fixed, pretrained metric)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def module_metric(module: nn.Module) -> Metric:
    """A registry metric running ``module``: moved to the inputs' device on first use, no graph unless an input
    requires gradients (then the metric is differentiable). The module is kept as ``metric.module``."""
    return _ModuleMetric(module)


class _ModuleMetric:
    """What :func:`module_metric` returns: a class rather than a closure, so that the metric pickles (worker
    processes) and :func:`copy.deepcopy` copies its module, as the registry's other metrics do."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        module = self.module
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            return module(x, y)  # its checks name the argument that is not a tensor
        # Follow the inputs only to a device that holds values and is theirs alike: a module moved to "meta" loses
        # its weights for good, and inputs on two devices are refused by the module's checks.
        if x.device == y.device and x.device.type != "meta" and next(module.buffers()).device != x.device:
            module.to(x.device)
        with torch.no_grad() if not (x.requires_grad or y.requires_grad) else contextlib.nullcontext():
            return module(x, y)
