"""The compiled CPU kernels of the RFF estimator against its PyTorch path and against float64."""

from __future__ import annotations

import math

import pytest
import torch

import patchmmd
from patchmmd import _native
from patchmmd.core.features import random_features
from patchmmd.core.mmd import paired_features, rff_window_means
from patchmmd.core.patches import window_grid

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


@needs_native
def test_native_gradient_matches_float64_finite_differences():
    """Directional derivative of the float32 native path against central differences of the float64 path."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64)
    y = torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    opts = dict(estimator="rff", window=8, stride=4, num_features=64)
    xg = x.float().requires_grad_(True)
    patchmmd.patch_mmd(xg, y.float(), **opts).sum().backward()
    analytic = float((xg.grad.double() * v).sum())
    eps = 1e-5
    f = lambda t: float(patchmmd.patch_mmd(t, y, out_of_range="ignore", **opts).sum())  # noqa: E731
    numeric = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-3)


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


@needs_native
def test_default_distance_uses_the_native_path_and_agrees_with_pytorch(photo_crop_pairs):
    x, y = (t.float() for t in photo_crop_pairs)
    fast = patchmmd.mmdpp(x, y)
    with _native.disabled():
        ref = patchmmd.mmdpp(x, y)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-7)


def test_disabled_and_unavailable_fall_back_to_pytorch(monkeypatch, tmp_path):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    with _native.disabled():
        assert _native.kernels() is None
        ref = patchmmd.patch_mmd(x, y, estimator="rff")
    monkeypatch.setenv("PATCHMMD_NATIVE", "0")
    assert _native.kernels() is None
    torch.testing.assert_close(patchmmd.patch_mmd(x, y, estimator="rff"), ref)
    # No working compiler: nothing is loaded, the PyTorch path runs.
    monkeypatch.delenv("PATCHMMD_NATIVE")
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_compiler", lambda: "/bin/false")
    _native._load.cache_clear()
    try:
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
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [nk.path.name]
    finally:
        _native._load.cache_clear()
