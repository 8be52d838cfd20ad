"""Sample photographs that ship with the package (public domain / CC0; see ``LICENSES.md`` here).

Example:
    >>> from patchmmd.data import sample_names, sample_image
    >>> sample_names()
    ['astronaut', 'chelsea', 'coffee']
    >>> sample_image("astronaut").shape
    torch.Size([3, 256, 256])
"""

from __future__ import annotations

import functools
import sys
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.validation import check_positive_int, check_seed

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

_NAMES = ("astronaut", "chelsea", "coffee")


def sample_names() -> list[str]:
    """Names of the shipped sample photographs."""
    return sorted(_NAMES)


def sample_path(name: str) -> Traversable:
    """A path-like (``importlib.resources.Traversable``) to the PNG file of a sample photograph."""
    if name not in _NAMES:
        raise ValueError(f"name must be one of {sample_names()}, got {name!r}")
    return resources.files(__name__).joinpath(f"{name}.png")


def _check_float_dtype(dtype: object) -> torch.dtype:
    """``dtype`` if it is a floating torch dtype: values in [0, 1] cast to an integer one would be 0 or 1."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (values are in [0, 1]), got {dtype!r}")
    return dtype


def sample_image(name: str, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A sample photograph as a ``(3, H, W)`` tensor with values in [0, 1].

    Raises:
        ValueError: ``name`` is not one of :func:`sample_names`.
        TypeError: ``dtype`` is not a floating dtype.
        ImportError: Pillow is not installed (the message says how to install it).
    """
    from ..io import require_pillow

    Image = require_pillow("sample_image")

    _check_float_dtype(dtype)
    with sample_path(name).open("rb") as f:
        arr = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(dtype)


def distortion_suite(
    size: int = 64, *, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Crops of the sample photos under graded distortions: references, distorted copies and labels.

    Two ``size x size`` crops per photo, each distorted by additive noise, a box blur, a circular horizontal
    shift (``torch.roll``: the columns pushed out on the right come back on the left) and a gamma change at two
    levels: 48 pairs. A fixed, seeded test bed for comparing estimators (the fast RFF path against the exact
    one).

    The noise is drawn from a generator seeded with ``seed``: the caller's global random state is neither used nor
    changed.

    Raises:
        ValueError: ``size`` is not an integer from 1 to the largest crop the photos hold (128), or ``seed`` is not
            an integer with ``0 <= seed < 2**63``.
        TypeError: ``dtype`` is not a floating dtype.

    Example:
        >>> ref, dist, labels = distortion_suite()
        >>> ref.shape, dist.shape, labels[:2]
        (torch.Size([48, 3, 64, 64]), torch.Size([48, 3, 64, 64]), ['astronaut/0/noise-0.03', 'astronaut/0/blur-0.03'])
    """
    _check_float_dtype(dtype)
    images = {name: sample_image(name, dtype=torch.float64) for name in sample_names()}
    corners = {name: ((img.shape[-2] // 4, img.shape[-1] // 4), (img.shape[-2] // 2, img.shape[-1] // 3))
               for name, img in images.items()}
    largest = min(min(img.shape[-2] - top, img.shape[-1] - left)
                  for name, img in images.items() for top, left in corners[name])
    size = check_positive_int("size", size, maximum=largest)
    seed = check_seed(seed)
    g = torch.Generator().manual_seed(seed)
    randn = functools.partial(torch.randn, generator=g, dtype=torch.float64, device="cpu")  # any default device
    refs, dists, labels = [], [], []
    for name, img in images.items():
        for c, (top, left) in enumerate(corners[name]):
            ref = img[:, top : top + size, left : left + size]
            for level in (0.03, 0.1):
                pad = round(level * 20)
                variants = {
                    "noise": (ref + level * randn(ref.shape)).clamp(0, 1),
                    "blur": torch.nn.functional.avg_pool2d(ref[None], 2 * pad + 1, 1, pad, count_include_pad=False)[0],
                    "shift": ref.roll(round(level * 30) or 1, dims=-1),
                    "gamma": ref.clamp_min(1e-6) ** (1 + 5 * level),
                }
                for kind, d in variants.items():
                    refs.append(ref)
                    dists.append(d)
                    labels.append(f"{name}/{c}/{kind}-{level}")
    return torch.stack(refs).to(dtype), torch.stack(dists).to(dtype), labels
