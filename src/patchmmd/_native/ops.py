"""The compiled kernels of :mod:`patchmmd._native` as PyTorch operators: ``torch.ops.patchmmd.rff_sums`` (block
sums of the random features of raw or contrast-normalised patches) with its gradient
``torch.ops.patchmmd.rff_sums_grad``, ``torch.ops.patchmmd.aligned_scan``, ``torch.ops.patchmmd.aligned_grad`` and
``torch.ops.patchmmd.fit_inputs`` (the scan has no autograd formula of its own: the aligned terms call it to choose
each window's offset, and ``aligned_grad`` is the gradient of its maps, which the aligned terms' autograd function
uses; ``fit_inputs`` computes what the sub-pixel fit reads, without gradient), and the SSIM term's
``torch.ops.patchmmd.ssim_map`` with its gradient ``torch.ops.patchmmd.ssim_map_grad``.

They have fake (meta) implementations, so ``torch.compile`` traces through them in one graph, and an autograd
formula, so the forward ops are differentiable in ``xp`` (the filters, phases and floor are constants: no
gradient; ``ssim_map`` in ``xs``). Their gradient is the compiled kernels'; when its own graph is asked for
(``create_graph=True``), the backward pass differentiates the same function in PyTorch operations instead
(:func:`_plain_sums`, :func:`_plain_ssim`; :func:`patchmmd._autograd.graph_vjp`), so second derivatives are exact.
Only float32 CPU tensors may reach them; the estimator (:mod:`patchmmd.core.rff`) routes everything else to
its PyTorch path before it calls them. Registered when :mod:`patchmmd._native` is imported (it imports this
module last).

PyTorch's on-disk AOTAutograd cache keys a graph by the operators' names, not by their autograd formula or
implementation: give the ops new names (a version suffix) whenever those change.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._autograd import graph_vjp
from . import BLOCK_FEATURES, VECTOR, NativeKernels, _round_up, grad_polar, kernels


def _required() -> NativeKernels:
    nk = kernels()
    if nk is None:
        raise RuntimeError(
            "patchmmd: the compiled CPU kernels are unavailable or turned off (PATCHMMD_NATIVE=0, "
            "_native.disabled()); a graph traced while they were on cannot run without them: compile it again"
        )
    return nk


def _check_op_inputs(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, hc: int, wc: int, bh: int,
                     bw: int, k: int) -> None:
    """What the C kernels assume of their arguments (a violation would read or write out of bounds)."""
    for name, t, dim in (("xp", xp, 4), ("weight", weight, 2), ("phase", phase, 1)):
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != dim or not t.is_contiguous():
            raise ValueError(f"patchmmd::rff ops: {name} must be a contiguous {dim}-D float32 CPU tensor, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    _, c, hp, wp = xp.shape
    m = weight.shape[0]
    if min(hc, wc, bh, bw, k) < 1 or hc % bh or wc % bw:
        raise ValueError(f"patchmmd::rff ops: bad geometry hc={hc} wc={wc} bh={bh} bw={bw} k={k}")
    if hp < hc + k - 1 or wp < _round_up(wc, VECTOR) + k - 1:
        raise ValueError(f"patchmmd::rff ops: xp {tuple(xp.shape)} is too small for hc={hc}, wc={wc}, k={k} "
                         f"(rows padded to a multiple of {VECTOR})")
    if m % BLOCK_FEATURES or weight.shape[1] != c * k * k or phase.shape[0] != m:
        raise ValueError(f"patchmmd::rff ops: weight {tuple(weight.shape)} / phase {tuple(phase.shape)} must be "
                         f"(m, C k²) / (m,) with m a multiple of {BLOCK_FEATURES}")


def _check_floor(floor: float, d: int) -> None:
    """The kernels take ``d floor²`` (``d = C k²``) as a float32 and read 0 as raw patches: a positive ``floor``
    whose ``d floor²`` underflows would silently give the raw patches' sums, one that overflows NaN."""
    f32 = torch.finfo(torch.float32)
    if not (floor == 0.0 or (0.0 < floor < float("inf") and f32.tiny <= d * floor * floor <= f32.max)):
        raise ValueError(f"patchmmd::rff ops: floor must be 0 (raw patches) or a positive finite number with "
                         f"C k² floor² a normal float32 ({f32.tiny:.3g} to {f32.max:.3g}), got {floor!r} "
                         f"(C k² = {d})")


