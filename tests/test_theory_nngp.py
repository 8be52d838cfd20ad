"""The NNGP (arc-cosine) kernel: closed form vs recursion, Monte Carlo, numerical safety, the infinite distance."""

from __future__ import annotations

import math

import pytest
import torch

from patchmmd.core.kernels import GaussianKernel
from patchmmd.core.mmd import patch_mmd, windowed_mmd2_exact
from patchmmd.core.patches import center_patches, extract_patches, window_grid
from patchmmd.data import sample_image
from patchmmd.theory.cnn import RandomCNNDistance, random_cnn_features
from patchmmd.theory.nngp import (
    InfiniteCNNDistance,
    NNGPKernel,
    first_layer_transform,
    infinite_cnn_distance,
    kappa1,
    nngp_from_inner_products,
    nngp_kernel,
)

F64 = torch.float64


def _vectors(n: int = 12, d: int = 27, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=F64)
    v[1] = 2.5 * v[0]  # parallel (cos = 1)
    v[2] = -0.5 * v[0]  # antiparallel (cos = -1)
    v[3] = 0.0  # zero patch
    return v


def test_kappa1_values_and_derivative() -> None:
    c = torch.linspace(-1, 1, 201, dtype=F64, requires_grad=True)
    want = (torch.sqrt(1 - c.detach() ** 2) + (math.pi - torch.arccos(c.detach())) * c.detach()) / math.pi
    torch.testing.assert_close(kappa1(c), want, rtol=0, atol=1e-15)
    kappa1(c).sum().backward()
    torch.testing.assert_close(c.grad, (math.pi - torch.arccos(c.detach())) / math.pi, rtol=0, atol=1e-15)
    # clamped outside [-1, 1] (rounding), finite gradient there
    c2 = torch.tensor([1 + 1e-12, -1 - 1e-12], dtype=F64, requires_grad=True)
    assert kappa1(c2).tolist() == [1.0, 0.0]
    kappa1(c2).sum().backward()
    assert torch.isfinite(c2.grad).all()
    # numerical derivative in the interior
    x = torch.tensor([0.3], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(kappa1, (x,))
    # second derivative 1 / (π √(1 - c²)) in the interior (double backward)
    c3 = torch.tensor([-0.9, -0.2, 0.3, 0.95], dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(kappa1, (c3,))
    (g,) = torch.autograd.grad(kappa1(c3).sum(), c3, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), c3)
    torch.testing.assert_close(h, 1 / (math.pi * torch.sqrt(1 - c3.detach() ** 2)), rtol=1e-12, atol=0)


def _closed_form_by_hand(p: torch.Tensor, q: torch.Tensor, depth: int) -> torch.Tensor:
    """``(‖p‖‖q‖/d) κ₁^{∘L}(cos)`` written out directly (He, no bias)."""
    d = p.shape[-1]
    npq = p.norm(dim=-1)[:, None] * q.norm(dim=-1)[None, :]
    c = torch.where(npq > 0, (p @ q.T) / npq.clamp_min(1e-300), torch.zeros_like(npq)).clamp(-1, 1)
    for _ in range(depth):
        c = (torch.sqrt(1 - c * c) + (math.pi - torch.arccos(c)) * c) / math.pi
    return npq / d * c


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_closed_form_and_recursion_agree(depth: int) -> None:
    v = _vectors()
    K = nngp_kernel(v, v, depth=depth)
    torch.testing.assert_close(K, _closed_form_by_hand(v, v, depth), rtol=1e-12, atol=1e-15)
    pp, pq = (v * v).sum(-1), v @ v.T
    rec = nngp_from_inner_products(pp[:, None], pp[None, :], pq, dim=27, depth=depth, method="recursion")
    torch.testing.assert_close(rec, K, rtol=1e-12, atol=1e-15)
    # diagonal: ‖p‖²/d; parallel/antiparallel pairs; zero patch gives zeros
    torch.testing.assert_close(K.diagonal(), pp / 27, rtol=1e-12, atol=0)
    assert float(K[3].abs().max()) == 0.0 and float(K[:, 3].abs().max()) == 0.0
    torch.testing.assert_close(K[0, 1], 2.5 * pp[0] / 27)
    # σ_w² ≠ 2 scales the closed form by (σ_w²/2)^L
    torch.testing.assert_close(nngp_kernel(v, v, depth=depth, sigma_w2=1.0), K * 0.5**depth, rtol=1e-12, atol=1e-15)
    assert torch.all(torch.linalg.eigvalsh(K) > -1e-12)  # positive semi-definite


def _mc_layer(kpp: float, kqq: float, kpq: float, n: int, gen: torch.Generator) -> float:
    """Monte-Carlo ``E[ReLU(u) ReLU(v)]`` for ``(u, v) ~ N(0, [[kpp, kpq], [kpq, kqq]])``."""
    cov = torch.tensor([[kpp, kpq], [kpq, kqq]], dtype=F64)
    z = torch.randn(n, 2, generator=gen, dtype=F64) @ torch.linalg.cholesky(cov).T
    return float((torch.relu(z[:, 0]) * torch.relu(z[:, 1])).mean())


@pytest.mark.parametrize(("sigma_w2", "sigma_b2"), [(2.0, 0.0), (1.7, 0.3)])
def test_recursion_matches_gaussian_monte_carlo_layer_by_layer(sigma_w2: float, sigma_b2: float) -> None:
    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 27, generator=gen, dtype=F64)
    q = 0.6 * p + 0.8 * q
    d, n = 27, 400_000
    kpp = sigma_b2 + sigma_w2 * float(p @ p) / d
    kqq = sigma_b2 + sigma_w2 * float(q @ q) / d
    kpq = sigma_b2 + sigma_w2 * float(p @ q) / d
    for depth in range(1, 4):
        mc = _mc_layer(kpp, kqq, kpq, n, gen)
        mc_pp = _mc_layer(kpp, kpp, kpp * (1 - 1e-12), n, gen)
        exact = float(nngp_kernel(p[None], q[None], depth=depth, sigma_w2=sigma_w2, sigma_b2=sigma_b2))
        assert abs(mc - exact) < 0.01 * abs(exact) + 1e-4, (depth, mc, exact)
        kpq, kpp, kqq = sigma_b2 + sigma_w2 * exact, sigma_b2 + sigma_w2 * mc_pp, sigma_b2 + sigma_w2 * kqq / 2


