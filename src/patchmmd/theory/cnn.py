"""Perceptual distances of CNNs with random (never trained) filters, and the pretrained-VGG16 comparison.

Two networks (docs/method.md §4 and the seed paper's §1.2):

* :class:`RandomCNNDistance`: a ``k x k`` convolution to ``width`` channels, then ``depth - 1`` 1x1
  convolutions ``width -> width``, a ReLU after each; weights i.i.d. Gaussian of variance
  ``sigma_w2 / fan_in`` (``2 / fan_in``: He), biases of variance ``sigma_b2`` (default: no bias), reflect
  padding. The features at pixel ``u`` are ``Φ(P_u(x))``, a function of the patch at ``u`` only. The
  distance is ``(1/N) ‖pooled F(x) - pooled F(y)‖²`` averaged over the pooling windows, which is exactly
  the windowed V-statistic MMD² of the patch sets with the empirical kernel ``(1/N) <Φ(p), Φ(q)>`` and
  converges to :func:`patchmmd.theory.nngp.infinite_cnn_distance` as the width grows.
* :class:`VGGDistance`: a VGG16 trunk (13 3x3 convolutions, ReLU, 2x2 max pooling) compared at the usual
  taps ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3``, either with random He-initialised filters (the
  first layer's optionally made zero-mean) or with pretrained VGG16 weights read from a local file in
  torchvision's ``state_dict`` layout (``features.<i>.weight`` / ``.bias``). Nothing is downloaded; weight
  files are read with ``torch.load(..., weights_only=True)`` (data only, never code).

Weights are drawn in float64 on the CPU from a ``torch.Generator`` seeded with ``seed`` and then cast, so
a seed gives the same network on every device and dtype. The modules hold no parameters: nothing to
train, nothing to save. The weights are non-persistent buffers (absent from ``state_dict``), so ``.to()``,
``.cuda()``, ``.double()`` move and cast them like any module's; each call computes in the input's dtype on the
input's device (the cast copy is kept until the module is moved again).

Both modules reduce like PyTorch loss modules: ``reduction="mean"`` by default (a scalar); pass
``reduction="none"`` for per-image distances ``(N,)``, as the registry's metrics do.

The VGG16 trunk is :mod:`patchmmd.metrics.trunks`' (the one LPIPS and DISTS use), and pretrained files are read
by :func:`patchmmd.metrics.weights.load_weights`, so a bad file raises :class:`patchmmd.metrics.weights.WeightsError`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.patches import reflect_pad, window_grid
from ..core.validation import (
    OutOfRange,
    Reduction,
    check_bool,
    check_nonnegative_float,
    check_out_of_range,
    check_pair,
    check_patch_size,
    check_positive_float,
    check_positive_int,
    check_reduction,
    check_seed,
    check_value_range,
    compute_dtype,
    full_precision,
    prepare_pair,
    reduce,
)
from ..metrics.trunks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_CONFIG,
    VGG16_CONV_INDICES,
    VGG16_TAPS,
    Layer,
    read_trunk,
    vgg16_conv_shapes,
    vgg16_layout,
    vgg16_taps,
)
from .nngp import (
    FIRST_LAYERS,
    PATCH_NORM_EPS,
    FirstLayer,
    Pooling,
    _pool_window,
    check_first_layer_size,
    check_pooling,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_CONFIG",
    "VGG16_CONV_INDICES",
    "VGG16_TAPS",
    "Layer",
    "RandomCNNDistance",
    "VGGDistance",
    "load_vgg16_weights",
    "normalize_floor",
    "pooled_feature_distance",
    "random_cnn_features",
    "random_cnn_weights",
    "vgg16_random_weights",
    "vgg16_taps",
]


# ----------------------------------------------------------------------------------------------------
# The random CNN of docs/method.md §4
# ----------------------------------------------------------------------------------------------------


def random_cnn_weights(
    in_channels: int,
    width: int,
    depth: int,
    *,
    kernel_size: int = 3,
    first_layer: FirstLayer = "he",
    sigma_w2: float = 2.0,
    sigma_b2: float = 0.0,
    seed: int = 0,
) -> list[Layer]:
    """The layers of the random CNN, drawn in float64 on the CPU from ``seed``.

    Layer 1: ``(width, in_channels, k, k)`` with variance ``sigma_w2 / (in_channels k²)`` (made zero-mean
    over each filter's ``k x k`` block per input channel for ``first_layer="zero_mean"``); layers 2..depth:
    ``(width, width, 1, 1)`` with variance ``sigma_w2 / width``. Biases (variance ``sigma_b2``) only when
    ``sigma_b2 > 0``.

    Example:
        >>> layers = random_cnn_weights(3, 8, 2, seed=0)
        >>> [tuple(w.shape) for w, _ in layers], layers[0][0].dtype
        ([(8, 3, 3, 3), (8, 8, 1, 1)], torch.float64)
        >>> torch.equal(random_cnn_weights(3, 8, 2, seed=0)[1][0], layers[1][0])
        True
    """
    in_channels = check_positive_int("in_channels", in_channels)
    width = check_positive_int("width", width)
    depth = check_positive_int("depth", depth)
    kernel_size = check_patch_size(kernel_size, "kernel_size")
    sigma_w2 = check_positive_float("sigma_w2", sigma_w2)
    sigma_b2 = check_nonnegative_float("sigma_b2", sigma_b2)
    if first_layer not in FIRST_LAYERS:
        raise ValueError(f"first_layer must be one of {FIRST_LAYERS}, got {first_layer!r}")
    check_first_layer_size(first_layer, kernel_size)
    seed = check_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers: list[Layer] = []
    fan_in = in_channels * kernel_size * kernel_size
    shape: tuple[int, ...] = (width, in_channels, kernel_size, kernel_size)
    for i in range(depth):
        # On the CPU whatever torch.set_default_device says: the generator is a CPU one.
        w = torch.randn(shape, generator=gen, dtype=torch.float64, device="cpu") * (sigma_w2 / fan_in) ** 0.5
        b = torch.randn(width, generator=gen, dtype=torch.float64, device="cpu")
        if i == 0 and first_layer == "zero_mean":
            w = w - w.mean(dim=(2, 3), keepdim=True)
        layers.append((w, b * sigma_b2**0.5 if sigma_b2 > 0 else None))
        fan_in, shape = width, (width, width, 1, 1)
    return layers


def random_cnn_features(x: torch.Tensor, layers: Sequence[Layer], *, first_layer: FirstLayer = "he") -> torch.Tensor:
    """The feature map ``F(x)(u) = Φ(P_u(x))`` after the last ReLU: ``(N, C, H, W) -> (N, width, H, W)``.

    ``x`` is on the internal [-1, 1] scale; reflect padding, so every pixel has its full patch.
    """
    w1, b1 = layers[0]
    k = w1.shape[-1]
    xp = reflect_pad(x, k)
    h = F.conv2d(xp, w1)
    if first_layer == "patch_norm":
        box = xp.new_ones(1, x.shape[1], k, k)
        h = h / torch.sqrt(F.conv2d(xp * xp, box) + PATCH_NORM_EPS**2)
    if b1 is not None:
        h = h + b1.view(1, -1, 1, 1)
    h = torch.relu(h)
    for w, b in layers[1:]:
        h = torch.relu(F.conv2d(h, w, b))
    return h


def pooled_feature_distance(fx: torch.Tensor, fy: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """``(1/N) ‖pool F(x) - pool F(y)‖²`` averaged over the windows (or over pixels for ``pooling=None``).

    ``fx``, ``fy``: ``(N, width, H, W)``; returns ``(N,)``.
    """
    if pooling is None:
        return (fx - fy).pow(2).mean(dim=(1, 2, 3))
    window, stride = _pool_window(pooling)
    grid = window_grid(fx.shape[-2], fx.shape[-1], window, stride)
    return (grid.pool(fx) - grid.pool(fy)).pow(2).mean(dim=(1, 2, 3))


class _LayerBuffers(nn.Module):
    """Base of the modules whose convolutions are non-persistent buffers ``weight<i>`` / ``bias<i>``.

    ``.to()``, ``.cuda()``, ``.double()`` move and cast them (they stay out of ``state_dict``: they are drawn
    from a seed or read from a file, never trained). :meth:`layers` gives them on any device and dtype; casts
    are cached until the module is moved again.
    """

    def _register_layers(self, layers: Sequence[Layer]) -> None:
        self._num_layers = len(layers)
        for i, (w, b) in enumerate(layers):
            self.register_buffer(f"weight{i}", w, persistent=False)
            self.register_buffer(f"bias{i}", b, persistent=False)
        self._cast: dict[tuple[torch.device, torch.dtype], list[Layer]] = {}

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _LayerBuffers:
        self._cast = {}
        return super()._apply(fn, recurse)

    def _own_layers(self) -> list[Layer]:
        return [(getattr(self, f"weight{i}"), getattr(self, f"bias{i}")) for i in range(self._num_layers)]

    def layers(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> list[Layer]:
        """The layers ``[(weight, bias or None), ...]`` on ``device`` in ``dtype`` (default: where and as the
        buffers are: float64 on the CPU unless the module was moved or cast)."""
        own = self._own_layers()
        w0 = own[0][0]
        key = (w0.device if device is None else torch.device(device), w0.dtype if dtype is None else dtype)
        if key == (w0.device, w0.dtype):
            return own
        if key not in self._cast:
            if torch.is_inference_mode_enabled():
                # Cache ordinary tensors: a copy made under torch.inference_mode() would be an inference tensor,
                # and every later call with autograd (the module as a loss) would fail on it.
                with torch.inference_mode(False):
                    return self.layers(device, dtype)
            self._cast[key] = [
                (w.to(device=key[0], dtype=key[1]), None if b is None else b.to(device=key[0], dtype=key[1]))
                for w, b in own
            ]
        return self._cast[key]


class RandomCNNDistance(_LayerBuffers):
    """The perceptual distance of a random-filter CNN (docs/method.md §4): ``(1/N) ‖pool F(x) - pool F(y)‖²``.

    Args:
        width: channels ``N`` of every layer.
        depth: number of ReLU layers ``L`` (one ``k x k`` convolution, then ``L - 1`` 1x1 convolutions).
        kernel_size: ``k`` of the first convolution (odd; reflect padding).
        first_layer: ``"he"`` (plain), ``"zero_mean"`` (first-layer filters zero-mean per colour channel)
            or ``"patch_norm"`` (first-layer output divided by the patch norm).
        pooling: ``(window, stride)`` average pooling of the last feature map (windows placed as
            ``avg_pool2d`` places them, clipped to the image), ``"global"``, or ``None`` (no pooling: the
            aligned distance ``mean_u (1/N) ‖F(x)(u) - F(y)(u)‖²``).
        seed: the weights are drawn from it (float64, CPU), never trained.
        sigma_w2, sigma_b2: weight variance times fan-in (2: He) and bias variance (0: no bias).
        value_range, out_of_range: the valid pixel range of the inputs (mapped to [-1, 1]) and what to do
            outside it.
        reduction: ``"mean"`` (default, as for PyTorch loss modules) or ``"sum"`` give a scalar; ``"none"``
            gives ``(N,)``.

    The value equals the windowed V-statistic MMD² with the empirical kernel ``(1/N) <Φ(p), Φ(q)>``
    exactly, and tends to :class:`patchmmd.theory.nngp.InfiniteCNNDistance` (same options) as ``width -> ∞``.
    The weights are non-persistent float64 buffers (``.to()`` / ``.cuda()`` / ``.double()`` move them).

    Example:
        >>> x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> d = RandomCNNDistance(width=64, depth=2, pooling=(16, 8), reduction="none")
        >>> v = d(x, x.roll(2, -1))
        >>> v.shape, bool((v > 0).all()), float(d(x, x).max())
        (torch.Size([2]), True, 0.0)
        >>> RandomCNNDistance(width=64, depth=2, pooling=(16, 8))(x, x.roll(2, -1)).shape  # default: the mean
        torch.Size([])
    """

    def __init__(
        self,
        *,
        width: int = 512,
        depth: int = 2,
        kernel_size: int = 3,
        first_layer: FirstLayer = "he",
        pooling: Pooling = (32, 16),
        seed: int = 0,
        sigma_w2: float = 2.0,
        sigma_b2: float = 0.0,
        in_channels: int = 3,
        value_range: Sequence[float] = (0.0, 1.0),
        out_of_range: OutOfRange = "raise",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self._register_layers(
            random_cnn_weights(
                in_channels, width, depth, kernel_size=kernel_size, first_layer=first_layer,
                sigma_w2=sigma_w2, sigma_b2=sigma_b2, seed=seed,
            )
        )  # checks these options
        self.width, self.depth = check_positive_int("width", width), check_positive_int("depth", depth)
        self.kernel_size, self.seed = check_patch_size(kernel_size, "kernel_size"), check_seed(seed)
        self.first_layer: FirstLayer = first_layer
        self.sigma_w2, self.sigma_b2 = check_positive_float("sigma_w2", sigma_w2), float(sigma_b2)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.pooling = check_pooling(pooling)
        self.value_range = check_value_range(value_range)
        self.out_of_range: OutOfRange = check_out_of_range(out_of_range)
        self.reduction = check_reduction(reduction)

    def _prepare(self, x: object, y: object) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        xs, ys, dtype = prepare_pair(x, y, value_range=self.value_range, out_of_range=self.out_of_range,
                                     min_size=self.kernel_size)
        if xs.shape[1] != self.in_channels:
            raise ValueError(
                f"x and y have {xs.shape[1]} channels but the network was built for in_channels={self.in_channels}"
            )
        return xs, ys, dtype

    @full_precision
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``F(x)`` of images ``x`` given in ``value_range``: ``(N, width, H, W)``, in ``x``'s
        dtype, computed as the distance computes it (in float32 for 16-bit ``x``, and never in 16 bits under
        autocast)."""
        xs, _, dtype = self._prepare(x, x)
        return random_cnn_features(xs, self.layers(xs.device, xs.dtype), first_layer=self.first_layer).to(dtype)

    @full_precision
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xs, ys, dtype = self._prepare(x, y)
        layers = self.layers(xs.device, xs.dtype)
        # Each image through the network on its own (not one concatenated batch): as a loss, the backward pass
        # then runs through x's features only.
        fx = random_cnn_features(xs, layers, first_layer=self.first_layer)
        fy = random_cnn_features(ys, layers, first_layer=self.first_layer)
        return reduce(pooled_feature_distance(fx, fy, self.pooling).to(dtype), self.reduction)

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, depth={self.depth}, kernel_size={self.kernel_size}, "
            f"first_layer={self.first_layer!r}, pooling={self.pooling!r}, seed={self.seed}, "
            f"sigma_w2={self.sigma_w2:g}, sigma_b2={self.sigma_b2:g}"
        )


