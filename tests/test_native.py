"""The compiled CPU kernels of the RFF estimator against its PyTorch path and against float64."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import patchmmd
from patchmmd import _native
from patchmmd.core import aligned, ssim
from patchmmd.core.features import random_features
from patchmmd.core.patches import window_grid
from patchmmd.core.rff import normalized_window_means, paired_features, rff_window_means
from patchmmd.core.ssim import dissimilarity_map, target_moments

needs_native = pytest.mark.skipif(_native.kernels() is None, reason="no C compiler: the PyTorch path is used")


def test_sincos_polynomials_within_1e6_of_float64():
    pc, ps = _native.sincos_coefficients()
    r = torch.linspace(-0.5, 0.5, 200_001, dtype=torch.float32)
    u = r * r
    c = torch.zeros_like(r) + pc[-1]
    s = torch.zeros_like(r) + ps[-1]
    for i in range(len(pc) - 2, -1, -1):
        c = c * u + pc[i]
        s = s * u + ps[i]
    s = s * r
    ref = 2 * math.pi * r.double()
    assert float((c.double() - torch.cos(ref)).abs().max()) < 1e-6
    assert float((s.double() - torch.sin(ref)).abs().max()) < 1e-6


def _means(x, feats, grid, native: bool):
    if native:
        return rff_window_means(x, feats, grid)
    with _native.disabled():
        return rff_window_means(x, feats, grid)


@needs_native
@pytest.mark.parametrize(
    ("shape", "patch_size", "window", "stride", "r", "kind"),
    [
        ((2, 3, 64, 64), 3, 32, 16, 512, "stratified"),   # the default
        ((1, 3, 37, 53), 3, 16, 8, 100, "stratified"),    # odd sizes, r not a multiple of the register block
        ((3, 1, 40, 70), 5, 20, 10, 64, "iid"),           # grayscale, 5x5 patches, unpaired features
        ((1, 3, 30, 45), 3, None, 16, 130, "orthogonal"),  # one global window
        ((2, 2, 24, 24), 7, 12, 12, 24, "stratified"),    # 7x7 patches, non-overlapping windows
    ],
)
def test_native_equals_pytorch_values_and_gradients(shape, patch_size, window, stride, r, kind):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g) * 2 - 1
    weight, phase = random_features(shape[1], patch_size, 0.06 * patch_size**2, r, seed=1, kind=kind)
    feats = paired_features(weight, phase)
    grid = window_grid(shape[-2], shape[-1], window, stride)
    gout = torch.randn(_means(x, feats, grid, False).shape, generator=g)
    results = []
    for native in (True, False):
        xg = x.clone().requires_grad_(True)
        m = _means(xg, feats, grid, native)
        (m * gout).sum().backward()
        results.append((m.detach(), xg.grad))
    (m_nat, g_nat), (m_ref, g_ref) = results
    torch.testing.assert_close(m_nat, m_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(g_nat, g_ref, atol=1e-4 * float(g_ref.abs().max()), rtol=1e-3)


def _normalized_means(x, feats, grid, k, floor, native: bool):
    if native:
        return normalized_window_means(x, feats, grid, k, floor)
    with _native.disabled():
        return normalized_window_means(x, feats, grid, k, floor)


@needs_native
@pytest.mark.parametrize(
    ("shape", "patch_size", "floor", "window", "stride", "r"),
    [
        ((2, 3, 48, 64), 3, 0.02, 16, 8, 256),   # the training preset's settings
        ((1, 3, 37, 53), 3, 0.2, 16, 8, 100),    # odd sizes, one image (bands of rows), r not a multiple of J
        ((5, 1, 40, 70), 5, 0.02, 20, 10, 64),   # grayscale, 5x5 patches, several images
        ((1, 2, 30, 45), 3, 0.05, None, 16, 48),  # one global window
    ],
)
def test_contrast_normalized_native_equals_pytorch(shape, patch_size, floor, window, stride, r):
    """The kernels' normalisation (each patch's factor computed in them, the normalised patches never formed)
    against the C k²-channel image of normalised patches on the PyTorch path: window means and the image gradient,
    through the factor too."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g) * 2 - 1
    x[..., : shape[-2] // 3, :] = 0.3 + 0.01 * x[..., : shape[-2] // 3, :]  # a nearly flat band: the floor acts
    d = shape[1] * patch_size**2
    weight, phase = random_features(d, 1, (0.5, 1.0), r, seed=1, kind="stratified")
    feats = paired_features(weight, phase)
    grid = window_grid(shape[-2], shape[-1], window, stride)
    gout = torch.randn(_normalized_means(x, feats, grid, patch_size, floor, False).shape, generator=g)
    results = []
    for native in (True, False):
        xg = x.clone().requires_grad_(True)
        m = _normalized_means(xg, feats, grid, patch_size, floor, native)
        (m * gout).sum().backward()
        results.append((m.detach(), xg.grad))
    (m_nat, g_nat), (m_ref, g_ref) = results
    torch.testing.assert_close(m_nat, m_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(g_nat, g_ref, atol=1e-4 * float(g_ref.abs().max()), rtol=1e-3)


@needs_native
@pytest.mark.parametrize("shape", [(2, 3, 40, 33), (1, 1, 11, 11), (3, 3, 23, 64)])
@pytest.mark.parametrize("target", [False, True])
def test_ssim_kernel_equals_float64(shape, target):
    """The SSIM operator (float32, compiled kernel) against its formulas in float64 (core/ssim.py's
    ssim_values), values and the gradient in x, with and without a target's precomputed moments."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    ym = target_moments(y) if target else None
    taps = ssim._window(torch.float64, torch.device("cpu"))
    x64 = x.clone().requires_grad_()
    want = ssim.ssim_values(x64, y, ym, taps)
    w = torch.randn(want.shape, generator=g, dtype=torch.float64)
    (want * w).sum().backward()
    x32 = x.float().requires_grad_()
    got = torch.ops.patchmmd.ssim_map(x32, y.float(), None if ym is None else ym.float(), taps.float())
    (got * w.float()).sum().backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=0, atol=2e-6)
    assert float((x32.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()) < 1e-5


@needs_native
def test_ssim_term_runs_on_the_kernel_and_falls_back_for_a_differentiable_target():
    g = torch.Generator().manual_seed(5)
    x, y = (torch.rand(2, 3, 30, 30, generator=g) * 2 - 1 for _ in range(2))
    assert ssim._native_ssim(x, y, None) and ssim._native_ssim(x, y, target_moments(y))
    assert not ssim._native_ssim(x, y.requires_grad_(), None)
    assert not ssim._native_ssim(x.double(), y.double().detach(), None)
    # a target that requires grad gets its gradient (the PyTorch path)
    xg = x.clone().requires_grad_()
    dissimilarity_map(xg, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    # the operator itself differentiates xs only, and says so rather than dropping the other gradients
    taps = ssim._window(torch.float32, torch.device("cpu"))
    s = torch.ops.patchmmd.ssim_map(xg, y, None, taps)
    with pytest.raises(RuntimeError, match="differentiable in xs only"):
        s.sum().backward()


@needs_native
def test_ssim_operator_rejects_what_the_kernel_cannot_read():
    taps = ssim._window(torch.float32, torch.device("cpu"))
    x = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="float32"):
        torch.ops.patchmmd.ssim_map(x.double(), x.double(), None, taps)
    with pytest.raises(ValueError, match="one shape"):
        torch.ops.patchmmd.ssim_map(x, x[..., :19].contiguous(), None, taps)
    with pytest.raises(ValueError, match="one shape"):
        torch.ops.patchmmd.ssim_map(x[..., :10, :10].contiguous(), x[..., :10, :10].contiguous(), None, taps)
    with pytest.raises(ValueError, match="y_moments"):
        torch.ops.patchmmd.ssim_map(x, x, torch.rand(1, 3, 10, 10), taps)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.patchmmd.ssim_map_grad(x, x, None, taps, torch.rand(1, 3, 9, 9))


@needs_native
def test_training_preset_gradient_matches_float64_finite_differences():
    """The training preset's MMD (contrast-normalised patches, on the kernels) in float32 against central
    differences of its float64 PyTorch path."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 32, 40, generator=g, dtype=torch.float64)
    y = torch.rand(1, 3, 32, 40, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    analytic, numeric = _directional_derivatives(patchmmd.mmdpp, x, y, v, 1e-5, preset="loss", weight_ssim=0.0,
                                                 weight_l2=0.0, weight_local=0.0)
    assert analytic == pytest.approx(numeric, rel=1e-3)


@needs_native
def test_native_gradient_matches_float64_finite_differences():
    """Directional derivative of the float32 native path against central differences of the float64 path."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64)
    y = torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    analytic, numeric = _directional_derivatives(patchmmd.patch_mmd, x, y, v, 1e-5,
                                                 estimator="rff", window=8, stride=4, num_features=64)
    assert analytic == pytest.approx(numeric, rel=1e-3)


def _directional_derivatives(distance, x, y, v, eps, **opts):  # type: ignore[no-untyped-def]
    """``d distance(x, y) . v`` from the float32 path's gradient, and from central differences (step ``eps``)
    of the float64 path: ``(analytic, numeric)``."""
    xg = x.float().requires_grad_(True)
    distance(xg, y.float(), **opts).sum().backward()
    f = lambda t: float(distance(t, y, out_of_range="ignore", **opts).sum())  # noqa: E731
    return float((xg.grad.double() * v).sum()), (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_result_does_not_depend_on_the_thread_count(threads):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 64, generator=g)
    y = torch.rand(2, 3, 48, 64, generator=g)
    before = torch.get_num_threads()
    values, grads = [], []
    try:
        for t in (1, threads):
            torch.set_num_threads(t)
            xg = x.clone().requires_grad_(True)
            d = patchmmd.mmdpp(xg, y)
            d.sum().backward()
            values.append(d.detach())
            grads.append(xg.grad)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(values[0], values[1])
    assert torch.equal(grads[0], grads[1])


def _kernel_outputs(nk: _native.NativeKernels) -> list[torch.Tensor]:
    """Block sums, image gradient (one and several bands of rows) and offset scan of fixed random inputs."""
    g = torch.Generator().manual_seed(3)
    out = []
    for n in (1, 5):
        xp = torch.rand(n, 3, 34, _native.VECTOR * 2 + 2, generator=g)
        weight, phase = torch.randn(32, 27, generator=g) * 4, torch.rand(32, generator=g)
        out += nk.block_sums_split(xp, weight, phase, 32, 48, 8, 8, 3)
        amp, phs = _native.grad_polar(*torch.randn(2, n, 32, 4, 6, generator=g))
        out.append(nk.grad_image_polar(xp, weight, phase, amp, phs, 32, 48, 8, 8, 3))
        out += nk.block_sums_split(xp, weight, phase, 32, 48, 8, 8, 3, 0.02)  # contrast-normalised patches
        out.append(nk.grad_image_polar(xp, weight, phase, amp, phs, 32, 48, 8, 8, 3, 0.02))
    x, y = torch.rand(2, 3, 3, 20, 24, generator=g)
    yp = torch.nn.functional.pad(y, (1, 1, 1, 1), mode="replicate").contiguous()
    out.append(nk.aligned_scan(x, yp, None, radius=1, offsets=[(0, 0), (1, -1), (-1, 1)], lk_box=3, ridge=1e-3,
                               max_shift=1.0, factors=[1, 2], local_patch_size=3, weight_l2=0.5, weight_local=2.0,
                               inv2s2=50.0))
    taps = torch.softmax(torch.randn(11, generator=g), 0)
    for n in (1, 3):  # SSIM: values and gradient, filtered or with the target's moments
        x, y = torch.rand(2, n, 3, 23, 31, generator=g) * 2 - 1
        ym = torch.rand(n, 6, 13, 21, generator=g)
        gs = torch.randn(n, 3, 13, 21, generator=g)
        out += [nk.ssim(x, y, None, taps), nk.ssim(x, y, ym, taps), nk.ssim(x, y, None, taps, gs),
                nk.ssim(x, y, ym, taps, gs)]
    return out


@needs_native
def test_kernels_run_on_pytorchs_openmp_threads_where_it_is_the_only_runtime():
    nk = _native.kernels()
    assert nk is not None
    assert nk.openmp == (bool(nk.lib.patchmmd_openmp()) and _native._shared_openmp())
    cc = subprocess.run([_native._compiler() or "cc", "--version"], capture_output=True, text=True).stdout
    if (sys.platform.startswith("linux") and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
            and "Free Software Foundation" in cc):
        # GCC links libgomp.so.1, the soname of the libgomp that PyTorch's wheels ship: the loader reuses it
        assert nk.openmp, "the kernels do not run on PyTorch's OpenMP threads"


def test_two_openmp_runtimes_are_not_shared(monkeypatch):
    maps = ("7f00-7f10 r-xp 0 08:01 1 /opt/torch/lib/libgomp.so.1\n"
            "7f20-7f30 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libgomp.so.1\n")
    real_open = open

    def fake_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path == "/proc/self/maps":
            import io
            return io.StringIO(maps)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert not _native._shared_openmp()
    maps = maps.splitlines()[0] + "\n"
    assert _native._shared_openmp()


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_openmp_driver_and_thread_pool_give_identical_results(threads, monkeypatch):
    nk = _native.kernels()
    assert nk is not None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = _kernel_outputs(nk)
        torch.set_num_threads(threads)
        for openmp in (True, False):
            if openmp and not nk.lib.patchmmd_openmp():
                continue
            monkeypatch.setattr(nk, "openmp", openmp)
            for a, b in zip(_kernel_outputs(nk), ref, strict=True):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)


@needs_native
def test_default_distance_uses_the_native_path_and_agrees_with_pytorch(photo_crop_pairs):
    x, y = (t.float() for t in photo_crop_pairs)
    fast = patchmmd.mmdpp(x, y)
    with _native.disabled():
        ref = patchmmd.mmdpp(x, y)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-7)


def _assert_scan_equals_pytorch(x: torch.Tensor, y: torch.Tensor, factors: list[int], **args: object) -> None:
    """tolerant_aligned on the compiled scan equals its PyTorch path, level by level (values and shapes)."""
    fast = aligned.tolerant_aligned(x, y, factors, **args)
    with _native.disabled():
        ref = aligned.tolerant_aligned(x, y, factors, **args)
    assert len(fast) == len(ref) == len(factors)
    for (v, grid), (r, _) in zip(fast, ref, strict=True):
        assert v.shape == r.shape == (x.shape[0], 1, grid.rows, grid.cols)
        torch.testing.assert_close(v, r, rtol=1e-5, atol=1e-6)


@needs_native
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("subpixel", [True, False])
@pytest.mark.parametrize(("shape", "factors"),
                         [((2, 3, 64, 48), [1]), ((1, 3, 96, 128), [2, 4]), ((1, 1, 50, 70), [3]),
                          # wide rows: the kernel takes several bands of rows (the last one shorter)
                          ((1, 3, 45, 512), [2, 4]), ((1, 2, 20, 1024), [3, 2])])
def test_native_offset_scan_equals_pytorch(radius, subpixel, shape, factors):
    g = torch.Generator().manual_seed(radius + 3 * factors[0])
    x = torch.rand(*shape, generator=g) * 2 - 1
    y = torch.roll(x, (1, -1), (-2, -1)) + 0.05 * torch.randn(*shape, generator=g)  # moved and noisy: offsets matter
    _assert_scan_equals_pytorch(x, y, factors, radius=radius, subpixel=subpixel, window=16, weight_l2=2.29,
                                weight_local=114.0, local_patch_size=3, local_sigma=0.1)


@needs_native
@pytest.mark.parametrize(("shape", "radius", "box"),
                         [((2, 3, 17, 23), 2, 5), ((1, 1, 5, 4), 0, 3), ((3, 2, 9, 1), 1, 3), ((1, 3, 1, 6), 3, 7),
                          # boxes of 9 and more are summed along the rows by doubling, unless wider than the row
                          ((1, 3, 40, 33), 4, 17), ((1, 2, 30, 9), 1, 17), ((2, 3, 12, 50), 2, 33)])
def test_native_fit_inputs_equal_pytorch(shape, radius, box):
    """The compiled fit inputs (one pass per image) against the PyTorch functions, then replicate-padded."""
    t = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape) + radius)) * 2 - 1
    gx, gy, tensor = torch.ops.patchmmd.fit_inputs(t, radius, box)
    pad = lambda u: torch.nn.functional.pad(u, (radius,) * 4, mode="replicate") if radius else u  # noqa: E731
    ref_x, ref_y = aligned._gradients(t)
    torch.testing.assert_close(gx, pad(ref_x), rtol=0, atol=0)  # the same two roundings
    torch.testing.assert_close(gy, pad(ref_y), rtol=0, atol=0)
    torch.testing.assert_close(tensor, pad(aligned.structure_tensor((ref_x, ref_y), box)), rtol=1e-5, atol=1e-7)


@needs_native
def test_fit_inputs_operator_rejects_what_the_kernel_cannot_read():
    call = torch.ops.patchmmd.fit_inputs
    assert [tuple(o.shape) for o in call(torch.rand(2, 3, 8, 6), 1, 3)] == [(2, 3, 10, 8), (2, 3, 10, 8),
                                                                          (2, 3, 10, 8)]
    for bad in (torch.rand(2, 3, 8, 6).double(), torch.rand(3, 8, 6), torch.rand(2, 3, 8, 6).transpose(2, 3),
                torch.rand(0, 3, 8, 6)):
        with pytest.raises(ValueError, match="fit_inputs: t must be"):
            call(bad, 1, 3)
    for radius, box in ((-1, 3), (1, 4), (1, 0)):
        with pytest.raises(ValueError, match="geometry"):
            call(torch.rand(1, 3, 8, 6), radius, box)


@needs_native
@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize(("shape", "factors"), [((1, 3, 7, 5), [1]), ((2, 2, 3, 40), [1]), ((1, 1, 2, 2), [1]),
                                                ((1, 3, 33, 1), [1]), ((1, 3, 4, 9), [2]), ((1, 2, 6, 6), [3]),
                                                # fit boxes of 11 (sums by doubling): wider than the row; taller
                                                # than the image
                                                ((1, 3, 20, 6), [5]), ((1, 3, 10, 40), [5])])
def test_native_offset_scan_on_images_smaller_than_the_fit_box(radius, shape, factors):
    """The fit streams down the rows through a ring of min(fit box, H) rows: images with fewer rows than the
    box (2 f + 1), one row or one column, every offset reading outside the image."""
    g = torch.Generator().manual_seed(radius + sum(shape))
    x = torch.rand(*shape, generator=g) * 2 - 1
    y = torch.roll(x, (1, -1), (-2, -1)) + 0.1 * torch.randn(*shape, generator=g)
    _assert_scan_equals_pytorch(x, y, factors, radius=radius, subpixel=True, window=4, weight_l2=2.29,
                                weight_local=114.0, local_patch_size=1, local_sigma=0.1)


@needs_native
def test_native_offset_scan_zero_weights_and_larger_fit_box():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 160, 160, generator=g) * 2 - 1
    y = torch.roll(x, 2, -1) + 0.02 * torch.randn(1, 3, 160, 160, generator=g)
    for w_l2, w_local in ((0.0, 1.0), (1.0, 0.0)):
        for factors in ([5], [8, 16]):  # fit boxes of 11 and 17 pixels
            _assert_scan_equals_pytorch(x, y, factors, radius=2, subpixel=True, window=8, weight_l2=w_l2,
                                        weight_local=w_local, local_patch_size=5, local_sigma=0.05)


@needs_native
def test_native_offset_scan_picks_the_same_offsets_for_the_gradient():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = torch.roll(x, 1, -1).clamp(0, 1)
    grads = []
    for native in (True, False):
        xg = x.clone().requires_grad_(True)
        if native:
            patchmmd.mmdpp(xg, y, weight_mmd=0).sum().backward()
        else:
            with _native.disabled():
                patchmmd.mmdpp(xg, y, weight_mmd=0).sum().backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def _assert_gradient_equals_pytorch(x: torch.Tensor, y: torch.Tensor, **options: object) -> None:
    """mmdpp and its gradient in x on the compiled kernels equal the PyTorch path's (autograd)."""
    out = []
    for native in (True, False):
        xg = x.clone().requires_grad_(True)
        with contextlib.nullcontext() if native else _native.disabled():
            d = patchmmd.mmdpp(xg, y, **options)
        d.sum().backward()
        out.append((d.detach(), xg.grad))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-6 * float(out[1][1].abs().max()))


@needs_native
@pytest.mark.parametrize(("shape", "options"), [
    ((2, 3, 64, 64), {}),
    ((1, 3, 96, 80), {"preset": "loss"}),
    ((2, 1, 50, 70), {"weight_mmd": 0, "shift_radius": 2}),
    ((2, 3, 64, 64), {"weight_mmd": 0, "subpixel": False}),
    ((1, 3, 64, 48), {"weight_mmd": 0, "shift_radius": 0}),
    ((1, 3, 192, 256), {"weight_mmd": 0}),  # scale rule levels 2 and 4 (the kernels' constant-stride paths)
    ((1, 2, 384, 400), {"weight_mmd": 0}),  # levels 3 and 6 (the general path)
    ((1, 8, 96, 128), {"weight_mmd": 0}),  # 8 channels: the kernels' generic channel path, a larger store
])
def test_native_aligned_gradient_equals_pytorch_autograd(shape, options):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(*shape, generator=g)
    y = (0.9 * torch.roll(x, 1, -1) + 0.1 * torch.rand(*shape, generator=g)).clamp(0, 1)
    _assert_gradient_equals_pytorch(x, y, **options)


@needs_native
@pytest.mark.parametrize("shape", [(2, 3, 192, 256), (1, 2, 120, 400)])
def test_native_aligned_gradient_with_many_winning_offsets(shape):
    """y unrelated to x, so that most of the offsets win some window: the gradient kernel then keeps the level
    means of several offsets at once (a group per pass over the bands); against PyTorch autograd."""
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
    _assert_gradient_equals_pytorch(x, y, weight_mmd=0, shift_radius=2)


@needs_native
def test_native_aligned_gradient_matches_float64_finite_differences():
    """Directional derivative of the aligned terms (compiled scan and gradient, float32) against central
    differences of the float64 PyTorch path (no sub-pixel fit: with it the fit is a stop-gradient)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 32, 40, generator=g, dtype=torch.float64)
    y = (0.8 * torch.roll(x, (1, -1), (-2, -1)) + 0.2 * torch.rand(1, 3, 32, 40, generator=g,
                                                                   dtype=torch.float64)).clamp(0, 1)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    analytic, numeric = _directional_derivatives(patchmmd.mmdpp, x, y, v, 1e-6, weight_mmd=0.0, subpixel=False,
                                                 shift_radius=1, base_size=None, num_scales=2, min_size=8)
    assert analytic == pytest.approx(numeric, rel=1e-3)


@needs_native
def test_native_aligned_gradient_in_chunks_and_with_a_differentiable_target(monkeypatch):
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 3, 48, 48, generator=g)
    y = (0.9 * torch.roll(x, -1, -2) + 0.1 * torch.rand(3, 3, 48, 48, generator=g)).clamp(0, 1)
    xg = x.clone().requires_grad_(True)
    patchmmd.mmdpp(xg, y, weight_mmd=0).sum().backward()
    monkeypatch.setattr(aligned, "LARGE_ELEMENTS", 3 * 48 * 48)  # one image a chunk, fit recomputed in backward
    xc = x.clone().requires_grad_(True)
    patchmmd.mmdpp(xc, y, weight_mmd=0).sum().backward()
    torch.testing.assert_close(xc.grad, xg.grad, rtol=1e-6, atol=0.0)
    monkeypatch.undo()
    # y with a gradient takes the autograd path (the compiled gradient is x's only): both gradients come out
    xb, yb = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    patchmmd.mmdpp(xb, yb, weight_mmd=0).sum().backward()
    torch.testing.assert_close(xb.grad, xg.grad, rtol=1e-4, atol=1e-6 * float(xg.grad.abs().max()))
    assert yb.grad is not None and float(yb.grad.abs().sum()) > 0


@needs_native
@pytest.mark.parametrize(("shape", "factors"), [((4, 3, 40, 36), [1, 2]), ((2, 3, 30, 600), [2, 4])])
def test_native_offset_scan_values_do_not_depend_on_the_task_split(shape, factors):
    """The scan splits a batch into tasks of runs of offsets (fewer images: shorter runs) and each image into bands
    of rows; an image's maps are the same bits alone as in a batch, with any thread count."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(*shape, generator=g) * 2 - 1
    y = x + 0.05 * torch.randn(*shape, generator=g)
    yp = torch.nn.functional.pad(y, (2,) * 4, mode="replicate")
    (gxx, gxy, tx), (gyx, gyy, typ) = torch.ops.patchmmd.fit_inputs(x, 0, 5), torch.ops.patchmmd.fit_inputs(y, 2, 5)
    fit = [gxx, gxy, gyx, gyy, tx, typ]
    offsets = [v for dy in range(-2, 3) for dx in range(-2, 3) for v in (dy, dx)]
    args = dict(radius=2, offsets=offsets, lk_box=5, ridge=1e-3, max_shift=1.0, factors=factors, local_patch_size=3,
                weight_l2=2.0, weight_local=50.0, inv2s2=4.0)
    batch = torch.ops.patchmmd.aligned_scan(x, yp, fit, **args)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = [torch.ops.patchmmd.aligned_scan(x[i : i + 1], yp[i : i + 1], [t[i : i + 1].contiguous() for t in fit],
                                                 **args) for i in range(shape[0])]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batch, torch.cat(alone))


def _scan_operator_arguments() -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    """x, yp (padded by 1) and keyword arguments that aligned_scan and aligned_grad accept: two offsets, one level."""
    good = dict(radius=1, offsets=[0, 0, 1, -1], lk_box=3, ridge=1e-3, max_shift=1.0, factors=[1], local_patch_size=3,
                weight_l2=1.0, weight_local=1.0, inv2s2=1.0)
    return torch.rand(1, 3, 16, 16), torch.rand(1, 3, 18, 18), good


@needs_native
def test_aligned_grad_operator_rejects_what_the_kernel_cannot_read():
    x, yp, good = _scan_operator_arguments()
    call = torch.ops.patchmmd.aligned_grad
    assert call(x, yp, [], torch.rand(1, 2, 256), **good).shape == x.shape
    with pytest.raises(ValueError, match="gmap"):
        call(x, yp, [], torch.rand(1, 1, 256), **good)
    with pytest.raises(ValueError, match="gmap"):
        call(x, yp, [], torch.rand(1, 2, 256).double(), **good)
    with pytest.raises(ValueError, match="within radius"):
        call(x, yp, [], torch.rand(1, 1, 256), **{**good, "offsets": [2, 0]})


@needs_native
def test_aligned_scan_operator_rejects_what_the_kernel_cannot_read():
    x, yp, good = _scan_operator_arguments()
    call = torch.ops.patchmmd.aligned_scan
    assert call(x, yp, [], **good).shape == (1, 2, 256)
    with pytest.raises(ValueError, match="shape"):
        call(x, yp[..., 1:], [], **good)
    with pytest.raises(ValueError, match="float32"):
        call(x.double(), yp.double(), [], **good)
    with pytest.raises(ValueError, match="within radius"):
        call(x, yp, [], **{**good, "offsets": [2, 0]})
    with pytest.raises(ValueError, match="fit must hold"):
        call(x, yp, [x], **good)
    with pytest.raises(ValueError, match="geometry"):
        call(x, yp, [], **{**good, "factors": [32]})


def test_disabled_and_unavailable_fall_back_to_pytorch(monkeypatch, tmp_path):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    with _native.disabled():
        assert _native.kernels() is None
        ref = patchmmd.patch_mmd(x, y, estimator="rff")
    monkeypatch.setenv("PATCHMMD_NATIVE", "0")
    assert _native.kernels() is None
    torch.testing.assert_close(patchmmd.patch_mmd(x, y, estimator="rff"), ref)
    # No working compiler: nothing is loaded (and that is said), the PyTorch path runs.
    monkeypatch.delenv("PATCHMMD_NATIVE")
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_compiler", lambda: "/bin/false")
    _native._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"the build failed \(/bin/false"):
            assert _native.kernels() is None
        assert list(tmp_path.iterdir()) == []  # failed compilations leave nothing behind
        torch.testing.assert_close(patchmmd.patch_mmd(x, y, estimator="rff"), ref)
    finally:
        _native._load.cache_clear()


