"""Patches and windows: the sets of vectors that the MMD compares (docs/method.md §1-2).

* ``P_u(x)``: the ``k x k x C`` patch centred on pixel ``u``, with reflect padding at the borders, so an
  ``H x W`` image has ``H * W`` patches, flattened channel-major to vectors of dimension ``d = C k^2``.
* ``Π``: per-channel centring, the removal of each colour channel's mean inside the patch.
* Windows: ``w x w`` blocks of patch centres with stride ``t``, placed as ``avg_pool2d(kernel=w, stride=t)``
  places them (fully inside the image). A window larger than the image is clipped to the image in that
  dimension, which leaves one window spanning it; ``window=None`` is one window over the whole image
  (the "global" MMD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .._autograd import functorch_active, plain_path


def reflect_pad(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` by ``patch_size // 2`` on each side with reflection (no edge repeat)."""
    p = patch_size // 2
    if p == 0:
        return x
    if x.requires_grad and torch.is_grad_enabled() and not plain_path() and x.dim() == 4 and p < min(x.shape[-2:]):
        return _ReflectPad.apply(x, p)
    return F.pad(x, (p, p, p, p), mode="reflect")


class _ReflectPad(torch.autograd.Function):
    """``F.pad(x, (p,) * 4, mode="reflect")`` whose backward pass folds the border back with slices: the
    interior copied once, then each reflected row and column added onto the one it mirrors. PyTorch's own
    backward zero-fills the input's gradient and scatters every element into it, 2-3x slower at 4 x 3 x 256²
    (0.63 against 0.25 ms on 2 threads, a side check); the result is the same sums. Written in differentiable
    operations, so double backward works."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: int) -> torch.Tensor:
        ctx.p = p
        return F.pad(x, (p, p, p, p), mode="reflect")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        p = ctx.p
        # The interior once; the border columns of the interior rows onto the columns they mirror; each border
        # row, its own corners folded into it first (thin strips), onto the row it mirrors.
        g = grad[..., p:-p, p:-p].clone()
        for j in range(1, p + 1):
            g[..., :, j] += grad[..., p:-p, p - j]
            g[..., :, -1 - j] += grad[..., p:-p, -1 - p + j]
        for j in range(1, p + 1):
            for src, dst in ((p - j, j), (-1 - p + j, -1 - j)):
                strip = grad[..., src, p:-p].clone()
                for i in range(1, p + 1):
                    strip[..., i] += grad[..., src, p - i]
                    strip[..., -1 - i] += grad[..., src, -1 - p + i]
                g[..., dst, :] += strip
        return g, None


def center_patches(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """Apply Π: subtract each channel's mean inside each patch.

    ``patches`` has the patch vector in dimension 1, channel-major (as :func:`torch.nn.functional.unfold`
    lays it out): shape ``(N, C * k * k, ...)``.
    """
    n, d = patches.shape[:2]
    rest = patches.shape[2:]
    v = patches.reshape(n, channels, d // channels, *rest)
    return (v - v.mean(dim=2, keepdim=True)).reshape(n, d, *rest)


def extract_patches(x: torch.Tensor, patch_size: int, *, center: bool = True) -> torch.Tensor:
    """All patches of ``x`` as a map of vectors, shape ``(N, C * k * k, H, W)``.

    Example:
        >>> x = torch.arange(2 * 4 * 5, dtype=torch.float64).reshape(1, 2, 4, 5)
        >>> p = extract_patches(x, 3, center=False)
        >>> p.shape
        torch.Size([1, 18, 4, 5])
        >>> p[0, :, 1, 1].reshape(2, 3, 3)[0].tolist()  # the 3x3 block of channel 0 around (1, 1)
        [[0.0, 1.0, 2.0], [5.0, 6.0, 7.0], [10.0, 11.0, 12.0]]
    """
    return patch_rows(reflect_pad(x, patch_size), patch_size, 0, x.shape[-2], center=center)


def contrast_normalized_patches(x: torch.Tensor, patch_size: int, floor: float) -> torch.Tensor:
    """Centred patches divided by their contrast: ``Π p / sqrt(‖Π p‖² + d floor²)``, ``(N, C * k * k, H, W)``.

    ``d = C k²``; ``floor`` is a contrast per pixel below which a patch counts as flat (its norm is shrunk, not
    blown up to 1), so the map is smooth everywhere and ``x == y`` still gives 0. Every vector lies in the
    unit ball: a patch's *structure* at any contrast above the floor (docs/method.md §3.3).

    Example:
        >>> x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> p = contrast_normalized_patches(x, 3, 0.01)
        >>> p.shape, bool(p.norm(dim=1).max() < 1)
        (torch.Size([1, 27, 8, 8]), True)
        >>> bool(torch.allclose(contrast_normalized_patches(0.5 * x, 3, 0.005), p, atol=1e-6))  # contrast-free
        True
    """
    p = extract_patches(x, patch_size, center=True)
    return p * torch.rsqrt(p.pow(2).sum(dim=1, keepdim=True) + p.shape[1] * floor * floor)


def patch_rows(padded: torch.Tensor, patch_size: int, start: int, stop: int, *, center: bool = True) -> torch.Tensor:
    """Patches centred on pixel rows ``[start, stop)`` of an image already padded by :func:`reflect_pad`.

    Returns ``(N, C * k * k, stop - start, W)``; extracting a band of rows at a time keeps memory bounded
    on large images.
    """
    n, c = padded.shape[:2]
    w = padded.shape[-1] - 2 * (patch_size // 2)
    rows = padded[:, :, start : stop + 2 * (patch_size // 2)]
    cols = F.unfold(rows, patch_size)  # (N, C*k*k, (stop-start)*W)
    if center:
        cols = center_patches(cols, c)
    return cols.reshape(n, c * patch_size * patch_size, stop - start, w)


@dataclass(frozen=True)
class WindowGrid:
    """Placement of the MMD windows on an ``height x width`` grid of patch centres."""

    height: int
    width: int
    window_h: int
    window_w: int
    stride_h: int
    stride_w: int

    @property
    def rows(self) -> int:
        return (self.height - self.window_h) // self.stride_h + 1

    @property
    def cols(self) -> int:
        return (self.width - self.window_w) // self.stride_w + 1

    @property
    def num_windows(self) -> int:
        return self.rows * self.cols

    @property
    def patches_per_window(self) -> int:
        return self.window_h * self.window_w

    def pool(self, t: torch.Tensor) -> torch.Tensor:
        """Average ``t`` of shape ``(..., height, width)`` over every window: ``(..., rows, cols)``."""
        return F.avg_pool2d(t, (self.window_h, self.window_w), (self.stride_h, self.stride_w))

    @property
    def covered(self) -> tuple[int, int]:
        """Rows and columns of patch centres that some window covers (the rest of the grid is ignored)."""
        return (self.rows - 1) * self.stride_h + self.window_h, (self.cols - 1) * self.stride_w + self.window_w

    @property
    def blocks(self) -> tuple[int, int]:
        """The block size whose means every window is an average of (one block per window where rows = 1)."""
        bh = self.window_h if self.rows == 1 else math.gcd(self.window_h, self.stride_h)
        bw = self.window_w if self.cols == 1 else math.gcd(self.window_w, self.stride_w)
        return bh, bw

    def pool_blocks(self, block_means: torch.Tensor) -> torch.Tensor:
        """Window means from the means of :attr:`blocks` over :attr:`covered`: ``(..., rows, cols)``.

        Equal to :meth:`pool` of the underlying values, and much cheaper than one large-kernel average pool.
        """
        kernel, stride = self._block_pooling()
        if kernel == (1, 1) and stride == (1, 1):
            return block_means
        return box_mean(block_means, kernel, stride)

    def _block_pooling(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The kernel and stride, in blocks, of :meth:`pool_blocks`."""
        bh, bw = self.blocks
        kernel = (self.window_h // bh, self.window_w // bw)
        stride = (max(1, self.stride_h // bh) if self.rows > 1 else 1,
                  max(1, self.stride_w // bw) if self.cols > 1 else 1)
        return kernel, stride

    def pool_fast(self, t: torch.Tensor) -> torch.Tensor:
        """:meth:`pool` computed as block means and then :meth:`pool_blocks` (same values, much faster)."""
        hc, wc = self.covered
        return self.pool_blocks(F.avg_pool2d(t[..., :hc, :wc], self.blocks))

    def pool_fast_adjoint(self, per_window: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`pool_fast`: ``(N, C, rows, cols) -> (N, C, height, width)``, the gradient of
        ``(pool_fast(t) * per_window).sum()`` with respect to ``t`` (pixels no window covers get 0). Two average
        pooling backward passes (windows of blocks, then blocks) instead of autograd through :meth:`pool_fast`.

        Example:
            >>> grid = window_grid(20, 24, 8, 4)
            >>> g = torch.rand(2, 1, grid.rows, grid.cols)
            >>> t = torch.zeros(2, 1, 20, 24, requires_grad=True)
            >>> (ref,) = torch.autograd.grad(grid.pool_fast(t), t, g)
            >>> bool(torch.allclose(grid.pool_fast_adjoint(g), ref))
            True
        """
        bh, bw = self.blocks
        hc, wc = self.covered
        n, c = per_window.shape[:2]
        kernel, stride = self._block_pooling()
        g = per_window
        if kernel != (1, 1) or stride != (1, 1):
            g = torch.ops.aten.avg_pool2d_backward(g, g.new_empty(n, c, hc // bh, wc // bw), list(kernel),
                                                   list(stride), [0, 0], False, True, None)
        full = torch.ops.aten.avg_pool2d_backward(g, g.new_empty(n, c, hc, wc), [bh, bw], [bh, bw], [0, 0], False,
                                                  True, None)
        return F.pad(full, (0, self.width - wc, 0, self.height - hc)) if (hc, wc) != (self.height, self.width) \
            else full

    def spread(self, per_window: torch.Tensor) -> torch.Tensor:
        """Spread per-window values ``(N, 1, rows, cols)`` back onto the ``height x width`` grid.

        Each pixel receives the sum of the values of the windows that contain it, scaled so that the mean
        over the grid equals the mean over windows. Pixels that no window covers receive 0.
        """
        return self._window_sums(per_window) * (self.height * self.width / (self.patches_per_window * self.num_windows))

    def _window_sums(self, per_window: torch.Tensor) -> torch.Tensor:
        """Each pixel of the ``height x width`` grid: the sum of the values of the windows that contain it."""
        ones = per_window.new_ones(1, 1, self.window_h, self.window_w)
        full = F.conv_transpose2d(per_window, ones, stride=(self.stride_h, self.stride_w))
        return F.pad(full, (0, self.width - full.shape[-1], 0, self.height - full.shape[-2]))

    def average(self, per_window: torch.Tensor) -> torch.Tensor:
        """The mean of per-window values ``(..., rows, cols)`` over the windows (the last two dimensions)."""
        return per_window.mean(dim=(-2, -1))


def box_mean(
    t: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """``F.avg_pool2d(t, kernel, stride, padding, count_include_pad=True)`` (zero padding), computed as
    shifted slices added row-wise then column-wise when the box is up to 16x16 (several times faster on the CPU
    than ``avg_pool2d``, forward and backward), else by two one-dimensional ``avg_pool2d`` passes (the
    box is separable, and with ``count_include_pad`` both divide by the full box).

    Example:
        >>> t = torch.rand(2, 5, 9, 7, generator=torch.Generator().manual_seed(0))
        >>> ref = F.avg_pool2d(t, 3, 1, 1, count_include_pad=True)
        >>> bool(torch.allclose(box_mean(t, (3, 3), padding=(1, 1)), ref, atol=1e-6))
        True
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if kh + kw > 32:
        rows_pooled = F.avg_pool2d(t, (kh, 1), (sh, 1), (ph, 0), count_include_pad=True)
        return F.avg_pool2d(rows_pooled, (1, kw), (1, sw), (0, pw), count_include_pad=True)
    if ph or pw:
        t = F.pad(t, (pw, pw, ph, ph))
    oh = (t.shape[-2] - kh) // sh + 1
    ow = (t.shape[-1] - kw) // sw + 1
    rows = t[..., : (oh - 1) * sh + 1 : sh, :]
    for i in range(1, kh):
        rows = rows + t[..., i : i + (oh - 1) * sh + 1 : sh, :]
    out = rows[..., : (ow - 1) * sw + 1 : sw]
    for j in range(1, kw):
        out = out + rows[..., j : j + (ow - 1) * sw + 1 : sw]
    return out * (1.0 / (kh * kw))


def _conv_format(t: torch.Tensor) -> torch.memory_format:
    """The layout :func:`separable_filter` convolves in: on the CPU, oneDNN's depthwise convolution is several
    times faster on channels-last input, with the same sums (float32 values and gradients bitwise equal); float64,
    which it does not take, is faster as it is; so is everything under a ``torch.func`` transform (vmap takes no
    other layout)."""
    if t.device.type == "cpu" and t.dtype != torch.float64 and not functorch_active():
        return torch.channels_last
    return torch.contiguous_format


def separable_filter(t: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter every channel of ``(N, C, H, W)`` with the 1-D ``taps`` along the rows, then the columns, at the
    valid positions only: ``(N, C, H - k + 1, W - k + 1)`` for ``k`` taps (pad first for a same-size result).

    Example:
        >>> t = torch.rand(1, 2, 6, 5, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(separable_filter(t, torch.full((3,), 1 / 3)), F.avg_pool2d(t, 3, 1)))
        True
    """
    c, k = t.shape[1], taps.numel()
    # The result is contiguous whatever the input's layout: the elementwise work that follows is faster so.
    t = F.conv2d(t.contiguous(memory_format=_conv_format(t)), taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(t, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c).contiguous()


def separable_filter_stack(parts: Sequence[torch.Tensor], taps: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """:func:`separable_filter` of the images ``parts`` (``(N, C_i, H, W)`` each) concatenated along the channels
    and zero-padded by ``pad`` on every side: the same as ``separable_filter(F.pad(torch.cat(parts, 1), (pad,) * 4),
    taps)``, but the stack is written once, straight into the layout the convolution takes (under a ``torch.func``
    transform, where vmap refuses such a copy into a new tensor, it is that expression).

    Example:
        >>> a, b = torch.rand(2, 1, 2, 9, 9, generator=torch.Generator().manual_seed(0))
        >>> taps = torch.full((3,), 1 / 3)
        >>> bool(torch.equal(separable_filter_stack([a, b], taps, 2),
        ...                  separable_filter(F.pad(torch.cat([a, b], 1), (2, 2, 2, 2)), taps)))
        True
    """
    if functorch_active():  # copying into a new tensor is refused under vmap: the same stack, out of place
        return separable_filter(F.pad(torch.cat(list(parts), 1), (pad,) * 4), taps)
    n, _, h, w = parts[0].shape
    c = sum(t.shape[1] for t in parts)
    stack = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=parts[0].dtype, device=parts[0].device,
                        memory_format=_conv_format(parts[0]))
    if pad:
        stack.zero_()
    i = 0
    for t in parts:
        stack[:, i : i + t.shape[1], pad : pad + h, pad : pad + w] = t
        i += t.shape[1]
    return separable_filter(stack, taps)


@dataclass(frozen=True)
class CoveringWindowGrid(WindowGrid):
    """A :class:`WindowGrid` whose windows reach the bottom and right edges: where the windows placed every
    ``stride`` leave the last rows or columns uncovered, one more row (column) of windows starts there, clipped to
    the image (``avg_pool2d(..., ceil_mode=True)``'s placement). A clipped window's value is the mean over its
    pixels inside the image, so every pixel is in some window, and in :meth:`average` its weight is its area inside
    the image over a full window's (a clipped window of 3 rows out of 16 counts 3/16: the edge strip weighs what
    the pixels in it do, not what a full window does). :func:`window_grid` with ``cover=True`` makes one only
    where the plain grid leaves pixels out. The aligned terms' windows (docs/method.md §3.2); the MMD's stay
    fully inside the image (§2), and the random-feature estimator's block pooling (:attr:`blocks`,
    :meth:`pool_blocks`) takes only those.

    Example:
        >>> g = window_grid(22, 18, 8, 4, cover=True)
        >>> (g.rows, g.cols), window_grid(22, 18, 8, 4).covered
        ((5, 4), (20, 16))
        >>> t = torch.rand(1, 1, 22, 18, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(g.pool(t), F.avg_pool2d(t, 8, 4, ceil_mode=True)))
        True
    """

    @property
    def rows(self) -> int:
        return _ceil_windows(self.height, self.window_h, self.stride_h)

    @property
    def cols(self) -> int:
        return _ceil_windows(self.width, self.window_w, self.stride_w)

    @property
    def covered(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def _padded(self) -> WindowGrid:
        """The plain grid of the image zero-padded at the bottom and right to the clipped windows' full extent."""
        hp = (self.rows - 1) * self.stride_h + self.window_h
        wp = (self.cols - 1) * self.stride_w + self.window_w
        return WindowGrid(hp, wp, self.window_h, self.window_w, self.stride_h, self.stride_w)

    def _pad(self, t: torch.Tensor) -> torch.Tensor:
        padded = self._padded
        return F.pad(t, (0, padded.width - self.width, 0, padded.height - self.height))

    def _area_ratio(self, like: torch.Tensor) -> torch.Tensor:
        """Per window, its full area over its area inside the image: ``(rows, cols)``, >= 1, in ``like``'s dtype
        (pixels counted in int64: bfloat16 holds integers exactly only up to 256)."""
        def inside(size: int, window: int, stride: int, count: int) -> torch.Tensor:
            start = torch.arange(count, dtype=torch.int64, device=like.device) * stride
            return (start + window).clamp(max=size) - start

        h = inside(self.height, self.window_h, self.stride_h, self.rows)
        w = inside(self.width, self.window_w, self.stride_w, self.cols)
        return ((self.window_h * self.window_w) / (h[:, None] * w[None, :]).double()).to(like.dtype)

    def pool(self, t: torch.Tensor) -> torch.Tensor:
        return self._padded.pool(self._pad(t)) * self._area_ratio(t)

    def pool_fast(self, t: torch.Tensor) -> torch.Tensor:
        return self._padded.pool_fast(self._pad(t)) * self._area_ratio(t)

    def pool_fast_adjoint(self, per_window: torch.Tensor) -> torch.Tensor:
        full = self._padded.pool_fast_adjoint(per_window * self._area_ratio(per_window))
        return full[..., : self.height, : self.width]

    def average(self, per_window: torch.Tensor) -> torch.Tensor:
        """The mean over windows weighted by each window's area inside the image (:class:`CoveringWindowGrid`)."""
        inside = 1.0 / self._area_ratio(per_window)
        return (per_window * inside).sum(dim=(-2, -1)) / inside.sum()

    def spread(self, per_window: torch.Tensor) -> torch.Tensor:
        """As :meth:`WindowGrid.spread`: each pixel receives the sum of the values of the windows that contain it,
        scaled so that the mean over the grid is :meth:`average` (a window's value reaches its pixels inside the
        image, in proportion to their number)."""
        full = self._padded._window_sums(per_window)[..., : self.height, : self.width]
        inside = float((1.0 / self._area_ratio(per_window)).sum())
        return full * (self.height * self.width / (self.patches_per_window * inside))


def _ceil_windows(size: int, window: int, stride: int) -> int:
    """How many windows ``avg_pool2d(..., ceil_mode=True)`` places along ``size`` (the last one starting inside)."""
    count = -(-(size - window) // stride) + 1
    return count - 1 if (count - 1) * stride >= size else count


def window_grid(height: int, width: int, window: int | None, stride: int, *, cover: bool = False) -> WindowGrid:
    """The window placement for an image of ``height x width`` patch centres.

    A window larger than the image (or ``window=None``) is clipped to the image, leaving one window in
    that dimension. Windows lie fully inside the image, so the last rows and columns may be in none of them;
    ``cover=True`` adds a row (column) of windows clipped to the image there (:class:`CoveringWindowGrid`).

    Example:
        >>> g = window_grid(64, 64, 32, 16)
        >>> (g.rows, g.cols, g.num_windows)
        (3, 3, 9)
        >>> window_grid(20, 100, 32, 16).window_h, window_grid(20, 100, 32, 16).cols
        (20, 5)
    """
    wh = height if window is None else min(window, height)
    ww = width if window is None else min(window, width)
    grid = WindowGrid(height, width, wh, ww, stride, stride)
    if cover and grid.covered != (height, width):
        return CoveringWindowGrid(height, width, wh, ww, stride, stride)
    return grid


def window_patch_sets(patch_map: torch.Tensor, grid: WindowGrid, row_start: int, row_stop: int) -> torch.Tensor:
    """Patch sets of the windows in window-rows ``[row_start, row_stop)``.

    ``patch_map`` is ``(N, d, h, W)`` and holds the patch rows from ``row_start * stride_h`` on (a band
    of the full map). Returns ``(N * windows, patches_per_window, d)``, windows in row-major order.
    """
    n, d = patch_map.shape[:2]
    nrows = row_stop - row_start
    band_h = (nrows - 1) * grid.stride_h + grid.window_h
    band = patch_map[:, :, :band_h]
    cols = F.unfold(band, (grid.window_h, grid.window_w), stride=(grid.stride_h, grid.stride_w))
    # (N, d * wh * ww, nrows * cols) -> (N, d, n_patches, n_windows) -> (N * n_windows, n_patches, d)
    cols = cols.reshape(n, d, grid.patches_per_window, nrows * grid.cols)
    return cols.permute(0, 3, 2, 1).reshape(n * nrows * grid.cols, grid.patches_per_window, d)
