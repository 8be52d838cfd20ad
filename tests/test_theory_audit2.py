"""Second audit of the theory code: the maths against references written here from the papers (not from the code),
and the regression of VGGDistance's unit normalisation of float32 rounding.

* the arc-cosine kernel of order 1 (Cho & Saul 2009) against Monte Carlo over explicit random ReLU features;
* the infinite-width distance against a NumPy reimplementation of the NNGP recursion for this network (Novak et
  al. 2019; Garriga-Alonso et al. 2019) with its own reflect padding, window placement and first-layer variants;
* the depth-1 network as an unbiased estimate of the closed form (its channels are i.i.d.);
* exact zeros and finite values at the edge cases (identical, constant, mid-grey and minimum-size images).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from patchmmd.data import sample_image
from patchmmd.theory import RandomCNNDistance, VGGDistance, infinite_cnn_distance, kappa1, nngp_kernel

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------
# VGGDistance: a flat region under zero-mean first-layer filters is 0, not unit-length float32 rounding
# ----------------------------------------------------------------------------------------------------


def _flat_and_shifted_photo() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    flat = torch.full((1, 3, 16, 16), 0.3, dtype=F64)
    photo = (sample_image("astronaut", dtype=F64)[:, 100:132, 200:232].unsqueeze(0) * 255).round()
    photo[..., :16, :] = 180.0  # a flat "sky" over the top half
    return [
        ("two flat images", flat, flat + 0.01),
        ("8-bit photo with a flat sky, a copy 5 grey levels brighter", photo / 255, (photo + 5) / 255),
    ]


def test_vgg_distance_in_float32_is_the_float64_value_on_flat_regions() -> None:
    # Zero-mean first-layer filters answer a flat region with float32 rounding (~1e-6) instead of 0; the unit
    # normalisation's floor was 1e-10, so that rounding was scaled to unit length: 0.43 instead of 4.6e-4 for the two
    # flat images, 0.34 instead of 2.1e-3 for the photo. float64 (rounding ~1e-15, below the floor) had it right.
    d = VGGDistance(first_layer="zero_mean", reduction="none")
    for name, x, y in _flat_and_shifted_photo():
        want = d(x, y)
        got = d(x.float(), y.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=0, msg=name)


def test_vgg_distance_normalisation_is_unchanged_for_textured_images() -> None:
    # The float32 floor (4.9e-4) is far below real features: on a photo crop and its noisy copy float32 stays within
    # float32 rounding of float64, and float64 keeps LPIPS's 1e-10.
    x = sample_image("chelsea", dtype=F64)[:, 100:132, 150:182].unsqueeze(0)
    y = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=F64)).clamp(0, 1)
    d = VGGDistance(first_layer="zero_mean", reduction="none")
    torch.testing.assert_close(d(x.float(), y.float()).double(), d(x, y), rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------------------------------
# The arc-cosine kernel against random ReLU features
# ----------------------------------------------------------------------------------------------------


def test_arc_cosine_kernel_is_the_mean_of_random_relu_features() -> None:
    """Cho & Saul (2009): ``E_w[ReLU(w·p) ReLU(w·q)] = ‖p‖‖q‖ J₁(θ) / (2π)``, ``J₁(θ) = sin θ + (π − θ) cos θ``,
    ``w ~ N(0, I)``; with He weights (variance 2/d) the kernel is ``(2/d)`` times that."""
    gen = torch.Generator().manual_seed(0)
    d, m = 5, 1_000_000
    p = torch.randn(d, generator=gen, dtype=F64)
    r = torch.randn(d, generator=gen, dtype=F64)
    r = r - (r @ p) / (p @ p) * p  # orthogonal to p
    qs = [math.cos(t) * p + math.sin(t) * r * (p.norm() / r.norm()) * s
          for t, s in [(0.05, 1.0), (0.7, 0.5), (math.pi / 2, 2.0), (2.2, 1.0), (3.1, 0.3)]]
    q = torch.stack(qs)
    w = torch.randn(m, d, generator=gen, dtype=F64)
    fp = torch.relu(w @ p)
    terms = fp[:, None] * torch.relu(w @ q.T) * (2.0 / d)  # (m, 5): one random feature per row
    mc, sem = terms.mean(0), terms.std(0) / math.sqrt(m)
    theta = torch.arccos((q @ p) / (q.norm(dim=1) * p.norm()))
    cho_saul = p.norm() * q.norm(dim=1) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    cho_saul = cho_saul * (2.0 / d)
    lib = nngp_kernel(p[None], q, depth=1)[0]
    # (near θ = π both forms are a difference of two O(π − θ) terms: equal to rounding of those terms)
    torch.testing.assert_close(lib, cho_saul, rtol=1e-12, atol=1e-14 * float(cho_saul.max()))
    torch.testing.assert_close(kappa1(torch.cos(theta)), (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))
                               / math.pi, rtol=1e-12, atol=1e-14)
    assert bool(((mc - lib).abs() < 4.5 * sem).all()), ((mc - lib) / sem).tolist()


# ----------------------------------------------------------------------------------------------------
# The infinite-width distance against an independent NumPy reference
# ----------------------------------------------------------------------------------------------------


def _np_patches(img: np.ndarray, k: int) -> np.ndarray:
    """``(H, W, C k²)`` channel-major patch vectors with reflect padding (no edge repeat), by explicit slicing."""
    c, h, w = img.shape
    r = k // 2
    pad = np.pad(img, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = np.empty((h, w, c * k * k))
    for i in range(h):
        for j in range(w):
            out[i, j] = pad[:, i : i + k, j : j + k].reshape(-1)
    return out


def _np_first_layer(v: np.ndarray, first_layer: str, channels: int) -> np.ndarray:
    if first_layer == "zero_mean":  # Π: each channel's k² block minus its mean
        b = v.reshape(*v.shape[:-1], channels, -1)
        return (b - b.mean(-1, keepdims=True)).reshape(v.shape)
    if first_layer == "patch_norm":
        return v / np.sqrt((v * v).sum(-1, keepdims=True) + 1e-3**2)
    return v


def _np_nngp(a: np.ndarray, b: np.ndarray, depth: int, sw2: float, sb2: float) -> np.ndarray:
    """The recursion of the docs, written with the angle: ``E = √(K_pp K_qq) (sin θ + (π − θ) cos θ) / (2π)``."""
    d = a.shape[1]
    kab = sb2 + sw2 * (a @ b.T) / d
    kaa = sb2 + sw2 * (a * a).sum(1) / d
    kbb = sb2 + sw2 * (b * b).sum(1) / d
    for layer in range(depth):
        g = np.sqrt(np.outer(kaa, kbb))
        cos = np.clip(np.divide(kab, g, out=np.zeros_like(g), where=g > 0), -1.0, 1.0)
        th = np.arccos(cos)
        e = g * (np.sin(th) + (np.pi - th) * cos) / (2 * np.pi)
        if layer + 1 < depth:
            kab, kaa, kbb = sb2 + sw2 * e, sb2 + sw2 * kaa / 2, sb2 + sw2 * kbb / 2
    return e


def _np_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    w = min(window, n)  # a window larger than the image is clipped to it; avg_pool2d's placement otherwise
    return [(s, s + w) for s in range(0, n - w + 1, stride)]


def _np_infinite_distance(x: np.ndarray, y: np.ndarray, *, depth: int, k: int, pooling: object, first_layer: str,
                          sw2: float, sb2: float) -> float:
    c = x.shape[0]
    px = _np_first_layer(_np_patches(2 * x - 1, k), first_layer, c)
    py = _np_first_layer(_np_patches(2 * y - 1, k), first_layer, c)
    h, w, dim = px.shape
    if pooling is None:
        a, b = px.reshape(-1, dim), py.reshape(-1, dim)
        vals = [_np_nngp(a[i : i + 1], a[i : i + 1], depth, sw2, sb2) + _np_nngp(b[i : i + 1], b[i : i + 1], depth,
                sw2, sb2) - 2 * _np_nngp(a[i : i + 1], b[i : i + 1], depth, sw2, sb2) for i in range(len(a))]
        return float(np.mean(vals))
    if pooling == "global":
        rows, cols = [(0, h)], [(0, w)]
    else:
        assert isinstance(pooling, tuple)
        rows, cols = _np_windows(h, *pooling), _np_windows(w, *pooling)
    vals = []
    for (r0, r1), (c0, c1) in itertools.product(rows, cols):
        a, b = px[r0:r1, c0:c1].reshape(-1, dim), py[r0:r1, c0:c1].reshape(-1, dim)
        vals.append(_np_nngp(a, a, depth, sw2, sb2).mean() + _np_nngp(b, b, depth, sw2, sb2).mean()
                    - 2 * _np_nngp(a, b, depth, sw2, sb2).mean())
    return float(np.mean(vals))


REFERENCE_CASES = [
    # (pooling, depth, first_layer, kernel_size, sigma_w2, sigma_b2)
    ((4, 3), 1, "he", 3, 2.0, 0.0),  # 7x9: a stride that leaves a remainder in both dimensions
    ((4, 3), 2, "he", 3, 2.0, 0.0),
    ((5, 2), 3, "he", 3, 1.5, 0.3),
    ((20, 10), 2, "he", 3, 2.0, 0.0),  # window larger than the image: clipped, one window
    ("global", 1, "he", 3, 2.0, 0.0),
    ("global", 2, "zero_mean", 3, 2.0, 0.0),
    ("global", 2, "patch_norm", 3, 2.0, 0.1),
    (None, 1, "he", 3, 2.0, 0.0),
    (None, 3, "zero_mean", 3, 1.0, 0.2),
    ((4, 2), 2, "zero_mean", 5, 2.0, 0.0),
    ((3, 3), 2, "patch_norm", 1, 2.0, 0.0),
]


@pytest.mark.parametrize(("pooling", "depth", "first_layer", "k", "sw2", "sb2"), REFERENCE_CASES)
def test_infinite_distance_matches_a_numpy_reference(pooling, depth, first_layer, k, sw2, sb2) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(depth * 10 + k)
    x = rng.random((3, 7, 9))
    y = np.clip(x + 0.25 * rng.standard_normal(x.shape), 0, 1)
    y[:, :3, :3] = 0.5  # a flat mid-grey corner: zero patches (and zero patches after Π)
    x[:, -3:, -3:] = 0.5
    want = _np_infinite_distance(x, y, depth=depth, k=k, pooling=pooling, first_layer=first_layer, sw2=sw2, sb2=sb2)
    got = infinite_cnn_distance(torch.from_numpy(x)[None], torch.from_numpy(y)[None], depth=depth, kernel_size=k,
                                pooling=pooling, first_layer=first_layer, sigma_w2=sw2, sigma_b2=sb2)
    assert got.dtype == F64 and got.shape == (1,)
    assert want > 0
    assert abs(float(got[0]) - want) <= 1e-10 * want, (float(got[0]), want)


# ----------------------------------------------------------------------------------------------------
# A depth-1 network is an unbiased estimate of the closed form
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pooling", "first_layer", "sigma_b2"),
                         [((4, 2), "he", 0.0), ("global", "zero_mean", 0.0), (None, "he", 0.2)])
def test_depth_one_network_averages_to_the_closed_form(pooling, first_layer: str, sigma_b2: float) -> None:  # type: ignore[no-untyped-def]
    # With one ReLU layer the channels are i.i.d., each channel's share of the pooled distance has expectation equal
    # to the closed form, and the network's distance is their mean: within a few standard errors of it at any width.
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 8, 8, generator=gen, dtype=F64)
    y = (x + 0.3 * torch.randn(x.shape, generator=gen, dtype=F64)).clamp(0, 1)
    width = 20_000
    net = RandomCNNDistance(width=width, depth=1, pooling=pooling, first_layer=first_layer, sigma_b2=sigma_b2,  # type: ignore[arg-type]
                            seed=5, reduction="none")
    fx, fy = net.features(x)[0], net.features(y)[0]  # (width, 8, 8)
    if pooling is None:
        share = (fx - fy).pow(2).mean(dim=(1, 2))
    elif pooling == "global":
        share = (fx.mean(dim=(1, 2)) - fy.mean(dim=(1, 2))).pow(2)
    else:
        wins = [(r, c) for r in range(0, 5, 2) for c in range(0, 5, 2)]  # 4x4 windows, stride 2, on 8x8
        share = torch.stack([(fx[:, r : r + 4, c : c + 4] - fy[:, r : r + 4, c : c + 4]).mean(dim=(1, 2)).pow(2)
                             for r, c in wins]).mean(0)
    torch.testing.assert_close(share.mean(), net(x, y)[0], rtol=1e-10, atol=0)
    exact = float(infinite_cnn_distance(x, y, depth=1, pooling=pooling, first_layer=first_layer, sigma_b2=sigma_b2)[0])
    sem = float(share.std()) / math.sqrt(width)
    assert abs(float(share.mean()) - exact) < 4.5 * sem, (float(share.mean()), exact, sem)
    assert sem < 0.02 * exact  # a real test: the tolerance is a small fraction of the value


# ----------------------------------------------------------------------------------------------------
# Edge cases: exact zeros, finite values and gradients
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_layer", ["he", "zero_mean", "patch_norm"])
def test_edge_cases_are_exact_zeros_and_finite(first_layer: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 6, 7, generator=gen)
    black, grey = torch.zeros(1, 3, 6, 7), torch.full((1, 3, 6, 7), 0.5)  # grey is 0 inside: zero patches
    # one batch of pairs: identical, black-black, grey-grey, black-grey, grey-random, black-random
    a = torch.cat([x[:1], black, grey, black, grey, black])
    b = torch.cat([x[:1], black, grey, grey, x[1:], x[1:]])
    same = torch.tensor([True, True, True, False, False, False])
    small = (x[..., :3, :3], x[..., :3, :3].flip(-1))  # the minimum size for 3x3 patches
    for dtype, pooling in itertools.product([torch.float32, F64], [(4, 2), "global", None]):
        nets = [RandomCNNDistance(width=16, depth=2, pooling=pooling, first_layer=first_layer,  # type: ignore[arg-type]
                                  reduction="none"),
                lambda u, v, p=pooling: infinite_cnn_distance(u, v, depth=2, pooling=p, first_layer=first_layer)]  # type: ignore[arg-type]
        for net, (u, v) in itertools.product(nets, [(a, b), small]):
            u = u.to(dtype).requires_grad_(True)
            d = net(u, v.to(dtype))
            (g,) = torch.autograd.grad(d.sum(), u)
            assert d.dtype == dtype and bool(torch.isfinite(d).all()) and bool((d >= 0).all())
            assert bool(torch.isfinite(g).all())
            if u.shape == a.shape:  # d(x, x) = 0 exactly; its gradient 0 up to rounding
                assert float(d.detach()[same].abs().max()) == 0.0
                assert float(g[same].abs().max()) <= 1e3 * torch.finfo(dtype).eps, float(g[same].abs().max())
                assert bool((d.detach()[~same] > 0).all()) or first_layer == "zero_mean"
    # zero-mean filters see nothing of a flat image: any two constant images are at distance 0
    assert float(infinite_cnn_distance(black, grey, first_layer="zero_mean", pooling=(4, 2)).abs().max()) == 0.0
