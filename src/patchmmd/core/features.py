"""Random Fourier features of the centred Gaussian patch kernel (docs/method.md §2), drawn from a seed.

For filters ``w_j ~ N(0, Π / s^2)`` (zero-mean per channel, which applies Π exactly) and phases
``b_j ~ U[0, 2π)``, ``E[2 cos(w.p + b) cos(w.q + b)] = exp(-||Π(p - q)||^2 / (2 s^2))``. Averaging
``cos(w_j . P_u(x) + b_j)`` over the patch centres of a window is one convolution, a cosine and an
``avg_pool2d``; the squared difference of those window means, times ``2 / r``, is an unbiased estimate of
the window's squared MMD.

Features are drawn on the CPU in float64 by a :class:`torch.Generator` seeded with ``seed`` (whatever
:func:`torch.set_default_device` says) and only then moved to the target device and dtype, so a seed gives the
same filters on every call and every device.

Three laws of features, all with the same marginal law per feature (hence all unbiased):

* ``"iid"``: i.i.d. Gaussian filters and uniform phases (the follow-up study's features).
* ``"orthogonal"``: directions drawn in blocks of mutually orthogonal vectors inside Π's range, lengths
  chi-distributed (orthogonal random features, Yu et al. 2016).
* ``"stratified"`` (the default): orthogonal directions; lengths stratified over the chi distribution's
  quantiles (feature ``i`` takes the quantile at ``(π_i + u_i) / r`` for a random permutation ``π`` and
  ``u_i ~ U[0, 1)``); each frequency used twice, with phases ``b`` and ``b + π/2`` (a cosine and a sine, so
  the estimate no longer depends on the phase), the phases themselves stratified over ``[0, 2π)``.

Measured on real 64x64 photo crops with four distortions (``tests/test_rff.py`` asserts it), the mean
relative error at r = 512 is about 3.9 % (iid), 2.6 % (orthogonal) and 1.6 % (stratified).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch

from .._autograd import outside_transforms

FeatureKind = Literal["stratified", "orthogonal", "iid"]
FEATURE_KINDS = ("stratified", "orthogonal", "iid")


def centred_basis(channels: int, patch_size: int, center: bool) -> torch.Tensor:
    """An orthonormal basis (``d x m``, float64) of the space the filters live in.

    With ``center=True`` it spans the vectors that are zero-mean within each channel
    (``m = C (k^2 - 1)``); otherwise it is the identity (``m = d``).
    """
    k2 = patch_size * patch_size
    d = channels * k2
    if not center:
        return torch.eye(d, dtype=torch.float64)
    if k2 == 1:
        return torch.zeros(d, 0, dtype=torch.float64)
    # Per channel: the complement of the constant vector, from a QR of [1 | I].
    block = torch.cat([torch.ones(k2, 1, dtype=torch.float64), torch.eye(k2, dtype=torch.float64)], dim=1)
    q, _ = torch.linalg.qr(block)
    comp = q[:, 1:k2]  # (k2, k2 - 1), orthonormal and orthogonal to ones
    return torch.block_diag(*([comp] * channels))


def chi_quantile(u: torch.Tensor, dof: int) -> torch.Tensor:
    """Quantiles of the chi distribution with ``dof`` degrees of freedom at ``u`` in [0, 1) (float64).

    Bisection on the regularised lower incomplete gamma function: ``P(chi² <= x) = gammainc(dof/2, x/2)``.
    """
    lo = torch.zeros_like(u)
    hi = torch.full_like(u, float(dof) + 40.0 * math.sqrt(dof) + 100.0)
    a = torch.tensor(dof / 2.0, dtype=torch.float64, device=u.device)
    for _ in range(100):
        mid = (lo + hi) / 2
        below = torch.special.gammainc(a, mid / 2) < u
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return ((lo + hi) / 2).sqrt()


def _orthogonal_directions(count: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` unit vectors in R^m, in blocks of ``m`` mutually orthogonal ones (Haar-distributed)."""
    blocks = []
    for _ in range(math.ceil(count / m)):
        q, r = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
        blocks.append((q * torch.sign(torch.diagonal(r)).unsqueeze(0)).T)
    return torch.cat(blocks)[:count]