# ----------------------------------------------------------------------------------------------------
# VGG16 trunk: random or pretrained filters
# ----------------------------------------------------------------------------------------------------

VGGFirstLayer = Literal["he", "zero_mean"]


def normalize_floor(dtype: torch.dtype) -> float:
    """The length ``ε`` below which :class:`VGGDistance` (``normalize=True``) treats a channel vector as zero, in
    ``f / √(‖f‖² + ε²)``: LPIPS's 1e-10, or 4096 units in the last place of ``dtype`` where that is larger.

    Zero-mean first-layer filters answer a flat region with rounding instead of 0 (the filters cast to float32
    no longer sum to 0, and the convolution rounds): about 1e-6 at every tap in float32, 1e-15 in float64.
    Below 1e-10 that is nothing, as the exact value is; 1e-10 in float32 would scale it to unit length, and two
    flat regions of different brightness, or a flat and a textured one, would differ by noise of the size of any
    texture. 4096 eps (4.9e-4 in float32) keeps that rounding below 1 % of unit length, and is far below the
    features of the faintest 8-bit texture (a one-grey-level dither: about 0.06 at relu1_2).

    Example:
        >>> normalize_floor(torch.float64), round(normalize_floor(torch.float32), 6)
        (1e-10, 0.000488)
    """
    return max(1e-10, 4096 * float(torch.finfo(dtype).eps))


