"""Image distortions used to build test beds: Gaussian blur and a JPEG round trip.

Shared by the demo (``patchmmd demo``), the scale-rule sweep (``scripts/scale_rule_dev.py``) and the
tests. Both accept floating ``(C, H, W)`` or ``(N, C, H, W)`` images in ``[0, 1]`` and return the same shape,
dtype and device.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.patches import separable_filter
from ..core.validation import check_positive_float, check_positive_int, compute_dtype, full_precision

#: The largest side of an image the JPEG format (as Pillow writes it) holds.
JPEG_MAX_SIDE = 65500


def _check_images(name: str, x: object) -> torch.Tensor:
    """``x`` if it is a floating ``(C, H, W)`` or ``(N, C, H, W)`` tensor, else a clear error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} expects (C, H, W) or (N, C, H, W) images, got shape {tuple(x.shape)}")
    return x


@full_precision
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (radius ``ceil(3 σ)``, at least 1), per channel.

    16-bit images are filtered in float32 and rounded back; inside a ``torch.autocast`` region too (autocast is
    turned off for the filter, which would otherwise run in 16 bits).

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``x`` is not ``(C, H, W)`` / ``(N, C, H, W)``, is not larger than the radius on each side
            (reflect padding needs that), or ``sigma`` is not a finite number > 0.

    Example:
        >>> x = torch.rand(1, 3, 16, 16)
        >>> y = gaussian_blur(x, 1.0)
        >>> y.shape == x.shape, bool(torch.isclose(y.mean(), x.mean(), atol=0.02)), bool(y.std() < x.std())
        (True, True, True)
    """
    _check_images("gaussian_blur", x)
    sigma = check_positive_float("sigma", sigma)
    r = max(1, math.ceil(3 * sigma))
    if min(x.shape[-2:]) <= r:
        raise ValueError(f"gaussian_blur with sigma={sigma:g} pads by {r} px (reflect) and needs images larger "
                         f"than that on each side, got shape {tuple(x.shape)}")
    if x.dim() == 3:
        return gaussian_blur(x[None], sigma)[0]
    dtype = compute_dtype(x.dtype)
    # The taps in float64 (t / σ, not t² / σ², so that a tiny σ gives the identity, not 0 / 0).
    t = torch.arange(-r, r + 1, dtype=torch.float64, device="cpu")  # whatever the default device
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(device=x.device, dtype=dtype)
    return separable_filter(F.pad(x.to(dtype), (r, r, r, r), mode="reflect"), k).to(x.dtype)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress RGB (``C = 3``) or grayscale (``C = 1``) images at ``quality`` (0-100, Pillow's scale)
    with Pillow and decode them (8-bit levels, as the file has). Values are clamped to [0, 1] first.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: another shape or channel count, a side over 65500 pixels (the format's limit), NaN values,
            or ``quality`` not an integer in 0-100.
        ImportError: Pillow is not installed (the message says how to install it).

    Example:
        >>> x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> y = jpeg(x, 20)
        >>> y.shape == x.shape, y.dtype == x.dtype, bool((y * 255 - (y * 255).round()).abs().max() < 1e-3)
        (True, True, True)
    """
    from ..io import require_pillow

    Image = require_pillow("jpeg")
    _check_images("jpeg", x)
    quality = check_positive_int("quality", quality, minimum=0, maximum=100)
    if x.shape[-3] not in (1, 3):
        raise ValueError(f"jpeg expects 1 (gray) or 3 (RGB) channels, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 1:
        raise ValueError(f"jpeg expects images of at least 1x1 pixels, got shape {tuple(x.shape)}")
    if max(x.shape[-2:]) > JPEG_MAX_SIDE:
        raise ValueError(f"jpeg: a JPEG file holds at most {JPEG_MAX_SIDE} pixels on a side, "
                         f"got shape {tuple(x.shape)}")
    if x.dim() == 4:
        return torch.stack([jpeg(img, quality) for img in x]) if len(x) else x.detach().clone()
    a64 = x.detach().to(device="cpu", dtype=torch.float64)
    if torch.isnan(a64).any():
        raise ValueError("jpeg: the image has NaN values")
    a = (a64.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    mode = "RGB" if a.shape[-1] == 3 else "L"
    buf = io.BytesIO()
    Image.fromarray(a if mode == "RGB" else a[..., 0]).save(buf, format="JPEG", quality=quality)  # (H, W): L
    buf.seek(0)
    b = np.asarray(Image.open(buf).convert(mode), dtype=np.float64) / 255.0
    b = b if mode == "RGB" else b[..., None]
    return torch.from_numpy(b).permute(2, 0, 1).to(device=x.device, dtype=x.dtype)