@pytest.mark.parametrize(
    ("first_layer", "sigma_b2"), [("he", 0.0), ("zero_mean", 0.0), ("patch_norm", 0.0), ("he", 0.1)]
)
def test_kernel_is_the_limit_of_the_actual_network(first_layer: str, sigma_b2: float) -> None:
    """Average of ``(1/N) <Φ(p), Φ(q)>`` over seeds of the real network approaches ``nngp_kernel``."""
    x = sample_image("chelsea", dtype=F64)[:, 100:104, 200:204].unsqueeze(0) * 2 - 1  # 16 real patches
    patches = extract_patches(x, 3, center=False)[0].reshape(27, -1).T
    exact = nngp_kernel(patches, patches, depth=3, first_layer=first_layer, channels=3, sigma_b2=sigma_b2)
    ests = []
    for seed in range(12):
        net = RandomCNNDistance(width=1024, depth=3, first_layer=first_layer, sigma_b2=sigma_b2, seed=seed)
        f = random_cnn_features(x, net.layers(), first_layer=first_layer)[0].reshape(1024, -1)
        ests.append(f.T @ f / 1024)
    est = torch.stack(ests)
    sem = est.std(0) / math.sqrt(len(ests))
    err = (est.mean(0) - exact).abs()
    assert torch.all(err < 5 * sem + 2e-3 * exact.abs().max()), float((err / (sem + 1e-12)).max())


