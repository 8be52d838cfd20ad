"""The default model's parts (docs/method.md §3.2-3.3): shift-tolerant aligned terms, multi-bandwidth kernels,
calibrated weights."""

from __future__ import annotations

import pytest
import torch

import patchmmd
from patchmmd.core.aligned import (
    compensated_difference,
    l2_map,
    local_map,
    offsets,
    shift_image,
    tolerant_aligned,
)
from patchmmd.core.patches import window_grid
from patchmmd.core.rff import rff_features
from patchmmd.data import sample_image
from patchmmd.evaluation.shift import shift_ratios


def _photo(size: int = 160) -> torch.Tensor:
    x = sample_image("astronaut")
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[:, top : top + size, left : left + size].contiguous()


def test_default_counts_one_pixel_shifts_far_below_visible_noise():
    r = shift_ratios(lambda a, b: patchmmd.mmdpp(a, b), _photo(), seed=0)
    assert r["shift-1px"] <= 0.15 and r["shift-1px-diag"] <= 0.15, r
    assert r["shift-0.5px"] <= 0.5, r
    # The check can fail: the pixelwise preset (the previous default) counts the same shift as more than noise.
    old = shift_ratios(lambda a, b: patchmmd.mmdpp(a, b, preset="pixelwise"), _photo(), seed=0)
    assert old["shift-1px"] > 1.0, old


def test_integer_shifts_of_the_search_radius_cost_only_their_border():
    x = _photo(96)[None]
    for dy, dx in offsets(1):
        moved = shift_image(x, dy, dx)
        d = float(patchmmd.mmdpp(x, moved))
        noisy = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        assert d <= 0.1 * float(patchmmd.mmdpp(x, noisy)), (dy, dx, d)


def test_offsets_and_shift_image():
    assert offsets(0) == [(0, 0)]
    assert offsets(1)[0] == (0, 0) and sorted(offsets(1)) == [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    y = torch.arange(20.0).reshape(1, 1, 4, 5)
    s = shift_image(y, 1, -1)
    assert s[0, 0, 0, 1] == y[0, 0, 1, 0] and s[0, 0, 3, 0] == y[0, 0, 3, 0]  # read below-left, edges replicated


def test_compensation_removes_subpixel_motion_but_not_noise():
    x = _photo(64)[None].double() * 2 - 1
    half = 0.5 * (x + shift_image(x, 0, 1))  # half a pixel to the right (linear interpolation)
    e = compensated_difference(x, half, window=5)
    # Linear interpolation also blurs a little, which no displacement explains: most, not all, is removed.
    assert float(e.pow(2).mean()) < 0.35 * float((x - half).pow(2).mean())
    g = torch.Generator().manual_seed(0)
    noise = x + 0.06 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    e = compensated_difference(x, noise, window=5)
    assert float(e.pow(2).mean()) > 0.9 * float((x - noise).pow(2).mean())
    torch.testing.assert_close(compensated_difference(noise, x, window=5), -e)


def test_tolerant_terms_without_tolerance_are_the_window_means_of_the_pixelwise_maps():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 40, 56, generator=g, dtype=torch.float64), torch.rand(2, 3, 40, 56, generator=g,
                                                                                    dtype=torch.float64)
    (values, grid), = tolerant_aligned(x, y, [1], radius=0, subpixel=False, window=16, weight_l2=0.3,
                                      weight_local=2.0, local_patch_size=3, local_sigma=0.1)
    m = 0.3 * l2_map(x, y) + 2.0 * local_map(x, y, patch_size=3, sigma=0.1)
    assert grid == window_grid(40, 56, 16, 8)
    torch.testing.assert_close(values, grid.pool(m))


def test_gradient_path_gives_the_same_value_and_finite_gradients():
    x = _photo(64)[None]
    y = shift_image(x, 0, 1).clone()
    y[..., 20:40, 20:40] = 0.5
    with torch.no_grad():
        ref = patchmmd.mmdpp(x, y)
    xg = x.clone().requires_grad_(True)
    d = patchmmd.mmdpp(xg, y)
    # Without gradients the offset scan's values are the result (on the CPU, from the compiled kernel); with
    # them the winners are recomputed in PyTorch: equal to float32 rounding.
    torch.testing.assert_close(d.detach(), ref, rtol=1e-6, atol=0)
    d.sum().backward()
    assert xg.grad is not None and bool(torch.isfinite(xg.grad).all()) and float(xg.grad.abs().sum()) > 0


