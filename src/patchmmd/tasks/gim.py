"""The generalized image mean (docs/method.md §5): ``x* = argmin_x Σ_i D(x, y_i)`` over a set of similar images.

With ``D = L2`` the answer is the pixel mean, which blurs whatever the images do not share (for shifted
copies: every edge). A perceptual distance that compares local patch statistics should keep a sharp image.

Optimisation (documented defaults): ``x`` is a free ``(1, C, H, W)`` tensor started at the pixel mean of
the set (``init="mean"``) or at uniform noise drawn from the seed (``init="noise"``); Adam on the batch mean
of ``D(x, y_i)`` (the same minimiser as the sum); after every step ``x`` is clamped to ``[0, 1]``.

The classic input set (:func:`shifted_set`): a ``size x size`` crop of one photo and ``K`` copies cropped at
offsets of ``max_shift`` pixels around it, on a ring (``K = 4``: right, down, left, up).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.validation import check_positive_float, check_positive_int, check_seed
from ._common import check_finite, check_gradients_finite


def ring_offsets(shifts: int, max_shift: int) -> list[tuple[int, int]]:
    """``(0, 0)`` then ``shifts`` offsets ``(dy, dx)`` of radius ``max_shift`` evenly around a ring.

    Example:
        >>> ring_offsets(4, 3)
        [(0, 0), (0, 3), (3, 0), (0, -3), (-3, 0)]
    """
    out = [(0, 0)]
    for k in range(shifts):
        a = 2 * math.pi * k / shifts
        out.append((round(max_shift * math.sin(a)) + 0, round(max_shift * math.cos(a)) + 0))
    return out


def shifted_set(
    image: torch.Tensor, shifts: int, *, size: int | None = 64, max_shift: int = 3
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The photo's central ``size x size`` crop and ``shifts`` copies cropped at ring offsets: ``(1 + K, C, s, s)``.

    ``size=None`` uses the largest square that leaves room for the shifts.

    Raises:
        ValueError: the crop and its shifts do not fit in the image; ``image`` not ``(C, H, W)``; ``shifts`` or
            ``max_shift`` not an integer >= 0, ``size`` neither ``None`` nor an integer >= 1.

    Example:
        >>> ys, offs = shifted_set(torch.rand(3, 40, 50), 2, size=16, max_shift=2)
        >>> ys.shape, offs
        (torch.Size([3, 3, 16, 16]), [(0, 0), (0, 2), (0, -2)])
    """
    shifts = check_positive_int("shifts", shifts, minimum=0)
    max_shift = check_positive_int("max_shift", max_shift, minimum=0)
    if size is not None:
        size = check_positive_int("size", size)
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    _, h, w = image.shape
    s = min(h, w) - 2 * max_shift if size is None else size
    if s < 1 or s + 2 * max_shift > min(h, w):
        raise ValueError(f"a {s} px crop with shifts of {max_shift} px does not fit in a {w}x{h} image")
    top, left = (h - s) // 2, (w - s) // 2
    offsets = ring_offsets(shifts, max_shift)
    crops = [image[:, top + dy : top + dy + s, left + dx : left + dx + s] for dy, dx in offsets]
    return torch.stack(crops), offsets


def center_crop_common(images: list[torch.Tensor], size: int | None) -> torch.Tensor:
    """Centre crops of a common size (the smallest height and width, or ``size x size``): ``(N, C, h, w)``.

    Raises:
        ValueError: no images, images that are not ``(C, H, W)`` with the same ``C``; ``size`` neither ``None``
            nor an integer >= 1, or larger than the smallest image.
    """
    if not images or any(t.dim() != 3 or t.shape[0] != images[0].shape[0] for t in images):
        raise ValueError(f"images must be (C, H, W) with the same C, got {[tuple(t.shape) for t in images]}")
    if size is not None:
        size = check_positive_int("size", size)
    h = min(t.shape[1] for t in images)
    w = min(t.shape[2] for t in images)
    if size is not None:
        if size > min(h, w):
            raise ValueError(f"size={size} is larger than the smallest image ({w}x{h})")
        h = w = size
    out = []
    for t in images:
        top, left = (t.shape[1] - h) // 2, (t.shape[2] - w) // 2
        out.append(t[:, top : top + h, left : left + w])
    return torch.stack(out)


@dataclass
class GIMResult:
    image: torch.Tensor  # (1, C, H, W) in [0, 1]
    start: torch.Tensor
    history: list[float] = field(default_factory=list)


def generalized_mean(
    ys: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int = 100,
    lr: float = 0.02,
    init: str = "mean",
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> GIMResult:
    """Minimise ``mean_i loss(x, y_i)`` over ``x`` (see the module docstring). Deterministic for ``seed``.

    Raises:
        TrainingDiverged: the image, the loss or its gradient became NaN or infinite (stops at that step).
        ValueError: ``ys`` not a non-empty ``(K, C, H, W)`` batch; ``steps`` not an integer >= 1, ``lr`` not a
            finite number > 0, ``seed`` not an integer, an unknown ``init``.
    """
    steps, lr, seed = check_positive_int("steps", steps), check_positive_float("lr", lr), check_seed(seed)
    if ys.dim() != 4 or len(ys) == 0:
        raise ValueError(f"ys must be a non-empty batch of images (K, C, H, W), got shape {tuple(ys.shape)}")
    if init == "mean":
        start = ys.mean(0, keepdim=True)
    elif init == "noise":  # drawn on the CPU (the same start on every device), then moved to the images' device
        g = torch.Generator().manual_seed(seed)
        start = torch.rand((1, *ys.shape[1:]), generator=g, dtype=ys.dtype, device="cpu").to(ys.device)
    else:
        raise ValueError(f"init must be 'mean' or 'noise', got {init!r}")
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    history = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        check_finite(step, steps, x, "the outputs hold")
        value = loss(x.expand_as(ys), ys)
        check_finite(step, steps, value, "the loss is")
        value.backward()
        check_gradients_finite(step, steps, [x])
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        history.append(float(value.detach()))
        if callback is not None:
            callback(step, history[-1])
    return GIMResult(x.detach().clone(), start, history)
