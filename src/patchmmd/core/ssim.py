"""The structural-similarity term of MMD++ (docs/method.md §3.3): ``1 - SSIM`` at native resolution.

SSIM (Wang, Bovik, Sheikh & Simoncelli, 2004) compares Gaussian-weighted local means, variances and the
covariance of the two images, each channel on its own::

    SSIM_u = (2 μx μy + C1) (2 σxy + C2) / ((μx² + μy² + C1) (σx² + σy² + C2))

with an 11-tap Gaussian window of σ 1.5 px, ``C1 = 0.01²``, ``C2 = 0.03²``, on the [0, 1] scale (the
luminance factor depends on where zero is, so the internal [-1, 1] images are mapped back). Only positions whose
window lies inside the image count (no padding), and the value is the mean of ``1 - SSIM_u`` over those
positions and the channels: the standard definition, as ``pytorch-msssim`` and ``skimage`` compute it.

Its divisive normalisation by local contrast weighs an error in a flat, dark or low-contrast region as
much as one of the same visibility in a textured region, which neither the L2 and Local terms (absolute
differences) nor the patch MMD (a fixed kernel bandwidth) do.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from .._autograd import functorch_active, graph_vjp, outside_transforms
from .patches import separable_filter, separable_filter_stack
from .rff import _use_native
from .validation import full_precision

#: The window: 11 taps, Gaussian σ 1.5 px (the published SSIM's).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1, _C2 = 0.01**2, 0.03**2


@torch.compiler.assume_constant_result
def _window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian window: ``(SSIM_WINDOW,)``. Computed once per dtype and device and kept (a
    constant of a compiled graph): a copy from the CPU to a GPU at every call would wait for the GPU each time."""
    return _cached_window(dtype, torch.device(device))


@lru_cache(maxsize=32)
def _cached_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # In float64 on the CPU (whatever torch.set_default_device says), then cast and moved; an ordinary tensor even
    # when first asked for under torch.inference_mode() or a torch.func transform (the cache outlives the call, and
    # autograd saves the window).
    with torch.inference_mode(False), torch.no_grad(), outside_transforms():
        half = SSIM_WINDOW // 2
        t = torch.arange(-half, half + 1, dtype=torch.float64, device="cpu")
        g = torch.exp(-(t * t) / (2.0 * SSIM_SIGMA * SSIM_SIGMA))
        return (g / g.sum()).to(dtype=dtype, device=device)


def _check_size(xs: torch.Tensor) -> None:
    if min(xs.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"the SSIM term needs images of at least {SSIM_WINDOW} px, got {tuple(xs.shape[-2:])}")


def target_moments(ys: torch.Tensor) -> torch.Tensor:
    """The local means of ``y`` and ``y²`` (on the [0, 1] scale) of internal-scale ``ys``, which
    :func:`dissimilarity_map` needs of a fixed second image: ``(N, 2 C, H - 10, W - 10)``.

    Example:
        >>> y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        >>> bool(torch.allclose(dissimilarity_map(x, y, target_moments(y)), dissimilarity_map(x, y)))
        True
    """
    _check_size(ys)
    ys = (ys + 1) * 0.5
    return separable_filter(torch.cat([ys, ys * ys], dim=1), _window(ys.dtype, ys.device))


