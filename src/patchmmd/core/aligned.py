"""Aligned (position-by-position) terms of MMD++ (docs/method.md §3).

The windowed MMD is invariant to moving patches around inside a window and, with Π, blind to each
channel's patch mean. Two aligned terms restore what it lacks:

* ``Local``: ``mean_u [1 - exp(-D_u / (2 s_l²))]``, ``D_u`` the sum of squared differences over the
  ``k x k x C`` neighbourhood of ``u`` (zero padding of the difference map), ``s_l = sigma * k²``. It is
  half the aligned kernel distance ``mean_u ||k(p_u, .) - k(q_u, .)||²`` of that (uncentred) Gaussian kernel.
* ``L2``: the mean squared pixel difference, which pins absolute colour.

Both are computed on the [-1, 1] scale, like every term of the method.

Compared position by position, both count a 1-px translation, which people barely see, as more than
visible noise. :func:`tolerant_aligned` makes them tolerate small displacements (docs/method.md §3.2):
per window, the best of the integer offsets within ``radius`` native pixels, each refined by a
sub-pixel, locally constant displacement (a symmetric, linearised Lucas-Kanade step, at most one pixel).
Noise and blur do not move anything, so they are counted as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._autograd import functorch_active, graph_vjp, plain_path
from .kernels import gaussian_bandwidth
from .patches import WindowGrid, box_mean, window_grid
from .scale import downsample
from .validation import (
    OutOfRange,
    Reduction,
    check_patch_size,
    check_reduction,
    check_sigma,
    full_precision,
    prepare_pair,
    reduce,
)


def local_map(x: torch.Tensor, y: torch.Tensor, *, patch_size: int, sigma: float) -> torch.Tensor:
    """Per-pixel ``1 - exp(-D_u / (2 s_l²))`` of internal-scale images: ``(N, 1, H, W)``."""
    return local_map_of_difference(x - y, patch_size=patch_size, sigma=sigma)


def local_map_of_difference(e: torch.Tensor, *, patch_size: int, sigma: float) -> torch.Tensor:
    """:func:`local_map` given the difference ``e = x - y`` (it depends on nothing else)."""
    s = gaussian_bandwidth(sigma, patch_size)
    diff2 = e.pow(2).sum(dim=1, keepdim=True)
    # Sum over the k x k neighbourhood, zero padding (box_mean: much faster than a convolution with ones).
    k, half = patch_size, patch_size // 2
    d = box_mean(diff2, (k, k), padding=(half, half)) * (k * k)
    return -torch.expm1(d * (-1.0 / (2.0 * s * s)))


def l2_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared difference, averaged over channels: ``(N, 1, H, W)``."""
    return (x - y).pow(2).mean(dim=1, keepdim=True)


def _prepared(x: torch.Tensor, y: torch.Tensor, value_range: Sequence[float], out_of_range: OutOfRange,
              min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    return prepare_pair(x, y, value_range=value_range, out_of_range=out_of_range, min_size=min_size)


@full_precision
def local_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    patch_size: int = 3,
    sigma: float = 0.1,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
) -> torch.Tensor:
    """The aligned patch term ``Local`` of MMD++: ``mean_u [1 - exp(-D_u / (2 s_l²))]``, ``s_l = sigma * k²``.

    Values lie in ``[0, 1)``; 0 only for identical images. Arguments as in :func:`patchmmd.patch_mmd`.

    Example:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> float(local_distance(x, x))
        0.0
        >>> y = x.clone(); y[..., 4, 4] = 1.0     # one pixel, all channels, 2 on the [-1, 1] scale
        >>> d = float(local_distance(x, y)) * 64  # 9 neighbourhoods see D = 3 * 2² = 12
        >>> round(d, 6) == round(9 * (1 - float(torch.exp(torch.tensor(-12 / (2 * 0.81))))), 6)
        True
    """
    patch_size = check_patch_size(patch_size)
    sigma = check_sigma("sigma", sigma)
    reduction = check_reduction(reduction)
    xs, ys, dtype = _prepared(x, y, value_range, out_of_range, patch_size)
    values = local_map(xs, ys, patch_size=patch_size, sigma=sigma).mean(dim=(1, 2, 3))
    return reduce(values.to(dtype), reduction)