def test_zero_mean_and_patch_norm_variants() -> None:
    v = _vectors()
    cv = center_patches(v.T.unsqueeze(0), 3)[0].T
    torch.testing.assert_close(nngp_kernel(v, v, depth=2, first_layer="zero_mean", channels=3),
                               nngp_kernel(cv, cv, depth=2), rtol=1e-12, atol=1e-15)
    K = nngp_kernel(v, v, depth=2, first_layer="patch_norm")
    n = v.norm(dim=-1)
    scale = (n / torch.sqrt(n * n + 1e-6))[:, None] * (n / torch.sqrt(n * n + 1e-6))[None, :]
    unit = _closed_form_by_hand(v, v, 2) * 27 / torch.where(n[:, None] * n[None, :] > 0, n[:, None] * n[None, :], 1)
    torch.testing.assert_close(K, unit * scale / 27, rtol=1e-10, atol=1e-15)  # κ₁^{∘L}(cos)/d (smoothed norm)
    with pytest.raises(ValueError, match="channels"):
        nngp_kernel(v, v, depth=1, first_layer="zero_mean")
    with pytest.raises(ValueError, match="first_layer"):
        nngp_kernel(v, v, depth=1, first_layer="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        nngp_kernel(v, v, depth=0)
    with pytest.raises(ValueError, match="dimension"):
        nngp_kernel(v, v[:, :9], depth=1)
    assert first_layer_transform(v, "he") is v


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("sigma_b2", [0.0, 0.2])
def test_kernel_gradients_are_finite_at_singular_points(dtype: torch.dtype, sigma_b2: float) -> None:
    v = _vectors().to(dtype)
    for first_layer in ("he", "zero_mean", "patch_norm"):
        a = v.clone().requires_grad_(True)
        K = nngp_kernel(a, a, depth=3, sigma_b2=sigma_b2, first_layer=first_layer, channels=3)
        assert torch.isfinite(K).all()
        K.sum().backward()
        assert torch.isfinite(a.grad).all()
        b = v.clone().requires_grad_(True)
        k = NNGPKernel(3, sigma_b2=sigma_b2, first_layer=first_layer, channels=3).paired(b, b)
        k.sum().backward()
        assert torch.isfinite(b.grad).all()


def test_gradcheck_kernel_generic_points() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 6, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, 6, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nngp_kernel(a, b, depth=2), (a, b))
    assert torch.autograd.gradcheck(lambda a, b: nngp_kernel(a, b, depth=2, sigma_b2=0.1), (a, b))


def _crops() -> tuple[torch.Tensor, torch.Tensor]:
    x = sample_image("coffee", dtype=F64)[:, 80:104, 150:174].unsqueeze(0)
    g = torch.Generator().manual_seed(2)
    return x, (x + 0.1 * torch.randn(x.shape, generator=g, dtype=F64)).clamp(0, 1)


def test_infinite_distance_by_brute_force() -> None:
    x, y = _crops()
    px = extract_patches(x * 2 - 1, 3, center=False)[0].reshape(27, -1).T
    py = extract_patches(y * 2 - 1, 3, center=False)[0].reshape(27, -1).T
    kxx, kyy, kxy = (nngp_kernel(a, b, depth=2) for a, b in ((px, px), (py, py), (px, py)))
    glob = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    torch.testing.assert_close(infinite_cnn_distance(x, y, depth=2, pooling="global")[0], glob, rtol=1e-10, atol=0)
    aligned = (kxx.diagonal() + kyy.diagonal() - 2 * kxy.diagonal()).mean()
    torch.testing.assert_close(infinite_cnn_distance(x, y, depth=2, pooling=None)[0], aligned, rtol=1e-10, atol=0)
    idx = torch.tensor([r * 24 + c for r in range(8, 24) for c in range(0, 16)])  # window at (8, 0), 16x16
    a, b = idx[:, None], idx[None, :]
    w = kxx[a, b].mean() + kyy[a, b].mean() - 2 * kxy[a, b].mean()
    grid = window_grid(24, 24, 16, 8)
    per = windowed_mmd2_exact(x * 2 - 1, y * 2 - 1, grid, NNGPKernel(2), patch_size=3, center=False)
    torch.testing.assert_close(per[0, 1, 0], w, rtol=1e-10, atol=0)
    torch.testing.assert_close(infinite_cnn_distance(x, y, depth=2, pooling=(16, 8))[0], per.mean(), rtol=1e-12, atol=0)


def test_infinite_distance_properties_and_module() -> None:
    x, y = _crops()
    d = InfiniteCNNDistance(depth=2, pooling=(16, 8), reduction="none")
    v = d(x, y)
    assert v.shape == (1,) and float(v) > 0
    torch.testing.assert_close(d(y, x), v, rtol=1e-12, atol=0)
    assert float(d(x, x)) == 0.0
    # zero_mean: invariant to adding a constant to a channel (like Π); plain He is not
    shifted = (x + torch.tensor([0.05, 0.0, -0.03], dtype=F64).view(1, 3, 1, 1)).clamp(0, 1)
    zm = infinite_cnn_distance(x, shifted, first_layer="zero_mean", pooling=(16, 8))
    he = infinite_cnn_distance(x, shifted, first_layer="he", pooling=(16, 8))
    assert float(zm) < 1e-6 * float(he)
    # same kernel machinery as patch_mmd: swapping in the Gaussian kernel reproduces patch_mmd
    grid = window_grid(24, 24, 16, 8)
    via = windowed_mmd2_exact(x * 2 - 1, y * 2 - 1, grid, GaussianKernel(0.54), patch_size=3, center=True)
    torch.testing.assert_close(via.mean(dim=(1, 2)), patch_mmd(x, y, window=16, stride=8), rtol=1e-12, atol=0)


