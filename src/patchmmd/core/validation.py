"""Input validation and small shared helpers (reduction, dtype policy).

Every public entry point funnels its image arguments through :func:`check_pair`, so that bad input
fails in one place with one kind of message: the argument's name and what was expected.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, ParamSpec, TypeVar, cast

import numpy as np
import torch

from .._autograd import autocast_off, functorch_active

_P = ParamSpec("_P")
_R = TypeVar("_R")

Reduction = Literal["none", "mean", "sum"]
OutOfRange = Literal["raise", "clamp", "ignore"]

_REDUCTIONS = ("none", "mean", "sum")
_OUT_OF_RANGE = ("raise", "clamp", "ignore")

#: Values may stray this far outside ``value_range`` (as a fraction of its width) before they count as
#: out of range: resampling and colour conversion leave such rounding noise.
RANGE_TOLERANCE = 1e-3


#: The end of the out-of-range error of the package's distances, which take ``value_range`` and ``out_of_range``.
RANGE_HINT = ("pass value_range=(lo, hi) for other scales (e.g. (0, 255) or (-1, 1)), or out_of_range='clamp' / "
              "'ignore' for network outputs that overshoot slightly")


#: The dtypes images may have (16-bit ones are computed in float32, :func:`compute_dtype`).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_image(name: str, t: object, value_range: Any = None) -> torch.Tensor:
    """Check one image argument and return it as a 4-D ``(N, C, H, W)`` tensor.

    ``value_range``: the range the caller was given, if any, for the conversion hint of an integer tensor (with
    ``value_range=(0, 255)`` an 8-bit image is converted with ``x.float()``, not divided by 255 as well).

    A 3-D ``(C, H, W)`` tensor is taken as a batch of one. A tensor with more than 4 channels and a width of at
    most 4 pixels is refused as a channels-last image (``(H, W, C)``, as numpy and PIL give them): read as
    channels-first it would be a valid but meaningless input, a strip of pixels with ``H`` channels.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W) or (C, H, W), got {type(t).__name__}")
    given = tuple(t.shape)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    elif t.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (C, H, W), got {t.dim()} dimensions {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:  # float8 is floating point too, but nothing here computes in it
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}; "
            + _conversion_hint(t.dtype, value_range)
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one image and one channel, got shape {tuple(t.shape)}")
    if t.shape[1] > 4 and t.shape[-1] <= 4:
        raise ValueError(
            f"{name} has shape {given}: {t.shape[1]} channels and a width of {t.shape[-1]} px looks like a "
            "channels-last image; pass (N, C, H, W) or (C, H, W): "
            + ("x.permute(2, 0, 1) for an (H, W, C) image" if len(given) == 3 else
               "x.permute(0, 3, 1, 2) for an (N, H, W, C) batch")
        )
    return t


def _conversion_hint(dtype: torch.dtype, value_range: Any = None) -> str:
    """How to turn a tensor of ``dtype`` into an image the distances take (the end of :func:`check_image`'s error):
    ``/ 255`` only for 8-bit images, whose scale it is (a boolean mask divided by 255 would be an almost black
    image, a 16-bit one would be out of range), and only where no other ``value_range`` was given (with
    ``value_range=(0, 255)``, ``x.float() / 255`` would be a near-black image inside the range: a silently tiny
    distance)."""
    if dtype.is_floating_point:
        return "convert it with x.float()"
    if dtype == torch.bool:
        return "convert a mask with x.float() (True is 1)"
    try:  # (a malformed value_range is refused later, by check_value_range)
        given = None if value_range is None else tuple(float(v) for v in value_range)
    except (TypeError, ValueError):
        given = None
    if dtype == torch.uint8 and given is not None and given != (0.0, 1.0):
        return f"convert it with x.float() (its values on the scale of value_range={value_range!r})"
    if dtype == torch.uint8:
        return "convert 8-bit images with x.float() / 255, or with x.float() and value_range=(0, 255)"
    if dtype.is_complex:
        return "a complex tensor is not an image; pass a real floating-point tensor"
    return "convert it with x.float() and pass value_range=(lo, hi) of its scale (e.g. (0, 65535) for 16-bit images)"