@full_precision
def l2_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
) -> torch.Tensor:
    """Mean squared pixel difference on the [-1, 1] scale (4x the MSE of [0, 1] images).

    Example:
        >>> float(l2_distance(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)))
        1.0
    """
    reduction = check_reduction(reduction)
    xs, ys, dtype = _prepared(x, y, value_range, out_of_range)
    return reduce(l2_map(xs, ys).mean(dim=(1, 2, 3)).to(dtype), reduction)


#: Largest sub-pixel displacement the Lucas-Kanade step may remove, in native pixels: beyond it the
#: linearisation is no longer a good model of the image, and the integer offsets take over.
MAX_SUBPIXEL_SHIFT = 1.0
#: Regulariser of the Lucas-Kanade normal equations, on the [-1, 1] scale: a flat window (no gradient)
#: gets no displacement instead of an arbitrary one.
LK_RIDGE = 1e-3

#: Large inputs: from this many elements (``N C H W``) on, :func:`tolerant_aligned` takes the batch in chunks
#: of images of at most this size (at least one image) and recomputes the winning offsets' graphs in the
#: backward pass (activation checkpointing) instead of storing them, so its memory is bounded by one chunk's
#: temporaries and one offset's graph.
LARGE_ELEMENTS = 1 << 22


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences along width and height, replicate padding: two ``(N, C, H, W)`` tensors."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]), 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])


def compensated_difference(x: torch.Tensor, y: torch.Tensor, *, window: int) -> torch.Tensor:
    """``x - y`` with a locally constant sub-pixel displacement removed: ``(N, C, H, W)``.

    Around each pixel, over a ``window x window`` box, the displacement ``d`` minimising
    ``sum (x - y - d . g)²`` is solved in closed form (Lucas-Kanade: 2x2 normal equations), symmetrically
    in the two images: ``g`` is the mean of their gradients and the normal matrix the mean of their
    structure tensors, plus a ridge :data:`LK_RIDGE` (so swapping ``x`` and ``y`` negates the result).
    ``d`` is clipped to :data:`MAX_SUBPIXEL_SHIFT` per axis; returns ``x - y - d . g``. The correction
    ``d . g`` is a constant for autograd (see :func:`displacement_correction`).

    Example:
        >>> t = torch.linspace(0, 1, 32)
        >>> x = torch.sin(6 * t).expand(1, 1, 32, 32)              # a smooth pattern along the width
        >>> y = torch.sin(6 * (t + 0.5 / 31)).expand(1, 1, 32, 32)  # moved by half a pixel
        >>> e = compensated_difference(x, y, window=5)
        >>> bool(e[..., 2:-2].abs().max() < 0.1 * (x - y)[..., 2:-2].abs().max())  # over 90 % removed
        True
        >>> torch.allclose(compensated_difference(y, x, window=5), -e, atol=1e-6)  # antisymmetric
        True
    """
    with torch.no_grad():
        gx, gy = _gradients(x), _gradients(y)
        correction = displacement_correction(
            x - y, gx, gy, structure_tensor(gx, window), structure_tensor(gy, window), window=window
        )
    return (x - y) - correction


