"""Reading images into the library's conventions: float tensors ``(C, H, W)`` with values in [0, 1].

Modes (documented behaviour for the CLI and the dataset readers):

* ``"RGB"`` (default): grayscale images are replicated to three channels; an alpha channel is
  composited over white (so transparent pixels compare as white, not as whatever colour they hide);
  palette images are converted.
* ``"L"``: one luminance channel (ITU-R 601-2, Pillow's conversion).
* ``"keep"``: the file's own channels (1, 3 or 4), alpha included.

8-bit and 16-bit files are both mapped to [0, 1]. ``.npy`` files (as in BAPPS's judgments) are not images
and are read with :func:`numpy.load` elsewhere.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch

ImageMode = Literal["RGB", "L", "keep"]
IMAGE_MODES = ("RGB", "L", "keep")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or not an image."""


def load_image(
    path: str | os.PathLike[str], *, mode: ImageMode = "RGB", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Read an image file as a ``(C, H, W)`` tensor in [0, 1].

    Raises:
        ImageReadError: the file does not exist or cannot be decoded as an image.
        ValueError: ``mode`` is not one of ``"RGB"``, ``"L"``, ``"keep"``.

    Example:
        >>> from patchmmd.data import sample_path
        >>> load_image(sample_path("coffee")).shape
        torch.Size([3, 256, 384])
        >>> load_image(sample_path("coffee"), mode="L").shape
        torch.Size([1, 256, 384])
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {IMAGE_MODES}, got {mode!r}")
    try:
        with open(path, "rb") as f:
            im = Image.open(f)
            im.load()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read {path} as an image: {e}") from None
    arr = _to_array(im, mode)
    t = torch.from_numpy(arr)
    return (t.permute(2, 0, 1) if t.dim() == 3 else t.unsqueeze(0)).contiguous().to(dtype)


def _to_array(im, mode: ImageMode) -> np.ndarray:  # type: ignore[no-untyped-def]
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: scale by the type's range.
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        gray = np.clip(a / scale, 0.0, 1.0)
        if mode == "RGB":
            return np.repeat(gray[..., None], 3, axis=2)
        return gray[..., None]
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode == "keep":
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        a = np.asarray(im, dtype=np.float64) / 255.0
        return a if a.ndim == 3 else a[..., None]
    if "A" in im.mode:
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    a = np.asarray(im.convert(mode), dtype=np.float64) / 255.0
    return a if a.ndim == 3 else a[..., None]


def save_image(t: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write a ``(C, H, W)`` or ``(1, C, H, W)`` tensor in [0, 1] as an 8-bit image file."""
    from PIL import Image

    if t.dim() == 4:
        t = t[0]
    a = (t.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    a = a.transpose(1, 2, 0)
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(path)