def _sums_shape(xp: torch.Tensor, weight: torch.Tensor, hc: int, wc: int, bh: int, bw: int) -> tuple[int, ...]:
    return (xp.shape[0], weight.shape[0], hc // bh, wc // bw)


@torch.library.custom_op("patchmmd::rff_sums", mutates_args=(), device_types="cpu")
def rff_sums(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, floor: float, hc: int, wc: int, bh: int,
             bw: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of ``cos z`` and ``sin z`` over ``bh x bw`` blocks of the ``hc x wc`` patch centres: two
    ``(N, m, hc/bh, wc/bw)`` tensors. ``z_j = weight_j . P(xp) + phase_j`` for ``floor`` 0; for ``floor`` > 0
    the angles of contrast-normalised patches, ``z_j = s · weight_j . P + phase_j`` with
    ``s = 1 / sqrt(‖Π P‖² + C k² floor²)`` of each patch, computed in the kernels (``weight`` projected by Π
    gives the angle of the normalised patch, docs/method.md §3.3). ``xp`` ``(N, C, Hp, Wp)``,
    ``Hp >= hc + k - 1``, ``Wp >= round_up(wc, VECTOR) + k - 1``; ``m`` a multiple of :data:`BLOCK_FEATURES`."""
    _check_op_inputs(xp, weight, phase, hc, wc, bh, bw, k)
    _check_floor(floor, weight.shape[1])
    return _required().block_sums_split(xp, weight, phase, hc, wc, bh, bw, k, floor)


@rff_sums.register_fake
def _rff_sums_fake(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, floor: float, hc: int, wc: int,
                   bh: int, bw: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _sums_shape(xp, weight, hc, wc, bh, bw)
    return xp.new_empty(shape), xp.new_empty(shape)


@torch.library.custom_op("patchmmd::rff_sums_grad", mutates_args=(), device_types="cpu")
def rff_sums_grad(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, floor: float, g_cos: torch.Tensor,
                  g_sin: torch.Tensor, hc: int, wc: int, bh: int, bw: int, k: int) -> torch.Tensor:
    """Gradient of a loss with respect to ``xp`` (its shape), given its gradients ``g_cos``, ``g_sin``
    (``(N, m, hc/bh, wc/bw)`` float32 each) with respect to the two outputs of :func:`rff_sums` with the same
    ``floor`` (through the angles and, for ``floor`` > 0, through each patch's factor ``s``)."""
    _check_op_inputs(xp, weight, phase, hc, wc, bh, bw, k)
    _check_floor(floor, weight.shape[1])
    shape = _sums_shape(xp, weight, hc, wc, bh, bw)
    for name, t in (("g_cos", g_cos), ("g_sin", g_sin)):
        if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"patchmmd::rff_sums_grad: {name} must be a float32 CPU tensor of shape {shape}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    # Contiguous first: the vectorised atan2 and the one for broadcast (stride-0) gradients round differently.
    amp, phs = grad_polar(g_cos.contiguous(), g_sin.contiguous())
    return _required().grad_image_polar(xp, weight, phase, amp, phs, hc, wc, bh, bw, k, floor)


@rff_sums_grad.register_fake
def _rff_sums_grad_fake(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, floor: float,
                        g_cos: torch.Tensor, g_sin: torch.Tensor, hc: int, wc: int, bh: int, bw: int,
                        k: int) -> torch.Tensor:
    return xp.new_empty(xp.shape)


def _plain_sums(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, floor: float, hc: int, wc: int,
                bh: int, bw: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rff_sums` in differentiable PyTorch operations: the double-backward path (every ``cos``/``sin``
    value is formed, ``m x hc x wc`` per image)."""
    n, c = xp.shape[:2]
    x = xp[..., : hc + k - 1, : wc + k - 1]
    z = F.conv2d(x, weight.view(-1, c, k, k))
    if floor > 0:  # s = 1 / sqrt(‖Π p‖² + C k² floor²) of each patch
        u = F.unfold(x, k).view(n, c, k * k, hc, wc)
        u = u - u.mean(dim=2, keepdim=True)
        z = z * torch.rsqrt(u.pow(2).sum(dim=(1, 2)) + c * k * k * floor * floor).unsqueeze(1)
    z = z + phase.view(1, -1, 1, 1)

    def sums(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, weight.shape[0], hc // bh, bh, wc // bw, bw).sum(dim=(3, 5))  # (not -1: n may be 0)

    return sums(torch.cos(z)), sums(torch.sin(z))


def _rff_sums_setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    xp, weight, phase, floor, hc, wc, bh, bw, k = inputs
    ctx.save_for_backward(xp, weight, phase)
    ctx.geometry = (floor, hc, wc, bh, bw, k)


def _rff_sums_backward(ctx: Any, g_cos: torch.Tensor | None, g_sin: torch.Tensor | None) -> tuple[Any, ...]:
    """The compiled kernel's gradient, or, when the backward pass records its graph, autograd through
    :func:`_plain_sums`; zeros for an output that received no gradient."""
    xp, weight, phase = ctx.saved_tensors
    floor, hc, wc, bh, bw, k = ctx.geometry
    shape = _sums_shape(xp, weight, hc, wc, bh, bw)
    g_cos = xp.new_zeros(shape) if g_cos is None else g_cos
    g_sin = xp.new_zeros(shape) if g_sin is None else g_sin
    if torch.is_grad_enabled():
        (grad,) = graph_vjp(lambda t: _plain_sums(t, weight, phase, floor, hc, wc, bh, bw, k), (xp,),
                            (g_cos, g_sin), (True,))
        grad = xp.new_zeros(xp.shape) if grad is None else grad
    else:
        grad = rff_sums_grad(xp, weight, phase, floor, g_cos, g_sin, hc, wc, bh, bw, k)
    return grad, *(None,) * 8


rff_sums.register_autograd(_rff_sums_backward, setup_context=_rff_sums_setup_context)


def _check_scan_inputs(x: torch.Tensor, yp: torch.Tensor, fit: list[torch.Tensor], radius: int, offsets: list[int],
                       lk_box: int, factors: list[int], local_patch_size: int, op: str) -> list[tuple[int, int]]:
    """What ``aligned_scan`` / ``aligned_grad`` of the C source assume of their arguments; the offset pairs."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * radius, w + 2 * radius
    shapes = [(n, c, h, w), (n, c, hp, wp)]
    if fit:
        shapes += [(n, c, h, w), (n, c, h, w), (n, c, hp, wp), (n, c, hp, wp), (n, 3, h, w), (n, 3, hp, wp)]
    tensors = [x, yp, *fit]
    if len(tensors) != len(shapes):
        raise ValueError(f"patchmmd::{op}: fit must hold 0 or 6 tensors, got {len(fit)}")
    for t, shape in zip(tensors, shapes, strict=True):
        if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() or tuple(t.shape) != shape:
            raise ValueError(f"patchmmd::{op}: expected a contiguous float32 CPU tensor of shape {shape}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    pairs = list(zip(offsets[::2], offsets[1::2], strict=True))
    if len(offsets) % 2 or not pairs or any(max(abs(dy), abs(dx)) > radius for dy, dx in pairs):
        raise ValueError(f"patchmmd::{op}: offsets {offsets} are not pairs within radius {radius}")
    if not factors or min(factors) < 1 or min(h, w) // max(factors) < 1 or lk_box < 1 or lk_box % 2 == 0 \
            or local_patch_size < 1 or local_patch_size % 2 == 0:
        raise ValueError(f"patchmmd::{op}: bad geometry factors={factors} lk_box={lk_box} "
                         f"local_patch_size={local_patch_size} for {h}x{w}")
    return pairs


@torch.library.custom_op("patchmmd::aligned_scan", mutates_args=(), device_types="cpu")
def aligned_scan(x: torch.Tensor, yp: torch.Tensor, fit: list[torch.Tensor], radius: int, offsets: list[int],
                 lk_box: int, ridge: float, max_shift: float, factors: list[int], local_patch_size: int,
                 weight_l2: float, weight_local: float, inv2s2: float) -> torch.Tensor:
    """The aligned terms' per-pixel maps for every offset and level, without gradient:
    ``(N, len(offsets) // 2, sum_l (H // f_l) (W // f_l))`` (see :meth:`NativeKernels.aligned_scan`;
    ``offsets`` flattened ``[dy0, dx0, dy1, dx1, ...]``, ``fit`` empty for no sub-pixel fit)."""
    pairs = _check_scan_inputs(x, yp, fit, radius, offsets, lk_box, factors, local_patch_size, "aligned_scan")
    return _required().aligned_scan(
        x, yp, fit or None, radius=radius, offsets=pairs, lk_box=lk_box, ridge=ridge, max_shift=max_shift,
        factors=factors, local_patch_size=local_patch_size, weight_l2=weight_l2, weight_local=weight_local,
        inv2s2=inv2s2,
    )


@torch.library.custom_op("patchmmd::aligned_grad", mutates_args=(), device_types="cpu")
def aligned_grad(x: torch.Tensor, yp: torch.Tensor, fit: list[torch.Tensor], gmap: torch.Tensor, radius: int,
                 offsets: list[int], lk_box: int, ridge: float, max_shift: float, factors: list[int],
                 local_patch_size: int, weight_l2: float, weight_local: float, inv2s2: float) -> torch.Tensor:
    """The gradient with respect to ``x`` of ``sum(gmap * aligned_scan(x, yp, fit, ...))`` (the sub-pixel
    correction a constant): ``(N, C, H, W)``; ``gmap`` has the shape of that :func:`aligned_scan` output (see
    :meth:`NativeKernels.aligned_grad`)."""
    pairs = _check_scan_inputs(x, yp, fit, radius, offsets, lk_box, factors, local_patch_size, "aligned_grad")
    n, _, h, w = x.shape
    shape = (n, len(pairs), sum((h // f) * (w // f) for f in factors))
    if gmap.device.type != "cpu" or gmap.dtype != torch.float32 or not gmap.is_contiguous() \
            or tuple(gmap.shape) != shape:
        raise ValueError(f"patchmmd::aligned_grad: gmap must be a contiguous float32 CPU tensor of shape {shape}, "
                         f"got {tuple(gmap.shape)} {gmap.dtype} on {gmap.device}")
    return _required().aligned_grad(
        x, yp, fit or None, gmap, radius=radius, offsets=pairs, lk_box=lk_box, ridge=ridge, max_shift=max_shift,
        factors=factors, local_patch_size=local_patch_size, weight_l2=weight_l2, weight_local=weight_local,
        inv2s2=inv2s2,
    )


@aligned_grad.register_fake
def _aligned_grad_fake(x: torch.Tensor, yp: torch.Tensor, fit: list[torch.Tensor], gmap: torch.Tensor, radius: int,
                       offsets: list[int], lk_box: int, ridge: float, max_shift: float, factors: list[int],
                       local_patch_size: int, weight_l2: float, weight_local: float, inv2s2: float) -> torch.Tensor:
    return torch.empty_like(x)


@aligned_scan.register_fake
def _aligned_scan_fake(x: torch.Tensor, yp: torch.Tensor, fit: list[torch.Tensor], radius: int, offsets: list[int],
                       lk_box: int, ridge: float, max_shift: float, factors: list[int], local_patch_size: int,
                       weight_l2: float, weight_local: float, inv2s2: float) -> torch.Tensor:
    n, _, h, w = x.shape
    return x.new_empty(n, len(offsets) // 2, sum((h // f) * (w // f) for f in factors))


@torch.library.custom_op("patchmmd::fit_inputs", mutates_args=(), device_types="cpu")
def fit_inputs(t: torch.Tensor, radius: int, lk_box: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sub-pixel fit's inputs of the images ``t``, replicate-padded by ``radius``: the two central
    differences and the ``lk_box`` structure tensor (see :meth:`NativeKernels.fit_inputs`); no gradient."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 4 or not t.is_contiguous() \
            or min(t.shape) < 1:
        raise ValueError(f"patchmmd::fit_inputs: t must be a contiguous non-empty 4-D float32 CPU tensor, got "
                         f"{tuple(t.shape)} {t.dtype} on {t.device}")
    if radius < 0 or lk_box < 1 or lk_box % 2 == 0:
        raise ValueError(f"patchmmd::fit_inputs: bad geometry radius={radius} lk_box={lk_box}")
    return _required().fit_inputs(t, radius=radius, lk_box=lk_box)


@fit_inputs.register_fake
def _fit_inputs_fake(t: torch.Tensor, radius: int, lk_box: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = t.shape
    hp, wp = h + 2 * radius, w + 2 * radius
    return t.new_empty(n, c, hp, wp), t.new_empty(n, c, hp, wp), t.new_empty(n, 3, hp, wp)


def _check_ssim_inputs(op: str, xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None,
                       taps: torch.Tensor) -> tuple[int, int]:
    """What the SSIM kernel assumes of its arguments; returns the valid positions' ``(Ho, Wo)``."""
    named = [("xs", xs, 4), ("ys", ys, 4), ("taps", taps, 1)]
    if y_moments is not None:
        named.append(("y_moments", y_moments, 4))
    for name, t, dim in named:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != dim or not t.is_contiguous():
            raise ValueError(f"patchmmd::{op}: {name} must be a contiguous {dim}-D float32 CPU tensor, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    n, c, h, w = xs.shape
    k = taps.shape[0]
    ho, wo = h - k + 1, w - k + 1
    if ys.shape != xs.shape or min(ho, wo) < 1 or k < 1:
        raise ValueError(f"patchmmd::{op}: xs {tuple(xs.shape)} and ys {tuple(ys.shape)} must have one shape, at "
                         f"least {k} px a side")
    if y_moments is not None and tuple(y_moments.shape) != (n, 2 * c, ho, wo):
        raise ValueError(f"patchmmd::{op}: y_moments must be {(n, 2 * c, ho, wo)}, got {tuple(y_moments.shape)}")
    return ho, wo


@torch.library.custom_op("patchmmd::ssim_map", mutates_args=(), device_types="cpu")
def ssim_map(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None, taps: torch.Tensor) -> torch.Tensor:
    """``SSIM_u`` of every channel at every valid position, ``(N, C, H - k + 1, W - k + 1)``, of internal-scale
    ``xs`` and ``ys`` under the separable window ``taps`` (docs/method.md §3.3); ``y_moments`` (the target's ``μy``
    and ``E[y²]``, :func:`patchmmd.core.ssim.target_moments`) are read instead of filtered when given.
    Differentiable in ``xs`` only."""
    _check_ssim_inputs("ssim_map", xs, ys, y_moments, taps)
    return _required().ssim(xs, ys, y_moments, taps)


@ssim_map.register_fake
def _ssim_map_fake(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None,
                   taps: torch.Tensor) -> torch.Tensor:
    n, c, h, w = xs.shape
    k = taps.shape[0]
    return xs.new_empty(n, c, h - k + 1, w - k + 1)


@torch.library.custom_op("patchmmd::ssim_map_grad", mutates_args=(), device_types="cpu")
def ssim_map_grad(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None, taps: torch.Tensor,
                  grad: torch.Tensor) -> torch.Tensor:
    """Gradient with respect to ``xs`` given ``grad``, the gradient with respect to :func:`ssim_map`'s output."""
    ho, wo = _check_ssim_inputs("ssim_map_grad", xs, ys, y_moments, taps)
    want = (xs.shape[0], xs.shape[1], ho, wo)
    if tuple(grad.shape) != want or grad.dtype != torch.float32 or grad.device.type != "cpu":
        raise ValueError(f"patchmmd::ssim_map_grad: grad must be a float32 CPU tensor of shape {want}, "
                         f"got {tuple(grad.shape)} {grad.dtype} on {grad.device}")
    return _required().ssim(xs, ys, y_moments, taps, grad.contiguous())


@ssim_map_grad.register_fake
def _ssim_map_grad_fake(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None, taps: torch.Tensor,
                        grad: torch.Tensor) -> torch.Tensor:
    return xs.new_empty(xs.shape)


def _plain_ssim(xs: torch.Tensor, ys: torch.Tensor, y_moments: torch.Tensor | None,
                taps: torch.Tensor) -> torch.Tensor:
    """:func:`ssim_map` in differentiable PyTorch operations (the double-backward path)."""
    from ..core.ssim import ssim_values  # the formulas' reference; imported here: core imports this package

    return ssim_values(xs, ys, y_moments, taps)


def _ssim_setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    xs, ys, y_moments, taps = inputs
    ctx.save_for_backward(xs, ys, y_moments, taps)


def _ssim_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    xs, ys, y_moments, taps = ctx.saved_tensors
    if any(ctx.needs_input_grad[1:]):
        raise RuntimeError("patchmmd::ssim_map is differentiable in xs only; ys, y_moments and taps must not "
                           "require grad (core/ssim.py computes that case in PyTorch)")
    if torch.is_grad_enabled():  # the graph of the gradient is asked for: autograd of the plain formulas
        (gx,) = graph_vjp(lambda t: (_plain_ssim(t, ys, y_moments, taps),), (xs,), (grad,), (True,))
        return gx, None, None, None
    return ssim_map_grad(xs, ys, y_moments, taps, grad), None, None, None  # (the op makes grad contiguous)


ssim_map.register_autograd(_ssim_backward, setup_context=_ssim_setup_context)
