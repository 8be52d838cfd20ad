"""Identity at any width: the pooled random-CNN distance is the V-statistic MMD² of its empirical kernel.

Φ is rebuilt here by hand from the network's weights, patch by patch (matrix products on explicit patch
vectors, no convolution), the kernel matrix ``(1/N) Φ Φᵀ`` formed, and the MMD² of every window computed
by brute force; the network's pooled distance must agree to 1e-10 relative in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from patchmmd.core.kernels import mmd2_sets
from patchmmd.core.mmd import windowed_mmd2_exact
from patchmmd.core.patches import extract_patches, window_grid
from patchmmd.data import sample_image
from patchmmd.theory.cnn import RandomCNNDistance
from patchmmd.theory.nngp import PATCH_NORM_EPS


def _pair(h: int = 14, w: int = 18) -> tuple[torch.Tensor, torch.Tensor]:
    x = sample_image("astronaut", dtype=torch.float64)[:, 60 : 60 + h, 100 : 100 + w].unsqueeze(0)
    g = torch.Generator().manual_seed(5)
    y = (x + 0.15 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x2 = torch.rand(x.shape, generator=g, dtype=torch.float64)
    return torch.cat([x, x2]), torch.cat([y, x2.flip(-1)])


def _phi(patches: torch.Tensor, layers, first_layer: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Φ(p) for explicit patch vectors ``(n, d)`` (internal scale), from the network's own weights."""
    p = patches
    if first_layer == "patch_norm":
        p = p / torch.sqrt((p * p).sum(-1, keepdim=True) + PATCH_NORM_EPS**2)
    w1, b1 = layers[0]
    h = p @ w1.reshape(w1.shape[0], -1).T
    if b1 is not None:
        h = h + b1
    h = torch.relu(h)
    for w, b in layers[1:]:
        h = h @ w.reshape(w.shape[0], w.shape[1]).T
        if b is not None:
            h = h + b
        h = torch.relu(h)
    return h


def _brute_force(x: torch.Tensor, y: torch.Tensor, net: RandomCNNDistance) -> torch.Tensor:
    """Mean over windows of the V-statistic MMD² with ``k_N = (1/N) <Φ(p), Φ(q)>``, by explicit loops."""
    layers = net.layers("cpu", torch.float64)
    n_img, _, H, W = x.shape
    out = []
    for i in range(n_img):
        px = extract_patches(x[i : i + 1] * 2 - 1, net.kernel_size, center=False)[0].reshape(-1, H * W).T
        py = extract_patches(y[i : i + 1] * 2 - 1, net.kernel_size, center=False)[0].reshape(-1, H * W).T
        fx, fy = _phi(px, layers, net.first_layer), _phi(py, layers, net.first_layer)
        kxx, kyy, kxy = (fx @ fx.T) / net.width, (fy @ fy.T) / net.width, (fx @ fy.T) / net.width
        if net.pooling is None:
            out.append((kxx.diagonal() + kyy.diagonal() - 2 * kxy.diagonal()).mean())
            continue
        if net.pooling == "global":
            wh, ww, sh, sw = H, W, 1, 1
        else:
            wh, ww = min(net.pooling[0], H), min(net.pooling[0], W)
            sh = sw = net.pooling[1]
        values = []
        for r0 in range(0, H - wh + 1, sh):
            for c0 in range(0, W - ww + 1, sw):
                idx = torch.tensor([r * W + c for r in range(r0, r0 + wh) for c in range(c0, c0 + ww)])
                a, b = idx[:, None], idx[None, :]
                values.append(kxx[a, b].mean() + kyy[a, b].mean() - 2 * kxy[a, b].mean())
        out.append(torch.stack(values).mean())
    return torch.stack(out)


CASES = list(
    itertools.product(
        [(8, 4), (6, 5), "global", None],  # window placements incl. a stride that leaves a remainder
        ["he", "zero_mean", "patch_norm"],
        [1, 3],
    )
)


@pytest.mark.parametrize(("pooling", "first_layer", "depth"), CASES)
def test_pooled_distance_is_mmd_of_empirical_kernel(pooling, first_layer, depth) -> None:  # type: ignore[no-untyped-def]
    x, y = _pair()
    net = RandomCNNDistance(width=24, depth=depth, first_layer=first_layer, pooling=pooling, seed=3, reduction="none")
    got = net(x, y)
    want = _brute_force(x, y, net)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0.0)


@pytest.mark.parametrize("pooling", [(8, 4), "global", None])
def test_identity_with_biases_and_other_variance(pooling) -> None:  # type: ignore[no-untyped-def]
    x, y = _pair(12, 12)
    net = RandomCNNDistance(width=16, depth=2, pooling=pooling, sigma_w2=1.5, sigma_b2=0.2, seed=1, reduction="none")
    assert net.layers()[0][1] is not None
    torch.testing.assert_close(net(x, y), _brute_force(x, y, net), rtol=1e-10, atol=0.0)


class _EmpiricalKernel:
    """``(1/N) <Φ(p), Φ(q)>`` as a Kernel-protocol object, to run through the library's window machinery."""

    def __init__(self, net: RandomCNNDistance) -> None:
        self.net = net
        self.layers = net.layers("cpu", torch.float64)

    def _f(self, a: torch.Tensor) -> torch.Tensor:
        return _phi(a, self.layers, self.net.first_layer)

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._f(a) @ self._f(b).transpose(-1, -2) / self.net.width

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self._f(a) * self._f(b)).sum(-1) / self.net.width


