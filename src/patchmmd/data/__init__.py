"""Sample photographs that ship with the package (public domain / CC0; see ``LICENSES.md`` here).

Example:
    >>> from patchmmd.data import sample_names, sample_image
    >>> sample_names()
    ['astronaut', 'chelsea', 'coffee']
    >>> sample_image("astronaut").shape
    torch.Size([3, 256, 256])
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

_NAMES = ("astronaut", "chelsea", "coffee")


def sample_names() -> list[str]:
    """Names of the shipped sample photographs."""
    return sorted(_NAMES)


def sample_path(name: str):  # type: ignore[no-untyped-def]
    """A path-like (``importlib.resources.Traversable``) to the PNG file of a sample photograph."""
    if name not in _NAMES:
        raise ValueError(f"name must be one of {sample_names()}, got {name!r}")
    return resources.files(__name__).joinpath(f"{name}.png")


def sample_image(name: str, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A sample photograph as a ``(3, H, W)`` tensor with values in [0, 1]."""
    from PIL import Image

    with sample_path(name).open("rb") as f:
        arr = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(dtype)
