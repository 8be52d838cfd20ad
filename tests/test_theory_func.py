"""The theory distances and the arc-cosine function under the ``torch.func`` transforms: the same numbers as
eager autograd and batched calls (float64, to 1e-10 of their scale).

``InfiniteCNNDistance`` used to fail under every transform: its arc-cosine step is an autograd function, which
the transforms take only with a ``setup_context``, a forward-mode rule and a ``vmap`` rule.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from patchmmd.theory import InfiniteCNNDistance, RandomCNNDistance, VGGDistance, infinite_cnn_distance, kappa1

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DISTANCES: dict[str, Callable[[], Distance]] = {
    "infinite": lambda: InfiniteCNNDistance(reduction="none"),
    "infinite_aligned_depth3": lambda: InfiniteCNNDistance(depth=3, pooling=None, reduction="none"),
    "infinite_bias": lambda: InfiniteCNNDistance(sigma_b2=0.1, first_layer="zero_mean", reduction="none"),
    "random_cnn": lambda: RandomCNNDistance(reduction="none"),
    "vgg": lambda: VGGDistance(reduction="none"),
}


def _pair(n: int = 2, size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) * 0.8
    y = (x + 0.2 * torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def _eager_grad(fn: Distance, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(t, y).sum(), t)
    return g


@pytest.mark.parametrize("name", list(DISTANCES))
def test_grad_vmap_and_jvp_equal_eager(name: str) -> None:
    fn = DISTANCES[name]().double() if name in ("random_cnn", "vgg") else DISTANCES[name]()
    x, y = _pair()
    want = _eager_grad(fn, x, y)
    assert float(want.abs().max()) > 0
    _close(torch.func.grad(lambda a: fn(a, y).sum())(x), want)
    _close(torch.func.vmap(lambda a, b: fn(a[None], b[None])[0])(x, y), fn(x, y))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    value, tangent = torch.func.jvp(lambda a: fn(a, y), (x,), (v,))
    _close(value, fn(x, y))
    _close(tangent, (want * v).sum(dim=(1, 2, 3)))


def test_hessian_of_the_infinite_distance_equals_double_backward() -> None:
    """``hessian`` (forward mode over reverse mode) against rows of eager double backward, which takes the same
    second derivative of the arc-cosine step (0 where a cosine is ±1, see ``kappa1``)."""
    x, y = _pair(n=1, size=8)

    def f(a: torch.Tensor) -> torch.Tensor:
        return infinite_cnn_distance(a, y, pooling=None).sum()

    hess = torch.func.hessian(f)(x).reshape(x.numel(), x.numel())
    assert bool(torch.isfinite(hess).all())
    t = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(t), t, create_graph=True)
    g = g.reshape(-1)
    for i in range(0, x.numel(), 23):
        (row,) = torch.autograd.grad(g[i], t, retain_graph=True)
        _close(hess[i], row.reshape(-1))
    _close(torch.func.jacfwd(f)(x), g.detach().reshape(x.shape))


def test_kappa1_under_transforms() -> None:
    c = torch.linspace(-1, 1, 9, dtype=torch.float64)
    inner = c[1:-1]
    _close(torch.func.vmap(torch.func.grad(kappa1))(c), (torch.pi - torch.arccos(c)) / torch.pi)
    _close(torch.func.hessian(lambda t: kappa1(t).sum())(inner).diagonal(), 1 / (torch.pi * (1 - inner**2).sqrt()))
    with pytest.raises(ValueError, match=r"cosines in \[-1, 1\].*got values in \[0\.5, 2\]"):
        torch.func.vmap(kappa1)(torch.tensor([[0.5], [2.0]], dtype=torch.float64))


@pytest.mark.parametrize("cls", [InfiniteCNNDistance, RandomCNNDistance])
def test_an_even_kernel_size_is_refused_naming_it(cls: type) -> None:
    with pytest.raises(ValueError, match=r"^kernel_size must be odd"):
        cls(kernel_size=4)


def test_second_derivatives_of_kappa1_in_every_supported_composition() -> None:
    """Reverse over reverse, forward over reverse (``hessian``) and reverse over forward give ``1 / (π √(1 - c²))``
    inside ``(-1, 1)`` and 0 at ``±1``; reverse over forward used to give 0 (the forward rule used a constant)."""
    c = torch.tensor([0.3, -0.5, 0.8, 1.0, -1.0], dtype=torch.float64)
    want = torch.where(c.abs() < 1, 1 / (torch.pi * (1 - c.clamp(-0.99, 0.99) ** 2).sqrt()), torch.zeros_like(c))

    def f(t: torch.Tensor) -> torch.Tensor:
        return kappa1(t).sum()

    for second in (torch.func.jacrev(torch.func.jacrev(f)), torch.func.hessian(f),
                   torch.func.jacrev(torch.func.jacfwd(f))):
        _close(second(c).diagonal(), want)
