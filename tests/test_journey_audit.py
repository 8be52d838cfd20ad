"""A new user's journey through the public API (coming from lpips / piq / pyiqa / torchmetrics): inference mode
before training, pickling registry metrics for worker processes."""

from __future__ import annotations

import pickle

import pytest
import torch

import patchmmd
from patchmmd.core import features, rff
from patchmmd.metrics import get_metric, metric_names


def _pair(shape: tuple[int, ...] = (2, 3, 48, 48), dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("preset", ["default", "loss"])
def test_target_precomputed_under_inference_mode_can_be_trained_against(preset: str) -> None:
    """A target made inside ``torch.inference_mode()`` (a data-preparation or evaluation block) held inference
    tensors, and the training preset's SSIM term failed on it in the backward pass ("Inference tensors cannot be
    saved for backward"), where a target made under ``torch.no_grad()`` worked."""
    x, y = _pair()
    loss_fn = patchmmd.MMDPP(preset)
    with torch.inference_mode():
        target = loss_fn.precompute_target(y)
    xr = x.clone().requires_grad_()
    loss = loss_fn(xr, target)
    loss.backward()
    assert xr.grad is not None and bool(torch.isfinite(xr.grad).all())
    # ordinary tensors, so that any path may save them (the default's PyTorch path does, for create_graph)
    assert not any(t.is_inference() for t in (target.image, *target.features, *target.ssim_moments) if t is not None)
    xe = x.clone().requires_grad_()
    expected = loss_fn(xe, y)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(xr.grad, xe.grad)


@pytest.mark.parametrize("preset", ["default", "loss", "followup"])
def test_first_call_under_inference_mode_does_not_break_double_backward(preset: str) -> None:
    """The random features are drawn on first use and cached. Drawn inside ``torch.inference_mode()`` (a validation
    pass before the first training step) they were inference tensors, and every later gradient penalty
    (``create_graph=True``) on the PyTorch path (GPU, float64, no compiler) failed on them."""
    x, y = _pair(dtype=torch.float64)  # float64: the PyTorch path, as on a GPU
    rff._cached_features.cache_clear()
    features._draw.cache_clear()
    try:
        with torch.inference_mode():
            first = patchmmd.mmdpp(x, y, preset=preset)
        xr = x.clone().requires_grad_()
        value = patchmmd.mmdpp(xr, y, preset=preset).sum()
        (g,) = torch.autograd.grad(value, xr, create_graph=True)
        g.pow(2).sum().backward()
        assert xr.grad is not None and bool(torch.isfinite(xr.grad).all())
        torch.testing.assert_close(value.detach(), first.sum())
    finally:
        rff._cached_features.cache_clear()
        features._draw.cache_clear()


def test_patch_mmd_rff_under_inference_mode_first() -> None:
    """The same for the windowed patch MMD's random features (``patch_mmd(..., estimator="rff")``)."""
    x, y = _pair(dtype=torch.float64)
    rff._cached_features.cache_clear()
    features._draw.cache_clear()
    try:
        with torch.inference_mode():
            first = patchmmd.patch_mmd(x, y, estimator="rff")
        xr = x.clone().requires_grad_()
        value = patchmmd.patch_mmd(xr, y, estimator="rff")
        (g,) = torch.autograd.grad(value.sum(), xr, create_graph=True)
        g.pow(2).sum().backward()
        assert xr.grad is not None and bool(torch.isfinite(xr.grad).all())
        torch.testing.assert_close(value.detach(), first.clone())
    finally:
        rff._cached_features.cache_clear()
        features._draw.cache_clear()


NEEDS_WEIGHT_FILES = {"dists", "lpips-alex", "lpips-vgg", "vgg"}
OPTIONS = {"ms-ssim": {"win_size": 3}, "infinite-cnn": {"depth": 1}}


@pytest.mark.parametrize("name", sorted(set(metric_names()) - NEEDS_WEIGHT_FILES))
def test_registry_metrics_pickle(name: str) -> None:
    """A registry metric pickles (DataLoader workers, a process pool) and computes the same after the round trip.
    The classic baselines were closures ("Can't pickle local object '_psnr.<locals>.metric'"), and so were the
    theory metrics under the scale rule."""
    options = OPTIONS.get(name, {})
    if "ssim" in name:
        pytest.importorskip("pytorch_msssim")
    metric = get_metric(name, **options)
    restored = pickle.loads(pickle.dumps(metric))
    x, y = _pair((1, 3, 40, 40))
    torch.testing.assert_close(restored(x, y), metric(x, y))