def _stratified_uniform(count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` numbers in [0, 1), one in each interval ``[i / count, (i + 1) / count)``, shuffled."""
    perm = torch.randperm(count, generator=gen).to(torch.float64)
    return (perm + torch.rand(count, generator=gen, dtype=torch.float64)) / count


def distinct_draws(num_features: int, kind: str) -> int:
    """How many distinct frequencies ``num_features`` features of law ``kind`` have: the stratified law uses
    each twice (a cos/sin pair), so ``ceil(r / 2)``; the others ``r``. A multi-bandwidth kernel needs at least
    one per bandwidth (:func:`_draw_bandwidths`), else a bandwidth would get no feature at all."""
    return (num_features + 1) // 2 if kind == "stratified" else num_features


@lru_cache(maxsize=64)
def _draw(
    channels: int, patch_size: int, bandwidth: float | tuple[float, ...], num_features: int, seed: int, kind: str,
    center: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Every tensor of the draw on the CPU, whatever torch.set_default_device says, and plain even under a
    # torch.func transform (a cached constant; vmap refuses random draws).
    with torch.device("cpu"), outside_transforms():
        return _draw_on_cpu(channels, patch_size, bandwidth, num_features, seed, kind, center)


def _draw_on_cpu(
    channels: int, patch_size: int, bandwidth: float | tuple[float, ...], num_features: int, seed: int, kind: str,
    center: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    basis = centred_basis(channels, patch_size, center)  # (d, m)
    m = basis.shape[1]
    count = distinct_draws(num_features, kind)
    if m == 0:
        vectors = torch.zeros(count, 0, dtype=torch.float64)
    elif kind == "iid":
        vectors = torch.randn(count, m, generator=gen, dtype=torch.float64)
    else:
        directions = _orthogonal_directions(count, m, gen)
        if kind == "orthogonal":
            lengths = torch.randn(count, m, generator=gen, dtype=torch.float64).norm(dim=1)
        else:
            lengths = chi_quantile(_stratified_uniform(count, gen), m)
        vectors = directions * lengths.unsqueeze(1)
    per_draw = _draw_bandwidths(bandwidth, count)
    if kind == "stratified":
        phases = _stratified_uniform(count, gen) * (2.0 * math.pi)
        vectors = torch.cat([vectors, vectors])[:num_features]
        phases = torch.cat([phases, phases + math.pi / 2])[:num_features]
        per_draw = torch.cat([per_draw, per_draw])[:num_features]
    else:
        phases = torch.rand(count, generator=gen, dtype=torch.float64) * (2.0 * math.pi)
    weights = (vectors @ basis.T) / per_draw.unsqueeze(1)
    return weights.reshape(num_features, channels, patch_size, patch_size), phases


def _draw_bandwidths(bandwidth: float | tuple[float, ...], count: int) -> torch.Tensor:
    """Each draw's bandwidth, ``(count,)``.

    A mixture kernel (a tuple of bandwidths, mean of the Gaussians) gets ``count / len(bandwidth)``
    consecutive draws per bandwidth: its spectral measure is the mixture of theirs, so the feature average
    estimates the mean kernel. (Stratified features repeat each draw as a cos/sin pair on its bandwidth.)
    """
    widths = bandwidth if isinstance(bandwidth, tuple) else (bandwidth,)
    return torch.tensor(widths, dtype=torch.float64)[torch.arange(count) * len(widths) // count]


@torch.compiler.disable
def random_features(
    channels: int,
    patch_size: int,
    bandwidth: float | tuple[float, ...],
    num_features: int,
    *,
    seed: int = 0,
    kind: FeatureKind = "stratified",
    center: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters ``(r, C, k, k)`` and phases ``(r,)`` for the Gaussian kernel of bandwidth ``s``.

    ``bandwidth`` may be a tuple: the mean of the Gaussian kernels of those bandwidths, each drawn for an
    equal share of the features (:func:`patchmmd.core.kernels.gaussian_bandwidths`).

    Example:
        >>> w, b = random_features(3, 3, 0.54, 512, seed=0)
        >>> w.shape, b.shape
        (torch.Size([512, 3, 3, 3]), torch.Size([512]))
        >>> bool(w.sum(dim=(2, 3)).abs().max() < 1e-5)  # zero mean in every channel: Π applied
        True
        >>> torch.equal(w, random_features(3, 3, 0.54, 512, seed=0)[0])
        True
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {kind!r}")
    if isinstance(bandwidth, tuple | list):
        draws = distinct_draws(num_features, kind)
        if not bandwidth or len(bandwidth) > draws:
            raise ValueError(
                f"need 1 to {draws} bandwidths ({kind!r} features: num_features={num_features} has {draws} distinct "
                f"frequencies, at least one per bandwidth), got {len(bandwidth)}"
            )
        widths: float | tuple[float, ...] = tuple(float(b) for b in bandwidth)
    else:
        widths = float(bandwidth)
    w, b = _draw(channels, patch_size, widths, num_features, int(seed), kind, bool(center))
    # Copies: the drawn tensors are cached, and a caller's in-place change must not alter later draws.
    return w.to(device=device, dtype=dtype, copy=True), b.to(device=device, dtype=dtype, copy=True)