def test_identity_through_library_window_machinery() -> None:
    x, y = _pair(20, 20)
    net = RandomCNNDistance(width=32, depth=2, pooling=(8, 4), seed=0, reduction="none")
    grid = window_grid(20, 20, 8, 4)
    via_mmd = windowed_mmd2_exact(x * 2 - 1, y * 2 - 1, grid, _EmpiricalKernel(net), patch_size=3, center=False)
    torch.testing.assert_close(net(x, y), via_mmd.mean(dim=(1, 2)), rtol=1e-10, atol=0.0)
    # and mmd2_sets on one explicit window agrees with the window's pooled squared feature difference
    px = extract_patches(x[:1] * 2 - 1, 3, center=False)[0, :, :8, :8].reshape(27, -1).T.unsqueeze(0)
    py = extract_patches(y[:1] * 2 - 1, 3, center=False)[0, :, :8, :8].reshape(27, -1).T.unsqueeze(0)
    fx, fy = net.features(x[:1]), net.features(y[:1])
    pooled = (fx[..., :8, :8].mean(dim=(-1, -2)) - fy[..., :8, :8].mean(dim=(-1, -2))).pow(2).mean()
    torch.testing.assert_close(mmd2_sets(_EmpiricalKernel(net), px, py)[0], pooled, rtol=1e-10, atol=0.0)


def test_random_cnn_basic_properties() -> None:
    x, y = _pair(16, 16)
    net = RandomCNNDistance(width=32, depth=2, pooling=(8, 4), reduction="none")
    d = net(x, y)
    assert torch.all(d > 0)
    torch.testing.assert_close(net(y, x), d, rtol=1e-12, atol=0.0)
    assert float(net(x, x).abs().max()) == 0.0
    # deterministic from the seed; a different seed gives different weights
    same = RandomCNNDistance(width=32, depth=2, pooling=(8, 4), reduction="none")
    torch.testing.assert_close(same(x, y), d, rtol=0, atol=0)
    assert not torch.equal(RandomCNNDistance(width=32, depth=2, pooling=(8, 4), seed=1, reduction="none")(x, y), d)
    # float32 input computes in float32 and matches float64 closely
    d32 = net(x.float(), y.float())
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d, rtol=1e-4, atol=0.0)
    # value_range is honoured
    torch.testing.assert_close(
        RandomCNNDistance(width=32, depth=2, pooling=(8, 4), value_range=(0, 255), reduction="none")(x * 255, y * 255),
        d,
        rtol=1e-10, atol=0.0,
    )


def test_weights_are_he_scaled_and_seeded() -> None:
    net = RandomCNNDistance(width=4096, depth=2, seed=7, reduction="none")
    (w1, b1), (w2, b2) = net.layers()
    assert b1 is None and b2 is None
    assert abs(float(w1.var()) * 27 / 2 - 1) < 0.02
    assert abs(float(w2.var()) * 4096 / 2 - 1) < 0.01
    zm = RandomCNNDistance(width=8, depth=1, first_layer="zero_mean").layers()[0][0]
    assert float(zm.sum(dim=(2, 3)).abs().max()) < 1e-12
    assert net.layers("cpu", torch.float32)[0][0].dtype == torch.float32


def test_gradients_finite_at_x_equals_y() -> None:
    x, _ = _pair(16, 16)
    flat = torch.full_like(x, 0.5)
    for pooling in [(8, 4), "global", None]:
        for first_layer in ["he", "zero_mean", "patch_norm"]:
            net = RandomCNNDistance(width=16, depth=2, pooling=pooling, first_layer=first_layer, reduction="none")
            for img in (x, flat):
                a = img.clone().requires_grad_(True)
                net(a, img).sum().backward()
                assert torch.isfinite(a.grad).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="first_layer"):
        RandomCNNDistance(first_layer="xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling"):
        RandomCNNDistance(pooling=(32,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        RandomCNNDistance(width=0)
    with pytest.raises(ValueError, match="depth"):
        RandomCNNDistance(depth=0)
    with pytest.raises(ValueError, match=r"kernel_size|patch_size"):
        RandomCNNDistance(kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        RandomCNNDistance(width=4)(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="value_range"):
        RandomCNNDistance(width=4)(torch.rand(1, 3, 8, 8) * 2, torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="x must be"):
        RandomCNNDistance(width=4)([1.0], torch.rand(1, 3, 8, 8))  # type: ignore[arg-type]


def test_autocast_does_not_change_the_distance() -> None:
    """Inside a ``torch.autocast`` region the distance turns autocast off (README): the same value as outside."""
    x, y = _pair(16, 16)
    x, y = x.float(), y.float()
    net = RandomCNNDistance(width=32, depth=2, pooling=(8, 4), reduction="none")
    want = net(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_zero_mean_1x1_first_layer_is_refused() -> None:
    """A zero-mean 1x1 filter is 0: every distance would be 0."""
    with pytest.raises(ValueError, match="compares nothing"):
        RandomCNNDistance(width=4, kernel_size=1, first_layer="zero_mean")
    assert float(RandomCNNDistance(width=4, kernel_size=1)(*_pair(8, 8))) > 0