@needs_native
def test_compiles_into_an_empty_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(tmp_path / "cache"))
    _native._load.cache_clear()
    try:
        nk = _native.kernels()
        assert nk is not None and nk.path.parent == tmp_path / "cache"
        # The library and its record, nothing else (no temporary files, no private copies left behind).
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [nk.path.name, nk.path.name + ".json"]
        assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
        record = json.loads(nk.path.with_name(nk.path.name + ".json").read_text())
        data = nk.path.read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        _native._load.cache_clear()


# The kernel cache: what is loaded is only what this process can tell it built (see the docstring of _native).

PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *p = getenv("PATCHMMD_TEST_MARKER");
    if (p) { FILE *f = fopen(p, "w"); if (f) { fputs("planted code ran", f); fclose(f); } }
}
void rff_block_sums(void) {}
void rff_grad_image(void) {}
"""


def _build_c(folder: Path, source: str) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lib.c").write_text(source)
    subprocess.run([_native._compiler(), "-shared", "-fPIC", str(folder / "lib.c"), "-o", str(folder / "lib.so")],
                   check=True, capture_output=True)
    return (folder / "lib.so").read_bytes()


def good_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One good cache folder (library and record) for the cache tests to copy: (folder, library name). Skips the
    test without a C compiler."""
    if _native.kernels() is None:
        pytest.skip("no C compiler: the PyTorch path is used")
    folder = tmp_path_factory.mktemp("good") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        nk = _load_from(mp, folder)
    assert nk is not None
    return folder, nk.path.name


