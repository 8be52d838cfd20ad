"""DISTS (Ding et al. 2020) on a VGG16 trunk with L2 pooling, from local weight files only.

Registered as ``dists`` (group ``"baselines"``); needs ``backbone=`` a torchvision VGG16 file
(:func:`patchmmd.metrics.trunks.read_trunk`) and ``weights=`` DISTS's ``weights.pt`` (``alpha`` and ``beta``,
each ``(1, 1475, 1, 1)``, non-negative and not all 0), read by :func:`patchmmd.metrics.weights.load_weights`.
Differentiable.

Example:
    >>> import torch
    >>> m = DISTS()  # random weights: for shape checks only
    >>> x = torch.rand(2, 3, 64, 64)
    >>> m(x, x).abs().max().item() < 1e-5
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.validation import OutOfRange, check_out_of_range, full_precision
from .classic import check_batch
from .registry import Metric, register
from .trunks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_quietly,
    check_compute_dtype,
    check_rgb,
    conv_layers,
    freeze,
    load_trunk,
    module_metric,
    vgg16_features,
    vgg16_taps,
)
from .weights import WeightsError, WeightsPath, check_layout, check_nonnegative, load_weights

__all__ = ["DISTS"]


class _L2Pool(nn.Module):
    """DISTS's L2 pooling: sqrt of a 3×3 Hann-weighted average of squares, stride 2."""

    filter: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])
        g = a[:, None] * a[None, :]
        self.register_buffer("filter", (g / g.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.pow(2), self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS (Ding et al. 2020): structure and texture similarity of VGG16 features, with learned weights.

    The VGG16 trunk's max-pools are replaced by L2 pooling; the distance is ``1 − Σ (α·S1 + β·S2)`` over the
    input and five stages (weights normalised to sum 1), 0 for identical images; one float32 value per image
    ``(N,)`` (the trunk runs in float32 whatever the input dtype, inside an autocast region too; in float64 after
    ``.double()``, and a module converted to 16 bits, ``.half()``, is refused with a ``TypeError``). Inputs are RGB
    (or grayscale: the distance of the image repeated in R, G and B) image batches in [0, 1], checked as the
    package's own distances check theirs (``out_of_range="ignore"`` or ``"clamp"`` admits network outputs that
    overshoot, as the training losses do).
    Build with :meth:`from_files`.
    """

    mean: torch.Tensor
    std: torch.Tensor
    _CHANNELS = (3, 64, 128, 256, 512, 512)
    _POOL_INDICES = (4, 9, 16, 23)

    def __init__(self, *, out_of_range: OutOfRange = "raise") -> None:
        super().__init__()
        self.out_of_range = check_out_of_range(out_of_range)
        self.features = vgg16_features()
        for i, c in zip(self._POOL_INDICES, (64, 128, 256, 512), strict=True):
            self.features[i] = _L2Pool(c)
        n = sum(self._CHANNELS)
        self.alpha = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        freeze(self)

    @classmethod
    def from_files(cls, backbone: WeightsPath, weights: WeightsPath, *, out_of_range: OutOfRange = "raise") -> DISTS:
        """Build DISTS from a torchvision VGG16 file and the DISTS ``alpha``/``beta`` file."""
        m = build_quietly(lambda: cls(out_of_range=out_of_range))  # its random weights are replaced below
        load_trunk(m.features, backbone, metric="dists", arch="VGG16")  # L2 pools hold no state: VGG16's keys
        head = load_weights(weights, what="the DISTS weights.pt (alpha and beta)", metric="dists", option="weights")
        check_layout(head, {"alpha": m.alpha, "beta": m.beta}, metric="dists", option="weights", path=weights)
        # the distance weighs the terms by alpha and beta divided by their sum: negative or all-zero weights gave
        # negative distances or NaN
        check_nonnegative(head, metric="dists", option="weights", path=weights,
                          why="DISTS's weights are non-negative (the distance is >= 0)")
        if not float(head["alpha"].double().sum() + head["beta"].double().sum()) > 0:
            raise WeightsError(f"dists: weights file {weights}: alpha and beta are all 0; DISTS divides them by "
                               "their sum")
        m.alpha.data.copy_(head["alpha"].float())
        m.beta.data.copy_(head["beta"].float())
        return m

    @full_precision
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = check_batch(x, y, out_of_range=self.out_of_range)
        check_rgb(x, "dists")
        check_compute_dtype(self, "dists")
        w = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w, list(self._CHANNELS), dim=1)
        betas = torch.split(self.beta / w, list(self._CHANNELS), dim=1)
        c1 = c2 = 1e-6
        s = torch.zeros(x.shape[0], device=x.device)
        # Each image through the trunk on its own: a backward pass then runs through the trunk of the images
        # that need a gradient only (one pass over both computes the same function, equal to float32 rounding).
        for f0, f1, a, b in zip(self._features(x), self._features(y), alphas, betas, strict=True):
            m0, m1 = f0.mean((2, 3), keepdim=True), f1.mean((2, 3), keepdim=True)
            v0 = (f0 - m0).pow(2).mean((2, 3), keepdim=True)
            v1 = (f1 - m1).pow(2).mean((2, 3), keepdim=True)
            cov = (f0 * f1).mean((2, 3), keepdim=True) - m0 * m1
            s1 = (2 * m0 * m1 + c1) / (m0.pow(2) + m1.pow(2) + c1)
            s2 = (2 * cov + c2) / (v0 + v1 + c2)
            s = s + (a * s1).sum((1, 2, 3)) + (b * s2).sum((1, 2, 3))
        return 1 - s

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input and the five stages' features (float32)."""
        pools = [self.features[i] for i in self._POOL_INDICES]
        x = x.float()
        return [x, *vgg16_taps((x - self.mean) / self.std, conv_layers(self.features), pools=pools)]


@register("dists", "DISTS, VGG16 trunk with L2 pooling; needs backbone=PATH and weights=PATH (local files)",
          group="baselines", differentiable=True)
def _dists(*, backbone: WeightsPath = None, weights: WeightsPath = None, out_of_range: OutOfRange = "raise") -> Metric:
    return module_metric(DISTS.from_files(backbone, weights, out_of_range=out_of_range))
