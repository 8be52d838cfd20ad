"""The SSIM term of MMD++ (``weight_ssim``, docs/method.md §3.3) against independent SSIM implementations."""

from __future__ import annotations

import pytest
import torch

from patchmmd import distance_map, mmdpp, precompute_target
from patchmmd.core.ssim import SSIM_WINDOW, dissimilarity_map, spread_map, target_moments

ONLY_SSIM = {"weight_l2": 0.0, "weight_local": 0.0, "weight_mmd": 0.0, "weight_ssim": 1.0}


def _pair(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype)
    y = (x + 0.1 * torch.randn(*shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape", [(2, 3, 40, 37), (1, 1, 11, 64), (1, 3, 96, 96)])
def test_matches_pytorch_msssim(shape):
    ms = pytest.importorskip("pytorch_msssim")
    x, y = _pair(shape)
    ref = 1 - ms.ssim(x, y, data_range=1.0, size_average=False)
    got = dissimilarity_map(x * 2 - 1, y * 2 - 1).mean(dim=(1, 2, 3))
    # pytorch-msssim builds its Gaussian window in float32 (relative differences ~2e-7); skimage's check
    # below is the float64 one.
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


def test_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair((1, 3, 48, 40), seed=1)
    ref = metrics.structural_similarity(
        x[0].numpy(), y[0].numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    got = float(dissimilarity_map(x * 2 - 1, y * 2 - 1).mean())
    assert got == pytest.approx(1 - ref, rel=1e-9)


def test_mmdpp_with_only_the_ssim_term_is_its_weighted_value():
    ms = pytest.importorskip("pytorch_msssim")
    x, y = _pair((2, 3, 32, 32))
    got = mmdpp(x, y, **{**ONLY_SSIM, "weight_ssim": 3.0})
    torch.testing.assert_close(got, 3.0 * (1 - ms.ssim(x, y, data_range=1.0, size_average=False)))


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 45, 70)])
def test_map_mean_equals_the_distance(shape):
    x, y = _pair(shape, dtype=torch.float32)
    for options in (ONLY_SSIM, {"preset": "loss", "weight_ssim": 10.0}):
        m = distance_map(x, y, **options)
        assert m.shape == (shape[0], 1, *shape[-2:])
        torch.testing.assert_close(m.mean(dim=(1, 2, 3)), mmdpp(x, y, **options), rtol=1e-5, atol=1e-7)


def test_spread_map_keeps_the_mean_and_places_the_difference():
    x, y = _pair((1, 3, 48, 48), dtype=torch.float64)
    y = x.clone()
    y[..., 30:40, 30:40] = 0.5
    m = dissimilarity_map(x * 2 - 1, y * 2 - 1)
    full = spread_map(m, 48, 48)
    torch.testing.assert_close(full.mean(), m.mean())
    assert full[..., 30:40, 30:40].mean() > 10 * full[..., :16, :16].mean()


@pytest.mark.parametrize("options", [{"preset": "loss", "weight_ssim": 10.0}, {"preset": "loss"},
                                     {"preset": "loss", "weight_ssim": [0.0, 0.0, 5.0]}])
def test_precomputed_target_gives_the_same_value_and_gradient(options):
    """The target holds y's SSIM moments at the term's octaves (None where an octave's weight is 0); x's
    value and gradient against it are those against y."""
    x, y = _pair((2, 3, 48, 48), dtype=torch.float32)
    target = precompute_target(y, **options)
    weights = target.config.ssim_weights
    assert len(target.ssim_moments) == len(weights)
    for octave, (w, moments) in enumerate(zip(weights, target.ssim_moments, strict=True)):
        side = 48 // 2**octave - SSIM_WINDOW + 1
        assert (moments is None) == (w == 0)
        assert moments is None or moments.shape == (2, 6, side, side)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, ref = mmdpp(a, target), mmdpp(b, y, **options)
    torch.testing.assert_close(got, ref)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_target_moments_match_the_pairwise_map_in_float64():
    x, y = _pair((2, 3, 29, 31))
    xs, ys = x * 2 - 1, y * 2 - 1
    torch.testing.assert_close(dissimilarity_map(xs, ys, target_moments(ys)), dissimilarity_map(xs, ys),
                               rtol=1e-12, atol=1e-14)


