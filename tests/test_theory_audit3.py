"""Third audit of the theory code: gradients of the NNGP kernel for vectors of tiny norm, the kernel against explicit
random ReLU networks written here in NumPy (deeper than one layer, biases, σ_w² ≠ 2), and the ``theory`` command's
refusal of an analytic distance that is float64 rounding and its rows kept when a sweep stops."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import patchmmd.theory.cnn as theory_cnn
from cli_runner import invoke
from patchmmd.io import load_image, save_image
from patchmmd.theory import infinite_cnn_distance, nngp_kernel
from patchmmd.theory.nngp import nngp_from_inner_products

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------
# Gradients for vectors of tiny norm: the kernel is homogeneous, k(sP, sQ) = s² k(P, Q) without biases
# ----------------------------------------------------------------------------------------------------


# (where the old quotient overflowed, p·q is subnormal: a few digits are lost, hence the tolerances)
@pytest.mark.parametrize(("dtype", "scale", "rtol"), [(torch.float32, 1e-20, 1e-3), (torch.float32, 3e-21, 1e-3),
                                                       (F64, 1e-160, 0.05)])
@pytest.mark.parametrize("first_layer", ["he", "zero_mean"])
def test_kernel_gradient_for_tiny_vectors_is_the_scaled_gradient(dtype: torch.dtype, scale: float, rtol: float,
                                                                first_layer: str) -> None:
    # The cosine pq / (|p||q|) was one quotient: its gradient divides by |p||q| once more, and c / (|p||q|) overflowed
    # when |p||q| was below 1 / (largest float), which made the gradient inf (and the distance's NaN) while the
    # value was right. The gradient at sP is s times the gradient at P.
    gen = torch.Generator().manual_seed(0)
    P, Q = torch.randn(4, 12, generator=gen, dtype=F64), torch.randn(5, 12, generator=gen, dtype=F64)
    weights = torch.rand(4, 5, generator=gen, dtype=F64)

    def grad_at(s: float) -> torch.Tensor:
        p = (P * s).to(dtype).requires_grad_(True)
        k = nngp_kernel(p, (Q * s).to(dtype), depth=2, first_layer=first_layer, channels=3)  # type: ignore[arg-type]
        (g,) = torch.autograd.grad((k * weights.to(dtype)).sum(), p)
        return g.double()

    want, got = grad_at(1.0), grad_at(scale)
    assert bool(torch.isfinite(got).all()), got
    torch.testing.assert_close(got / scale, want, rtol=rtol, atol=rtol * float(want.abs().max()))


@pytest.mark.parametrize("method", ["closed_form", "recursion"])
def test_inner_product_form_has_finite_gradients_at_tiny_norms(method: str) -> None:
    # nngp_from_inner_products is public: its recursion without biases divided by the same product.
    pp = torch.tensor([4e-40, 1e-41], requires_grad=True)
    qq = torch.tensor([9e-40, 2e-41], requires_grad=True)
    pq = torch.tensor([1e-40, -1e-41], requires_grad=True)
    k = nngp_from_inner_products(pp, qq, pq, dim=6, depth=2, method=method)  # type: ignore[arg-type]
    grads = torch.autograd.grad(k.sum(), (pp, qq, pq))
    assert all(bool(torch.isfinite(g).all()) for g in grads), grads


def test_distance_of_tiny_images_has_finite_gradients() -> None:
    # Images of values about 1e-20 in value_range (-1, 1), float32: the distance is tiny and its gradient finite.
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1) * 1e-20
    y = (torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1) * 1e-20
    for pooling in [(4, 2), "global", None]:
        u = x.clone().requires_grad_(True)
        d = infinite_cnn_distance(u, y, value_range=(-1, 1), pooling=pooling)  # type: ignore[arg-type]
        (g,) = torch.autograd.grad(d.sum(), u)
        assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(g).all()), (pooling, g)


# ----------------------------------------------------------------------------------------------------
# The kernel against explicit random ReLU networks (NumPy, float64), deeper than one layer
# ----------------------------------------------------------------------------------------------------


def _np_first_layer(P: np.ndarray, first_layer: str) -> np.ndarray:
    if first_layer == "zero_mean":  # 3 channels of 2x2 blocks: each block minus its mean
        b = P.reshape(len(P), 3, -1)
        return (b - b.mean(-1, keepdims=True)).reshape(P.shape)
    if first_layer == "patch_norm":
        return P / np.sqrt((P * P).sum(1, keepdims=True) + 1e-3**2)
    return P


@pytest.mark.parametrize(("depth", "sigma_w2", "sigma_b2", "first_layer"),
                         [(3, 1.3, 0.2, "patch_norm"), (4, 2.5, 0.0, "he"), (2, 0.7, 0.5, "zero_mean")])
def test_kernel_is_the_mean_empirical_kernel_of_explicit_networks(depth: int, sigma_w2: float, sigma_b2: float,
                                                                  first_layer: str) -> None:
    # (1/N) Σ_i ReLU(h_i(p)) ReLU(h_i(q)) of fully connected ReLU networks of width N on the patch vectors, weights
    # N(0, σ_w²/fan_in), biases N(0, σ_b²); the mean over independent networks is the NNGP kernel up to O(1/N).
    rng = np.random.default_rng(3)
    d, width, nets = 12, 2000, 24
    P = rng.standard_normal((4, d))
    P[1] = 0.3 * P[0] + 0.01 * rng.standard_normal(d)  # nearly parallel to P[0]
    P[3] = -P[2]  # opposite
    inputs = _np_first_layer(P, first_layer)
    est = []
    for _ in range(nets):
        h, fan = inputs.T, d
        for _layer in range(depth):
            w = rng.standard_normal((width, fan)) * math.sqrt(sigma_w2 / fan)
            b = rng.standard_normal((width, 1)) * math.sqrt(sigma_b2)
            h, fan = np.maximum(w @ h + b, 0.0), width
        est.append(h.T @ h / width)
    mean, sem = np.mean(est, 0), np.std(est, 0, ddof=1) / math.sqrt(nets)
    lib = nngp_kernel(torch.from_numpy(P), torch.from_numpy(P), depth=depth, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
                      first_layer=first_layer, channels=3).numpy()  # type: ignore[arg-type]
    assert np.all(np.abs(mean - lib) <= 5 * sem + 1e-12), ((mean - lib) / sem).round(2).tolist()
    assert float(sem.max()) < 0.025 * float(np.abs(lib).max())  # a real test: the tolerance is small


# ----------------------------------------------------------------------------------------------------
# The theory command
# ----------------------------------------------------------------------------------------------------


def _crop_and_offset_copy(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 24, 24, generator=g) * 200).round() / 255
    save_image(x, tmp_path / "a.png")
    save_image(x + 30 / 255, tmp_path / "b.png")  # 30 grey levels brighter, exactly, in every channel
    return tmp_path / "a.png", tmp_path / "b.png"


def test_theory_command_refuses_a_rounding_level_analytic_distance(tmp_path: Path) -> None:
    # Zero-mean filters do not see a constant added to a channel: the analytic distance of an image and a brighter
    # copy is 0, but float64 rounding left 1e-18 with windows 8/4, and the command swept the widths against it: exit
    # status 0 and relative errors about 1 at every width (a fitted slope near 0, as if the theory failed).
    a, b = _crop_and_offset_copy(tmp_path)
    x, y = (load_image(p, dtype=F64)[None] for p in (a, b))
    assert 0 < float(infinite_cnn_distance(x, y, first_layer="zero_mean", pooling=(8, 4))) < 1e-15  # rounding, not 0
    res = invoke("theory", a, b, "--first-layer", "zero_mean", "--window", "8", "--stride", "4", "--widths", "4,8",
                 "--seeds", "1", "--out", tmp_path / "o")
    assert res.exit_code == 1, res.output
    assert "differ by a constant per colour channel" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    # the same images with He filters differ: the sweep runs
    res = invoke("theory", a, b, "--window", "8", "--stride", "4", "--widths", "4,8", "--seeds", "1",
                 "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output


def test_theory_command_keeps_the_finished_rows_of_a_stopped_sweep(tmp_path: Path, monkeypatch: Any) -> None:
    # The rows were written after the whole sweep: Ctrl-C (or a failure, such as memory at the largest width) lost
    # every finished network.
    real = theory_cnn.RandomCNNDistance

    def stop_at_16(**kwargs: Any) -> Any:
        if kwargs["width"] == 16:
            raise KeyboardInterrupt
        return real(**kwargs)

    monkeypatch.setattr(theory_cnn, "RandomCNNDistance", stop_at_16)
    res = invoke("theory", "--widths", "4,8,16", "--seeds", "2", "--crop", "16", "--window", "8", "--stride", "4",
                 "--out", tmp_path / "o")
    assert res.exit_code == 130, res.output
    with open(tmp_path / "o" / "theory.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["width"]), int(r["seed"])) for r in rows] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert all(float(r["finite"]) > 0 and float(r["analytic"]) > 0 for r in rows)
    assert not (tmp_path / "o" / "theory.md").exists()
