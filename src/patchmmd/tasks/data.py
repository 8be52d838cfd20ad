"""Photos for the training experiments: loading a folder, the train / held-out split, seeded crops.

Split (the same for every image): the right-most columns, ``max(crop, round(holdout * W))`` wide, are held
out; the held-out crops are the non-overlapping ``crop x crop`` tiles of that strip's left-most ``crop`` columns,
top to bottom (one tile per ``crop`` rows; the rest of a wider strip is neither trained on nor evaluated). The
tiles are ordered in turns over the images: every image's top tile, then every image's second tile, and so on (an
image out of tiles drops out), so that the first ``max_tiles`` of them come from every image, not from the first
image alone. Training crops are drawn from the remaining columns only, so no held-out pixel is ever seen in
training. Crop
positions (and horizontal flips) come from a ``torch.Generator`` seeded with the run's seed: the data order
is fixed.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.validation import check_positive_int

#: Most memory the photos of a training folder may take as float32 tensors (the tasks hold every photo in memory
#: for the whole run; they are sized for tens of photos). Checked from the files' headers before decoding.
MAX_PHOTO_BYTES = 8 * 2**30


def load_photos(
    folder: str | os.PathLike[str] | None, *, max_bytes: int | None = None
) -> tuple[list[torch.Tensor], list[str]]:
    """RGB images ``(3, H, W)`` in ``[0, 1]`` from ``folder`` (sorted by name; hidden files skipped), or the shipped
    photos if ``None``.

    Raises:
        ValueError: no image files; photos that would take more than ``max_bytes`` (default
            :data:`MAX_PHOTO_BYTES`) as float32 tensors, said before any is decoded (a folder such as DIV2K's 800
            training photos would need about 27 GiB); an unreadable file (:class:`patchmmd.io.ImageReadError`,
            naming it).
    """
    if folder is None:
        from ..data import sample_image, sample_names

        names = sample_names()
        return [sample_image(n) for n in names], names
    from ..io import IMAGE_SUFFIXES, load_image

    # hidden files (".x.png", macOS's "._x.png") are skipped, as ``patchmmd score`` skips them
    files = sorted(p for p in Path(folder).iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    need = sum(3 * 4 * w * h for w, h in map(_size, files))
    if max_bytes is None:
        max_bytes = MAX_PHOTO_BYTES
    if need > max_bytes:
        raise ValueError(
            f"the {len(files)} photos in {folder} take {need / 2**30:.1f} GiB as float32 tensors, over the "
            f"{max_bytes / 2**30:g} GiB the training tasks hold in memory: use a folder of fewer or smaller photos "
            "(a subset, or downscaled copies)"
        )
    return [load_image(p) for p in files], [p.name for p in files]


def _size(path: Path) -> tuple[int, int]:
    """An image file's width and height, from its header (nothing decoded); ``(0, 0)`` when it cannot be read
    (:func:`patchmmd.io.load_image` then says why, naming the file)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # any failure: load_image reports it, naming the file
        return 0, 0


@dataclass
class Split:
    """Training regions (one per image) and the held-out tiles ``(M, 3, crop, crop)``."""

    train: list[torch.Tensor]
    heldout: torch.Tensor
    crop: int


def split_photos(
    images: list[torch.Tensor], crop: int, *, holdout: float = 0.25, max_tiles: int | None = None,
    names: Sequence[str] | None = None,
) -> Split:
    """The train / held-out split of the module docstring. ``names`` (one per image, e.g. the file names
    :func:`load_photos` returns) name an image the errors refer to; without them it is named by its index.

    Raises:
        ValueError: an image too small for a training crop beside a held-out strip; no images, an image that
            is not ``(C, H, W)``, images of different channel counts; ``crop`` not an integer >= 1, ``holdout``
            not in ``[0, 1)``, ``max_tiles`` neither ``None`` nor an integer >= 1; ``names`` not one per image.

    Example:
        >>> s = split_photos([torch.rand(3, 64, 128)], 32)
        >>> [tuple(t.shape) for t in s.train], tuple(s.heldout.shape)
        ([(3, 64, 96)], (2, 3, 32, 32))
    """
    crop = check_positive_int("crop", crop)
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a fraction of the width in [0, 1), got {holdout!r}")
    if max_tiles is not None:
        max_tiles = check_positive_int("max_tiles", max_tiles)
    if not images:
        raise ValueError("no images to split")
    if names is not None and len(names) != len(images):
        raise ValueError(f"names must name each of the {len(images)} images, got {len(names)} names")
    label = [f"image {i}" if names is None else repr(names[i]) for i in range(len(images))]
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != images[0].shape[0]:
            raise ValueError(f"the images must be (C, H, W) with the same C, got {tuple(img.shape)} for {label[i]} "
                             f"and {tuple(images[0].shape)} for {label[0]}")
    train, columns = [], []
    for i, img in enumerate(images):
        _, h, w = img.shape
        strip = max(crop, round(holdout * w))
        if h < crop or w - strip < crop:
            raise ValueError(
                f"{label[i]} is {w}x{h}: too small for {crop} px training crops beside a {strip} px held-out strip"
            )
        train.append(img[:, :, : w - strip])
        left = w - strip
        columns.append([img[:, top : top + crop, left : left + crop] for top in range(0, h - crop + 1, crop)])
    # in turns over the images: a cut to max_tiles keeps tiles of every image (image by image, the first
    # image's tiles alone would be the whole evaluation)
    tiles = [column[k] for k in range(max(map(len, columns))) for column in columns if k < len(column)]
    heldout = torch.stack(tiles[:max_tiles] if max_tiles is not None else tiles)
    return Split(train, heldout, crop)


def random_crops(regions: list[torch.Tensor], crop: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random ``crop x crop`` crops (images chosen uniformly, random horizontal flips): ``(n, 3, crop, crop)``.

    Raises:
        ValueError: ``crop`` or ``n`` not an integer >= 1, no regions, a region smaller than ``crop``.
    """
    crop, n = check_positive_int("crop", crop), check_positive_int("n", n)
    if not regions:
        raise ValueError("no regions to crop from")
    small = [i for i, r in enumerate(regions) if min(r.shape[-2:]) < crop]
    if small:
        raise ValueError(f"region {small[0]} is {tuple(regions[small[0]].shape[-2:])} px: smaller than the "
                         f"{crop} px crops")
    out = []
    dev = generator.device  # the draws on the generator's device, whatever torch.set_default_device says
    for _ in range(n):
        r = regions[int(torch.randint(len(regions), (1,), generator=generator, device=dev))]
        top = int(torch.randint(r.shape[1] - crop + 1, (1,), generator=generator, device=dev))
        left = int(torch.randint(r.shape[2] - crop + 1, (1,), generator=generator, device=dev))
        c = r[:, top : top + crop, left : left + crop]
        if bool(torch.rand((), generator=generator, device=dev) < 0.5):
            c = c.flip(-1)
        out.append(c)
    return torch.stack(out)