def test_gradcheck_float64():
    x, y = _pair((1, 2, 12, 13))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: mmdpp(a, y, out_of_range="ignore", **ONLY_SSIM), (x,))


def test_closed_form_gradient_gradcheck_both_images_and_target_moments():
    """The term's backward is written out (not autograd through the formula): checked against finite
    differences for x and y together, and for x, y and a target's moments (which then carry y's own part)."""
    x, y = _pair((2, 2, 13, 12), seed=3)
    xs, ys = (x * 2 - 1).requires_grad_(True), (y * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(dissimilarity_map, (xs, ys))
    moments = target_moments(ys.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(dissimilarity_map, (xs, ys, moments))


def test_finite_gradient_at_identical_inputs():
    x, _ = _pair((1, 3, 16, 16), dtype=torch.float32)
    a = x.clone().requires_grad_(True)
    mmdpp(a, x, **ONLY_SSIM).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_identical_images_give_zero_and_constant_images_are_finite():
    x, _ = _pair((1, 3, 16, 16))
    assert float(mmdpp(x, x, **ONLY_SSIM)) == pytest.approx(0.0, abs=1e-12)
    zero, one = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    assert torch.isfinite(mmdpp(zero, one, **ONLY_SSIM)).all()


def test_images_smaller_than_the_window_are_refused():
    x, y = _pair((1, 3, SSIM_WINDOW - 1, 32))
    with pytest.raises(ValueError, match=f"at least {SSIM_WINDOW}x{SSIM_WINDOW}"):
        mmdpp(x, y, **ONLY_SSIM)
    mmdpp(x, y)  # without the term, the patches' size is the limit


def test_negative_weight_is_refused_and_all_zero_weights_name_every_term():
    with pytest.raises(ValueError, match="weight_ssim"):
        mmdpp(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), weight_ssim=-1.0)
    with pytest.raises(ValueError, match="weight_ssim are all 0"):
        mmdpp(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), **{**ONLY_SSIM, "weight_ssim": 0.0})


def test_octaves_compare_box_downsampled_images():
    metrics = pytest.importorskip("skimage.metrics")

    def one_minus_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
        return 1 - metrics.structural_similarity(
            a.numpy(), b.numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )

    x, y = _pair((2, 3, 50, 45))
    weights = (2.0, 0.0, 5.0)
    got = mmdpp(x, y, **{**ONLY_SSIM, "weight_ssim": weights})
    px, py = (torch.nn.functional.avg_pool2d(t, 4) for t in (x, y))
    for i in range(2):
        ref = 2.0 * one_minus_ssim(x[i], y[i]) + 5.0 * one_minus_ssim(px[i], py[i])
        assert float(got[i]) == pytest.approx(ref, rel=1e-9)
    m = distance_map(x, y, **{**ONLY_SSIM, "weight_ssim": weights})
    torch.testing.assert_close(m.mean(dim=(1, 2, 3)), got)


def test_a_scalar_weight_is_the_native_octave_alone():
    x, y = _pair((1, 3, 32, 32))
    torch.testing.assert_close(mmdpp(x, y, **{**ONLY_SSIM, "weight_ssim": 4.0}),
                               mmdpp(x, y, **{**ONLY_SSIM, "weight_ssim": [4.0]}))


def test_the_coarsest_octave_sets_the_smallest_image():
    x, y = _pair((1, 3, 2 * SSIM_WINDOW - 1, 40))
    with pytest.raises(ValueError, match=f"at least {2 * SSIM_WINDOW}x"):
        mmdpp(x, y, **{**ONLY_SSIM, "weight_ssim": (1.0, 1.0)})
    mmdpp(x, y, **{**ONLY_SSIM, "weight_ssim": (1.0, 0.0)})


@pytest.mark.parametrize("bad", [(), (1.0,) * 6, (1.0, -1.0), "x", float("nan")])
def test_bad_octave_weights_are_refused(bad):
    with pytest.raises(ValueError, match="weight_ssim"):
        mmdpp(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), weight_ssim=bad)