def check_pair(
    x: object,
    y: object,
    *,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    min_size: int = 1,
    min_size_reason: str = "the patch size",
    range_hint: str = RANGE_HINT,
    range_text: str | None = None,
    names: tuple[str, str] = ("x", "y"),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two image batches and return them as 4-D tensors of one dtype and device.

    Checks: tensor type, 3 or 4 dimensions, floating dtype, equal shapes, same device, finite values,
    values within ``value_range`` (up to :data:`RANGE_TOLERANCE` of its width, unless
    ``out_of_range`` says otherwise; that error writes the range as ``range_text``, by default
    ``value_range=(lo, hi)``, and ends in ``range_hint``, what the caller can do in its own arguments) and a
    spatial size of at least ``min_size`` (``min_size_reason`` says why, in the error). The range tolerance is
    at least one rounding step of the input dtype at the larger bound (a bfloat16 image that should end at 1 may
    hold 1.0078, the next bfloat16 number). ``names``: the two arguments' names in the errors (a function of one
    image, such as :func:`patchmmd.core.mmdpp.precompute_target`, passes its own image twice under its name).

    Under ``torch.compile`` (:func:`torch.compiler.is_compiling`) the two value checks (finite, in range) are
    skipped: they read the data, which would break the graph. A compiled graph does not validate values;
    call the function eagerly once on representative data to validate them. The other checks (types, shapes,
    devices, dtypes) depend only on what the graph is specialised on and still raise, when it is traced.
    ``out_of_range="clamp"`` still clamps. Under the ``torch.func`` transforms the value checks run on the tensors
    the transforms wrap (:func:`torch.func.debug_unwrap`; ``vmap`` refuses reading a value of its own tensors):
    under ``vmap`` they check the whole batch at once, so one bad sample raises, as an eager call on the batch does.
    """
    x_name, y_name = names
    both = x_name if x_name == y_name else f"{x_name} and {y_name}"
    x = check_image(x_name, x, value_range)
    y = check_image(y_name, y, value_range)
    if x.shape != y.shape:
        raise ValueError(f"{both} must have the same shape (N, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"{both} must be on the same device, got {x.device} and {y.device}")
    if x.dtype != y.dtype:
        raise TypeError(f"{both} must have the same dtype, got {x.dtype} and {y.dtype}; convert one to the other's "
                        "(e.g. with .float(): inside torch.autocast a network's output is 16-bit)")
    lo, hi = check_value_range(value_range)
    check_out_of_range(out_of_range)
    h, w = x.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(
            f"{both} must be at least {min_size}x{min_size} pixels ({min_size_reason}), got {h}x{w}"
        )
    # One rounding step of the dtype at the larger bound, where the relative tolerance is finer than that step.
    tol = max(RANGE_TOLERANCE * (hi - lo), float(torch.finfo(x.dtype).eps) * max(abs(lo), abs(hi)))
    for name, t in (() if torch.compiler.is_compiling() else ((x_name, _values(x)), (y_name, _values(y)))):
        # One pass: min and max propagate NaN, so both are finite only if every value is.
        tmin, tmax = (float(v) for v in torch.aminmax(t))
        if not (math.isfinite(tmin) and math.isfinite(tmax)):
            raise ValueError(f"{name} contains NaN or Inf values")
        if out_of_range == "raise":
            if tmin < lo - tol or tmax > hi + tol:
                where = range_text or f"value_range=({lo:g}, {hi:g})"
                raise ValueError(f"{name} has values in [{tmin:.4g}, {tmax:.4g}], outside {where}; {range_hint}")
    if out_of_range == "clamp":
        x, y = x.clamp(lo, hi), y.clamp(lo, hi)
    return x, y


def static_shapes(*images: torch.Tensor) -> None:
    """Under ``torch.compile`` (nothing outside it): specialise the graph on the tensors' sizes
    (:func:`torch._dynamo.mark_static`, which PyTorch allows inside a graph), so that the graph is traced again for
    each new size, as with static shapes.

    The distances compute their window grids, pyramid levels and block layouts in Python from the sizes. The second
    size a compiled function sees, PyTorch traces with symbolic sizes, and those failed there (``math.gcd`` of a
    symbol: refused in a ``fullgraph=True`` graph, a graph break otherwise). ``torch.compile(dynamic=True)`` is
    still not supported (it makes the options' numbers symbolic too). A PyTorch whose ``mark_static`` may not be
    called in a graph (marked ``_dynamo_forbidden``) is left as it is.
    """
    if not torch.compiler.is_compiling():
        return
    mark_static = getattr(torch._dynamo, "mark_static", None)
    if mark_static is None or getattr(mark_static, "_dynamo_forbidden", False):
        return
    for image in images:
        mark_static(image)


def _values(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values to read on the host: ``t`` itself, or under a ``torch.func`` transform the tensor it wraps
    (read only, never computed with: nothing of it flows into the transformed function's result)."""
    return torch.func.debug_unwrap(t).detach() if functorch_active() else t.detach()


def prepare_pair(
    x: object,
    y: object,
    *,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    min_size: int = 1,
    min_size_reason: str = "the patch size",
    names: tuple[str, str] = ("x", "y"),
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Validate ``x`` and ``y`` (:func:`check_pair`; ``names`` as there) and map them to the internal [-1, 1]
    scale.

    Returns the two images in the compute dtype (:func:`compute_dtype`) and the input dtype, which results
    are cast back to. Under ``torch.compile`` the graph is specialised on the images' sizes (:func:`static_shapes`).
    """
    x, y = check_pair(x, y, value_range=value_range, out_of_range=out_of_range, min_size=min_size,
                      min_size_reason=min_size_reason, names=names)
    static_shapes(x, y)
    lo, hi = check_value_range(value_range)
    ct = compute_dtype(x.dtype)
    return to_unit_scale(x.to(ct), lo, hi), to_unit_scale(y.to(ct), lo, hi), x.dtype


#: Largest magnitude of ``lo``, ``hi`` and ``hi - lo`` in a ``value_range``: ``√(float32 max)``, so that the
#: bounds, the width and their squares are finite float32 numbers.
VALUE_RANGE_MAX = math.sqrt(float(torch.finfo(torch.float32).max))
#: Fewest float32 steps the range must span at its largest bound (``2**10``): rescaling
#: ``(x - lo) / (hi - lo)`` must keep at least about 10 bits of the pixel values.
VALUE_RANGE_MIN_STEPS = 2**10


def check_value_range(value_range: object) -> tuple[float, float]:
    """Return ``value_range`` as a ``(lo, hi)`` pair of floats with ``lo < hi``.

    Images are mapped to the internal [-1, 1] scale by ``-1 + 2 (x - lo) / (hi - lo)`` in float32 (or
    float64), so the rescaling must be representable in float32: ``|lo|``, ``|hi|`` and the width
    ``hi - lo`` must be at most :data:`VALUE_RANGE_MAX` (about 1.8e19; their squares stay finite), and the
    width must span at least :data:`VALUE_RANGE_MIN_STEPS` float32 steps at ``max(|lo|, |hi|)`` (else the
    pixel values collapse to a few levels, or to zero: ``(-1e38, 1e38)`` is refused, not a distance of 0).

    Example:
        >>> check_value_range((0, 255))
        (0.0, 255.0)
    """
    pair: Any = value_range  # any iterable of two float()-convertible values: checked by trying
    if isinstance(pair, str | bytes):  # iterable, but "01" is not the pair (0, 1)
        raise ValueError(f"value_range must be a pair (lo, hi) of numbers, got {value_range!r}")
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi) of numbers, got {value_range!r}") from None
    if any(isinstance(v, bool) for v in pair):
        raise ValueError(f"value_range must be a pair (lo, hi) of numbers, not booleans, got {value_range!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be a pair (lo, hi) of finite numbers with lo < hi, got {value_range!r}")
    width, top = hi - lo, max(abs(lo), abs(hi))
    if not (top <= VALUE_RANGE_MAX and width <= VALUE_RANGE_MAX):
        raise ValueError(
            f"value_range={value_range!r} is too wide: |lo|, |hi| and hi - lo must be at most {VALUE_RANGE_MAX:.3g} "
            "(rescaling to [-1, 1] must be representable in float32)"
        )
    step = top * float(torch.finfo(torch.float32).eps)
    if width < VALUE_RANGE_MIN_STEPS * step or width < float(torch.finfo(torch.float32).tiny) ** 0.5:
        raise ValueError(
            f"value_range={value_range!r} is too narrow for its magnitude: float32 resolves fewer than "
            f"{VALUE_RANGE_MIN_STEPS} values between lo and hi (rescaling to [-1, 1] would lose the pixel values)"
        )
    return lo, hi


def check_out_of_range(out_of_range: object) -> OutOfRange:
    """``out_of_range`` if it is one of ``"raise"``, ``"clamp"``, ``"ignore"``."""
    if out_of_range not in _OUT_OF_RANGE:
        raise ValueError(f"out_of_range must be one of {_OUT_OF_RANGE}, got {out_of_range!r}")
    return cast(OutOfRange, out_of_range)


def check_reduction(reduction: object) -> Reduction:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return cast(Reduction, reduction)  # one of the literals, checked above


def _integer(value: object) -> int | None:
    """``value`` as a Python ``int`` if it is an integer: ``int`` or any registered integral type (NumPy's
    ``int64`` and friends, as a sweep over ``numpy.arange`` gives them); ``bool`` is not an integer here.
    ``None`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _real(value: object) -> float | None:
    """``value`` as a finite Python ``float`` if it is a real number (``int``, ``float``, NumPy scalars such as
    ``float32``); ``bool``, non-finite numbers and everything else give ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_positive_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (``bool`` is not an integer here; NumPy integers
    are, and come back as ``int``).

    Example:
        >>> import numpy as np
        >>> check_positive_int("window", np.int64(16))
        16
    """
    number = _integer(value)
    if number is None or number < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            + f", got {value!r}"
        )
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be an integer between {minimum} and {maximum}, got {value!r}")
    return number


def check_bool(name: str, value: object) -> bool:
    """``value`` as a ``bool`` if it is one (``True`` / ``False``, or NumPy's ``bool_``); strings, ``None`` and
    numbers are refused."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


#: Seeds are integers in ``[0, SEED_LIMIT)``: what :meth:`torch.Generator.manual_seed` takes without
#: wrapping around (it maps ``-1`` to ``2**64 - 1``), restricted to what a signed 64-bit integer holds.
SEED_LIMIT = 2**63


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as a seed: an integer with ``0 <= seed < 2**63`` (:data:`SEED_LIMIT`)."""
    number = _integer(value)
    if number is None or not 0 <= number < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer with 0 <= {name} < 2**63, got {value!r}")
    return number


def check_float_in(name: str, value: object, lo: float, hi: float, why: str = "") -> float:
    """``value`` as a finite float in ``[lo, hi]``; ``why`` is added to the message."""
    number = _real(value)
    if number is None or not lo <= number <= hi:
        raise ValueError(f"{name} must be a finite number between {lo:g} and {hi:g}, got {value!r}"
                         + (f" ({why})" if why else ""))
    return number


#: Allowed kernel widths ``sigma`` (per pixel, [-1, 1] scale). Outside, the Gaussian kernel is numerically
#: degenerate in float32: below, every pair of distinct patches is at kernel value 0 (and the random
#: features' frequencies ``1 / s`` explode); above, every pair is at 1 and every distance is 0.
SIGMA_RANGE = (1e-6, 1e6)


def check_sigma(name: str, value: object) -> float:
    """A kernel width: a finite number in :data:`SIGMA_RANGE`."""
    return check_float_in(name, value, *SIGMA_RANGE, why="the kernel is degenerate in float32 outside it")


def check_positive_float(name: str, value: object) -> float:
    """``value`` as a finite ``float > 0`` (NumPy scalars included)."""
    number = _real(value)
    if number is None or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_nonnegative_float(name: str, value: object) -> float:
    """``value`` as a finite ``float >= 0`` (NumPy scalars included)."""
    number = _real(value)
    if number is None or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_patch_size(patch_size: object, name: str = "patch_size") -> int:
    """``patch_size`` as an odd ``int >= 1``; ``name``: the option's name in the error (``local_patch_size``)."""
    size = check_positive_int(name, patch_size)
    if size % 2 == 0:
        raise ValueError(f"{name} must be odd (patches are centred on a pixel), got {patch_size!r}")
    return size


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the computation runs in: 16-bit inputs are promoted to float32.

    ``cos`` of arguments of a few radians and the cancellation in ``Kxx + Kyy - 2 Kxy`` lose most of
    their digits in 16-bit arithmetic, so half-precision inputs are computed in float32 and the result is
    cast back to the input dtype (the way autocast treats reductions).
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def full_precision(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with autocast turned off (:func:`patchmmd._autograd.autocast_off`), so that a distance called
    inside an autocast region computes in its inputs' compute dtype (:func:`compute_dtype`) as it does outside one.

    Under autocast the matrix products and convolutions would run in 16 bits, and the exact estimator's
    ``|a|² + |b|² - 2 a·b`` cancels: bfloat16 autocast moved the exact windowed MMD by 3 % and set a small
    one to exactly 0. 16-bit inputs are promoted to float32 for the same reason; the result keeps the input
    dtype either way.

    Example:
        >>> @full_precision
        ... def product(a):
        ...     return a @ a
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     product(torch.ones(2, 2)).dtype
        torch.float32
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with autocast_off():
            return fn(*args, **kwargs)

    return wrapper


def reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Apply ``reduction`` to per-image values of shape ``(N,)``."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def to_unit_scale(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map values from ``[lo, hi]`` to the method's internal ``[-1, 1]`` scale."""
    scale = 2.0 / (hi - lo)
    # one pass: -1 - lo s + s t; the offset a 0-d CPU tensor, which PyTorch takes as a scalar on any device
    # (t.new_tensor would copy it to t's GPU at every call, waiting for the GPU)
    return torch.add(torch.tensor(-1.0 - lo * scale, dtype=t.dtype, device="cpu"), t, alpha=scale)
