"""``nn.Module`` wrappers: thin, stateless shells over the functional API (same numbers).

The modules hold options only; random features are drawn from the seed (and cached) on first use, so a
module has no parameters, nothing to train, and no weights to download or save.

One rule for ``reduction`` across the package: every ``nn.Module`` distance (:class:`MMDPP`, :class:`PatchMMD`,
:class:`patchmmd.theory.cnn.RandomCNNDistance`, :class:`~patchmmd.theory.cnn.VGGDistance`,
:class:`~patchmmd.theory.nngp.InfiniteCNNDistance`) defaults to ``"mean"`` like a PyTorch loss module, while
every function with a ``reduction`` argument (and every registry metric) defaults to ``"none"``, one value per
image ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .features import FeatureKind
from .mmd import Estimator, check_mmd_options, patch_mmd
from .mmdpp import MMDPPConfig, MMDPPTarget, distance_map, get_config, mmdpp, precompute_target
from .rff import DEFAULT_NUM_FEATURES
from .validation import OutOfRange, Reduction, check_out_of_range, check_reduction, check_value_range


class MMDPP(nn.Module):
    """MMD++ as a loss / metric module: ``MMDPP(**options)(x, y) == mmdpp(x, y, **options)``.

    Args:
        preset: ``"default"``, ``"loss"`` (for training), ``"pixelwise"`` or ``"followup"`` (see
            :mod:`patchmmd.core.mmdpp`), or an :class:`MMDPPConfig`.
        value_range, out_of_range: as in :func:`patchmmd.core.mmdpp`.
        reduction: ``"mean"`` by default, as for PyTorch loss modules; ``"none"`` gives ``(N,)``.
        **options: :class:`MMDPPConfig` fields overriding the preset.

    As a training loss use ``preset="loss"`` (docs/method.md §3.3). The default's shift-tolerant aligned terms take
    their fitted sub-pixel correction as a constant (a stop-gradient, docs/method.md §3.2), so its gradient points
    about the way the exact one does but is not equal to it (``torch.autograd.gradcheck`` fails on it); the training
    preset's is the exact gradient.

    Example:
        >>> loss_fn = MMDPP()
        >>> x = torch.rand(4, 3, 64, 64, requires_grad=True)
        >>> loss = loss_fn(x, torch.rand(4, 3, 64, 64))
        >>> loss.backward()
        >>> loss.shape, bool(torch.isfinite(x.grad).all())
        (torch.Size([]), True)
    """

    def __init__(
        self,
        preset: str | MMDPPConfig = "default",
        *,
        value_range: Sequence[float] = (0.0, 1.0),
        out_of_range: OutOfRange = "raise",
        reduction: Reduction = "mean",
        **options: object,
    ) -> None:
        super().__init__()
        self.config = get_config(preset, **options)
        self.value_range = check_value_range(value_range)
        self.out_of_range: OutOfRange = check_out_of_range(out_of_range)
        self.reduction = check_reduction(reduction)

    def forward(self, x: torch.Tensor, y: torch.Tensor | MMDPPTarget) -> torch.Tensor:
        if isinstance(y, MMDPPTarget):
            if y.config != self.config:
                raise ValueError("y must be a target precomputed with this module's options "
                                 "(module.precompute_target(y)), got one with other options")
            return mmdpp(x, y, preset=y.config, value_range=self.value_range, out_of_range=self.out_of_range,
                         reduction=self.reduction)
        return mmdpp(
            x, y, preset=self.config, value_range=self.value_range,
            out_of_range=self.out_of_range, reduction=self.reduction,
        )

    def precompute_target(self, y: torch.Tensor) -> MMDPPTarget:
        """Precompute a fixed ``y`` once: ``self(x, self.precompute_target(y)) == self(x, y)``, with half
        the random-feature work per call (see :func:`patchmmd.core.mmdpp.precompute_target`)."""
        return precompute_target(y, preset=self.config, value_range=self.value_range,
                                 out_of_range=self.out_of_range)

    def distance_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The ``(N, 1, H, W)`` map whose mean is the per-image distance (see :func:`patchmmd.distance_map`)."""
        return distance_map(x, y, preset=self.config, value_range=self.value_range, out_of_range=self.out_of_range)

    def extra_repr(self) -> str:
        return (f"config={self.config}, value_range={self.value_range}, out_of_range={self.out_of_range!r}, "
                f"reduction={self.reduction!r}")


class PatchMMD(nn.Module):
    """The windowed patch MMD² as a module: ``PatchMMD(**kw)(x, y) == patch_mmd(x, y, **kw)``.

    ``reduction`` defaults to ``"mean"`` as for PyTorch loss modules; other arguments as in
    :func:`patchmmd.patch_mmd`. As a training loss pass ``estimator="rff"``: the default, ``"exact"``, forms every
    kernel value (one 256x256 RGB pair, forward and backward on the CPU: tens of seconds, against a fraction of one).

    Example:
        >>> m = PatchMMD(estimator="rff")
        >>> x = torch.rand(2, 3, 32, 32)
        >>> float(m(x, x))
        0.0
    """

    def __init__(
        self,
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
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.options: dict[str, Any] = dict(
            **check_mmd_options(
                patch_size=patch_size, sigma=sigma, window=window, stride=stride, estimator=estimator,
                num_features=num_features, features=features, seed=seed, center=center,
            ),
            value_range=check_value_range(value_range), out_of_range=check_out_of_range(out_of_range),
            reduction=check_reduction(reduction),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return patch_mmd(x, y, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
