"""MMD++: the library's perceptual distance (docs/method.md §3).

The default (docs/method.md §3.2)::

    MMD++ = Σ_levels w_level · [w_l2 · L2 + w_local · Local]_shift-tolerant + w_mmd · MMD²_windowed

* the aligned terms ``L2`` and ``Local`` at the levels of the scale rule (:mod:`patchmmd.core.scale`), each
  window taking its best match over integer offsets of up to ``shift_radius`` native pixels, refined by a
  sub-pixel displacement (:func:`patchmmd.core.aligned.tolerant_aligned`): a 1-px shift costs next to nothing,
  noise and blur what they cost before;
* the windowed squared MMD at native resolution (``mmd_native``), with the mean of three Gaussian kernels
  (``sigma=(0.015, 0.03, 0.06)``): the finest octave, where noise lives, and low-amplitude structure (with
  ``contrast_floor`` set, of contrast-normalised patches instead:
  :func:`~patchmmd.core.patches.contrast_normalized_patches`);
* weights ``w_l2 = 2.29``, ``w_local = 114``, ``w_mmd = 19.9``: each part in units of its value on the
  mildest visible distortion (``scripts/calibrate_weights.py``), not fitted to human scores.

A fourth term, ``Σ_o w_ssim,o (1 - SSIM)`` at octaves ``o`` (:mod:`patchmmd.core.ssim`; ``weight_ssim``), is off
in the default and on in the training preset.

Presets:

* ``"default"``: the above, RFF estimator with 128 stratified orthogonal features.
* ``"pixelwise"``: the previous default: all three terms pixelwise at the scale rule's levels, one kernel
  width (0.06), the follow-up study's weights ``0.001 / 0.05 / 0.5``.
* ``"followup"``: the follow-up study's MMD++ exactly as docs/method.md §3.1 defines it: native resolution,
  512 i.i.d. random Fourier features, its weights (deterministic under ``seed``, where that code redrew its
  features at every call).
* ``"loss"``: for training on crops (docs/method.md §3.3): no scale rule (``base_size=None``), the aligned
  terms and the windowed MMD both at native resolution and one octave down (``mmd_native=False``,
  ``num_scales=2``, ``min_size=16``), the MMD on contrast-normalised patches (``contrast_floor=0.02``,
  ``sigma=(0.5, 1.0)`` in units of the unit ball, 16-px windows every 8 px) weighted ``weight_mmd=400``
  (about 6 units of its value on the mildest visible distortion) with the default's 128 random features,
  SSIM at the same two octaves, each in units of
  its value on the mildest visible distortion (``weight_ssim=(9.93, 29.1)``), and pixelwise aligned terms
  (``shift_radius=0``, ``subpixel=False``: against an aligned truth a misalignment is an error of the
  network, and the offset search is the aligned terms' largest cost). On the dev SR task it
  beats L2 under DISTS where the default does not, and its autoencoder is closer than L2's
  (docs/development-log.md); as a metric of whole photographs it is poor (no scale rule).

Every option of :class:`MMDPPConfig` can be overridden by keyword on top of a preset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .aligned import aligned_map, tolerant_aligned
from .features import FeatureKind
from .mmd import Estimator, check_mmd_options, windowed_mmd2
from .rff import target_window_means
from .scale import MAX_SCALES, Level, downsample, pyramid_levels, upsample_map
from .ssim import SSIM_WINDOW, dissimilarity_map, spread_map, target_moments
from .validation import (
    OutOfRange,
    Reduction,
    check_bool,
    check_float_in,
    check_nonnegative_float,
    check_patch_size,
    check_positive_int,
    check_reduction,
    check_sigma,
    check_value_range,
    full_precision,
    prepare_pair,
    reduce,
)

#: The weights of the terms that have one number each (``weight_ssim`` may have one per octave).
SCALAR_WEIGHTS = ("weight_l2", "weight_local", "weight_mmd")

#: Most octaves the SSIM term may span (native resolution and ``MAX_SSIM_OCTAVES - 1`` octaves down).
MAX_SSIM_OCTAVES = 5

#: Allowed ``contrast_floor`` (per pixel, [-1, 1] scale).
CONTRAST_FLOOR_RANGE = (1e-4, 1.0)

#: Largest integer search radius of the shift-tolerant aligned terms: ``(2 r + 1)²`` offsets are tried.
MAX_SHIFT_RADIUS = 4


def _check_ssim_weights(value: object) -> float | tuple[float, ...]:
    """``weight_ssim``: a number >= 0 (native resolution only) or one per octave, native first (a tuple, a list or
    a 1-D NumPy array)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    per_octave = isinstance(value, list | tuple)
    weights: tuple[Any, ...] = tuple(value) if per_octave else (value,)  # type: ignore[arg-type]
    if not 1 <= len(weights) <= MAX_SSIM_OCTAVES:
        raise ValueError(f"weight_ssim must have 1 to {MAX_SSIM_OCTAVES} entries (one per octave), got {value!r}")
    floats = tuple(check_nonnegative_float("weight_ssim", w) for w in weights)
    return floats if per_octave else floats[0]


