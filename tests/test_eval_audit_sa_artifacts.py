"""The lattice measure (patchmmd.evaluation.artifacts) against independent float64 references, its invariances, and
the inputs it must refuse rather than answer with a number that means nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from patchmmd.evaluation.artifacts import lattice_power, lattice_ratio

_LUMA = np.array([0.299, 0.587, 0.114])


def _np_lattice(img: np.ndarray, period: int) -> np.ndarray:
    """numpy float64: per image of ``(N, 3, H, W)``, the power ``|F|² / (HW)`` of the mean-removed luma at the bins
    ``(k H/p, l W/p)`` other than DC, the bins picked by their frequencies (not by slicing)."""
    g = np.einsum("nchw,c->nhw", img.astype(np.float64), _LUMA)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    h, w = g.shape[1:]
    power = np.abs(np.fft.fft2(g)) ** 2 / (h * w)
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)  # cycles per pixel
    on_y = np.isclose((fy * period) % 1.0, 0) | np.isclose((fy * period) % 1.0, 1)
    on_x = np.isclose((fx * period) % 1.0, 0) | np.isclose((fx * period) % 1.0, 1)
    mask = on_y[:, None] & on_x[None, :]
    mask[0, 0] = False
    assert mask.sum() == period * period - 1
    return (power * mask).sum(axis=(1, 2))


@pytest.mark.parametrize("period, h, w", [(4, 16, 24), (2, 6, 10), (4, 64, 64), (8, 16, 40)])
def test_lattice_power_matches_numpy_float64(period: int, h: int, w: int) -> None:
    x = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(h * w + period))
    ref = _np_lattice(x.numpy(), period)
    assert np.allclose(lattice_power(x, period).numpy(), ref, rtol=1e-9, atol=1e-12)


def test_a_known_period_gives_its_closed_form_and_a_smooth_image_none() -> None:
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    # a cosine of period 4 px along x, amplitude a: bins ±W/4, each |F| = a HW / 2, so power 2 (a HW / 2)² / HW
    a = 0.05
    lattice = 0.5 + a * torch.cos(2 * math.pi * xx / 4)
    assert float(lattice_power(lattice.expand(1, 3, h, w))) == pytest.approx(a * a * h * w / 2, rel=1e-12)
    # a checkerboard of period 2 is a 4-periodic pattern too: all its power (HW · 0.1²) at bin (H/2, W/2)
    board = 0.5 + 0.1 * (-1.0) ** (yy + xx)
    assert float(lattice_power(board.expand(1, 1, h, w))) == pytest.approx(0.01 * h * w, rel=1e-12)
    # smooth content at frequencies that are not multiples of 1/4 cycle per pixel: nothing
    smooth = 0.5 + 0.2 * torch.cos(2 * math.pi * xx / w) * torch.cos(2 * math.pi * 3 * yy / h)
    assert float(lattice_power(smooth.expand(1, 3, h, w))) < 1e-20
    # a constant truth has no power there: the ratio is undefined, not a number
    flat = torch.full((1, 3, h, w), 0.3, dtype=torch.float64)
    assert math.isnan(lattice_ratio(lattice.expand(1, 3, h, w), flat))
    # a period of 8 is not a multiple of the 4-pixel lattice: not counted
    eight = 0.5 + a * torch.cos(2 * math.pi * xx / 8)
    assert float(lattice_power(eight.expand(1, 3, h, w))) < 1e-20


def test_invariances() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 24, 32, generator=g, dtype=torch.float64)
    p = lattice_power(x)
    # a brightness offset (mean removed), a circular shift (power ignores the phase), flips: unchanged
    assert torch.allclose(lattice_power(x + 0.3), p, rtol=1e-10)
    assert torch.allclose(lattice_power(torch.roll(x, shifts=(5, 7), dims=(-2, -1))), p, rtol=1e-10)
    assert torch.allclose(lattice_power(x.flip(-1)), p, rtol=1e-10)
    assert torch.allclose(lattice_power(x.flip(-2)), p, rtol=1e-10)
    # a transpose swaps the axes: the bins swap with them
    assert torch.allclose(lattice_power(x.transpose(-1, -2)), p, rtol=1e-10)
    # a gain scales the power by its square, and the ratio not at all
    assert torch.allclose(lattice_power(2 * x), 4 * p, rtol=1e-10)
    assert lattice_ratio(2 * x, 2 * x[[1, 0]]) == pytest.approx(lattice_ratio(x, x[[1, 0]]), rel=1e-12)
    # gray given as 1 channel or as 3 equal channels: the same luma
    gray = x[:, :1]
    assert torch.allclose(lattice_power(gray), lattice_power(gray.expand(-1, 3, -1, -1)), rtol=1e-10)
    # the power is a sum over pixels (documented): the same pattern tiled on 4 times the area, 4 times the power,
    # while the ratio of two images tiled alike does not change
    t = x[:, :, :8, :8]
    big = t.repeat(1, 1, 2, 2)
    assert torch.allclose(lattice_power(big), 4 * lattice_power(t), rtol=1e-10)
    assert lattice_ratio(big[:1], big[1:]) == pytest.approx(lattice_ratio(t[:1], t[1:]), rel=1e-10)


def test_integer_images_are_refused() -> None:
    """An 8-bit image was measured in units of 255²: against a float truth in [0, 1] the ratio came out 65025
    times too large or too small (an 8-bit truth made a strong lattice pass the ``≤ 2`` check)."""
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(1, 3, 32, 32, generator=g)
    tile = torch.zeros(4, 4)
    tile[0, 0] = 0.3
    out = (truth + tile.repeat(8, 8)).clamp(0, 1)
    assert lattice_ratio(out, truth) > 2
    truth8 = (truth * 255).round().to(torch.uint8)
    with pytest.raises(TypeError, match="floating"):
        lattice_ratio(out, truth8)
    with pytest.raises(TypeError, match="floating"):
        lattice_power(truth8)


@pytest.mark.parametrize("h, w", [(0, 8), (8, 0), (4, 8), (8, 4)])
def test_images_shorter_than_two_periods_are_refused(h: int, w: int) -> None:
    """An empty side raised a bare FFT error; a side of one period made every bin a "lattice" bin (within one period
    every image is periodic), so the "lattice power" was the image's whole variance."""
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="two periods"):
        lattice_power(x, 4)


def test_two_periods_is_enough() -> None:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(lattice_power(x, 4)) == pytest.approx(float(_np_lattice(x.numpy(), 4)[0]), rel=1e-10)


def test_an_empty_batch_is_refused_not_nan() -> None:
    """An empty batch gave NaN, which reads "the truth has no power at the lattice frequencies"."""
    empty = torch.zeros(0, 3, 16, 16)
    with pytest.raises(ValueError, match="empty batch"):
        lattice_ratio(empty, empty)
