"""The MMD term on contrast-normalised patches (``contrast_floor``, docs/method.md §3.3) against the float64
loop-by-loop reference of ``tests/reference.py``, and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchmmd import mmdpp, precompute_target
from patchmmd.core.mmdpp import get_config
from patchmmd.core.patches import contrast_normalized_patches
from reference import windowed_mmd2

ONLY_MMD = {"weight_l2": 0.0, "weight_local": 0.0, "weight_ssim": 0.0, "weight_mmd": 1.0, "base_size": None,
            "num_scales": 1, "mmd_native": True}


def _pair(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype)
    y = (x + 0.05 * torch.randn(*shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("channels", [1, 3])
def test_exact_estimator_matches_reference(channels):
    x, y = _pair((2, channels, 16, 16))
    opts = dict(ONLY_MMD, contrast_floor=0.02, sigma=(0.5, 1.0), window=8, stride=8, estimator="exact")
    got = mmdpp(x, y, preset="loss", **opts)
    # a tuple of widths is the mean of their kernels, so its MMD² is the mean of theirs (docs/method.md §3)
    ref = [np.mean([windowed_mmd2(2 * x[i].numpy() - 1, 2 * y[i].numpy() - 1, k=3, sigma=s, window=8, stride=8,
                                  center=True, floor=0.02) for s in (0.5, 1.0)]) for i in range(2)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_rff_approaches_exact():
    x, y = _pair((1, 3, 48, 48), seed=1)
    opts = dict(ONLY_MMD, contrast_floor=0.02, sigma=(0.5, 1.0), window=16, stride=8)
    exact = float(mmdpp(x, y, preset="loss", estimator="exact", **opts))
    errors = [abs(float(mmdpp(x, y, preset="loss", num_features=r, **opts)) / exact - 1) for r in (64, 4096)]
    assert errors[1] < 0.05
    assert errors[1] < errors[0]


def test_patches_are_contrast_free_and_in_the_unit_ball():
    x, _ = _pair((2, 3, 20, 17), seed=2)
    p = contrast_normalized_patches(x, 3, 0.01)
    assert p.shape == (2, 27, 20, 17)
    assert float(p.norm(dim=1).max()) < 1
    # An affine change of contrast with the floor scaled alike gives the same vectors (exactly, up to rounding).
    torch.testing.assert_close(contrast_normalized_patches(0.3 * x + 0.2, 3, 0.003), p, rtol=0, atol=1e-12)


def test_term_is_invariant_to_contrast_scaled_with_its_floor():
    x, y = _pair((2, 3, 32, 32), seed=3)
    opts = dict(ONLY_MMD, sigma=(0.5, 1.0), window=16, stride=8)
    a = mmdpp(x, y, preset="loss", contrast_floor=0.02, **opts)
    # 0.4 x + 0.3 on [0, 1] is 0.4 x' - 0.2 on the internal [-1, 1] scale: contrast 0.4 about any offset.
    b = mmdpp(0.4 * x + 0.3, 0.4 * y + 0.3, preset="loss", contrast_floor=0.008, **opts)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_identity_target_and_gradients():
    x, y = _pair((2, 3, 32, 32), seed=4)
    opts = dict(contrast_floor=0.02, sigma=(0.5, 1.0), window=16, stride=8)
    assert torch.equal(mmdpp(x, x, preset="loss", **opts), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(mmdpp(x, precompute_target(y, preset="loss", **opts)),
                               mmdpp(x, y, preset="loss", **opts))
    xr = x.clone().requires_grad_(True)
    mmdpp(xr, x, preset="loss", **opts).sum().backward()  # at x == y: finite, and zero by symmetry
    assert torch.isfinite(xr.grad).all()
    assert float(xr.grad.abs().max()) < 1e-9


def test_gradcheck():
    x, y = _pair((1, 3, 12, 12), seed=5)
    opts = dict(ONLY_MMD, contrast_floor=0.05, sigma=(0.5, 1.0), window=8, stride=4, estimator="exact")
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: mmdpp(a, b, preset="loss", **opts), (x, y))


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), 2.0, "0.1"])
def test_bad_floor_is_refused(bad):
    with pytest.raises(ValueError, match="contrast_floor"):
        get_config("loss", contrast_floor=bad)


def test_one_pixel_patches_are_refused():
    """Normalised patches are centred (Π) whatever ``center`` says, and a centred 1x1 patch is zero: the term
    would be 0 for every pair (it was, silently, with ``patch_size=1, center=False``)."""
    with pytest.raises(ValueError, match="patch_size=1 with contrast_floor compares nothing"):
        get_config("loss", patch_size=1, center=False)
    x, y = _pair((1, 3, 16, 16))
    with pytest.raises(ValueError, match="patch_size=1 with contrast_floor"):
        mmdpp(x, y, preset="loss", patch_size=1, center=False, **ONLY_MMD)