@dataclass(frozen=True)
class MMDPPConfig:
    """All options of MMD++ (see :mod:`patchmmd.core.mmdpp`); presets are instances of it."""

    patch_size: int = 3
    sigma: float | tuple[float, ...] = (0.015, 0.03, 0.06)
    window: int | None = 32
    stride: int = 16
    center: bool = True
    local_patch_size: int = 3
    local_sigma: float = 0.1
    weight_l2: float = 2.29
    weight_local: float = 114.0
    weight_mmd: float = 19.9
    weight_ssim: float | tuple[float, ...] = 0.0
    estimator: Estimator = "rff"
    num_features: int = 128
    features: FeatureKind = "stratified"
    seed: int = 0
    base_size: int | None = 128
    num_scales: int = 2
    min_size: int = 48
    scale_weights: tuple[float, ...] | None = None
    mmd_native: bool = True
    shift_radius: int = 1
    subpixel: bool = True
    tolerance_window: int = 16
    #: None: the MMD compares raw (centred) patches. A number ε: contrast-normalised patches
    #: ``Π p / sqrt(‖Π p‖² + d ε²)`` ([-1, 1] scale), ``sigma`` then in units of the unit ball (docs/method.md §3.3).
    contrast_floor: float | None = None

    def __post_init__(self) -> None:
        # Every option is checked and stored as a plain Python value (NumPy scalars become int / float / bool),
        # so that a configuration prints, compares and goes into JSON records as written.
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name, value in check_mmd_options(
            patch_size=self.patch_size, sigma=self.sigma, window=self.window, stride=self.stride,
            estimator=self.estimator, num_features=self.num_features, features=self.features, seed=self.seed,
            center=self.center,
        ).items():
            put(name, value)
        put("local_patch_size", check_patch_size(self.local_patch_size, "local_patch_size"))
        put("local_sigma", check_sigma("local_sigma", self.local_sigma))
        put("weight_ssim", _check_ssim_weights(self.weight_ssim))
        for name in SCALAR_WEIGHTS:
            put(name, check_nonnegative_float(name, getattr(self, name)))
        if all(getattr(self, name) == 0 for name in SCALAR_WEIGHTS) and not self.ssim_weights:
            raise ValueError(f"{', '.join(SCALAR_WEIGHTS)}, weight_ssim are all 0: at least one must be > 0")
        need = self.min_level_size
        if self.base_size is not None:
            put("base_size", check_positive_int("base_size", self.base_size, minimum=need))
        put("num_scales", check_positive_int("num_scales", self.num_scales, maximum=MAX_SCALES))
        put("min_size", check_positive_int("min_size", self.min_size, minimum=need))
        put("mmd_native", check_bool("mmd_native", self.mmd_native))
        put("subpixel", check_bool("subpixel", self.subpixel))
        put("shift_radius", check_positive_int("shift_radius", self.shift_radius, minimum=0, maximum=MAX_SHIFT_RADIUS))
        put("tolerance_window", check_positive_int("tolerance_window", self.tolerance_window))
        if self.contrast_floor is not None:
            put("contrast_floor", check_float_in(
                "contrast_floor", self.contrast_floor, *CONTRAST_FLOOR_RANGE,
                why="below, flat regions' noise is blown up to full contrast; above, every patch counts as flat",
            ))
            if self.patch_size == 1:
                raise ValueError(
                    "patch_size=1 with contrast_floor compares nothing: the normalised patches are centred (Π), and "
                    "a centred 1x1 patch is zero, so the MMD term would be 0 for every pair; use patch_size >= 3"
                )
        if self.scale_weights is not None:
            try:
                weights = tuple(self.scale_weights)
            except TypeError:
                raise ValueError(
                    f"scale_weights must be a sequence of numbers >= 0, got {self.scale_weights!r}"
                ) from None
            put("scale_weights", tuple(check_nonnegative_float("scale_weights", w) for w in weights))
            if len(weights) != self.num_scales:
                raise ValueError(f"scale_weights must have num_scales={self.num_scales} entries, got {len(weights)}")
            if sum(weights) <= 0:
                raise ValueError(f"scale_weights must not all be 0, got {self.scale_weights!r}")

    @property
    def shift_tolerant(self) -> bool:
        """Whether the aligned terms tolerate small displacements (docs/method.md §3.2)."""
        return self.shift_radius > 0 or self.subpixel

    def mmd_levels(self, levels: Sequence[Level]) -> list[Level]:
        """Where the windowed MMD is computed: native resolution (``mmd_native``) or the aligned terms' levels."""
        return [Level(1, 1.0)] if self.mmd_native else list(levels)

    @property
    def ssim_weights(self) -> tuple[float, ...]:
        """The SSIM term's weight per octave, native resolution first (``()`` when the term is off)."""
        w = self.weight_ssim
        weights = w if isinstance(w, tuple) else (float(w),)
        return weights if any(weights) else ()

    @property
    def min_image_size(self) -> int:
        """The smallest side an input may have: the patches', or the SSIM window's at its coarsest octave."""
        octaves = [i for i, w in enumerate(self.ssim_weights) if w > 0]
        return max(self.min_level_size, SSIM_WINDOW * 2 ** max(octaves) if octaves else 0)

    @property
    def min_level_size(self) -> int:
        """The smallest side a level may have: the larger of the two patch sizes (reflect padding needs it)."""
        return max(self.patch_size, self.local_patch_size)

    def replace(self, **options: Any) -> MMDPPConfig:
        """A copy with ``options`` changed; an unknown option name raises ``TypeError`` listing the valid ones."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            # data_range is the pixel range's name in SSIM code (scikit-image, pytorch-msssim, piq, torchmetrics)
            hint = " (the pixel range is value_range=(lo, hi), e.g. (0, 255))" if "data_range" in unknown else ""
            raise TypeError(f"unknown option(s) {unknown}{hint}; valid options are {sorted(OPTION_NAMES)}")
        return dataclasses.replace(self, **options)

    def levels(self, height: int, width: int) -> list[Level]:
        """The scale rule's levels for an ``height x width`` image.

        Raises:
            ValueError: ``base_size`` brings the image below :attr:`min_level_size` pixels.
        """
        levels = pyramid_levels(
            height, width, base_size=self.base_size, num_scales=self.num_scales,
            min_size=self.min_size, scale_weights=self.scale_weights,
        )
        f, need = levels[0].factor, self.min_level_size
        if min(height, width) // f < need:
            raise ValueError(
                f"base_size={self.base_size} brings the {height}x{width} image down to "
                f"{height // f}x{width // f} pixels, smaller than the {need}x{need} patches; use a larger "
                "base_size or base_size=None (native resolution)"
            )
        return levels


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(MMDPPConfig))

#: The named configurations; ``mmdpp(x, y, preset=name, **overrides)``.
PRESETS: dict[str, MMDPPConfig] = {
    "default": MMDPPConfig(),
    "pixelwise": MMDPPConfig(
        sigma=0.06, weight_l2=0.001, weight_local=0.05, weight_mmd=0.5, num_features=512, mmd_native=False,
        shift_radius=0, subpixel=False,
    ),
    "loss": MMDPPConfig(weight_mmd=400.0, mmd_native=False, base_size=None, num_scales=2, min_size=16,
                        weight_ssim=(9.93, 29.1), shift_radius=0, subpixel=False, contrast_floor=0.02,
                        sigma=(0.5, 1.0), window=16, stride=8),
    "followup": MMDPPConfig(
        sigma=0.06, weight_l2=0.001, weight_local=0.05, weight_mmd=0.5, estimator="rff", num_features=512,
        features="iid", base_size=None, num_scales=1, mmd_native=False, shift_radius=0, subpixel=False,
    ),
}


def get_config(preset: str | MMDPPConfig = "default", **options: object) -> MMDPPConfig:
    """Resolve a preset name (or config) plus keyword overrides into a validated :class:`MMDPPConfig`."""
    if isinstance(preset, MMDPPConfig):
        base = preset
    elif isinstance(preset, str) and preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or an MMDPPConfig, got {preset!r}")
    return base.replace(**options) if options else base


def _aligned_terms(
    xs: torch.Tensor, ys: torch.Tensor, cfg: MMDPPConfig, levels: Sequence[Level], want_map: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``w_l2 L2 + w_local Local`` of internal-scale images over the levels: ``(N,)`` and, if asked, the map."""
    h, w = xs.shape[-2:]
    value = xs.new_zeros(xs.shape[0])
    full = xs.new_zeros(xs.shape[0], 1, h, w) if want_map else None
    if cfg.weight_l2 == 0 and cfg.weight_local == 0:
        return value, full
    if cfg.shift_tolerant:
        per_level = tolerant_aligned(
            xs, ys, [lv.factor for lv in levels], radius=cfg.shift_radius, subpixel=cfg.subpixel,
            window=cfg.tolerance_window, weight_l2=cfg.weight_l2, weight_local=cfg.weight_local,
            local_patch_size=cfg.local_patch_size, local_sigma=cfg.local_sigma,
        )
        for level, (per_window, grid) in zip(levels, per_level, strict=True):
            value = value + level.weight * grid.average(per_window).mean(dim=1)  # (clipped edge windows by area)
            if full is not None:
                full = full + level.weight * upsample_map(grid.spread(per_window), level.factor, h, w)
        return value, full
    for level in levels:
        m = aligned_map(downsample(xs, level.factor) - downsample(ys, level.factor), weight_l2=cfg.weight_l2,
                        weight_local=cfg.weight_local, local_patch_size=cfg.local_patch_size,
                        local_sigma=cfg.local_sigma)
        value = value + level.weight * m.mean(dim=(1, 2, 3))
        if full is not None:
            full = full + level.weight * upsample_map(m, level.factor, h, w)
    return value, full


