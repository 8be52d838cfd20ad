"""Bad input gets a clear exception naming the argument and the expectation, never a silent number."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchmmd

ENTRY_POINTS = {
    "mmdpp": patchmmd.core.mmdpp,
    "patch_mmd": patchmmd.patch_mmd,
    "local_distance": patchmmd.local_distance,
    "l2_distance": patchmmd.l2_distance,
    "distance_map": patchmmd.distance_map,
}

X = torch.rand(1, 3, 16, 16)


@pytest.mark.parametrize("fn", ENTRY_POINTS.values(), ids=ENTRY_POINTS)
@pytest.mark.parametrize(
    ("x", "y", "exc", "match"),
    [
        (X[0, 0], X[0, 0], ValueError, r"x must have shape \(N, C, H, W\)"),
        (X[None], X[None], ValueError, "5 dimensions"),
        (X, torch.rand(1, 3, 16, 17), ValueError, "same shape"),
        (X, torch.rand(1, 1, 16, 16), ValueError, "same shape"),
        (X, torch.rand(2, 3, 16, 16), ValueError, "same shape"),
        ((X * 255).to(torch.uint8), (X * 255).to(torch.uint8), TypeError, "x must be a floating-point tensor"),
        (X, X > 0.5, TypeError, "y must be a floating-point tensor"),
        (X.numpy(), X, TypeError, "x must be a torch.Tensor"),
        (X, X.double(), TypeError, "same dtype"),
        (X * 255, X, ValueError, r"x has values in .* outside value_range=\(0, 1\)"),
        (X, X - 0.5, ValueError, "y has values in"),
        (X, X.masked_fill(X > 0.9, math.nan), ValueError, "y contains NaN or Inf"),
        (X.masked_fill(X > 0.9, math.inf), X, ValueError, "x contains NaN or Inf"),
        (torch.rand(1, 3, 1, 16), torch.rand(1, 3, 1, 16), ValueError, "at least 3x3 pixels"),
        (torch.rand(0, 3, 16, 16), torch.rand(0, 3, 16, 16), ValueError, "at least one image"),
    ],
)
def test_bad_images(fn, x, y, exc, match):
    if fn is patchmmd.l2_distance and "at least 3x3" in match:
        pytest.skip("L2 has no patch size: a 1-pixel-high image is valid")
    with pytest.raises(exc, match=match):
        fn(x, y)


def test_small_overshoot_tolerated_and_switches():
    y = X + 5e-4  # rounding noise from resampling stays within the tolerance
    assert torch.isfinite(patchmmd.mmdpp(X, y)).all()
    over = X * 1.1
    with pytest.raises(ValueError, match="out_of_range='clamp'"):
        patchmmd.mmdpp(X, over)
    torch.testing.assert_close(patchmmd.mmdpp(X, over, out_of_range="clamp"), patchmmd.mmdpp(X, over.clamp(0, 1)))
    assert torch.isfinite(patchmmd.mmdpp(X, over, out_of_range="ignore")).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"patch_size": 4}, ValueError, "patch_size must be odd"),
        ({"patch_size": 0}, ValueError, "patch_size must be an integer >= 1"),
        ({"sigma": 0}, ValueError, "sigma must be a finite number between"),
        ({"sigma": math.nan}, ValueError, "sigma"),
        ({"window": 0}, ValueError, "window must be an integer >= 1"),
        ({"stride": 1.5}, ValueError, "stride must be an integer"),
        ({"estimator": "fast"}, ValueError, r"estimator must be one of \('exact', 'rff'\)"),
        ({"num_features": 0}, ValueError, "num_features"),
        ({"features": "sobol"}, ValueError, "features must be one of"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"value_range": (1, 0)}, ValueError, "value_range must be a pair"),
        ({"value_range": 1}, ValueError, "value_range must be a pair"),
        ({"value_range": "01"}, ValueError, "value_range must be a pair"),
        ({"out_of_range": "warn"}, ValueError, "out_of_range must be one of"),
        ({"seed": "a"}, ValueError, "seed must be an integer"),
        ({"patchsize": 3}, TypeError, "patchsize"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        patchmmd.patch_mmd(X, X, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigmaa": 0.1}, r"unknown option\(s\) \['sigmaa'\]; valid options are"),
        ({"preset": "lpips"}, "preset must be one of"),
        ({"weight_local": -1}, "weight_local must be a finite number >= 0"),
        ({"base_size": 0}, "base_size must be an integer >= 3"),
        ({"num_scales": 2, "scale_weights": (1.0,)}, "scale_weights must have num_scales=2 entries"),
    ],
)
def test_bad_mmdpp_options(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        patchmmd.mmdpp(X, X, **kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        patchmmd.MMDPP(**kwargs)


def test_modules_check_out_of_range_when_built():
    """Like their other options, and not first at the call."""
    with pytest.raises(ValueError, match="out_of_range must be one of"):
        patchmmd.MMDPP(out_of_range="warn")
    with pytest.raises(ValueError, match="out_of_range must be one of"):
        patchmmd.PatchMMD(out_of_range="warn")


def test_images_smaller_than_a_window_use_one_clipped_window():
    from patchmmd.core.patches import window_grid

    x, y = torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(patchmmd.patch_mmd(x, y, window=32), patchmmd.patch_mmd(x, y, window=None))
    g = window_grid(20, 70, 32, 16)  # clipped in height only: one row of 32-wide windows
    assert (g.window_h, g.window_w, g.rows, g.cols) == (20, 32, 1, 3)


_floats = st.one_of(
    st.floats(min_value=-2.0, max_value=3.0, width=32), st.sampled_from([math.nan, math.inf, -math.inf])
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 2),
    c=st.integers(1, 4),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    dh=st.integers(0, 1),
    ndim=st.sampled_from([2, 3, 4, 5]),
    fill=_floats,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64]),
    fn=st.sampled_from(list(ENTRY_POINTS.values())),
    estimator=st.sampled_from(["exact", "rff"]),
)
def test_no_input_crashes_with_anything_but_clear_errors(n, c, h, w, dh, ndim, fill, dtype, fn, estimator):
    shape = (n, c, h, w)[4 - ndim :] if ndim <= 4 else (1, n, c, h, w)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(n + c + h + w)).to(dtype)
    yshape = list(shape)
    if len(yshape) >= 2:
        yshape[-2] += dh
    y = torch.rand(yshape, generator=torch.Generator().manual_seed(1)).to(dtype)
    if x.numel() and x.is_floating_point():
        x.view(-1)[0] = fill
    kwargs = {"estimator": estimator} if fn in (patchmmd.core.mmdpp, patchmmd.patch_mmd, patchmmd.distance_map) else {}
    try:
        out = fn(x, y, **kwargs)
    except (ValueError, TypeError) as e:
        assert str(e)  # a message, naming what is wrong
        return
    assert bool(torch.isfinite(out).all())
    assert bool((out >= 0).all())
