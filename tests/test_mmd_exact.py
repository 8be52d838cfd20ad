"""The exact estimator against a brute-force float64 evaluation of docs/method.md §2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchmmd
from patchmmd.core.patches import window_grid
from reference import local_term, windowed_mmd2


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


CASES = [
    # (C, H, W, patch_size, window, stride, center)
    (3, 9, 11, 3, 5, 2, True),  # non-square, windows not tiling the image
    (3, 8, 8, 3, 4, 4, False),  # uncentred kernel
    (1, 7, 10, 5, 6, 3, True),  # grayscale, 5x5 patches (padding 2)
    (2, 6, 13, 3, 32, 16, True),  # window larger than the image: clipped to one window
    (3, 6, 7, 3, None, 1, True),  # global MMD
]


@pytest.mark.parametrize(("c", "h", "w", "k", "window", "stride", "center"), CASES)
def test_exact_matches_brute_force(c, h, w, k, window, stride, center):
    x, y = _pair((2, c, h, w))
    sigma = 0.2
    got = patchmmd.patch_mmd(x, y, patch_size=k, sigma=sigma, window=window, stride=stride, center=center)
    for i in range(2):
        ref = windowed_mmd2(
            (2 * x[i] - 1).numpy(), (2 * y[i] - 1).numpy(),
            k=k, sigma=sigma, window=window, stride=stride, center=center,
        )
        assert abs(float(got[i]) - ref) <= 1e-8 * abs(ref), (float(got[i]), ref)
    assert got.dtype == torch.float64


def test_window_placement_and_border_padding():
    # 10x10 image, window 4, stride 4: windows start at rows/cols 0 and 4 (avg_pool2d placement) and cover
    # patch centres 0..7. Patch centres 8 and 9 lie in no window.
    x = torch.full((1, 1, 10, 10), 0.5, dtype=torch.float64)
    x[..., ::2, :] = 0.2
    opts = dict(patch_size=3, window=4, stride=4, sigma=0.1)
    y9 = x.clone()
    y9[..., 9, :] = 1.0  # changes the patches centred on rows 8 and 9 only (reflection maps row 10 to 8)
    assert float(patchmmd.patch_mmd(x, y9, **opts)) == 0.0
    y8 = x.clone()
    y8[..., 8, :] = 1.0  # also changes the patches centred on row 7, which window row 1 holds
    assert float(patchmmd.patch_mmd(x, y8, **opts)) > 1e-3
    g = window_grid(10, 10, 4, 4)
    assert (g.rows, g.cols) == (2, 2)
    # Reflect padding: the patch centred on row 0 sees row 1 above it, not a zero or a repeated row 0.
    xs, ys = (2 * x[0] - 1).numpy(), (2 * y8[0] - 1).numpy()
    ref = windowed_mmd2(xs, ys, k=3, sigma=0.1, window=4, stride=4, center=True)
    assert float(patchmmd.patch_mmd(x, y8, **opts)) == pytest.approx(ref, rel=1e-10)


def test_float32_exact_close_to_float64():
    x, y = _pair((1, 3, 20, 20))
    d64 = patchmmd.patch_mmd(x, y, window=8, stride=4)
    d32 = patchmmd.patch_mmd(x.float(), y.float(), window=8, stride=4)
    assert d32.dtype == torch.float32
    assert float(d32) == pytest.approx(float(d64), rel=1e-4)


def test_exact_chunking_does_not_change_the_value(monkeypatch):
    """Bands of window rows and chunks of kernel rows give the same numbers as one big block."""
    import patchmmd.core.kernels as kernels
    import patchmmd.core.mmd as mmd

    x, y = _pair((2, 3, 40, 36))
    full = patchmmd.patch_mmd(x, y, window=16, stride=8)
    monkeypatch.setattr(mmd, "MAX_KERNEL_ELEMENTS", 3000)
    monkeypatch.setattr(kernels, "MAX_KERNEL_ELEMENTS", 100)
    chunked = patchmmd.patch_mmd(x, y, window=16, stride=8)
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=0)


def test_local_and_l2_match_brute_force():
    x, y = _pair((1, 3, 7, 9), seed=3)
    xs, ys = (2 * x[0] - 1).numpy(), (2 * y[0] - 1).numpy()
    loc = patchmmd.local_distance(x, y, patch_size=3, sigma=0.1)
    assert float(loc) == pytest.approx(local_term(xs, ys, k=3, sigma=0.1), rel=1e-10)
    l2 = patchmmd.l2_distance(x, y)
    assert float(l2) == pytest.approx(float(np.mean((xs - ys) ** 2)), rel=1e-12)


def test_mmdpp_followup_formula():
    """MMD++ = 0.001 L2 + 0.05 Local + ½ MMD² (docs/method.md §3), here with the exact MMD term."""
    x, y = _pair((1, 3, 40, 40), seed=5)
    d = patchmmd.mmdpp(x, y, preset="followup", estimator="exact")
    xs, ys = (2 * x[0] - 1).numpy(), (2 * y[0] - 1).numpy()
    expected = (
        0.001 * float(np.mean((xs - ys) ** 2))
        + 0.05 * local_term(xs, ys, k=3, sigma=0.1)
        + 0.5 * float(patchmmd.patch_mmd(x, y))
    )
    assert float(d) == pytest.approx(expected, rel=1e-10)