def _mmd_term(
    xs: torch.Tensor, ys: torch.Tensor | None, cfg: MMDPPConfig, levels: Sequence[Level], want_map: bool,
    y_features: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``w_mmd MMD²_windowed`` over its levels: ``(N,)`` and, if asked, the map (``ys`` may be ``None`` when
    ``y_features`` holds a precomputed target's window means)."""
    h, w = xs.shape[-2:]
    value = xs.new_zeros(xs.shape[0])
    full = xs.new_zeros(xs.shape[0], 1, h, w) if want_map else None
    if cfg.weight_mmd == 0:
        return value, full
    for i, level in enumerate(levels):
        xl = downsample(xs, level.factor)
        yl = downsample(ys, level.factor) if ys is not None else xl
        per_window, grid = windowed_mmd2(
            xl, yl, patch_size=cfg.patch_size, sigma=cfg.sigma, window=cfg.window, stride=cfg.stride,
            center=cfg.center, estimator=cfg.estimator, num_features=cfg.num_features, seed=cfg.seed,
            features=cfg.features, y_features=y_features[i] if y_features is not None else None,
            contrast_floor=cfg.contrast_floor,
        )
        value = value + (level.weight * cfg.weight_mmd) * per_window.mean(dim=(1, 2))
        if full is not None:
            m = grid.spread(per_window.unsqueeze(1))
            full = full + (level.weight * cfg.weight_mmd) * upsample_map(m, level.factor, h, w)
    return value, full


def _ssim_term(
    xs: torch.Tensor, ys: torch.Tensor, cfg: MMDPPConfig, want_map: bool,
    y_moments: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Σ_o w_o (1 - SSIM)`` of the images box-downsampled by ``2^o`` (:mod:`patchmmd.core.ssim`), the
    weights ``w_o`` of ``weight_ssim``: ``(N,)`` and, if asked, the map (``y_moments``: a precomputed
    target's :func:`~patchmmd.core.ssim.target_moments` per octave)."""
    h, w = xs.shape[-2:]
    value = xs.new_zeros(xs.shape[0])
    full = xs.new_zeros(xs.shape[0], 1, h, w) if want_map else None
    for octave, weight in enumerate(cfg.ssim_weights):
        if weight == 0:
            continue
        f = 2**octave
        moments = y_moments[octave] if y_moments is not None else None
        m = dissimilarity_map(downsample(xs, f), downsample(ys, f), moments) * weight
        value = value + m.mean(dim=(1, 2, 3))
        if full is not None:
            full = full + upsample_map(spread_map(m, h // f, w // f), f, h, w)
    return value, full


def mmdpp_internal(
    xs: torch.Tensor, ys: torch.Tensor, cfg: MMDPPConfig, *, want_map: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MMD++ of validated internal-scale ([-1, 1]) images in the compute dtype: ``(N,)`` and the map."""
    h, w = xs.shape[-2:]
    levels = cfg.levels(h, w)
    aligned, amap = _aligned_terms(xs, ys, cfg, levels, want_map)
    mmd, mmap = _mmd_term(xs, ys, cfg, cfg.mmd_levels(levels), want_map)
    ssim, smap = _ssim_term(xs, ys, cfg, want_map)
    full = amap + mmap + smap if amap is not None and mmap is not None and smap is not None else None
    return aligned + mmd + ssim, full


def _target_internal(xs: torch.Tensor, target: MMDPPTarget) -> torch.Tensor:
    """MMD++ of internal-scale ``xs`` against a precomputed target: ``(N,)``."""
    cfg = target.config
    aligned, _ = _aligned_terms(xs, target.image, cfg, target.levels, False)
    features = target.features if cfg.estimator == "rff" else None
    mmd, _ = _mmd_term(xs, target.image, cfg, target.mmd_levels, False, features)
    ssim, _ = _ssim_term(xs, target.image, cfg, False, target.ssim_moments)
    return aligned + mmd + ssim


@dataclass(frozen=True, eq=False)
class MMDPPTarget:
    """A fixed second argument of :func:`mmdpp`, precomputed once (:func:`precompute_target`).

    Holds ``y`` at every level of the scale rule, for the RFF estimator its random-feature window means and,
    where the SSIM term is on, its local means of ``y`` and ``y²`` at each of the term's octaves, so that
    ``mmdpp(x, target)`` computes features for ``x`` only (half the work of ``mmdpp(x, y)`` in a training loop
    with a fixed target) and filters three moment images instead of five, and returns the same value.
    """

    config: MMDPPConfig
    value_range: tuple[float, float]
    shape: tuple[int, ...]
    dtype: torch.dtype
    levels: tuple[Level, ...]
    mmd_levels: tuple[Level, ...]
    image: torch.Tensor = field(repr=False)
    features: tuple[torch.Tensor | None, ...] = field(repr=False)
    ssim_moments: tuple[torch.Tensor | None, ...] = field(repr=False)

    @property
    def device(self) -> torch.device:
        return self.image.device

    def to(self, device: torch.device | str) -> MMDPPTarget:
        """The same target on ``device`` (a new target; this one is unchanged), for inputs ``x`` there.

        Example:
            >>> t = precompute_target(torch.rand(1, 3, 32, 32))
            >>> t.to("cpu").device
            device(type='cpu')
        """

        if not isinstance(device, torch.device | str | int):  # a device, not a dtype: the target's dtype is its inputs'
            raise TypeError(f"MMDPPTarget.to takes a device, got {device!r}; a target keeps the dtype of the y it was "
                            "made from: precompute it from y.to(dtype) for inputs of another dtype")
        device = torch.device(device)

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        image = self.image.to(device)
        return replace(self, image=image, features=tuple(move(f) for f in self.features),
                       ssim_moments=tuple(move(m) for m in self.ssim_moments))


@full_precision
def precompute_target(
    y: torch.Tensor,
    *,
    preset: str | MMDPPConfig = "default",
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    **options: object,
) -> MMDPPTarget:
    """Precompute what :func:`mmdpp` needs of a fixed ``y``: ``mmdpp(x, precompute_target(y)) == mmdpp(x, y)``.

    The target is computed without gradients (it is a constant), as ordinary tensors even under
    :func:`torch.inference_mode` (a target made there can be trained against). Options as in :func:`mmdpp`; they
    are stored in the target.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
        >>> t = precompute_target(y)
        >>> bool(torch.allclose(mmdpp(x, t), mmdpp(x, y), rtol=1e-5))
        True
    """
    cfg = get_config(preset, **options)
    # ordinary tensors even under torch.inference_mode(): the target is trained against later, and autograd may not
    # save inference tensors for a backward pass (the SSIM kernel's, against the target's moments)
    with torch.inference_mode(False), torch.no_grad():
        ys, _, dtype = _prepare(y, y, cfg, value_range, out_of_range, names=("y", "y"))
        ys = ys.detach()  # a constant for forward mode too (torch.func.jvp), which no_grad does not stop
        levels = tuple(cfg.levels(*ys.shape[-2:]))
        mmd_levels = tuple(cfg.mmd_levels(levels))
        feats = []
        for level in mmd_levels:
            feats.append(
                target_window_means(
                    downsample(ys, level.factor), patch_size=cfg.patch_size, sigma=cfg.sigma, window=cfg.window,
                    stride=cfg.stride, center=cfg.center, num_features=cfg.num_features, seed=cfg.seed,
                    features=cfg.features, contrast_floor=cfg.contrast_floor,
                )
                if cfg.estimator == "rff" and cfg.weight_mmd > 0 else None
            )
        moments = tuple(target_moments(downsample(ys, 2**octave)) if weight > 0 else None
                        for octave, weight in enumerate(cfg.ssim_weights))
    lo, hi = float(value_range[0]), float(value_range[1])
    return MMDPPTarget(cfg, (lo, hi), tuple(ys.shape), dtype, levels, mmd_levels, ys, tuple(feats), moments)


def _mmdpp_target(
    x: object, target: MMDPPTarget, preset: object, value_range: Sequence[float], out_of_range: OutOfRange,
    options: dict[str, object],
) -> tuple[torch.Tensor, torch.dtype]:
    cfg = target.config
    # None: no preset given (the argument's default); a preset that names the target's own configuration is accepted
    # too, any other is refused (an explicit "default" against a target of other options included)
    same = preset is None or preset == cfg or (isinstance(preset, str) and PRESETS.get(preset) == cfg)
    if options or not same:
        raise ValueError("mmdpp(x, target): the options are the target's; pass them to precompute_target")
    if check_value_range(value_range) != target.value_range:
        raise ValueError(f"value_range must be the target's {target.value_range}, got {value_range!r}")
    xs, _, dtype = _prepare(x, x, cfg, value_range, out_of_range, names=("x", "x"))
    if tuple(xs.shape) != target.shape:
        raise ValueError(f"x must have the target's shape {target.shape}, got {tuple(xs.shape)}")
    if xs.device != target.device or dtype != target.dtype:
        hints = ["target.to(device) makes a copy on x's device"] if xs.device != target.device else []
        if dtype != target.dtype:
            hints.append(f"x.to({target.dtype}) converts x (inside torch.autocast a network's output is 16-bit), or "
                         "precompute the target from y of x's dtype")
        raise ValueError(f"x must have the target's device and dtype ({target.device}, {target.dtype}), "
                         f"got ({xs.device}, {dtype}) ({'; '.join(hints)})")
    return _target_internal(xs, target), dtype


def _prepare(
    x: object, y: object, cfg: MMDPPConfig, value_range: Sequence[float], out_of_range: OutOfRange,
    names: tuple[str, str] = ("x", "y"),
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    need = cfg.min_image_size
    reason = "the patch size" if need == cfg.min_level_size else "the SSIM term's window at its coarsest octave"
    return prepare_pair(x, y, value_range=value_range, out_of_range=out_of_range, min_size=need,
                        min_size_reason=reason, names=names)


@full_precision
def mmdpp(
    x: torch.Tensor,
    y: torch.Tensor | MMDPPTarget,
    *,
    preset: str | MMDPPConfig | None = None,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
    **options: object,
) -> torch.Tensor:
    """MMD++ perceptual distance between ``x`` and ``y``: the library's default distance.

    Args:
        x, y: images ``(N, C, H, W)`` or ``(C, H, W)`` with values in ``value_range`` (default ``[0, 1]``);
            ``y`` may be a :class:`MMDPPTarget` from :func:`precompute_target` (same value, half the work;
            the options are then the target's). Any number of channels; the weights are calibrated on RGB
            images, and the Local and MMD terms sum squared differences over the channels, so a one-channel
            grayscale pair scores less than the same pair replicated to three (``x.expand(-1, 3, -1, -1)``; the
            default: about 0.4 times, for noise and blur of a sample photo): replicate grayscale images to
            compare their distances with those of RGB images.
        preset: ``"default"`` (the metric), ``"loss"`` (for training on crops), ``"pixelwise"`` (the previous
            default), ``"followup"`` (the follow-up study's MMD++), or a config. ``None`` (not given) is
            ``"default"``, or against a precomputed target the target's options; a preset given with a target must
            name the target's options (an explicit ``"default"`` against a ``"loss"`` target is refused).
        value_range, out_of_range: the valid pixel range and what to do outside it (``"raise"``,
            ``"clamp"``, ``"ignore"``).
        reduction: ``"none"`` -> ``(N,)``, ``"mean"`` / ``"sum"`` -> scalar.
        **options: any :class:`MMDPPConfig` field, overriding the preset.

    Example:
        >>> x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> d = mmdpp(x, x.roll(1, dims=-1))
        >>> d.shape, bool(d > 0), float(mmdpp(x, x))
        (torch.Size([1]), True, 0.0)
        >>> torch.equal(mmdpp(x, x.roll(1, -1)), d)  # deterministic: same seed, same features
        True
    """
    reduction = check_reduction(reduction)
    if isinstance(y, MMDPPTarget):
        value, dtype = _mmdpp_target(x, y, preset, value_range, out_of_range, options)
        return reduce(value.to(dtype), reduction)
    cfg = get_config("default" if preset is None else preset, **options)
    xs, ys, dtype = _prepare(x, y, cfg, value_range, out_of_range)
    value, _ = mmdpp_internal(xs, ys, cfg)
    return reduce(value.to(dtype), reduction)


@full_precision
def distance_map(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    preset: str | MMDPPConfig = "default",
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    **options: object,
) -> torch.Tensor:
    """Where ``x`` and ``y`` differ: an ``(N, 1, H, W)`` map whose mean over ``H x W`` is ``mmdpp(x, y)``.

    Per level of the scale rule, each pixel carries its aligned terms (``L2``, ``Local``) plus the squared
    MMD of every window that contains it, spread evenly over the window's pixels; levels computed at
    lower resolution are repeated over their boxes. The mean of the map equals the scalar distance (to
    rounding), so the map is an exact additive decomposition of it.

    Example:
        >>> x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> y = x.clone(); y[..., :16, :16] = 0.5
        >>> m = distance_map(x, y)
        >>> m.shape, bool(torch.isclose(m.mean(), mmdpp(x, y)[0]))
        (torch.Size([1, 1, 64, 64]), True)
        >>> bool(m[..., :16, :16].mean() > m[..., 40:, 40:].mean())
        True
    """
    cfg = get_config(preset, **options)
    xs, ys, dtype = _prepare(x, y, cfg, value_range, out_of_range)
    _, dmap = mmdpp_internal(xs, ys, cfg, want_map=True)
    assert dmap is not None
    return dmap.to(dtype)