def test_infinite_distance_gradients_finite() -> None:
    x, _ = _crops()
    flat = torch.full_like(x, 0.5)
    for pooling in [(16, 8), None]:
        for first_layer in ("he", "zero_mean", "patch_norm"):
            for img in (x, flat):
                for dtype in (torch.float32, F64):
                    a = img.to(dtype).clone().requires_grad_(True)
                    infinite_cnn_distance(a, img.to(dtype), pooling=pooling, first_layer=first_layer).sum().backward()
                    assert torch.isfinite(a.grad).all(), (pooling, first_layer, dtype)


def test_infinite_distance_bad_arguments() -> None:
    x, y = _crops()
    with pytest.raises(ValueError, match="pooling"):
        infinite_cnn_distance(x, y, pooling="local")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma_b2"):
        InfiniteCNNDistance(sigma_b2=-1.0)
    with pytest.raises(ValueError, match="method"):
        nngp_from_inner_products(torch.ones(1), torch.ones(1), torch.ones(1), dim=1, depth=1, method="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="closed form"):
        nngp_from_inner_products(torch.ones(1), torch.ones(1), torch.ones(1), dim=1, depth=1, sigma_b2=0.1,
                                 method="closed_form")


def test_second_derivatives_at_equal_patches() -> None:
    """``create_graph=True`` through κ₁ where ``c = ±1`` (every ``k(p, p)``, equal patches): finite and exact.

    κ₁'' is infinite at ±1 but its contribution there is 0 (``1 ∓ c = O(|δ|²)``); autograd through ``arccos`` gave
    ``inf`` there and NaN Hessians of the distance.
    """
    c = torch.tensor([-1.0, 1.0], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(kappa1(c).sum(), c, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), c)
    assert h.tolist() == [0.0, 0.0]
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 5, 5, generator=gen, dtype=F64) * 0.6 + 0.2
    x = x[..., :2, :2].repeat(1, 1, 3, 3)[..., :5, :5]  # periodic: many equal patches, none flat
    y = (x + 0.05 * torch.randn(x.shape, generator=gen, dtype=F64)).clamp(0, 1)
    v = torch.randn(x.shape, generator=gen, dtype=F64)

    def grad(f, z, t, create_graph=False):  # type: ignore[no-untyped-def]
        z = z.detach().requires_grad_()
        return torch.autograd.grad(f(z, t), z, create_graph=create_graph)[0], z

    for pooling in [(4, 2), None]:
        for sigma_b2 in (0.0, 0.2):
            m = InfiniteCNNDistance(depth=2, pooling=pooling, sigma_b2=sigma_b2)
            assert torch.autograd.gradgradcheck(lambda a, m=m: m(a, y), (x.clone().requires_grad_(),), fast_mode=True)
            for target in (y, x.clone()):  # x == y too
                g1, z = grad(m, x, target, create_graph=True)
                (hv,) = torch.autograd.grad((g1 * v).sum(), z)
                fd = (grad(m, x + 1e-5 * v, target)[0] - grad(m, x - 1e-5 * v, target)[0]) / 2e-5
                torch.testing.assert_close(hv, fd, rtol=1e-3, atol=1e-3 * float(fd.abs().max()))
    a = x.float().requires_grad_()
    (g32,) = torch.autograd.grad(InfiniteCNNDistance(depth=3)(a, x.float()), a, create_graph=True)
    (h32,) = torch.autograd.grad(g32.sum(), a)
    assert torch.isfinite(h32).all()


def test_autocast_does_not_change_the_infinite_distance() -> None:
    """Inside a ``torch.autocast`` region the distance turns autocast off (README): the same value as outside."""
    x, y = (t.float() for t in _crops())
    for pooling in [(16, 8), None]:
        want = infinite_cnn_distance(x, y, pooling=pooling)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = InfiniteCNNDistance(pooling=pooling, reduction="none")(x, y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_zero_mean_1x1_first_layer_is_refused() -> None:
    x, y = _crops()
    with pytest.raises(ValueError, match="compares nothing"):
        infinite_cnn_distance(x, y, kernel_size=1, first_layer="zero_mean")
    with pytest.raises(ValueError, match="compares nothing"):
        InfiniteCNNDistance(kernel_size=1, first_layer="zero_mean")
    assert float(infinite_cnn_distance(x, y, kernel_size=1)) > 0
