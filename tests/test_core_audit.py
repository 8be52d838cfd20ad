"""Regression tests from an audit of the core's public API (functions and modules), against independent references
where there is one: a float64 brute-force windowed MMD over explicitly extracted patches, and the messages of the
validation errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import patchmmd
from patchmmd.core import MMDPP, PatchMMD, mmdpp, patch_mmd, precompute_target


def _brute_mmd2(x: torch.Tensor, y: torch.Tensor, *, k: int = 3, sigma: float = 0.06, window: int | None = 32,
                stride: int = 16) -> torch.Tensor:
    """docs/method.md §2 written out: centred reflect-padded patches on the [-1, 1] scale, every window's biased
    squared MMD of the Gaussian kernel with ``s = sigma k²`` by ``cdist``, averaged over windows; float64."""
    xs, ys = x.double() * 2 - 1, y.double() * 2 - 1
    n, c, h, w = xs.shape
    p, s = k // 2, sigma * k * k

    def patches(t: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(F.pad(t, (p, p, p, p), mode="reflect"), k).reshape(n, c, k * k, h, w)
        return (cols - cols.mean(dim=2, keepdim=True)).reshape(n, c * k * k, h, w)

    def kmean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * s * s)).mean(dim=(1, 2))

    px, py = patches(xs), patches(ys)
    wh, ww = (h, w) if window is None else (min(window, h), min(window, w))
    values = []
    for i in range(0, h - wh + 1, stride):
        for j in range(0, w - ww + 1, stride):
            a = px[..., i : i + wh, j : j + ww].flatten(2).transpose(1, 2)
            b = py[..., i : i + wh, j : j + ww].flatten(2).transpose(1, 2)
            values.append(kmean(a, a) + kmean(b, b) - 2 * kmean(a, b))
    return torch.stack(values).mean(dim=0)


def _pair(shape: tuple[int, ...] = (2, 3, 40, 36), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    return x, (x + 0.1 * torch.randn(*shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("kw", [{}, {"window": None}, {"window": 8, "stride": 5}, {"window": 8, "stride": 12}])
def test_patch_mmd_exact_matches_brute_force(kw: dict) -> None:
    x, y = _pair()
    got = patch_mmd(x.double(), y.double(), **kw)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _brute_mmd2(x, y, **kw), rtol=1e-9, atol=1e-12)


def test_batch_equals_per_image_and_reductions() -> None:
    x, y = _pair((3, 3, 64, 64))
    for fn in (patch_mmd, mmdpp):
        per = fn(x, y)
        single = torch.cat([fn(x[i : i + 1], y[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(per, single, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(fn(x, y, reduction="mean"), per.mean())
        torch.testing.assert_close(fn(x, y, reduction="sum"), per.sum())


def test_precompute_target_errors_name_y() -> None:
    """precompute_target's image argument is ``y``: its errors say ``y``, not ``x``."""
    y = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^y has values in .* outside value_range=\(0, 1\)"):
        precompute_target(y * 255)
    with pytest.raises(ValueError, match=r"^y contains NaN or Inf values"):
        precompute_target(y.masked_fill(y > 0.9, float("inf")))
    with pytest.raises(TypeError, match=r"^y must be a floating-point tensor"):
        precompute_target((y * 255).to(torch.uint8))
    with pytest.raises(TypeError, match=r"^y must be a torch\.Tensor"):
        precompute_target(y.numpy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^y must be at least 3x3 pixels"):
        precompute_target(y[..., :2, :2])
    with pytest.raises(ValueError, match=r"^y must be at least 22x22 pixels"):
        MMDPP("loss").precompute_target(y[..., :20, :20])


def test_mmdpp_against_target_errors_name_x() -> None:
    target = precompute_target(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"^x has values in"):
        mmdpp(torch.rand(1, 3, 32, 32) * 255, target)
    with pytest.raises(ValueError, match=r"^x must be at least 3x3 pixels"):
        mmdpp(torch.rand(1, 3, 2, 2), target)


@pytest.mark.parametrize("fn", [mmdpp, patch_mmd, patchmmd.l2_distance, patchmmd.local_distance])
def test_bfloat16_rounding_at_the_bound_is_in_range(fn) -> None:  # type: ignore[no-untyped-def]
    """1.0078125 is the next bfloat16 number after 1: rounding noise of a bfloat16 pipeline, not out of range."""
    x, y = _pair((1, 3, 32, 32))
    x, y = x.bfloat16(), y.bfloat16()
    y[0, 0, 0, 0] = 1.0078125
    d = fn(x, y)
    assert d.dtype == torch.bfloat16 and bool(torch.isfinite(d).all())
    y255 = y.float() * 255
    y255[0, 0, 0, 0] = 256.0  # the bfloat16 step at 255 is 1
    assert bool(torch.isfinite(fn(x.float().mul(255).bfloat16(), y255.bfloat16(), value_range=(0, 255))).all())
    with pytest.raises(ValueError, match="y has values in"):  # two steps out still raises
        y[0, 0, 0, 0] = 1.015625
        fn(x, y)
    with pytest.raises(ValueError, match="y has values in"):  # float32 keeps its tolerance of 1e-3
        fn(x.float(), y.float().clamp(0, 1).index_put_((torch.tensor(0),) * 4, torch.tensor(1.0078125)))


@pytest.mark.parametrize("preset", ["default", "loss", "pixelwise"])
def test_gradients_finite_at_identity_and_constant_images(preset: str) -> None:
    x, _ = _pair((1, 3, 32, 32))
    for a, b in ((x, x), (torch.full_like(x, 0.5), torch.full_like(x, 0.5)), (torch.zeros_like(x), x)):
        for dtype in (torch.float32, torch.float64):
            xa = a.to(dtype).clone().requires_grad_()
            mmdpp(xa, b.to(dtype), preset=preset).sum().backward()
            assert xa.grad is not None and bool(torch.isfinite(xa.grad).all())


def test_modules_round_trip_and_rng_untouched() -> None:
    x, y = _pair((2, 3, 64, 64))
    state = torch.get_rng_state()
    for module in (MMDPP(), MMDPP("loss"), PatchMMD(), PatchMMD(estimator="rff", seed=3)):
        ref = module(x, y)
        assert torch.equal(copy.deepcopy(module)(x, y), ref)
        assert torch.equal(pickle.loads(pickle.dumps(module))(x, y), ref)
        assert torch.equal(module.eval()(x, y), ref)
        assert module.state_dict() == {}
        assert module.to(torch.float64)(x.double(), y.double()).dtype == torch.float64
    assert torch.equal(torch.get_rng_state(), state)


def test_target_mismatch_errors_say_what_was_expected() -> None:
    target = precompute_target(torch.rand(1, 3, 32, 32))
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="value_range must be a pair"):  # not a TypeError from indexing it
        mmdpp(x, target, value_range=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^value_range must be the target's \(0.0, 1.0\), got \(0, 255\)"):
        mmdpp(x * 255, target, value_range=(0, 255))
    with pytest.raises(ValueError, match=r"^x must have the target's shape \(1, 3, 32, 32\), got \(2, 3, 32, 32\)"):
        mmdpp(torch.rand(2, 3, 32, 32), target)
    with pytest.raises(ValueError, match=r"^x must have the target's device and dtype \(cpu, torch.float32\)"):
        mmdpp(x.double(), target)
    with pytest.raises(ValueError, match=r"^y must be a target precomputed with this module's options"):
        MMDPP("loss")(x, target)