@pytest.fixture(scope="module")
def good_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return good_cache_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A library with the kernel symbols whose constructor writes ``$PATCHMMD_TEST_MARKER`` (checked here)."""
    if _native._compiler() is None:
        pytest.skip("no C compiler")
    folder = tmp_path_factory.mktemp("planted")
    data = _build_c(folder, PLANTED_C)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHMMD_TEST_MARKER", str(folder / "marker"))
        ctypes.CDLL(str(folder / "lib.so"))
    assert (folder / "marker").exists()  # loading it runs its code: the tests below must never see this
    return data


def _copy_cache(good_build: tuple[Path, str], dest: Path) -> tuple[Path, Path]:
    """A copy of the good cache folder: (library, record) paths in it."""
    shutil.copytree(good_build[0], dest)
    lib = dest / good_build[1]
    return lib, lib.with_name(lib.name + ".json")


def _replace(lib: Path, data: bytes, record: str) -> None:
    """Put ``data`` in place of the cached library; ``record``: "stale" (keep), "matching" (rewrite it to
    match ``data``, as if we had written it) or "none" (delete it)."""
    lib.write_bytes(data)
    rec = lib.with_name(lib.name + ".json")
    if record == "none":
        rec.unlink(missing_ok=True)
    elif record == "matching":
        fields = json.loads(rec.read_text()) if rec.exists() else {}
        fields.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        rec.write_text(json.dumps(fields))


def _load_from(monkeypatch: pytest.MonkeyPatch, folder: Path) -> _native.NativeKernels | None:
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(folder))
    _native._load.cache_clear()
    try:
        return _native.kernels()
    finally:
        _native._load.cache_clear()


def _assert_good(lib: Path) -> None:
    """The cached library is a build of ours again: it matches its record and has the kernels."""
    data = lib.read_bytes()
    record = json.loads(lib.with_name(lib.name + ".json").read_text())
    assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert b"rff_block_sums" in data and b"rff_grad_image" in data
    assert lib.stat().st_uid == os.geteuid()


def test_truncated_cached_library_is_rebuilt_in_a_fresh_process(good_build, tmp_path):
    """A truncated library used to crash every process with a bus error (run in a child process)."""
    lib, _ = _copy_cache(good_build, tmp_path / "cache")
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])
    env = {**os.environ, "PATCHMMD_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(patchmmd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    code = "from patchmmd import _native; print('kernels:', _native.kernels() is not None)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "kernels: True" in done.stdout
    _assert_good(lib)


def test_cached_library_without_the_kernels_is_rebuilt(good_build, tmp_path, monkeypatch):
    lib, _ = _copy_cache(good_build, tmp_path / "cache")
    _replace(lib, _build_c(tmp_path / "other", "int not_the_kernels(void) { return 1; }\n"), "matching")
    nk = _load_from(monkeypatch, tmp_path / "cache")
    assert nk is not None and nk.path == lib
    _assert_good(lib)


@pytest.mark.parametrize("record", ["stale", "matching"])
@pytest.mark.parametrize("content", [b"", b"\x7fELF not a library " * 64], ids=["empty", "garbage"])
def test_empty_or_garbage_cached_file_is_rebuilt(good_build, tmp_path, monkeypatch, content, record):
    lib, _ = _copy_cache(good_build, tmp_path / "cache")
    _replace(lib, content, record)
    nk = _load_from(monkeypatch, tmp_path / "cache")
    assert nk is not None and nk.path == lib
    _assert_good(lib)


def test_damaged_cache_that_cannot_be_rebuilt_warns_once_and_uses_pytorch(good_build, tmp_path, monkeypatch):
    lib, _ = _copy_cache(good_build, tmp_path / "cache")
    _replace(lib, b"garbage" * 100, "stale")
    monkeypatch.setattr(_native, "_compile", lambda cc, arch: None)
    with pytest.warns(RuntimeWarning, match="does not match its record") as caught:
        assert _load_from(monkeypatch, tmp_path / "cache") is None
    assert len([w for w in caught if "patchmmd" in str(w.message)]) == 1
    assert list((tmp_path / "cache").iterdir()) == []  # the damaged file is gone, nothing else was cached


@needs_native
def test_compiler_that_writes_nothing_leaves_nothing_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/bin/true")
    (tmp_path / "cache").mkdir(mode=0o700)
    with pytest.warns(RuntimeWarning, match="empty"):
        assert _load_from(monkeypatch, tmp_path / "cache") is None
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("record", ["stale", "none"])
def test_planted_library_whose_record_does_not_match_is_never_loaded(good_build, planted_library, tmp_path,
                                                                     monkeypatch, record):
    lib, _ = _copy_cache(good_build, tmp_path / "cache")
    _replace(lib, planted_library, record)
    monkeypatch.setenv("PATCHMMD_TEST_MARKER", str(tmp_path / "marker"))
    nk = _load_from(monkeypatch, tmp_path / "cache")
    assert not (tmp_path / "marker").exists()
    assert nk is not None
    _assert_good(lib)


def test_shared_cache_folder_is_refused(good_build, planted_library, tmp_path, monkeypatch):
    """``$PATCHMMD_CACHE_DIR`` writable by others: not used (not even to read), a private folder instead."""
    lib, _ = _copy_cache(good_build, tmp_path / "shared")
    _replace(lib, planted_library, "matching")
    os.chmod(tmp_path / "shared", 0o777)
    before = sorted(p.name for p in (tmp_path / "shared").iterdir())
    monkeypatch.setenv("PATCHMMD_TEST_MARKER", str(tmp_path / "marker"))
    with pytest.warns(RuntimeWarning, match="writable by group or others.*private temporary folder"):
        nk = _load_from(monkeypatch, tmp_path / "shared")
    assert not (tmp_path / "marker").exists()
    assert nk is not None and nk.path.parent != tmp_path / "shared"
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == before
    assert lib.read_bytes() == planted_library


def test_symlinked_cache_folder_is_refused(good_build, planted_library, tmp_path, monkeypatch):
    lib, _ = _copy_cache(good_build, tmp_path / "real")
    _replace(lib, planted_library, "matching")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("PATCHMMD_TEST_MARKER", str(tmp_path / "marker"))
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        nk = _load_from(monkeypatch, tmp_path / "link")
    assert not (tmp_path / "marker").exists()
    assert nk is not None and nk.path.parent not in (tmp_path / "real", tmp_path / "link")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown to another user")
def test_default_folders_planted_by_another_user_are_refused(good_build, tmp_path, monkeypatch):
    """A shared ``$XDG_CACHE_HOME/patchmmd`` and a ``<tmp>/patchmmd-<uid>`` owned by someone else: neither is
    used; the library is built in a private temporary folder, which is removed again."""
    monkeypatch.delenv("PATCHMMD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    shared = tmp_path / "xdg" / "patchmmd"
    shared.mkdir(parents=True)
    os.chmod(shared, 0o777)
    planted = tmp_path / "tmp" / f"patchmmd-{os.getuid()}"
    planted.mkdir(parents=True)
    os.chown(planted, 65534, 65534)
    _native._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"(?s)writable by group or others.*owned by uid 65534"):
            nk = _native.kernels()
    finally:
        _native._load.cache_clear()
    assert nk is not None and nk.path.parent not in (shared, planted)
    assert list(shared.iterdir()) == [] and list(planted.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [planted.name]


def test_unusable_cache_home_falls_back_to_the_next_folder_silently(tmp_path, monkeypatch, good_build):
    """A cache home that cannot be created (a file in the way) is not a security problem: the next folder."""
    monkeypatch.delenv("PATCHMMD_CACHE_DIR", raising=False)
    (tmp_path / "xdg").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    _native._load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nk = _native.kernels()
    finally:
        _native._load.cache_clear()
    assert not [w for w in caught if "patchmmd" in str(w.message)]
    assert nk is not None and nk.path.parent == tmp_path / "tmp" / f"patchmmd-{os.getuid()}"


@pytest.mark.parametrize("how", ["writable", "owner"])
def test_cached_file_writable_by_others_or_owned_by_another_user_is_refused(good_build, planted_library, tmp_path,
                                                                            monkeypatch, how):
    lib, _ = _copy_cache(good_build, tmp_path / "cache")
    _replace(lib, planted_library, "matching")
    if how == "owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to chown to another user")
        os.chown(lib, 65534, 65534)
    else:
        os.chmod(lib, 0o666)
    monkeypatch.setenv("PATCHMMD_TEST_MARKER", str(tmp_path / "marker"))
    with pytest.warns(RuntimeWarning, match="owned by uid 65534" if how == "owner" else "writable by group"):
        nk = _load_from(monkeypatch, tmp_path / "cache")
    assert not (tmp_path / "marker").exists()
    assert nk is not None and nk.path == lib
    _assert_good(lib)
    assert stat.S_IMODE(lib.stat().st_mode) & 0o022 == 0
