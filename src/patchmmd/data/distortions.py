"""Image distortions used to build test beds: Gaussian blur and a JPEG round trip.

Shared by the demo (``patchmmd demo``), the scale-rule sweep (``scripts/scale_rule_dev.py``) and the
tests. Both accept ``(C, H, W)`` or ``(N, C, H, W)`` images in ``[0, 1]`` and return the same shape and
dtype.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.patches import separable_filter


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (radius ``ceil(3 σ)``), per channel.

    Example:
        >>> x = torch.rand(1, 3, 16, 16)
        >>> y = gaussian_blur(x, 1.0)
        >>> y.shape == x.shape, bool(torch.isclose(y.mean(), x.mean(), atol=0.02)), bool(y.std() < x.std())
        (True, True, True)
    """
    if x.dim() == 3:
        return gaussian_blur(x[None], sigma)[0]
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    return separable_filter(F.pad(x, (r, r, r, r), mode="reflect"), k)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress RGB images at ``quality`` with Pillow and decode them (8-bit levels, as the file has).

    Example:
        >>> x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> y = jpeg(x, 20)
        >>> y.shape == x.shape, y.dtype == x.dtype, bool((y * 255 - (y * 255).round()).abs().max() < 1e-3)
        (True, True, True)
    """
    from PIL import Image

    if x.dim() == 4:
        return torch.stack([jpeg(img, quality) for img in x])
    a = (x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    b = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(b).permute(2, 0, 1).to(x.dtype)
