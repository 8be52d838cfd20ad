"""Random Fourier features: accuracy on real photo crops, r^-1/2 convergence, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchmmd
from patchmmd.core.features import _draw_bandwidths, random_features
from patchmmd.core.rff import DEFAULT_NUM_FEATURES


@pytest.fixture(scope="module")
def exact(photo_crop_pairs):
    x, y = photo_crop_pairs
    return patchmmd.patch_mmd(x, y, estimator="exact")


def _mean_rel_error(x, y, exact, r, kind, seeds):
    errs = []
    for seed in seeds:
        est = patchmmd.patch_mmd(x, y, estimator="rff", num_features=r, features=kind, seed=seed)
        errs.append(float(((est - exact).abs() / exact).mean()))
    return float(np.mean(errs))


def test_default_features_within_two_percent_on_photo_crops(photo_crop_pairs, exact):
    x, y = photo_crop_pairs
    assert bool((exact > 0).all())
    err = _mean_rel_error(x.float(), y.float(), exact.float(), DEFAULT_NUM_FEATURES, "stratified", range(4))
    assert err <= 0.02, err


def test_variance_reduction_helps(photo_crop_pairs, exact):
    """At r = 512: stratified < orthogonal < iid in mean relative error (measured, kept in docs)."""
    x, y = photo_crop_pairs
    errs = {k: _mean_rel_error(x, y, exact, 512, k, range(4)) for k in ("iid", "orthogonal", "stratified")}
    assert errs["stratified"] < errs["orthogonal"] < errs["iid"], errs


@pytest.mark.parametrize(("kind", "lo", "hi"), [("iid", -0.65, -0.35), ("stratified", -0.9, -0.35)])
def test_error_shrinks_like_inverse_sqrt_r(photo_crop_pairs, exact, kind, lo, hi):
    x, y = photo_crop_pairs
    rs = [32, 128, 512, 2048]
    errs = [_mean_rel_error(x, y, exact, r, kind, range(2)) for r in rs]
    slope = np.polyfit(np.log(rs), np.log(errs), 1)[0]
    assert lo <= slope <= hi, (slope, errs)


def test_same_seed_same_value_every_call():
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    y = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    a = patchmmd.patch_mmd(x, y, estimator="rff", seed=7)
    for _ in range(3):
        assert torch.equal(patchmmd.patch_mmd(x, y, estimator="rff", seed=7), a)
    assert not torch.equal(patchmmd.patch_mmd(x, y, estimator="rff", seed=8), a)


@pytest.mark.parametrize("kind", ["iid", "orthogonal", "stratified"])
def test_features_apply_centring_and_have_the_right_scale(kind):
    s = 0.54
    w, b = random_features(3, 3, s, 4096, seed=0, kind=kind, dtype=torch.float64)
    assert w.sum(dim=(2, 3)).abs().max() < 1e-10  # zero mean per channel = Π applied
    # Each filter ~ N(0, Π / s²): E||w||² = rank(Π) / s² = 24 / s². The mean of 4096 draws of chi²(24) / 24 has a
    # relative standard deviation of sqrt(2 / 24) / 64 = 0.45 %: 2.5 % is 5.5 of them (iid, orthogonal: chi
    # lengths). Stratified lengths are the chi quantiles of a stratified uniform: their mean is the expectation to
    # 1e-4 (measured over 20 seeds), so 0.1 %. (5 % let through a bandwidth 2 % off, or chi lengths of 25 dof.)
    rel = {"iid": 0.025, "orthogonal": 0.025, "stratified": 1e-3}[kind]
    assert float((w.flatten(1) ** 2).sum(1).mean()) == pytest.approx(24 / s**2, rel=rel)
    # Phases uniform on [0, 2π) (the stratified law pairs each b with b + π/2).
    assert float(b.min()) >= 0 and float(b.max()) < 2.5 * np.pi
    assert float(torch.cos(b).mean()) == pytest.approx(0, abs=0.05)


def test_features_identical_across_devices_and_dtypes(device):
    w64, b64 = random_features(3, 3, 0.54, 64, seed=3, dtype=torch.float64)
    w, b = random_features(3, 3, 0.54, 64, seed=3, device=device, dtype=torch.float32)
    torch.testing.assert_close(w.cpu(), w64.float())
    torch.testing.assert_close(b.cpu(), b64.float())


def test_chi_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from patchmmd.core.features import chi_quantile

    u = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.9, 0.999999], dtype=torch.float64)
    for dof in (1, 8, 24):
        np.testing.assert_allclose(chi_quantile(u, dof).numpy(), stats.chi.ppf(u.numpy(), dof), rtol=1e-9)


@pytest.mark.parametrize(("kind", "fewest"), [("stratified", 5), ("orthogonal", 3), ("iid", 3)])
def test_every_width_of_a_mixture_gets_features(kind, fewest):
    """Three widths need three distinct frequencies: 4 stratified features have only 2 (cos/sin pairs), and the
    third width was silently left out of the kernel. Too few features are refused; from the fewest on, every width
    has a feature."""
    sigmas = (0.015, 0.03, 0.06)
    x, y = torch.rand(2, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="distinct frequencies"):
        patchmmd.patch_mmd(x, y, estimator="rff", sigma=sigmas, num_features=fewest - 1, features=kind)
    with pytest.raises(ValueError, match="distinct frequencies"):
        patchmmd.MMDPP(num_features=fewest - 1, features=kind)
    with pytest.raises(ValueError, match="distinct frequencies"):
        random_features(3, 3, tuple(s * 9 for s in sigmas), fewest - 1, kind=kind)
    patchmmd.patch_mmd(x, y, estimator="exact", sigma=sigmas, num_features=1, features=kind)  # no features used
    patchmmd.patch_mmd(x, y, estimator="rff", sigma=sigmas, num_features=fewest, features=kind)
    draws = (fewest + 1) // 2 if kind == "stratified" else fewest  # cos/sin pairs share a frequency
    assert set(_draw_bandwidths(sigmas, draws).tolist()) == set(sigmas)


def test_random_features_are_not_shared_with_the_cache():
    w, b = random_features(3, 3, 0.54, 16, seed=5, dtype=torch.float64)
    w.zero_()
    b.zero_()
    w2, b2 = random_features(3, 3, 0.54, 16, seed=5, dtype=torch.float64)
    assert bool(w2.abs().sum() > 0) and bool(b2.abs().sum() > 0)
