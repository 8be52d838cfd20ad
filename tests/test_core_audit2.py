"""Regression tests from a second audit of the core (src/patchmmd/core): the shift-tolerant aligned terms' windows
reach the images' edges, and option and input errors name the right thing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patchmmd.core import MMDPP, distance_map, get_config, mmdpp, patch_mmd
from patchmmd.core.aligned import l2_map, local_map, tolerant_aligned
from patchmmd.core.patches import window_grid


@pytest.mark.parametrize("size", [70, 45])
def test_default_counts_a_difference_in_the_last_rows_and_columns(size: int) -> None:
    """At 70 px the 16-px windows at stride 8 end at 64 and the 32-px MMD windows at 64 as well: with windows only
    fully inside, the default distance of two images that differ only in their last 3 rows was exactly 0."""
    x = torch.rand(1, 3, size, size + 3, generator=torch.Generator().manual_seed(0))
    for rows in (slice(-3, None), slice(None)):
        y = x.clone()
        cols = slice(-3, None) if rows == slice(None) else slice(None)
        y[..., rows, cols] = 1 - y[..., rows, cols]
        d = mmdpp(x, y)
        assert float(d) > 0.1
        m = distance_map(x, y)
        torch.testing.assert_close(m.mean(dim=(1, 2, 3)), d, rtol=1e-5, atol=0)
        assert float(m[..., rows, cols].sum()) > 0.05 * float(m.sum())  # where they differ, not spread elsewhere


def test_tolerant_terms_cover_the_edges_like_ceil_mode_pooling() -> None:
    """Without tolerance the terms are the pixelwise maps averaged over 16-px windows at stride 8, the last windows
    clipped to the image where the stride does not end at its edge: ``avg_pool2d(..., ceil_mode=True)``."""
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(2, 3, 43, 29, generator=g, dtype=torch.float64) for _ in range(2))
    (values, grid), = tolerant_aligned(x, y, [1], radius=0, subpixel=False, window=16, weight_l2=0.3,
                                      weight_local=2.0, local_patch_size=3, local_sigma=0.1)
    m = 0.3 * l2_map(x, y) + 2.0 * local_map(x, y, patch_size=3, sigma=0.1)
    ref = F.avg_pool2d(m, 16, 8, ceil_mode=True)
    assert values.shape == ref.shape == (2, 1, 5, 3)
    torch.testing.assert_close(values, ref, rtol=1e-12, atol=0)
    # the windows' mean weighs each window by its area inside the image: every window's pixel sum over the pixels
    # the windows hold (an edge window's 3 rows count as 3 rows, not as a full window of 16)
    sums = F.avg_pool2d(m, 16, 8, ceil_mode=True, divisor_override=1)
    counts = F.avg_pool2d(torch.ones_like(m), 16, 8, ceil_mode=True, divisor_override=1)
    weighted = sums.sum(dim=(2, 3)) / counts.sum(dim=(2, 3))
    torch.testing.assert_close(grid.average(values), weighted, rtol=1e-12, atol=0)
    assert float((weighted - values.mean(dim=(2, 3))).abs().min()) > 1e-4  # (the unweighted mean is another)
    # the map spreads each window over its pixels inside the image and keeps that mean; every pixel is covered
    spread = grid.spread(values)
    torch.testing.assert_close(spread.mean(dim=(2, 3)), weighted, rtol=1e-12, atol=0)
    assert bool((spread > 0).all())
    # covered sizes keep the plain grid
    assert window_grid(40, 56, 16, 8, cover=True) == window_grid(40, 56, 16, 8)


def test_tolerant_terms_gradient_at_uncovered_sizes() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 21, 19, generator=g, dtype=torch.float64) * 0.8 + 0.1
    y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert torch.autograd.gradcheck(lambda a: mmdpp(a, y, subpixel=False, weight_mmd=0),
                                    (x.clone().requires_grad_(),), eps=1e-6, atol=1e-6)
    # the float32 path (compiled scan and gradient where available) against float64
    x32, y32 = torch.rand(2, 3, 70, 45, generator=g), torch.rand(2, 3, 70, 45, generator=g)
    grads = []
    for a, b in ((x32, y32), (x32.double(), y32.double())):
        a = a.clone().requires_grad_()
        grads.append(torch.autograd.grad(mmdpp(a, b).sum(), a)[0])
    torch.testing.assert_close(grads[0].double(), grads[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_images_are_refused_with_the_supported_dtypes(dtype: torch.dtype) -> None:
    x = torch.rand(1, 3, 16, 16).to(dtype)
    for fn in (mmdpp, patch_mmd):
        with pytest.raises(TypeError, match=r"^x must be a floating-point tensor \(float16, bfloat16, float32 or "
                                            r"float64\), got torch\.float8.*x\.float\(\)$"):
            fn(x, x)


def test_option_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"^local_patch_size must be odd"):
        get_config(local_patch_size=4)
    with pytest.raises(ValueError, match=r"^local_patch_size must be an integer >= 1"):
        MMDPP(local_patch_size=0)
    for preset in (["loss"], {"preset": "loss"}):  # unhashable: once a TypeError from the dict lookup
        with pytest.raises(ValueError, match=r"^preset must be one of \['default', 'followup', 'loss', 'pixelwise'\]"):
            get_config(preset)  # type: ignore[arg-type]


def test_numpy_arrays_of_widths_and_weights_are_sequences() -> None:
    """A NumPy sweep of kernel widths (or SSIM weights) is a sequence of them, as a list is (scale_weights already
    took arrays); it was refused as 'a finite number between 1e-06 and 1e+06'."""
    cfg = get_config(sigma=np.array([0.03, 0.06]), weight_ssim=np.array([1.0, 2.0]))
    assert cfg == get_config(sigma=(0.03, 0.06), weight_ssim=(1.0, 2.0))
    assert type(cfg.sigma[0]) is float and type(cfg.weight_ssim[0]) is float  # plain values (JSON records)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(patch_mmd(x, x.flip(-1), sigma=np.array([0.03, 0.06])),
                       patch_mmd(x, x.flip(-1), sigma=[0.03, 0.06]))
    with pytest.raises(ValueError, match="sigma must be a number or 1 to 8 numbers"):
        get_config(sigma=np.zeros(0))


def test_the_edge_windows_areas_are_counted_exactly_in_16_bit_dtypes() -> None:
    """The clipped windows' areas were counted in the tensor's dtype: in bfloat16 a 1030-px level's edge ratio
    came out 1.0 (it is 16/14 and 16/12.25), and beyond 4096 px infinite."""
    for size in (1030, 4100):
        grid = window_grid(size, size, 16, 8, cover=True)
        ref = grid._area_ratio(torch.zeros(1, dtype=torch.float64))
        for dtype in (torch.bfloat16, torch.float16):
            got = grid._area_ratio(torch.zeros(1, dtype=dtype))
            torch.testing.assert_close(got.double(), ref, rtol=1e-2, atol=0)