def vgg16_random_weights(*, seed: int = 0, first_layer: VGGFirstLayer = "he") -> list[Layer]:
    """Random VGG16 convolution weights: He normal (variance ``2 / fan_in``), zero biases; float64, CPU.

    ``first_layer="zero_mean"`` makes every first-layer filter zero-mean over its 3x3 block per input
    channel (the paper's variant).

    Example:
        >>> layers = vgg16_random_weights(seed=0, first_layer="zero_mean")
        >>> len(layers), tuple(layers[0][0].shape), float(layers[0][0].sum(dim=(2, 3)).abs().max()) < 1e-12
        (13, (64, 3, 3, 3), True)
    """
    if first_layer not in ("he", "zero_mean"):
        raise ValueError(f"first_layer must be 'he' or 'zero_mean', got {first_layer!r}")
    seed = check_seed(seed)
    return [(w.clone(), None if b is None else b.clone()) for w, b in _vgg16_random_weights(seed, first_layer)]


@functools.lru_cache(maxsize=4)
def _vgg16_random_weights(seed: int, first_layer: str) -> tuple[Layer, ...]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers: list[Layer] = []
    for i, (cout, cin) in enumerate(vgg16_conv_shapes()):
        w = torch.randn(cout, cin, 3, 3, generator=gen, dtype=torch.float64, device="cpu") * (2.0 / (cin * 9)) ** 0.5
        if i == 0 and first_layer == "zero_mean":
            w = w - w.mean(dim=(2, 3), keepdim=True)
        layers.append((w, torch.zeros(cout, dtype=torch.float64, device="cpu")))
    return tuple(layers)


