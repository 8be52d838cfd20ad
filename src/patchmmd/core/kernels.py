"""Positive-definite kernels on patch vectors, and memory-bounded kernel means.

A kernel here is any object with two methods:

* ``matrix(a, b)``: ``(B, n, d), (B, m, d) -> (B, n, m)``, all pairs within each batch entry;
* ``paired(a, b)``: ``(..., d), (..., d) -> (...)``, element by element (for aligned distances).

:class:`GaussianKernel` is the kernel of MMD++ (docs/method.md §2). The theory module adds the arc-cosine
(NNGP) kernel of infinitely wide random ReLU networks in the same form, so both run through the same
window machinery.
"""

from __future__ import annotations

import math  # noqa: F401  (used in doctests)
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.utils.checkpoint import checkpoint

from .._autograd import functorch_active

#: Largest number of kernel-matrix entries evaluated at once (per chunk); bounds temporary memory to
#: a few times this many elements whatever the image size.
MAX_KERNEL_ELEMENTS = 1 << 23


class Kernel(Protocol):
    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2`` for all pairs, ``(B, n, d), (B, m, d) -> (B, n, m)``.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` (one batched matrix product) clamped at 0, never a square root, so the
    gradient is finite at coincident points (unlike :func:`torch.cdist`).
    """
    aa = (a * a).sum(-1, keepdim=True)
    bb = (b * b).sum(-1).unsqueeze(-2)
    return torch.baddbmm(aa + bb, a, b.transpose(-1, -2), alpha=-2.0).clamp_min(0.0)


def gaussian_bandwidth(sigma: float, patch_size: int) -> float:
    """The bandwidth ``s = sigma * k^2`` of docs/method.md §2 (``sigma`` per pixel, on the [-1, 1] scale)."""
    return sigma * patch_size * patch_size


def gaussian_bandwidths(sigma: float | tuple[float, ...], patch_size: int) -> float | tuple[float, ...]:
    """:func:`gaussian_bandwidth` of one width, or of each width of a multi-bandwidth kernel (a tuple).

    A tuple of widths stands for the kernel that is the *mean* of the Gaussian kernels of those widths
    (docs/method.md §3): its squared MMD is the mean of their squared MMDs.

    Example:
        >>> gaussian_bandwidth(0.06, 3), gaussian_bandwidths((0.015, 0.06), 3)
        (0.54, (0.135, 0.54))
    """
    if isinstance(sigma, tuple):
        return tuple(gaussian_bandwidth(s, patch_size) for s in sigma)
    return gaussian_bandwidth(sigma, patch_size)


class GaussianKernel:
    """``k(p, q) = exp(-||p - q||^2 / (2 s^2))`` (apply Π to the patches first for the centred kernel).

    Example:
        >>> k = GaussianKernel(bandwidth=1.0)
        >>> a = torch.zeros(1, 1, 2, dtype=torch.float64)
        >>> b = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
        >>> float(k.matrix(a, b)) == math.exp(-12.5)
        True
    """

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = float(bandwidth)
        self._gamma = 1.0 / (2.0 * self.bandwidth**2)

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(squared_distances(a, b) * -self._gamma)

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(((a - b) ** 2).sum(-1) * -self._gamma)

    def __repr__(self) -> str:
        return f"GaussianKernel(bandwidth={self.bandwidth:g})"


def kernel_mean(kernel: Kernel, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_{i,j} k(a_i, b_j)`` for each batch entry, ``(B, n, d), (B, m, d) -> (B,)``.

    Rows of ``a`` are processed in chunks so no more than :data:`MAX_KERNEL_ELEMENTS` kernel values exist
    at once per batch entry.
    """
    n, m = a.shape[1], b.shape[1]
    rows = max(1, MAX_KERNEL_ELEMENTS // max(m, 1))
    if rows >= n:
        return kernel.matrix(a, b).mean(dim=(1, 2))
    total = a.new_zeros(a.shape[0])
    for i in range(0, n, rows):
        total = total + _checkpointed(_kernel_sum, kernel, a[:, i : i + rows], b)
    return total / (n * m)


def _kernel_sum(kernel: Kernel, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return kernel.matrix(a, b).sum(dim=(1, 2))


def mmd2_sets(kernel: Kernel, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The V-statistic squared MMD between the sets ``p`` and ``q``: ``(B, n, d), (B, m, d) -> (B,)``.

    ``mean k(p, p') + mean k(q, q') - 2 mean k(p, q)``; clamped at 0 against rounding (the exact value is
    >= 0 for a positive-definite kernel).
    """
    value = kernel_mean(kernel, p, p) + kernel_mean(kernel, q, q) - 2.0 * kernel_mean(kernel, p, q)
    return value.clamp_min(0.0)


def _checkpointed(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Run ``fn`` without keeping its intermediates for backward when gradients are needed (not under a
    ``torch.func`` transform, whose ``grad`` refuses the checkpoint's saved-tensor hooks: there the graph is kept)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and not functorch_active():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