@pytest.mark.parametrize("grad", [False, True])
def test_large_inputs_are_taken_in_chunks_with_the_same_values_and_gradients(monkeypatch, grad):
    from patchmmd.core import aligned

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 48, 40, generator=g, dtype=torch.float64)
    y = shift_image(x, 1, 0).clone()
    y[1] = torch.rand(3, 48, 40, generator=g, dtype=torch.float64)  # unrelated: many offsets win
    results = []
    for large in (aligned.LARGE_ELEMENTS, 2 * 3 * 48 * 40):  # the batch whole; then chunks of two images
        monkeypatch.setattr(aligned, "LARGE_ELEMENTS", large)
        xg = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            d = patchmmd.mmdpp(xg, y, weight_mmd=0)
        results.append((d.detach(), torch.autograd.grad(d.sum(), xg)[0] if grad else None))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    if grad:
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-15)


def test_gradcheck_without_the_subpixel_fit():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 20, 20, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: patchmmd.mmdpp(a, b, num_features=16, subpixel=False), (xg, yg),
                                    eps=1e-6, atol=1e-5)


def test_stop_gradient_of_the_subpixel_fit_points_where_the_exact_gradient_does():
    # The fitted displacement is a constant for autograd (docs/method.md §3.2): compare with central
    # differences of the value, along random directions, on a photo crop against a distorted, moved copy.
    x = _photo(48)[None].double()
    half = (0.5 * (x + shift_image(x, 0, 1)) + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2),
                                                                  dtype=x.dtype)).clamp(0, 1)
    f = lambda t: patchmmd.mmdpp(t, half, out_of_range="ignore").sum()  # noqa: E731
    xg = x.clone().requires_grad_(True)
    f(xg).backward()
    assert xg.grad is not None
    g = torch.Generator().manual_seed(3)
    analytic, numeric = [], []
    for _ in range(12):
        v = torch.randn(x.shape, generator=g, dtype=x.dtype)
        v = v / v.norm()
        analytic.append(float((xg.grad * v).sum()))
        with torch.no_grad():
            numeric.append(float((f(x + 1e-4 * v) - f(x - 1e-4 * v)) / 2e-4))
    a, n = torch.tensor(analytic), torch.tensor(numeric)
    assert float(torch.nn.functional.cosine_similarity(a, n, dim=0)) > 0.95, (a, n)


def test_multi_bandwidth_kernel_is_the_mean_of_its_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 24, 24, generator=g, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    sigmas = (0.015, 0.03, 0.06)
    each = [patchmmd.patch_mmd(x, y, sigma=s) for s in sigmas]
    mixed = patchmmd.patch_mmd(x, y, sigma=sigmas)
    torch.testing.assert_close(mixed, sum(each) / 3)
    # the RFF estimate of the mixture, averaged over 8 feature draws (one draw is off by up to 3 % here): within
    # 2 % (a mixture that left out the middle width would be 5.5 % low)
    rff = torch.stack([patchmmd.patch_mmd(x, y, sigma=list(sigmas), estimator="rff", num_features=4096, seed=s)
                       for s in range(8)]).mean(0)
    torch.testing.assert_close(rff, mixed, rtol=0.02, atol=0)


def test_multi_bandwidth_features_keep_their_cos_sin_pairs():
    x = torch.rand(1, 3, 8, 8)
    f = rff_features(x, patch_size=3, bandwidth=(0.135, 0.27, 0.54), num_features=256, seed=0,
                     features="stratified", center=True)
    assert (f.m, f.n_sin) == (128, 128)