def load_vgg16_weights(path: str | os.PathLike[str]) -> list[Layer]:
    """Read the 13 convolutions of a pretrained VGG16 from a local ``state_dict`` file (torchvision layout).

    The file is what ``torch.save(torchvision.models.vgg16(weights=...).state_dict(), path)`` writes
    (keys ``features.<i>.weight`` and ``features.<i>.bias``; classifier keys are ignored); a state dict
    of the ``features`` module alone (keys ``<i>.weight``) is accepted too. Read by the package's one weight
    reader (:func:`patchmmd.metrics.trunks.read_trunk`, :func:`patchmmd.metrics.weights.load_weights`):
    ``weights_only=True``, tensors only, never code. Nothing is downloaded.

    Raises:
        WeightsFileNotFoundError: no file at ``path`` (a ``FileNotFoundError`` and a ``WeightsError``).
        WeightsError: (a ``ValueError``) the file is not a weights-only state dict, its keys or shapes are not
            VGG16's, or a weight is not a real floating-point tensor of finite values (the message names the
            file and key).
        TypeError: ``path`` is not a ``str`` or ``os.PathLike``.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"path must be the path of a local VGG16 state dict (str or os.PathLike), got {type(path).__name__}"
        )
    state = read_trunk(
        os.fspath(path), vgg16_layout(), metric="vgg", arch="VGG16", option="weights",
        hint="patchmmd downloads nothing; save torchvision's weights once with "
             "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), path)",
    )
    return [(state[f"{idx}.weight"].detach().to(torch.float64), state[f"{idx}.bias"].detach().to(torch.float64))
            for idx in VGG16_CONV_INDICES]


class VGGDistance(_LayerBuffers):
    """Perceptual distance of a VGG16 trunk with random or pretrained filters, summed over five taps.

    Per tap (``relu1_2 ... relu5_3``): with ``normalize=True`` (LPIPS's untrained "baseline"), each pixel's
    channel vector is scaled to unit length and the squared differences are summed over channels;
    with ``normalize=False`` they are averaged over channels (the ``(1/N) ‖.‖²`` of the random CNN).
    Then the mean over pixels, and the sum over taps.

    The unit scaling is ``f / √(‖f‖² + ε²)``: vectors much shorter than ``ε`` count as zero. ``ε`` is LPIPS's
    1e-10 in float64 and :func:`normalize_floor` (4.9e-4) in float32, where zero-mean first-layer filters answer
    a flat region with rounding (about 1e-6) instead of 0, which 1e-10 would scale to unit length.

    Args:
        weights: ``None`` for random He-initialised filters drawn from ``seed``, or the path of a local
            pretrained VGG16 state dict (see :func:`load_vgg16_weights`).
        first_layer: ``"he"`` or ``"zero_mean"`` (random filters only).
        seed: seed of the random filters.
        normalize: unit-normalise channel vectors per tap (LPIPS convention).
        value_range, out_of_range, reduction: as in :class:`RandomCNNDistance` (``reduction="mean"`` by default).

    The trunk is :func:`patchmmd.metrics.trunks.vgg16_taps` (the one LPIPS-VGG and DISTS run); its 13
    convolutions are non-persistent float64 buffers (``.to()`` / ``.cuda()`` / ``.double()`` move them).
    Inputs are mapped to [0, 1] and normalised with ImageNet's mean and standard deviation (what the
    pretrained weights expect; used for random filters too, so the two compare like for like). Images
    must be at least 16x16 (four 2x2 max poolings before the last tap).

    Example:
        >>> d = VGGDistance(seed=0, first_layer="zero_mean")
        >>> x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> bool(d(x, x.flip(-1)) > 0), float(d(x, x))
        (True, 0.0)
        >>> VGGDistance(seed=0, reduction="none")(x, x.flip(-1)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        *,
        weights: str | os.PathLike[str] | None = None,
        first_layer: VGGFirstLayer = "he",
        seed: int = 0,
        normalize: bool = True,
        value_range: Sequence[float] = (0.0, 1.0),
        out_of_range: OutOfRange = "raise",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        normalize = check_bool("normalize", normalize)
        out_of_range = check_out_of_range(out_of_range)
        if weights is not None and not isinstance(weights, str | os.PathLike):
            raise TypeError(
                f"weights must be None or the path of a local VGG16 state dict (str or os.PathLike), got "
                f"{type(weights).__name__}"
            )
        if weights is None:
            seed = check_seed(seed)
            layers = vgg16_random_weights(seed=seed, first_layer=first_layer)
            self.source = f"random (seed={seed}, first_layer={first_layer!r})"
        else:
            if first_layer != "he":
                raise ValueError("first_layer applies to random filters only; pass first_layer='he' with weights=")
            if seed != 0:  # it would be ignored: the filters are the file's
                raise ValueError(f"seed applies to random filters only, got seed={seed!r} with weights=; leave it "
                                 "out with pretrained weights")
            layers = load_vgg16_weights(weights)
            self.source = f"pretrained ({os.fspath(weights)})"
        self._register_layers(layers)
        self.normalize = normalize
        self.value_range = check_value_range(value_range)
        self.out_of_range: OutOfRange = out_of_range
        self.reduction = check_reduction(reduction)

    @full_precision
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = check_pair(x, y, value_range=self.value_range, out_of_range=self.out_of_range, min_size=16,
                          min_size_reason="what VGG16's four poolings before relu5_3 need")
        if x.shape[1] != 3:
            raise ValueError(f"x and y must have 3 (RGB) channels for VGG16, got {x.shape[1]}")
        lo, hi = self.value_range
        dtype = x.dtype
        ct = compute_dtype(dtype)
        mean = torch.tensor(IMAGENET_MEAN, dtype=ct, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=ct, device=x.device).view(1, 3, 1, 1)
        layers = self.layers(x.device, ct)

        def taps(im: torch.Tensor) -> list[torch.Tensor]:
            return vgg16_taps(((im.to(ct) - lo) / (hi - lo) - mean) / std, layers)

        # Each image through the trunk on its own, as LPIPS and DISTS do: as a loss, the backward pass then runs
        # through x's taps only.
        total = x.new_zeros(x.shape[0], dtype=ct)
        floor2 = normalize_floor(ct) ** 2
        for fx, fy in zip(taps(x), taps(y), strict=True):
            if self.normalize:
                fx = fx / torch.sqrt((fx * fx).sum(1, keepdim=True) + floor2)
                fy = fy / torch.sqrt((fy * fy).sum(1, keepdim=True) + floor2)
                total = total + (fx - fy).pow(2).sum(1).mean(dim=(1, 2))
            else:
                total = total + (fx - fy).pow(2).mean(dim=(1, 2, 3))
        return reduce(total.to(dtype), self.reduction)

    def extra_repr(self) -> str:
        return f"weights={self.source}, normalize={self.normalize}"
