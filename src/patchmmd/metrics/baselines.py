"""Baseline metrics for the evaluation harness, registered in :mod:`patchmmd.metrics.registry` (group ``"baselines"``).

===================  ===========================================================  =================
name                 what                                                         direction
===================  ===========================================================  =================
``psnr``             peak signal-to-noise ratio on [0, 1], dB (capped at 100 dB)  higher = similar
``ssim``             SSIM (pytorch-msssim: 11×11 Gaussian window, σ 1.5), on      higher = similar
                     the image as given, channels averaged
``ssim-downsampled`` SSIM after the reference code's scale step: average-pool by  higher = similar
                     ``f = max(1, round(min(H, W) / 256))`` (Wang et al.'s
                     ``ssim.m``; what published LIVE numbers use)
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

Files are read with ``torch.load(path, weights_only=True)`` (tensors only, no code), and a file whose keys or
shapes differ from the expected layout is refused with a message listing the differences.

This module imports without pytorch-msssim; the SSIM metrics import it when built.

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
    patchmmd.metrics.baselines.WeightsError: metric 'lpips-alex' needs backbone=PATH: ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Metric, register

__all__ = ["DISTS", "LPIPS", "WeightsError", "alexnet_features", "load_weights", "psnr", "vgg16_features"]

_MAX_PSNR = 100.0


class WeightsError(ValueError):
    """A weight file is missing, unreadable, or does not match the expected layout."""


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"x and y must be image batches (N, C, H, W) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")


# ------------------------------------------------------------------------------------------------ classic
def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, max_db: float = _MAX_PSNR) -> torch.Tensor:
    """PSNR in dB per image, ``10·log10(range² / MSE)``, capped at ``max_db`` (identical images give the cap).

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> psnr(x, x + 0.1).item()
        20.0
        >>> psnr(x, x).item()
        100.0
    """
    _check_batch(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    floor = data_range**2 * 10.0 ** (-max_db / 10.0)
    return (10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))).to(x.dtype if x.is_floating_point() else
                                                                       torch.float32)


def _msssim_module():  # type: ignore[no-untyped-def]
    try:
        import pytorch_msssim
    except ImportError as e:
        raise ImportError(
            "the SSIM baselines need pytorch-msssim: `pip install 'patchmmd[baselines]'` (or `pip install "
            "pytorch-msssim`)"
        ) from e
    return pytorch_msssim


def _check_ssim_size(x: torch.Tensor, win_size: int, scales: int, name: str) -> None:
    need = (win_size - 1) * 2 ** (scales - 1) if scales > 1 else win_size - 1
    if min(x.shape[-2:]) <= need:
        hint = "use `ssim`, or pass win_size=3 (images > 32 px)" if scales > 1 else "pass a smaller win_size"
        raise ValueError(
            f"{name} with win_size={win_size} needs images larger than {need} px on the short side, got "
            f"{tuple(x.shape[-2:])}: {hint}"
        )


def _ssim_metric(win_size: int, downsample: bool, name: str) -> Metric:
    ms = _msssim_module()

    def metric(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_batch(x, y)
        if downsample:
            f = max(1, round(min(x.shape[-2:]) / 256))
            if f > 1:
                x, y = F.avg_pool2d(x, f), F.avg_pool2d(y, f)
        _check_ssim_size(x, win_size, 1, name)
        return ms.ssim(x.float(), y.float(), data_range=1.0, size_average=False, win_size=win_size)

    return metric


@register("psnr", "peak signal-to-noise ratio in dB on [0, 1] (capped at 100 dB)", higher_is_better=True,
          group="baselines")
def _psnr(*, max_db: float = _MAX_PSNR) -> Metric:
    def metric(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return psnr(x, y, max_db=float(max_db))

    return metric


@register("ssim", "SSIM (pytorch-msssim, 11x11 Gaussian window) at the image's own resolution",
          higher_is_better=True, group="baselines")
def _ssim(*, win_size: int = 11) -> Metric:
    return _ssim_metric(int(win_size), False, "ssim")


@register("ssim-downsampled", "SSIM after the reference code's downsampling by round(min(H,W)/256)",
          higher_is_better=True, group="baselines")
def _ssim_downsampled(*, win_size: int = 11) -> Metric:
    return _ssim_metric(int(win_size), True, "ssim-downsampled")


@register("ms-ssim", "multi-scale SSIM (pytorch-msssim, 5 scales; images > 160 px)", higher_is_better=True,
          group="baselines")
def _ms_ssim(*, win_size: int = 11) -> Metric:
    ms = _msssim_module()
    win_size = int(win_size)

    def metric(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_batch(x, y)
        _check_ssim_size(x, win_size, 5, "ms-ssim")
        return ms.ms_ssim(x.float(), y.float(), data_range=1.0, size_average=False, win_size=win_size)

    return metric


# ------------------------------------------------------------------------------------------------ trunks
#: torchvision's ``alexnet().features`` (conv indices 0, 3, 6, 8, 10).
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool",), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool",),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
         ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool",)]
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk in torchvision's ``features`` layout (random weights; load your own).

    Example:
        >>> [k for k in alexnet_features().state_dict()][:2]
        ['0.weight', '0.bias']
    """
    layers: list[nn.Module] = []
    for spec in _ALEX:
        if spec[0] == "conv":
            _, cin, cout, k, s, p = spec
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        elif spec[0] == "relu":
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(3, 2))
    return nn.Sequential(*layers)


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional trunk in torchvision's ``features`` layout (31 modules; random weights).

    Example:
        >>> len(vgg16_features()), sorted(vgg16_features().state_dict())[:2]
        (31, ['0.bias', '0.weight'])
    """
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------ weight files
def load_weights(path: str | os.PathLike[str] | None, what: str, metric: str, option: str) -> dict[str, torch.Tensor]:
    """Read a tensor dictionary with ``torch.load(weights_only=True)``; clear errors for every failure.

    A ``{"state_dict": {...}}`` wrapper and a ``module.`` prefix (DataParallel) are unwrapped.

    Example:
        >>> load_weights(None, "trunk", "lpips-alex", "backbone")
        Traceback (most recent call last):
        ...
        patchmmd.metrics.baselines.WeightsError: metric 'lpips-alex' needs backbone=PATH: trunk
    """
    if path is None or str(path) == "":
        raise WeightsError(f"metric {metric!r} needs {option}=PATH: {what}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"{metric}: {option} file not found: {p} ({what})")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise WeightsError(f"{metric}: cannot read {option} file {p} as a tensor file (weights_only): {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and set(obj) == {key} and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{metric}: {option} file {p} is not a state_dict (a mapping of names to tensors)")
    out = {}
    for k, v in obj.items():
        k = str(k)
        if not v.is_floating_point() or (v.numel() and not bool(torch.isfinite(v).all())):
            what_is_wrong = f"has dtype {v.dtype}" if not v.is_floating_point() else "contains NaN or Inf values"
            raise WeightsError(f"{metric}: {option} file {p}: {k} {what_is_wrong}; weights must be real "
                               "floating-point tensors of finite values")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _check_layout(got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], metric: str,
                  option: str, path: object) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} {tuple(got[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in expected if k in got and got[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        if wrong:
            parts.append(f"wrong shape: {'; '.join(wrong[:8])}" + (" ..." if len(wrong) > 8 else ""))
        raise WeightsError(f"{metric}: {option} file {path} does not match the expected layout; " + " | ".join(parts))


def _load_trunk(features: nn.Sequential, path: object, metric: str, arch: str) -> None:
    sd = load_weights(path, f"the {arch} trunk's state_dict in torchvision's layout", metric, "backbone")
    if any(k.startswith("features.") for k in sd):  # a full torchvision checkpoint: keep the trunk
        sd = {(k[len("features."):] if k.startswith("features.") else k): v
              for k, v in sd.items() if not k.startswith("classifier.")}
    _check_layout(sd, features.state_dict(), metric, "backbone", path)
    features.load_state_dict({k: v.float() for k, v in sd.items()})


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


# --------------------------------------------------------------------------------------------------- LPIPS
class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): unit-normalised trunk features, squared differences, learned 1×1 heads.

    Inputs are image batches in [0, 1]; they are mapped to [-1, 1] and shifted/scaled as LPIPS does. Output:
    one distance per image (spatial average, summed over the five layers). Build it with
    :meth:`from_files` (or the registry's ``lpips-alex`` / ``lpips-vgg``).

    Example:
        >>> m = LPIPS("alex")  # random weights: for shape checks only
        >>> x = torch.rand(2, 3, 64, 64)
        >>> m(x, x).abs().max().item() < 1e-6, m(x, x.flip(-1)).shape
        (True, torch.Size([2]))
    """

    _SLICES: ClassVar[dict[str, tuple[int, ...]]] = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
    _CHANNELS: ClassVar[dict[str, tuple[int, ...]]] = {
        "alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in self._SLICES:
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.features = alexnet_features() if net == "alex" else vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self._CHANNELS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        _freeze(self)

    @classmethod
    def from_files(cls, net: str, backbone: object, weights: object) -> LPIPS:
        """Build LPIPS from a torchvision trunk file and an LPIPS head file (see the module docstring)."""
        metric = f"lpips-{net}"
        m = cls(net)
        _load_trunk(m.features, backbone, metric, "AlexNet" if net == "alex" else "VGG16")
        head = load_weights(weights, "the LPIPS v0.1 linear heads (lpips package weights/v0.1/"
                            f"{net}.pth)", metric, "weights")
        renamed = {}
        for k, v in head.items():
            parts = k.split(".")
            if len(parts) == 4 and parts[0].startswith("lin") and parts[1] == "model" and parts[3] == "weight":
                renamed[f"{parts[0][3:]}.weight"] = v
            else:
                renamed[k] = v
        _check_layout(renamed, m.lins.state_dict(), metric, "weights", weights)
        m.lins.load_state_dict({k: v.float() for k, v in renamed.items()})
        _freeze(m)
        return m

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_batch(x, y)
        h = torch.cat([x, y]).float()
        h = ((2 * h - 1) - self.shift) / self.scale
        n = x.shape[0]
        total = torch.zeros(n, device=x.device)
        ends = self._SLICES[self.net]
        k = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if k < len(ends) and i + 1 == ends[k]:
                f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                d = (f[:n] - f[n:]).pow(2)
                total = total + self.lins[k](d).mean((1, 2, 3))
                k += 1
            if k == len(ends):
                break
        return total


# --------------------------------------------------------------------------------------------------- DISTS
class _L2Pool(nn.Module):
    """DISTS's L2 pooling: sqrt of a 3×3 Hann-weighted average of squares, stride 2."""

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

    The VGG16 trunk's max-pools are replaced by L2 pooling; the distance is ``1 − Σ α·S1 + β·S2`` over the
    input and five stages (weights normalised to sum 1), 0 for identical images. Build with :meth:`from_files`.

    Example:
        >>> m = DISTS()  # random weights: for shape checks only
        >>> x = torch.rand(2, 3, 64, 64)
        >>> m(x, x).abs().max().item() < 1e-5
        True
    """

    _CHANNELS = (3, 64, 128, 256, 512, 512)
    _STAGE_ENDS = (4, 9, 16, 23, 30)

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        for i, c in zip((4, 9, 16, 23), (64, 128, 256, 512), strict=True):
            self.features[i] = _L2Pool(c)
        n = sum(self._CHANNELS)
        self.alpha = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        _freeze(self)

    @classmethod
    def from_files(cls, backbone: object, weights: object) -> DISTS:
        """Build DISTS from a torchvision VGG16 file and the DISTS ``alpha``/``beta`` file."""
        m = cls()
        _load_trunk(m.features, backbone, "dists", "VGG16")  # L2 pools hold no state: the keys are VGG16's
        head = load_weights(weights, "the DISTS weights.pt (alpha and beta)", "dists", "weights")
        _check_layout(head, {"alpha": m.alpha, "beta": m.beta}, "dists", "weights", weights)
        m.alpha.data.copy_(head["alpha"].float())
        m.beta.data.copy_(head["beta"].float())
        return m

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_batch(x, y)
        n = x.shape[0]
        h = (torch.cat([x, y]).float() - self.mean) / self.std
        feats = [torch.cat([x, y]).float()]
        for i, layer in enumerate(self.features):
            if i >= self._STAGE_ENDS[-1]:
                break
            h = layer(h)
            if i + 1 in self._STAGE_ENDS:
                feats.append(h)
        w = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w, list(self._CHANNELS), dim=1)
        betas = torch.split(self.beta / w, list(self._CHANNELS), dim=1)
        c1 = c2 = 1e-6
        s = torch.zeros(n, device=x.device)
        for f, a, b in zip(feats, alphas, betas, strict=True):
            f0, f1 = f[:n], f[n:]
            m0, m1 = f0.mean((2, 3), keepdim=True), f1.mean((2, 3), keepdim=True)
            v0 = (f0 - m0).pow(2).mean((2, 3), keepdim=True)
            v1 = (f1 - m1).pow(2).mean((2, 3), keepdim=True)
            cov = (f0 * f1).mean((2, 3), keepdim=True) - m0 * m1
            s1 = (2 * m0 * m1 + c1) / (m0.pow(2) + m1.pow(2) + c1)
            s2 = (2 * cov + c2) / (v0 + v1 + c2)
            s = s + (a * s1).sum((1, 2, 3)) + (b * s2).sum((1, 2, 3))
        return 1 - s


def _module_metric(module: nn.Module) -> Metric:
    def metric(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if next(module.buffers()).device != x.device:
            module.to(x.device)
        with torch.no_grad() if not (x.requires_grad or y.requires_grad) else contextlib.nullcontext():
            return module(x, y)

    metric.module = module  # type: ignore[attr-defined]
    return metric


@register("lpips-alex", "LPIPS v0.1, AlexNet trunk; needs backbone=PATH and weights=PATH (local files)",
          group="baselines")
def _lpips_alex(*, backbone: object = None, weights: object = None) -> Metric:
    return _module_metric(LPIPS.from_files("alex", backbone, weights))


@register("lpips-vgg", "LPIPS v0.1, VGG16 trunk; needs backbone=PATH and weights=PATH (local files)",
          group="baselines")
def _lpips_vgg(*, backbone: object = None, weights: object = None) -> Metric:
    return _module_metric(LPIPS.from_files("vgg", backbone, weights))


@register("dists", "DISTS, VGG16 trunk with L2 pooling; needs backbone=PATH and weights=PATH (local files)",
          group="baselines")
def _dists(*, backbone: object = None, weights: object = None) -> Metric:
    return _module_metric(DISTS.from_files(backbone, weights))