@pytest.mark.parametrize(("options", "message"), [
    ({"sigma": ()}, "sigma must be a number or 1 to 8 numbers"),
    ({"sigma": (0.01, -1.0)}, "sigma must be a finite number"),
    ({"shift_radius": 5}, "shift_radius must be an integer between 0 and 4"),
    ({"shift_radius": -1}, "shift_radius must be an integer >= 0"),
    ({"subpixel": 1}, "subpixel must be True or False"),
    ({"mmd_native": "yes"}, "mmd_native must be True or False"),
    ({"tolerance_window": 0}, "tolerance_window must be an integer >= 1"),
])
def test_new_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        patchmmd.get_config(**options)


def test_loss_preset_trains_on_crops_at_two_native_octaves():
    cfg = patchmmd.get_config("loss")
    assert cfg.base_size is None and not cfg.mmd_native and cfg.num_scales == 2 and cfg.weight_mmd == 400.0
    assert not cfg.shift_tolerant
    # the MMD compares contrast-normalised patches (widths in units of the unit ball) in 16-px windows
    assert cfg.contrast_floor == 0.02 and cfg.sigma == (0.5, 1.0) and (cfg.window, cfg.stride) == (16, 8)
    assert patchmmd.get_config().contrast_floor is None
    assert [lv.factor for lv in cfg.levels(64, 64)] == [1, 2]  # a 64² crop: native and one octave down
    x = _photo(64)[None].repeat(2, 1, 1, 1)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    xg = x.clone().requires_grad_(True)
    loss = patchmmd.MMDPP(preset="loss")(xg, y)
    loss.backward()
    assert float(loss.detach()) > 0 and xg.grad is not None and bool(torch.isfinite(xg.grad).all())
    # the MMD term's share of the loss is larger than in the default
    def mmd_share(preset: str) -> float:
        return float(patchmmd.mmdpp(x, y, preset=preset, weight_l2=0, weight_local=0, weight_ssim=0).sum()
                     / patchmmd.mmdpp(x, y, preset=preset, weight_ssim=0).sum())

    assert mmd_share("loss") > 2 * mmd_share("default")
    # SSIM at the same two octaves, each in units of its value on the mildest visible distortion
    assert cfg.ssim_weights == (9.93, 29.1) and patchmmd.get_config().ssim_weights == ()
    # pixelwise aligned terms: a loss against an aligned truth counts a 1-px misalignment in full, where the
    # default's shift-tolerant terms let it pass
    shifted = torch.roll(x, 1, dims=-1)
    aligned_only = {"preset": "loss", "weight_mmd": 0, "weight_ssim": 0}
    tolerant = patchmmd.mmdpp(x, shifted, **aligned_only, shift_radius=1, subpixel=True)
    assert bool((patchmmd.mmdpp(x, shifted, **aligned_only) > 5 * tolerant).all())


def test_presets_keep_the_previous_models():
    cfg = patchmmd.get_config("pixelwise")
    assert not cfg.shift_tolerant and not cfg.mmd_native and cfg.sigma == 0.06
    assert patchmmd.get_config().shift_tolerant and patchmmd.get_config().sigma == (0.015, 0.03, 0.06)


@pytest.mark.parametrize("subpixel", [False, True])
def test_aligned_terms_give_the_second_image_its_gradient(subpixel):
    """A ``y`` that requires grad gets the aligned terms' gradient (the sub-pixel fit's inputs are constants,
    ``y`` itself is not): exact against float64 central differences without the fit, non-zero with it."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    y = (0.8 * torch.roll(x, 1, -1) + 0.2 * torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)
    v = torch.randn(y.shape, generator=g, dtype=torch.float64)
    opts = dict(weight_mmd=0.0, subpixel=subpixel, out_of_range="ignore")
    yg = y.clone().requires_grad_(True)
    patchmmd.mmdpp(x, yg, **opts).sum().backward()
    assert yg.grad is not None and bool(torch.isfinite(yg.grad).all()) and float(yg.grad.abs().sum()) > 0
    if not subpixel:
        eps = 1e-6
        f = lambda t: float(patchmmd.mmdpp(x, t, **opts).sum())  # noqa: E731
        numeric = (f(y + eps * v) - f(y - eps * v)) / (2 * eps)
        assert float((yg.grad * v).sum()) == pytest.approx(numeric, rel=1e-6)
