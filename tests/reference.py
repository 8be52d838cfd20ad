"""Brute-force float64 references, written straight from docs/method.md's formulas.

Independent of the package's implementation: explicit reflect indexing (no F.pad), explicit patch loops
(no unfold), explicit window loops (no avg_pool2d), explicit double sums over patch pairs.
"""

from __future__ import annotations

import math

import numpy as np


def reflect_index(i: int, n: int) -> int:
    """Reflect padding without edge repeat: -1 -> 1, n -> n - 2."""
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def patch(img: np.ndarray, u: int, v: int, k: int, center: bool, floor: float | None = None) -> np.ndarray:
    """The k x k x C patch centred on (u, v) of a (C, H, W) array, flattened channel-major; with ``floor``,
    centred and divided by ``sqrt(‖p‖² + d floor²)`` (contrast-normalised, docs/method.md §3.3)."""
    c, h, w = img.shape
    r = k // 2
    p = np.empty((c, k, k))
    for a in range(k):
        for b in range(k):
            p[:, a, b] = img[:, reflect_index(u - r + a, h), reflect_index(v - r + b, w)]
    if center or floor is not None:
        p = p - p.mean(axis=(1, 2), keepdims=True)
    p = p.reshape(-1)
    if floor is not None:
        p = p / math.sqrt(float(p @ p) + p.size * floor * floor)
    return p


def gaussian(p: np.ndarray, q: np.ndarray, s: float) -> float:
    return math.exp(-float(((p - q) ** 2).sum()) / (2 * s * s))


def mmd2(ps: list[np.ndarray], qs: list[np.ndarray], s: float) -> float:
    kxx = np.mean([[gaussian(a, b, s) for b in ps] for a in ps])
    kyy = np.mean([[gaussian(a, b, s) for b in qs] for a in qs])
    kxy = np.mean([[gaussian(a, b, s) for b in qs] for a in ps])
    return float(kxx + kyy - 2 * kxy)


def windowed_mmd2(
    x: np.ndarray, y: np.ndarray, *, k: int, sigma: float, window: int | None, stride: int, center: bool,
    floor: float | None = None,
) -> float:
    """Mean over windows of the V-statistic MMD² between patch sets; x, y are (C, H, W) on [-1, 1]. With
    ``floor``, of contrast-normalised patches, ``sigma`` then the kernel width itself (unit-ball units)."""
    _, h, w = x.shape
    wh = h if window is None else min(window, h)
    ww = w if window is None else min(window, w)
    s = sigma if floor is not None else sigma * k * k
    values = []
    for top in range(0, h - wh + 1, stride):
        for left in range(0, w - ww + 1, stride):
            ps = [patch(x, u, v, k, center, floor) for u in range(top, top + wh) for v in range(left, left + ww)]
            qs = [patch(y, u, v, k, center, floor) for u in range(top, top + wh) for v in range(left, left + ww)]
            values.append(mmd2(ps, qs, s))
    return float(np.mean(values))


def local_term(x: np.ndarray, y: np.ndarray, *, k: int, sigma: float) -> float:
    """mean_u [1 - exp(-D_u / (2 s²))], D_u over the k x k x C neighbourhood with zero padding."""
    c, h, w = x.shape
    r = k // 2
    s = sigma * k * k
    d2 = (x - y) ** 2
    out = []
    for u in range(h):
        for v in range(w):
            d = sum(
                d2[ch, a, b]
                for ch in range(c)
                for a in range(u - r, u + r + 1)
                for b in range(v - r, v + r + 1)
                if 0 <= a < h and 0 <= b < w
            )
            out.append(1 - math.exp(-d / (2 * s * s)))
    return float(np.mean(out))