def dissimilarity_map(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - SSIM_u`` of internal-scale images, averaged over channels: ``(N, 1, H - 10, W - 10)``.

    ``y_moments``, if given, is :func:`target_moments` of ``ys`` (a fixed target): only ``x``, ``x²`` and
    ``x y`` are filtered then. The gradient is the closed form of :class:`_Dissimilarity` (one transposed
    filtering pass), not autograd through the formula. On float32 CPU tensors (``ys`` and ``y_moments`` without
    gradient) the compiled kernel ``torch.ops.patchmmd.ssim_map`` computes the same values and gradient
    (:mod:`patchmmd._native`), without the layout copies and temporaries of the PyTorch path. Under a
    ``torch.func`` transform it is autograd through the formula (:func:`ssim_values`), the same values.

    Example:
        >>> x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> dissimilarity_map(x, x).abs().max() < 1e-6, dissimilarity_map(x, -x).shape
        (tensor(True), torch.Size([1, 1, 22, 22]))
    """
    _check_size(xs)
    if _native_ssim(xs, ys, y_moments):
        s = torch.ops.patchmmd.ssim_map(xs.contiguous(), ys.contiguous(),
                                        None if y_moments is None else y_moments.contiguous(),
                                        _window(xs.dtype, xs.device))
        return (1.0 - s).mean(dim=1, keepdim=True)
    if functorch_active():  # the closed-form backward has no rules for the transforms: autograd of the formula
        return _plain_dissimilarity(xs, ys, y_moments)
    out: torch.Tensor = _Dissimilarity.apply(xs, ys, y_moments)
    return out


def _native_ssim(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None) -> bool:
    """Whether the compiled kernel computes the term: float32 on the CPU where the kernels are available, and
    only ``xs`` differentiated (a ``ys`` or target moments that require grad take the PyTorch path)."""
    if ys.requires_grad or (y_moments is not None and y_moments.requires_grad):
        return False
    return _use_native(xs)


def _ssim_parts(
    mx: torch.Tensor, my: torch.Tensor, exx: torch.Tensor, eyy: torch.Tensor, exy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four factors of ``SSIM_u = A B / (P Q)`` from the local moments: ``A = 2 μx μy + C1``,
    ``B = 2 σxy + C2``, ``P = μx² + μy² + C1``, ``Q = σx² + σy² + C2``."""
    # P = A + (μx − μy)² and Q = B + E[(x − y)²] − (μx − μy)²: the same factors, written so that x = y gives
    # P = A and Q = B exactly (SSIM exactly 1, the term exactly 0) under any rounding or fused multiply-add.
    mxy, d = mx * my, mx - my
    a, b, dd = 2 * mxy + _C1, 2 * (exy - mxy) + _C2, d * d
    return a, b, a + dd, b + ((exx + eyy) - 2 * exy) - dd


def _moments(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None,
             taps: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``x``, ``y`` on the [0, 1] scale and their local moments ``μx, μy, E[x²], E[y²], E[xy]`` (each ``C``
    channels); ``y``'s from ``y_moments`` when given."""
    g = _window(xs.dtype, xs.device) if taps is None else taps
    c = xs.shape[1]
    x, y = (xs + 1) * 0.5, (ys + 1) * 0.5
    if y_moments is None:
        # One filtering pass over the five moment images.
        moments = separable_filter_stack([x, y, x * x, y * y, x * y], g)
        mx, my, exx, eyy, exy = moments.split(c, dim=1)
    else:
        mx, exx, exy = separable_filter_stack([x, x * x, x * y], g).split(c, dim=1)
        my, eyy = y_moments.split(c, dim=1)
    return x, y, mx, my, exx, eyy, exy


def ssim_values(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None = None,
                taps: torch.Tensor | None = None) -> torch.Tensor:
    """``SSIM_u`` of every channel at every valid position, ``(N, C, H - 10, W - 10)``, in plain differentiable
    operations: the reference the compiled kernel (``torch.ops.patchmmd.ssim_map``) is checked against and
    differentiated through for second derivatives. ``taps``: the window (default the published one).

    Example:
        >>> x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> ssim_values(x, x).shape, bool(torch.allclose(ssim_values(x, x), torch.ones(())))
        (torch.Size([1, 3, 6, 6]), True)
    """
    _, _, *moments = _moments(xs, ys, y_moments, taps)
    a, b, p, q = _ssim_parts(*moments)
    return (a * b) / (p * q)


def _plain_dissimilarity(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None) -> torch.Tensor:
    """``1 - SSIM_u`` averaged over channels in differentiable operations (the double-backward path)."""
    return (1.0 - ssim_values(xs, ys, y_moments)).mean(dim=1, keepdim=True)


def moment_grads(
    mx: torch.Tensor, my: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
    s: torch.Tensor, gs: torch.Tensor, *, with_my: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradients of a loss with respect to the local moments ``μx``, ``E[x²]`` (the same as for ``E[y²]``),
    ``E[xy]`` and (``with_my``) ``μy``, given ``gs``, its gradient with respect to ``SSIM_u``: the closed form of
    :class:`_Dissimilarity` (``s`` is ``SSIM_u``, ``a, b, p, q`` its factors from :func:`_ssim_parts`)."""
    inv = gs / (p * q)
    u, v = b * inv, a * inv
    sq = (gs * s) * (1 / q - 1 / p)
    d_my = 2 * (mx * (u - v) + my * sq) if with_my else None
    return 2 * (my * (u - v) + mx * sq), -(gs * s) / q, 2 * v, d_my


class _Dissimilarity(torch.autograd.Function):
    """``1 - SSIM_u`` averaged over channels, with its gradient in closed form.

    With ``s = A B / (P Q)`` (:func:`_ssim_parts`) and ``u = B / (P Q)``, ``v = A / (P Q)``::

        ∂s/∂μx = 2 (μy (u - v) + μx s (1/Q - 1/P))     ∂s/∂E[x²] = -s/Q     ∂s/∂E[xy] = 2 v

    (``u`` and ``v`` stand for ``s/A`` and ``s/B`` without dividing by ``A`` or ``B``, which may be 0). The
    moments are Gaussian-filtered images, so their gradients reach the pixels through the transposed filter
    ``Gᵀ`` (the zero-padded full filtering, the window being symmetric)::

        ∂L/∂x = Gᵀ g_μx + 2 x Gᵀ g_E[x²] + y Gᵀ g_E[xy]

    and alike for ``y``: one filtering pass over three (or five) images instead of autograd through the
    formula and the two convolutions. When the gradient's own graph is asked for (``create_graph=True``), the
    backward pass differentiates :func:`_plain_dissimilarity` with autograd instead
    (:func:`patchmmd._autograd.graph_vjp`): second derivatives are exact.
    """

    @staticmethod
    def forward(
        ctx: Any, xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None
    ) -> torch.Tensor:
        x, y, mx, my, exx, eyy, exy = _moments(xs, ys, y_moments)
        a, b, p, q = _ssim_parts(mx, my, exx, eyy, exy)
        s = (a * b) / (p * q)
        ctx.save_for_backward(x, y, mx, my, a, b, p, q, s, xs, ys, y_moments)
        ctx.target = y_moments is not None
        return (1.0 - s).mean(dim=1, keepdim=True)

    @staticmethod
    @full_precision  # as the forward pass: a backward pass called inside an autocast region must not filter in 16 bits
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, y, mx, my, a, b, p, q, s, xs, ys, y_moments = ctx.saved_tensors
        want_x, want_y, want_moments = ctx.needs_input_grad
        if torch.is_grad_enabled():  # the graph of the gradient is asked for: autograd of the plain formula
            return graph_vjp(lambda *t: (_plain_dissimilarity(*t),), (xs, ys, y_moments), (grad,),
                             ctx.needs_input_grad)
        c = x.shape[1]
        k = SSIM_WINDOW - 1
        # d(1 - mean_c s)/ds = -1/C; the 0.5 of the [-1, 1] -> [0, 1] map multiplies the pixel gradients.
        gs = grad * (-1.0 / c)
        own_y = want_y and not ctx.target  # a target's y enters only through E[xy]; its moments are inputs
        d_mx, g_sq, d_xy, d_my = moment_grads(mx, my, a, b, p, q, s, gs, with_my=own_y or want_moments)
        parts: list[torch.Tensor] = []
        if want_x:
            parts += [d_mx, g_sq]  # ∂/∂μx, ∂/∂E[x²]
        if own_y and d_my is not None:
            parts += [d_my, g_sq]
        gx = gy = gm = None
        if want_x or want_y:
            # Through the filter: the moments' gradients spread back over the pixels (Gᵀ), in one pass.
            spread = separable_filter_stack([*parts, d_xy], _window(x.dtype, x.device), k).split(c, dim=1)
            g_xy = spread[-1]
            if want_x:
                gx = 0.5 * (spread[0] + 2 * x * spread[1] + y * g_xy)
            if own_y:
                i = 2 if want_x else 0
                gy = 0.5 * (spread[i] + 2 * y * spread[i + 1] + x * g_xy)
            elif want_y:
                gy = 0.5 * x * g_xy
        if want_moments and d_my is not None:
            gm = torch.cat([d_my, g_sq], dim=1)
        return gx, gy, gm


def spread_map(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A :func:`dissimilarity_map` as an ``(N, 1, height, width)`` map with the same mean as ``m``.

    Each position's value is spread over the pixels of its window with the window's own Gaussian weights
    (the transpose of the valid filtering), then scaled by ``(H W) / (H' W')`` so that the mean over the
    full map is the mean over the valid positions, as for the other terms' maps.
    """
    g = _window(m.dtype, m.device)
    k = g.numel()
    full = F.conv_transpose2d(m, g.view(1, 1, k, 1))
    full = F.conv_transpose2d(full, g.view(1, 1, 1, k))
    return full * (height * width / math.prod(m.shape[-2:]))
