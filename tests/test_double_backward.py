"""Second derivatives (``create_graph=True``) through the hand-written backward passes (docs/method.md §6).

The RFF estimator's fused paths and compiled kernels, SSIM's closed-form gradient and the aligned terms' winning
offsets compute gradients by hand; asked for the gradient's graph they differentiate a plain formulation with
autograd. Checked against central differences of the gradient in float64 (Hessian-vector products),
``gradgradcheck`` on small inputs, and the compiled float32 path against the float64 one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from patchmmd import _native
from patchmmd.core.mmd import windowed_mmd2
from patchmmd.core.mmdpp import mmdpp
from patchmmd.core.ssim import dissimilarity_map, target_moments

needs_native = pytest.mark.skipif(_native.kernels() is None, reason="no C compiler: the PyTorch path is used")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _hvp(f: Loss, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``H v`` of ``f(., y)`` at ``x`` by double backward."""
    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(f(x, y), x, create_graph=True)
    assert g.requires_grad, "the gradient carries no graph: its backward pass was not recorded"
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return h


def _hvp_differences(f: Loss, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``H v`` by central differences of the (first-order) gradient, float64."""
    def grad(z: torch.Tensor) -> torch.Tensor:
        z = z.detach().requires_grad_()
        (g,) = torch.autograd.grad(f(z, y), z)
        return g

    return (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _images(size: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.rand(1, 3, size, size, generator=g, dtype=torch.float64) for _ in range(2))
    return x, y, torch.randn(1, 3, size, size, generator=g, dtype=torch.float64)


# subpixel=False: the sub-pixel correction is a constant of the gradient (docs/method.md §3.2), so differences of
# the gradient see its dependence on x and double backward does not; the first two cases keep it and are compared
# across dtypes below.
LOSSES: dict[str, Loss] = {
    "default": lambda a, b: mmdpp(a, b).sum(),
    "loss": lambda a, b: mmdpp(a, b, preset="loss").sum(),
    "default-no-subpixel": lambda a, b: mmdpp(a, b, subpixel=False).sum(),
    "exact-no-subpixel": lambda a, b: mmdpp(a, b, estimator="exact", subpixel=False).sum(),
    "pixelwise": lambda a, b: mmdpp(a, b, preset="pixelwise").sum(),
}


@pytest.mark.parametrize("name", ["loss", "default-no-subpixel", "exact-no-subpixel", "pixelwise"])
def test_hessian_vector_product_matches_differences_of_the_gradient(name):
    x, y, v = _images()
    f = LOSSES[name]
    assert _relative(_hvp(f, x, y, v), _hvp_differences(f, x, y, v)) < 1e-6


@needs_native
@pytest.mark.parametrize("name", ["default", "loss", "default-no-subpixel"])
def test_compiled_float32_path_gives_the_float64_second_derivatives(name):
    """float32 on the CPU runs the compiled kernels' operators and the aligned terms' compiled gradient; their
    double-backward path must give float64's Hessian-vector product to float32 rounding."""
    x, y, v = _images()
    f = LOSSES[name]
    h32 = _hvp(f, x.float(), y.float(), v.float())
    assert h32.dtype == torch.float32
    assert _relative(h32, _hvp(f, x, y, v)) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_order_gradient_stays_the_hand_written_one(dtype, monkeypatch):
    """Without create_graph the fast backward passes run: none of them falls back to autograd of the plain
    formulation (:func:`patchmmd._autograd.graph_vjp`); with create_graph they do. (A gradient returned without
    create_graph never carries a graph, whichever path made it: the calls are what tells the paths apart.)"""
    import patchmmd._native.ops as ops
    import patchmmd.core.aligned as aligned
    import patchmmd.core.rff as rff
    import patchmmd.core.ssim as ssim

    calls: list[str] = []
    for module in (ops, aligned, rff, ssim):
        real = module.graph_vjp

        def counted(*args, _real=real, _name=module.__name__, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "graph_vjp", counted)
    x, y, _ = _images(32)
    x = x.to(dtype).requires_grad_()
    for kwargs in ({}, {"preset": "loss"}):
        (g,) = torch.autograd.grad(mmdpp(x, y.to(dtype), **kwargs).sum(), x)
        assert not g.requires_grad and torch.isfinite(g).all()
        assert calls == [], (kwargs, calls)
        (gg,) = torch.autograd.grad(mmdpp(x, y.to(dtype), **kwargs).sum(), x, create_graph=True)
        assert gg.requires_grad and len(calls) > 0, kwargs  # the counter sees the plain path when it is taken
        torch.testing.assert_close(gg.detach(), g, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-7)
        calls.clear()


def test_rff_block_means_gradgradcheck():
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(1, 2, 9, 9, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2))
    opts = dict(patch_size=3, sigma=0.5, window=6, stride=3, center=True, estimator="rff", num_features=16, seed=0,
                features="stratified")
    assert torch.autograd.gradgradcheck(lambda a: windowed_mmd2(a, y, **opts)[0], (x.requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda a: windowed_mmd2(a, y, contrast_floor=0.05, **opts)[0],
                                        (x.requires_grad_(),))


def test_ssim_gradgradcheck_in_both_images_and_the_target_moments():
    g = torch.Generator().manual_seed(2)
    x, y = (torch.rand(1, 2, 13, 13, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2))
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: dissimilarity_map(a, b), (x, y))
    moments = target_moments(y.detach()).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b, m: dissimilarity_map(a, b, m), (x, y, moments))
