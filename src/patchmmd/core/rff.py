"""The random-feature (RFF) estimator of the windowed squared MMD and its fast path (docs/method.md §2).

With ``r`` seeded random features ``cos(w_j . P + b_j)`` of the Gaussian kernel (:mod:`.features`), a
window's squared MMD is estimated by::

    (2 / r) Σ_j (mean_ω cos(w_j.P(x) + b_j) - mean_ω cos(w_j.P(y) + b_j))²

one convolution, a cosine and an average pool: the fast estimator and training loss. Deterministic for a
seed; relative error ``O(r^-1/2)``. The window means are computed by a fused path
(:func:`rff_window_means`): the compiled CPU kernels of :mod:`patchmmd._native` for float32 on the CPU, a
tiled PyTorch autograd function elsewhere, and plain differentiable operations under ``torch.compile`` and the
``torch.func`` transforms.
:mod:`.mmd` dispatches to :func:`windowed_mmd2_rff`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .. import _native
from .._autograd import functorch_active, graph_vjp, outside_transforms, plain_path
from .features import FeatureKind, random_features
from .kernels import _checkpointed, gaussian_bandwidths
from .patches import WindowGrid, contrast_normalized_patches, reflect_pad, window_grid
from .validation import full_precision, static_shapes

#: Default number of random features of the ``"rff"`` estimator.
DEFAULT_NUM_FEATURES = 512

#: Largest full-resolution feature tensor (elements) the RFF estimator keeps for the backward pass; beyond
#: it the features are recomputed tile by tile in the backward pass, so memory stays bounded.
MAX_FEATURE_ELEMENTS = 1 << 26


def pooled_cos_features(x: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """Window means of ``cos(w_j . P_u(x) + b_j)``: ``(N, C, H, W) -> (N, r, rows, cols)``.

    ``x`` is on the internal scale, unpadded. Chunks over features keep the full-resolution temporaries
    under :data:`MAX_FEATURE_ELEMENTS` elements.
    """
    xp = reflect_pad(x, weight.shape[-1])
    per_feature = x.shape[0] * x.shape[-2] * x.shape[-1]
    r = weight.shape[0]
    chunk = max(1, MAX_FEATURE_ELEMENTS // per_feature)
    if chunk >= r:
        return _pooled_chunk(xp, weight, phase, grid)
    parts = [_checkpointed(_pooled_chunk, xp, weight[i : i + chunk], phase[i : i + chunk], grid)
             for i in range(0, r, chunk)]
    return torch.cat(parts, dim=1)


def _pooled_chunk(xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    return grid.pool(torch.cos(F.conv2d(xp, weight, phase)))


# ------------------------------------------------------------------------------- fast RFF window means
#: Work size (elements of one ``features x pixels`` tile) of the fused RFF kernel on the CPU: temporaries of
#: this size are reused across tiles, so they stay in cache and are never re-allocated.
TILE_ELEMENTS = 1 << 18

#: The same on other devices (GPUs). There each tile costs a handful of kernel launches whatever its size, and
#: launches, not caches, bound the time (docs/performance.md, "GPU"): tiles 64 times larger (64 MB of float32 per
#: temporary) cut the launches of ``mmdpp`` at 256² by about half; memory stays bounded by the tile.
DEVICE_TILE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class PairedFeatures:
    """Random features in paired form: ``m`` distinct frequencies ``(weight, phase)`` of which the first
    ``n_sin`` are also used with phase ``+π/2``.

    Feature ``j < m`` is ``cos(z_j)``, feature ``m + j`` (``j < n_sin``) is ``cos(z_j + π/2) = -sin(z_j)``,
    ``z_j = w_j . P + b_j``: the stratified law's cos/sin pairs cost one convolution and one angle each.
    ``matrix`` is ``(m, C k² + 1)``: the flattened filters with the phase as last column.
    """

    matrix: torch.Tensor
    m: int
    n_sin: int
    patch_size: int

    @property
    def num_features(self) -> int:
        return self.m + self.n_sin


def paired_features(weight: torch.Tensor, phase: torch.Tensor) -> PairedFeatures:
    """Detect the cos/sin pairs of a feature set (any law; pairs only where the data has them)."""
    r = weight.shape[0]
    flat = weight.reshape(r, -1)
    m, n_sin = r, 0
    half = (r + 1) // 2
    if r >= 2 and torch.equal(flat[: r - half], flat[half:]):
        shift = (phase[half:] - phase[: r - half]) - math.pi / 2
        if bool((shift.abs() <= 1e-6 * max(1.0, float(phase.abs().max()))).all()):
            m, n_sin = half, r - half
    matrix = torch.cat([flat[:m], phase[:m].unsqueeze(1)], dim=1).contiguous()
    return PairedFeatures(matrix, m, n_sin, weight.shape[-1])


def _tiles(n: int, m: int, pixels: int, device: torch.device
           ) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Blocks of images ``(i0, i1)``, each with its chunks of features ``(j0, j1)``: tiles of about
    :data:`TILE_ELEMENTS` features x pixels on the CPU, :data:`DEVICE_TILE_ELEMENTS` elsewhere. The unfolded
    patches are formed one image block at a time."""
    size = TILE_ELEMENTS if device.type == "cpu" else DEVICE_TILE_ELEMENTS
    fc = max(1, min(m, size // max(1, pixels)))
    nb = max(1, min(n, size // max(1, fc * pixels)))
    chunks = [(j, min(m, j + fc)) for j in range(0, m, fc)]
    return [((i, min(n, i + nb)), chunks) for i in range(0, n, nb)]


class _RFFBlockMeans(torch.autograd.Function):
    """Block means of the random features: ``(N, C, Hc + k - 1, Wc + k - 1) -> (N, m + n_sin, Hb, Wb)``.

    Fuses the convolution (one GEMM on the unfolded patches), ``cos``/``sin`` and the block sums tile by
    tile, so no full-resolution ``r x H x W`` tensor is built. Backward reuses the saved ``cos``/``sin``
    values when they fit :data:`MAX_FEATURE_ELEMENTS` (no transcendental in the backward pass, and
    ``d cos = -sin``), and otherwise recomputes them tile by tile (memory bounded by the tile size). When the
    gradient's own graph is asked for (``create_graph=True``), backward differentiates
    :func:`_traced_block_means` with autograd instead (:func:`patchmmd._autograd.graph_vjp`).
    The eager PyTorch path: the compiled CPU kernels are an operator of their own
    (:func:`_native_block_means`), and ``torch.compile`` traces :func:`_traced_block_means` instead.
    """

    @staticmethod
    def forward(ctx: Any, xp: torch.Tensor, feats: PairedFeatures, block: tuple[int, int], hc: int, wc: int,
                need_grad: bool) -> torch.Tensor:
        n = xp.shape[0]
        k, m, n_sin = feats.patch_size, feats.m, feats.n_sin
        bh, bw = block
        hb, wb = hc // bh, wc // bw
        pixels = hc * wc
        sin_rows = m if need_grad else n_sin
        out = xp.new_empty(n, m + n_sin, hb, wb)
        save = need_grad and n * (m + sin_rows) * pixels <= MAX_FEATURE_ELEMENTS
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        tiles = _tiles(n, m, pixels, xp.device)
        for (i0, i1), chunks in tiles:
            cols = _unfold_ones(xp[i0:i1], k)  # C k² + 1 values a pixel, for this block of images only
            for j0, j1 in chunks:
                c, s = _cos_sin(feats.matrix[j0:j1], cols, min(j1, sin_rows) - j0)
                out[i0:i1, j0:j1] = _block_means(c, hc, wc, bh, bw)
                if j0 < n_sin:
                    out[i0:i1, m + j0 : m + min(j1, n_sin)] = _block_means(s[:, : min(j1, n_sin) - j0], hc, wc,
                                                                         bh, bw)
                if save:
                    saved.append((c, s))
        out[:, m:].neg_()
        ctx.feats, ctx.block, ctx.hc, ctx.wc, ctx.tiles = feats, block, hc, wc, tiles
        ctx.saved = saved
        ctx.save_for_backward(xp if need_grad else None)
        return out

    @staticmethod
    @full_precision  # as the forward pass: a backward pass called inside an autocast region runs in full precision
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        feats, (bh, bw), hc, wc = ctx.feats, ctx.block, ctx.hc, ctx.wc
        (xp,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # the graph of the gradient is asked for: autograd of the plain formulation
            (g,) = graph_vjp(lambda t: (_traced_block_means(t, feats, ctx.block, hc, wc),), (xp,), (grad,), (True,))
            return g, None, None, None, None, None
        k, m, n_sin = feats.patch_size, feats.m, feats.n_sin
        hb, wb = hc // bh, wc // bw
        scale = -1.0 / (bh * bw)
        g_cos = (grad[:, :m] * scale).unsqueeze(3).unsqueeze(5)  # d/dz cos = -sin
        g_sin = (grad[:, m:] * scale).unsqueeze(3).unsqueeze(5)  # d/dz (-sin) = -cos
        n = grad.shape[0]
        g = grad.new_empty(n, (feats.matrix.shape[1] - 1) // (k * k), hc + k - 1, wc + k - 1)
        saved = iter(ctx.saved)
        dz = None
        for (i0, i1), chunks in ctx.tiles:
            # The unfolded patches and their gradient for one block of images (C k² values a pixel each).
            cols = _unfold_ones(xp[i0:i1], k) if not ctx.saved else None
            grad_cols = grad.new_zeros(i1 - i0, feats.matrix.shape[1] - 1, hc * wc)
            for j0, j1 in chunks:
                if ctx.saved:
                    c, s = next(saved)
                else:
                    assert cols is not None
                    c, s = _cos_sin(feats.matrix[j0:j1], cols, j1 - j0)
                shape = (i1 - i0, j1 - j0, hb, bh, wb, bw)
                if dz is None or dz.shape != shape:
                    dz = grad.new_empty(shape)
                torch.mul(s.view(shape), g_cos[i0:i1, j0:j1], out=dz)
                ns = min(j1, n_sin) - j0
                if ns > 0:
                    dz[:, :ns].addcmul_(c[:, :ns].view(i1 - i0, ns, hb, bh, wb, bw), g_sin[i0:i1, j0:j0 + ns])
                w_t = feats.matrix[j0:j1, :-1].t()
                grad_cols.baddbmm_(w_t.expand(i1 - i0, *w_t.shape), dz.view(i1 - i0, j1 - j0, hc * wc))
            g[i0:i1] = F.fold(grad_cols, (hc + k - 1, wc + k - 1), k)
        return g, None, None, None, None, None  # xp is (N, C, hc + k - 1, wc + k - 1): fold's shape


def _use_native(xp: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels compute the block means of ``xp``: float32 on the CPU, where they are
    available and not turned off, and no ``torch.func`` transform is running (:func:`functorch_active`: the
    kernels read raw data pointers). Decided from the device and dtype (static under ``torch.compile``): while
    a graph is traced, :func:`patchmmd._native.disabled` is a guard of the graph and the availability of the
    kernels (and ``PATCHMMD_NATIVE``) a constant of it."""
    if xp.device.type != "cpu" or xp.dtype != torch.float32 or functorch_active():
        return False
    if torch.compiler.is_compiling():
        return _native._ENABLED[-1] and _native_available()
    return _native.kernels() is not None


@torch.compiler.assume_constant_result
def _native_available() -> bool:
    return _native.kernels() is not None


def _native_block_means(xp: torch.Tensor, feats: PairedFeatures, block: tuple[int, int], hc: int,
                        wc: int, floor: float | None = None) -> torch.Tensor:
    """:class:`_RFFBlockMeans` on the compiled kernels (operator ``patchmmd::rff_sums``, which differentiates
    itself); ``xp`` float32 on the CPU. With ``floor`` the angles are ``s · w_j . P + b_j``, ``s`` each patch's
    contrast factor (:func:`normalized_window_means`)."""
    k, m, n_sin = feats.patch_size, feats.m, feats.n_sin
    bh, bw = block
    wcp = -(-wc // _native.VECTOR) * _native.VECTOR
    xpad = xp.contiguous() if wcp == wc else F.pad(xp, (0, wcp - wc)).contiguous()  # rows to a multiple of VECTOR
    mp = -(-m // _native.BLOCK_FEATURES) * _native.BLOCK_FEATURES
    matrix = F.pad(feats.matrix, (0, 0, 0, mp - m))
    weight, phase = matrix[:, :-1].contiguous(), matrix[:, -1].contiguous()
    sums_c, sums_s = _native.rff_sums(xpad, weight, phase, 0.0 if floor is None else floor, hc, wc, bh, bw, k)
    return torch.cat([sums_c[:, :m], sums_s[:, :n_sin].neg()], dim=1).mul_(1.0 / (bh * bw))


def _traced_block_means(xp: torch.Tensor, feats: PairedFeatures, block: tuple[int, int], hc: int,
                        wc: int) -> torch.Tensor:
    """:class:`_RFFBlockMeans` as plain differentiable operations, for ``torch.compile`` (the tiled loop of
    the eager path would only be unrolled) and the ``torch.func`` transforms: ``cos``/``sin`` of one GEMM per
    chunk of features, block means; chunks of at most :data:`MAX_FEATURE_ELEMENTS` values, recomputed in the
    backward pass when there are several (not under a transform: ``torch.func.grad`` refuses the checkpoint)."""
    k, m, n_sin = feats.patch_size, feats.m, feats.n_sin
    bh, bw = block
    n, pixels = xp.shape[0], hc * wc
    cols = _unfold_ones(xp, k)
    chunk = max(1, MAX_FEATURE_ELEMENTS // max(1, n * pixels))

    def part(matrix: torch.Tensor, cols: torch.Tensor, sin_rows: int) -> torch.Tensor:
        c, s = _cos_sin(matrix, cols, sin_rows)
        return torch.cat([_block_means(c, hc, wc, bh, bw), _block_means(s, hc, wc, bh, bw).neg()], dim=1)

    if chunk >= m:
        parts = [part(feats.matrix, cols, n_sin)]
    else:
        keep = functorch_active()  # the chunks' graphs are kept there
        args = [(feats.matrix[j : j + chunk], cols, max(0, min(chunk, n_sin - j))) for j in range(0, m, chunk)]
        parts = [part(*a) if keep else checkpoint(part, *a, use_reentrant=False) for a in args]
    cos_parts = [p[:, : min(chunk, m - j)] for p, j in zip(parts, range(0, m, chunk), strict=True)]
    sin_parts = [p[:, min(chunk, m - j) :] for p, j in zip(parts, range(0, m, chunk), strict=True)]
    return torch.cat(cos_parts + sin_parts, dim=1)


def _unfold_ones(xp: torch.Tensor, k: int) -> torch.Tensor:
    """Unfolded patches with a row of ones appended (the phase column): ``(N, C k² + 1, H W)``."""
    cols = F.unfold(xp, k)
    return torch.cat([cols, cols.new_ones(cols.shape[0], 1, cols.shape[2])], dim=1)


def _cos_sin(matrix: torch.Tensor, cols: torch.Tensor, sin_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(z)`` and ``sin(z[:sin_rows])`` for ``z = matrix @ cols``: ``(nb, fc, P)`` each."""
    z = torch.matmul(matrix, cols)
    c = torch.cos(z)
    s = torch.sin(z[:, :sin_rows]) if sin_rows > 0 else z[:, :0]
    return c, s


def _block_means(t: torch.Tensor, hc: int, wc: int, bh: int, bw: int) -> torch.Tensor:
    """``(nb, f, hc * wc) -> (nb, f, hc / bh, wc / bw)`` means over ``bh x bw`` blocks."""
    nb, f = t.shape[:2]
    # First over the rows of a block (whole contiguous image rows added: vectorised, memory-bound), then
    # over the columns of the ``bh`` times smaller result.
    rows = t.reshape(nb * f * (hc // bh), bh, wc).sum(1)
    return rows.reshape(nb, f, hc // bh, wc // bw, bw).sum(-1).mul_(1.0 / (bh * bw))


def rff_window_means(x: torch.Tensor, feats: PairedFeatures, grid: WindowGrid) -> torch.Tensor:
    """Window means of every random feature, ``(N, C, H, W) -> (N, r, rows, cols)`` (fused fast path).

    Equal (to rounding) to ``grid.pool(cos(conv2d(reflect_pad(x), weight, phase)))``; pixels no window
    covers are never computed. float32 tensors on the CPU run on the compiled kernels of
    :mod:`patchmmd._native` where they are available (as the operator ``patchmmd::rff_sums``, which
    ``torch.compile`` traces into its graph); everything else on the tiled PyTorch path in eager mode, and
    on the same computation in plain differentiable operations under ``torch.compile`` and under the
    ``torch.func`` transforms (which take no compiled kernel either).
    """
    k = feats.patch_size
    hc, wc = grid.covered
    block = grid.blocks
    xp = reflect_pad(x, k)[..., : hc + k - 1, : wc + k - 1]
    if _use_native(xp):
        means = _native_block_means(xp, feats, block, hc, wc)
    elif plain_path():
        means = _traced_block_means(xp, feats, block, hc, wc)
    else:
        means = _RFFBlockMeans.apply(xp, feats, block, hc, wc, torch.is_grad_enabled() and xp.requires_grad)
    return grid.pool_blocks(means)


def normalized_window_means(x: torch.Tensor, feats: PairedFeatures, grid: WindowGrid, patch_size: int,
                            floor: float) -> torch.Tensor:
    """:func:`rff_window_means` of the contrast-normalised patches of ``x``
    (:func:`~.patches.contrast_normalized_patches`), ``(N, C, H, W) -> (N, r, rows, cols)``; ``feats`` are drawn
    for them (``C k²`` channels, 1x1 patches).

    On the compiled kernels (float32 on the CPU) the ``C k²``-channel image is never formed: the angle of a
    feature ``w`` is ``s · (Π w) . p + b`` on the image's own ``k x k`` patches ``p`` (``w . Π p = (Π w) . p``),
    with each patch's factor ``s = 1 / sqrt(‖Π p‖² + C k² floor²)`` computed in the kernels, which also return
    the gradient through it. Elsewhere the image is formed and passed to :func:`rff_window_means`; the two agree
    to rounding.
    """
    k = patch_size
    hc, wc = grid.covered
    xp = reflect_pad(x, k)[..., : hc + k - 1, : wc + k - 1]
    if not _use_native(xp) or feats.patch_size != 1:
        return rff_window_means(contrast_normalized_patches(x, k, floor), feats, grid)
    c = x.shape[1]
    flat = feats.matrix[:, :-1].reshape(-1, c, k * k)
    projected = (flat - flat.mean(dim=2, keepdim=True)).reshape(flat.shape[0], -1)  # Π w
    image_feats = PairedFeatures(torch.cat([projected, feats.matrix[:, -1:]], dim=1), feats.m, feats.n_sin, k)
    return grid.pool_blocks(_native_block_means(xp, image_feats, grid.blocks, hc, wc, floor))


def rff_features(
    x: torch.Tensor, *, patch_size: int, bandwidth: float | tuple[float, ...], num_features: int, seed: int,
    features: FeatureKind, center: bool, channels: int | None = None,
) -> PairedFeatures:
    """The seeded random features for images like ``x`` (channels, device, dtype), in paired form.

    Drawn once per set of options, device and dtype and cached; under ``torch.compile`` they are constants
    of the graph (drawing them, and detecting the cos/sin pairs, is data-dependent host code). ``channels``:
    the input's channel count when it is not ``x``'s (the contrast-normalised patches: ``C k²``).
    """
    widths = tuple(float(b) for b in bandwidth) if isinstance(bandwidth, tuple) else float(bandwidth)
    key = (x.shape[1] if channels is None else channels, patch_size, widths, num_features, seed, features, center,
           x.device, x.dtype)
    m, n_sin = _feature_split(*key)
    matrix = _feature_matrix(*key)
    # a constant of the graph whose width follows the channels: static under torch.compile, or a second channel
    # count would trace it with a symbolic width (PyTorch then fails building its guards)
    static_shapes(matrix)
    return PairedFeatures(matrix, m, n_sin, patch_size)


@lru_cache(maxsize=32)
def _cached_features(channels: int, patch_size: int, bandwidth: float | tuple[float, ...], num_features: int, seed: int,
                     features: FeatureKind, center: bool, device: torch.device, dtype: torch.dtype) -> PairedFeatures:
    # Drawn outside torch.inference_mode() even when called there: the cache outlives the call, and an inference
    # tensor cached by one validation pass would fail every later call whose backward must save it (the double
    # backward of a gradient penalty); plain tensors even when first asked for under a torch.func transform.
    with torch.inference_mode(False), torch.no_grad(), outside_transforms():
        weight, phase = random_features(
            channels, patch_size, bandwidth, num_features, seed=seed, kind=features, center=center, device=device,
            dtype=dtype,
        )
        return paired_features(weight, phase)


@torch.compiler.assume_constant_result
def _feature_matrix(*key: Any) -> torch.Tensor:
    return _cached_features(*key).matrix


@torch.compiler.assume_constant_result
def _feature_split(*key: Any) -> tuple[int, int]:
    feats = _cached_features(*key)
    return feats.m, feats.n_sin


def windowed_mmd2_rff(
    x: torch.Tensor,
    y: torch.Tensor,
    grid: WindowGrid,
    *,
    patch_size: int,
    bandwidth: float | tuple[float, ...],
    num_features: int,
    seed: int,
    features: FeatureKind,
    center: bool,
    y_features: torch.Tensor | None = None,
    contrast_floor: float | None = None,
) -> torch.Tensor:
    """Random-feature estimate of every window's squared MMD, ``(N, rows, cols)`` (internal scale).

    ``y_features``: ``y``'s window means (from :func:`rff_features`) when they were computed before
    (a fixed target in a training loop); ``y`` is then not used. ``contrast_floor``: compare the
    contrast-normalised patches instead (:func:`normalized_window_means`; ``bandwidth`` is then in units of
    their unit ball, as :func:`.kernels.gaussian_bandwidths` gives it for 1x1 patches, and ``center`` is implied).
    """
    means = _window_means_of(x, grid, patch_size=patch_size, bandwidth=bandwidth, num_features=num_features,
                             seed=seed, features=features, center=center, contrast_floor=contrast_floor)
    fx = means(x)
    fy = means(y) if y_features is None else y_features
    return (fx - fy).pow(2).sum(dim=1) * (2.0 / num_features)


def _window_means_of(
    x: torch.Tensor, grid: WindowGrid, *, patch_size: int, bandwidth: float | tuple[float, ...], num_features: int,
    seed: int, features: FeatureKind, center: bool, contrast_floor: float | None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``image -> RFF window means`` for images like ``x``: of their patches, or of their
    contrast-normalised patches when ``contrast_floor`` is set."""
    if contrast_floor is None:
        feats = rff_features(x, patch_size=patch_size, bandwidth=bandwidth, num_features=num_features, seed=seed,
                             features=features, center=center)
        return lambda img: rff_window_means(img, feats, grid)
    floor = contrast_floor
    unit = rff_features(x, patch_size=1, bandwidth=bandwidth, num_features=num_features, seed=seed,
                        features=features, center=False, channels=x.shape[1] * patch_size * patch_size)
    return lambda img: normalized_window_means(img, unit, grid, patch_size, floor)


def mmd_bandwidths(sigma: float | tuple[float, ...], patch_size: int,
                   contrast_floor: float | None) -> float | tuple[float, ...]:
    """The Gaussian widths of the windowed MMD's kernel: :func:`.kernels.gaussian_bandwidths` of its patches, or
    with ``contrast_floor`` of the normalised patches, compared as 1x1 patches (widths in unit-ball units)."""
    return gaussian_bandwidths(sigma, patch_size if contrast_floor is None else 1)


def target_window_means(
    y: torch.Tensor, *, patch_size: int, sigma: float | tuple[float, ...], window: int | None, stride: int,
    center: bool, num_features: int, seed: int, features: FeatureKind, contrast_floor: float | None = None,
) -> torch.Tensor:
    """RFF window means of an internal-scale image ``y``, ``(N, r, rows, cols)``: what
    :func:`.mmd.windowed_mmd2` needs of a fixed target (pass them as ``y_features``; the same
    ``contrast_floor``)."""
    grid = window_grid(y.shape[-2], y.shape[-1], window, stride)
    bandwidth = mmd_bandwidths(sigma, patch_size, contrast_floor)
    means = _window_means_of(y, grid, patch_size=patch_size, bandwidth=bandwidth, num_features=num_features,
                             seed=seed, features=features, center=center, contrast_floor=contrast_floor)
    return means(y)