def structure_tensor(grad: tuple[torch.Tensor, torch.Tensor], window: int) -> torch.Tensor:
    """Box means of ``gx²``, ``gy²``, ``gx gy`` (summed over channels): ``(N, 3, H, W)``."""
    gx, gy = grad
    prods = torch.cat([(gx * gx).sum(1, keepdim=True), (gy * gy).sum(1, keepdim=True),
                       (gx * gy).sum(1, keepdim=True)], dim=1)
    return box_mean(prods, (window, window), padding=(window // 2, window // 2))


def displacement_correction(
    e: torch.Tensor, grad_x: tuple[torch.Tensor, torch.Tensor], grad_y: tuple[torch.Tensor, torch.Tensor],
    tensor_x: torch.Tensor, tensor_y: torch.Tensor, *, window: int,
) -> torch.Tensor:
    """``d . g`` of :func:`compensated_difference`, given ``e = x - y``, both images' gradients and their
    :func:`structure_tensor` (which, being box means, can be computed once and read at any offset).

    Computed without autograd (a stop-gradient): the displacement is a nuisance parameter fitted by least
    squares, so at the fit the residual's derivative through it vanishes to first order, and the backward
    pass treats the correction as a constant (``d (x - y - c) / dx = 1``), as cheap as a pixelwise
    difference's. Returned detached, so forward mode (``torch.func.jvp``, which ``torch.no_grad`` does not
    stop) treats it as a constant too. ``tests/test_shift_tolerance.py`` checks that the resulting gradient
    points where the exact one does.
    """
    # g = (grad_x + grad_y) / 2 is never formed: at large sizes these full-size temporaries are the peak memory.
    a = 0.5 * (tensor_x + tensor_y)
    a11, a22, a12 = a[:, 0:1] + LK_RIDGE, a[:, 1:2] + LK_RIDGE, a[:, 2:3]

    def projected(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:  # sum_c g_c e_c, (N, 1, H, W)
        return (gx * e).sum(1, keepdim=True).add_((gy * e).sum(1, keepdim=True)).mul_(0.5)

    b = box_mean(torch.cat([projected(grad_x[0], grad_y[0]), projected(grad_x[1], grad_y[1])], dim=1),
                 (window, window), padding=(window // 2, window // 2))
    b1, b2 = b[:, 0:1], b[:, 1:2]
    det = a11 * a22 - a12 * a12
    # In place (full-size temporaries), except under torch.func: vmap has no batching rule for clamp_ and addcmul_
    # (it would loop over the samples, warning); the out-of-place forms compute the same numbers.
    plain = functorch_active()
    hx, hy = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
    if plain:
        hx, hy = hx.clamp(-MAX_SUBPIXEL_SHIFT, MAX_SUBPIXEL_SHIFT), hy.clamp(-MAX_SUBPIXEL_SHIFT, MAX_SUBPIXEL_SHIFT)
    else:
        hx, hy = hx.clamp_(-MAX_SUBPIXEL_SHIFT, MAX_SUBPIXEL_SHIFT), hy.clamp_(-MAX_SUBPIXEL_SHIFT, MAX_SUBPIXEL_SHIFT)
    hx, hy = hx.mul_(0.5), hy.mul_(0.5)
    correction = grad_x[0] * hx
    for g, h in ((grad_y[0], hx), (grad_x[1], hy), (grad_y[1], hy)):
        correction = torch.addcmul(correction, g, h) if plain else correction.addcmul_(g, h)
    return correction.detach()


def shift_image(y: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``y`` read ``dy`` rows down and ``dx`` columns right (``out[i, j] = y[i + dy, j + dx]``), edges replicated."""
    if dy == dx == 0:
        return y
    h, w = y.shape[-2:]
    r = max(abs(dy), abs(dx))
    p = F.pad(y, (r, r, r, r), mode="replicate")
    return p[..., r + dy : r + dy + h, r + dx : r + dx + w]


def offsets(radius: int) -> list[tuple[int, int]]:
    """The integer offsets searched: every ``(dy, dx)`` with ``|dy|, |dx| <= radius``, ``(0, 0)`` first."""
    rng = range(-radius, radius + 1)
    return sorted(((dy, dx) for dy in rng for dx in rng), key=lambda o: (o != (0, 0), abs(o[0]) + abs(o[1])))


def aligned_map(e: torch.Tensor, *, weight_l2: float, weight_local: float, local_patch_size: int,
                local_sigma: float) -> torch.Tensor:
    """``weight_l2 · L2 + weight_local · Local`` per pixel, from the difference ``e = x - y``: ``(N, 1, H, W)``."""
    m = e.new_zeros(e.shape[0], 1, *e.shape[-2:])
    if weight_l2 > 0:
        m = m + weight_l2 * e.pow(2).mean(dim=1, keepdim=True)
    if weight_local > 0:
        m = m + weight_local * local_map_of_difference(e, patch_size=local_patch_size, sigma=local_sigma)
    return m


def tolerant_aligned(
    xs: torch.Tensor,
    ys: torch.Tensor,
    factors: Sequence[int],
    *,
    radius: int,
    subpixel: bool,
    window: int,
    weight_l2: float,
    weight_local: float,
    local_patch_size: int,
    local_sigma: float,
) -> list[tuple[torch.Tensor, WindowGrid]]:
    """The aligned terms ``w_l2 L2 + w_local Local`` made tolerant to small displacements, per level.

    ``xs``, ``ys``: internal-scale images at native resolution; ``factors``: the levels' downsampling
    factors. For every integer offset ``o`` within ``radius`` (native pixels), ``ys`` (and its gradients)
    are read at ``o``, the difference is (if ``subpixel``) compensated as by :func:`compensated_difference`
    with a box of ``2 f + 1`` pixels (``f`` the first factor: the box sees the first level's pixel and its
    neighbours), then box-downsampled to each level, where the two terms' per-pixel maps are averaged
    over windows of ``window`` level pixels at stride ``window // 2``, the last row and column of windows clipped to
    the level where the stride does not end at its edge (:class:`~.patches.CoveringWindowGrid`: every pixel is
    in some window). Each window keeps its smallest
    value over the offsets. Returns, per level, the per-window values ``(N, 1, rows, cols)`` and the grid; reduce
    them with ``grid.average`` (a covering grid weighs its clipped windows by their area), not ``.mean``.

    With ``radius=0`` and ``subpixel=False`` this is the pixelwise terms, window-averaged.

    The scan over offsets runs without autograd (on the CPU in float32, as the compiled kernel
    ``torch.ops.patchmmd.aligned_scan``). With gradients: on the CPU in float32 (and ``ys`` without gradient)
    the backward pass is the compiled kernel ``torch.ops.patchmmd.aligned_grad``, the gradient of each
    window's winning offset's maps; elsewhere only each window's winning offsets are recomputed with
    autograd. From :data:`LARGE_ELEMENTS` elements on, the batch is taken in chunks of images and the
    winners' graphs (the fit's inputs, for the kernel) are recomputed in the backward pass: memory stays
    bounded at any batch size. Under ``torch.compile`` and the ``torch.func`` transforms every offset is
    computed with autograd and each window takes its first smallest value (``argmin``, as the scan's winner):
    plain operations throughout, the same values and gradients, more memory (no recomputation).
    """
    large = xs.numel() >= LARGE_ELEMENTS

    def chunk(a: torch.Tensor, b: torch.Tensor) -> list[tuple[torch.Tensor, WindowGrid]]:
        return _tolerant_aligned(a, b, factors, radius=radius, subpixel=subpixel, window=window, weight_l2=weight_l2,
                                 weight_local=weight_local, local_patch_size=local_patch_size,
                                 local_sigma=local_sigma, checkpointed=large)

    per = max(1, LARGE_ELEMENTS // max(1, xs[0].numel()))
    if xs.shape[0] <= per:
        return chunk(xs, ys)
    parts = [chunk(xs[i : i + per], ys[i : i + per]) for i in range(0, xs.shape[0], per)]  # images are independent
    return [(torch.cat([p[i][0] for p in parts]), parts[0][i][1]) for i in range(len(factors))]


def _tolerant_aligned(
    xs: torch.Tensor, ys: torch.Tensor, factors: Sequence[int], *, radius: int, subpixel: bool, window: int,
    weight_l2: float, weight_local: float, local_patch_size: int, local_sigma: float, checkpointed: bool,
) -> list[tuple[torch.Tensor, WindowGrid]]:
    """:func:`tolerant_aligned` of one chunk of images (``checkpointed``: recompute the winners' graphs in the
    backward pass)."""
    lk_box = 2 * factors[0] + 1
    h, w = xs.shape[-2:]
    # Covering grids: windows placed only fully inside a level would leave up to window // 2 - 1 of its last rows
    # and columns in none (a difference there would cost nothing); clipped windows reach the edges.
    grids = [window_grid(h // f, w // f, window, max(1, window // 2), cover=True) for f in factors]

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (radius,) * 4, mode="replicate") if radius else t

    def read(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:  # shift_image of the unpadded t, as a view
        return t[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]

    def prepare(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``ys`` padded and, for the sub-pixel fit, what it reads at every offset, computed once without
        autograd (see displacement_correction): x's two gradients, y's two (padded), x's structure tensor,
        y's (padded)."""
        if not subpixel:
            return padded(ys), []
        if _native_scan(xs):  # the same tensors from one compiled pass per image (torch.ops.patchmmd.fit_inputs)
            gxx, gxy, tensor_x = torch.ops.patchmmd.fit_inputs(xs.detach().contiguous(), 0, lk_box)
            gyx, gyy, tensor_yp = torch.ops.patchmmd.fit_inputs(ys.detach().contiguous(), radius, lk_box)
            return padded(ys), [gxx, gxy, gyx, gyy, tensor_x, tensor_yp]
        with torch.no_grad():
            grad_x, grad_y = _gradients(xs), _gradients(ys)
            tensor_x, tensor_yp = structure_tensor(grad_x, lk_box), padded(structure_tensor(grad_y, lk_box))
            fit = [*grad_x, padded(grad_y[0]), padded(grad_y[1]), tensor_x, tensor_yp]
        return padded(ys), fit  # ys padded with autograd: a y that requires grad gets its gradient

    def at_offset(xs: torch.Tensor, yp: torch.Tensor, fit: list[torch.Tensor],
                  o: tuple[int, int]) -> list[torch.Tensor]:
        """Per level, the window means of the two terms with ``ys`` read at ``o``."""
        e0 = xs - read(yp, *o)
        if fit:
            with torch.no_grad():
                gxx, gxy, gyx, gyy, tensor_x, tensor_yp = fit
                correction = displacement_correction(e0, (gxx, gxy), (read(gyx, *o), read(gyy, *o)), tensor_x,
                                                     read(tensor_yp, *o), window=lk_box)
            e0 = e0.sub_(correction)  # e0 is this offset's own tensor; the correction is a constant
            del correction
        return [
            grid.pool_fast(aligned_map(downsample(e0, f), weight_l2=weight_l2, weight_local=weight_local,
                                       local_patch_size=local_patch_size, local_sigma=local_sigma))
            for f, grid in zip(factors, grids, strict=True)
        ]

    def recomputed(o: tuple[int, int]) -> list[torch.Tensor]:
        """:func:`at_offset` whose graph, and the fit's inputs, are recomputed in the backward pass."""
        def run(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
            return at_offset(a, *prepare(a, b), o)

        out: list[torch.Tensor] = checkpoint(run, xs, ys, use_reentrant=False)
        return out

    yp, fit = prepare(xs, ys)
    candidates = offsets(radius)

    def winners_values(winners: list[torch.Tensor],
                       values_at: Callable[[tuple[int, int]], list[torch.Tensor]]) -> list[torch.Tensor | None]:
        """Per level, each window's value at its winning offset, from ``values_at(offset)`` (per level, with
        autograd) of only the offsets that win somewhere (every window has a winner, so no level stays ``None``)."""
        result: list[torch.Tensor | None] = [None] * len(grids)
        for j in _used_offsets(winners):
            for i, v in enumerate(values_at(candidates[j])):
                part = torch.where(winners[i] == j, v, torch.zeros_like(v))
                prev = result[i]
                result[i] = part if prev is None else prev + part
        return result
    s = gaussian_bandwidth(local_sigma, local_patch_size)
    # The compiled kernels' shared arguments after (x, yp, fit[, gmap], radius, offsets).
    fixed = (lk_box, LK_RIDGE, MAX_SUBPIXEL_SHIFT, list(factors), local_patch_size, weight_l2, weight_local,
             1.0 / (2.0 * s * s))

    def scan() -> list[torch.Tensor]:
        """Per level, the window values of every offset, without autograd: ``(N, len(candidates), rows, cols)``."""
        with torch.no_grad():
            if _native_scan(xs):
                maps = torch.ops.patchmmd.aligned_scan(
                    xs.contiguous(), yp.contiguous(), [t.contiguous() for t in fit], radius,
                    [v for o in candidates for v in o], *fixed,
                )
                n, k, out, start = xs.shape[0], len(candidates), [], 0
                for f, grid in zip(factors, grids, strict=True):
                    hl, wl = h // f, w // f
                    level = maps[..., start : start + hl * wl].reshape(n * k, 1, hl, wl)
                    out.append(grid.pool_fast(level).view(n, k, grid.rows, grid.cols))
                    start += hl * wl
                return out
            per_offset = [at_offset(xs, yp, fit, o) for o in candidates]
            return [torch.cat([p[i] for p in per_offset], dim=1) for i in range(len(grids))]

    needs_grad = torch.is_grad_enabled() and (xs.requires_grad or ys.requires_grad)
    if plain_path() or (needs_grad and len(candidates) == 1):
        per_offset = [at_offset(xs, yp, fit, o) for o in candidates]
        return [(_first_smallest(torch.stack([p[i] for p in per_offset])), g) for i, g in enumerate(grids)]
    if not needs_grad:
        return [(v.amin(dim=1, keepdim=True), g) for v, g in zip(scan(), grids, strict=True)]
    if _native_scan(xs) and not ys.requires_grad:
        # The compiled gradient of the winning offsets' maps (torch.ops.patchmmd.aligned_grad): nothing is
        # recomputed with autograd, and the values are the scan's own.
        def grad_x(gmap: torch.Tensor, used: list[tuple[int, int]]) -> torch.Tensor:
            a, b = prepare(xs.detach(), ys) if checkpointed else (yp, fit)
            return torch.ops.patchmmd.aligned_grad(
                xs.detach().contiguous(), a.contiguous(), [t.contiguous() for t in b], gmap, radius,
                [v for o in used for v in o], *fixed,
            )

        def plain(x: torch.Tensor, winners: list[torch.Tensor]) -> list[torch.Tensor | None]:
            """The winners' values with autograd, for the graph of the gradient (double backward)."""
            a, b = prepare(x.detach(), ys)
            return winners_values(winners, lambda o: at_offset(x, a, b, o))

        values = _WinningOffsets.apply(xs, scan, grad_x, plain, grids, candidates)
        if checkpointed:
            del yp, fit  # not kept for the backward pass, which recomputes them (as the PyTorch path's checkpoints)
        return list(zip(values, grids, strict=True))
    # With gradients: find each window's best offset without building a graph, then recompute with autograd
    # only the offsets that win somewhere (usually one or two): same values, a fraction of the backward.
    winners = [v.argmin(dim=1, keepdim=True) for v in scan()]
    # Large inputs: each winning offset's graph is recomputed in the backward pass instead of stored, and so
    # are the fit's inputs (otherwise that graph would hold them, for every chunk, until the backward pass).
    if checkpointed:
        del yp, fit
        result = winners_values(winners, recomputed)
    else:
        result = winners_values(winners, lambda o: at_offset(xs, yp, fit, o))
    return [(r, g) for r, g in zip(result, grids, strict=True) if r is not None]


class _WinningOffsets(torch.autograd.Function):
    """Per level, each window's smallest value over the offsets (from ``scan()``: ``(N, K, rows, cols)`` per
    level), differentiable in ``xs`` through the compiled gradient ``grad_x(gmap, offsets)`` of the winning
    offsets' per-pixel maps (:func:`patchmmd._native.ops.aligned_grad`). Backward: each window's gradient goes to
    its winning offset, is spread over the window's pixels (the adjoint of the window pooling), and the kernel
    turns the per-offset, per-level pixel gradients into the gradient of ``xs``. When the gradient's own graph is
    asked for (``create_graph=True``), backward differentiates ``plain(xs, winners)`` (the winners' values
    recomputed in PyTorch) with autograd instead (:func:`patchmmd._autograd.graph_vjp`)."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, scan: Callable[[], list[torch.Tensor]],
                grad_x: Callable[[torch.Tensor, list[tuple[int, int]]], torch.Tensor],
                plain: Callable[[torch.Tensor, list[torch.Tensor]], list[torch.Tensor | None]],
                grids: list[WindowGrid], candidates: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
        per_level = scan()
        ctx.winners = [v.argmin(dim=1, keepdim=True) for v in per_level]
        ctx.grad_x, ctx.plain, ctx.grids, ctx.candidates, ctx.shape = grad_x, plain, grids, candidates, xs.shape
        ctx.save_for_backward(xs)
        return tuple(v.amin(dim=1, keepdim=True) for v in per_level)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # the graph of the gradient is asked for: autograd of the plain values
            (xs,) = ctx.saved_tensors
            (g,) = graph_vjp(lambda t: ctx.plain(t, ctx.winners), (xs,), grads, (True,))
            return g, None, None, None, None, None
        n = ctx.shape[0]
        used = _used_offsets(ctx.winners)
        idx = torch.tensor(used, device=ctx.winners[0].device).view(1, -1, 1, 1)
        maps = []
        for g, winners, grid in zip(grads, ctx.winners, ctx.grids, strict=True):
            hl, wl = grid.height, grid.width
            if g is None:  # this level's values were not used
                maps.append(torch.zeros(n, len(used), hl * wl))
                continue
            masked = torch.where(winners == idx, g, torch.zeros((), dtype=g.dtype))  # (N, len(used), rows, cols)
            # The adjoint of the window pooling (pool_fast's: 5-10x faster here than a transposed convolution; for a
            # plain grid WindowGrid.spread is the same up to a constant factor, for a covering one it is not).
            spread = grid.pool_fast_adjoint(masked.reshape(n * len(used), 1, *g.shape[-2:]))
            maps.append(spread.reshape(n, len(used), hl * wl))
        gmap = torch.cat(maps, dim=2).contiguous()
        return ctx.grad_x(gmap, [ctx.candidates[j] for j in used]), None, None, None, None, None


def _first_smallest(values: torch.Tensor) -> torch.Tensor:
    """The smallest of ``values`` ``(K, N, 1, rows, cols)`` over the offsets (dimension 0), its gradient all to the
    first offset that attains it (``amin`` would share it among ties: a flat region's offsets tie exactly), as the
    scan's ``argmin`` winner gets it on the eager path."""
    return values.gather(0, values.detach().argmin(dim=0, keepdim=True)).squeeze(0)


def _used_offsets(winners: Sequence[torch.Tensor]) -> list[int]:
    """The indices of the offsets that win some window at some level, in increasing order."""
    return sorted(set().union(*(set(w.unique().tolist()) for w in winners)))


def _native_scan(xs: torch.Tensor) -> bool:
    """Whether the offset scan runs on the compiled CPU kernel (:mod:`patchmmd._native`): float32 on the CPU,
    kernels available, not while ``torch.compile`` traces or a ``torch.func`` transform runs (the plain path
    compares all offsets in PyTorch)."""
    if xs.device.type != "cpu" or xs.dtype != torch.float32 or plain_path():
        return False
    from .. import _native

    return _native.kernels() is not None
