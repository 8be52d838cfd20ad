"""scripts/sr_loss_variants.py, the script behind the loss variants of docs/development-log.md: its terms, its
losses and the weight rule (the training and judging need the published weights and are not run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from patchmmd.core.mmdpp import mmdpp
from patchmmd.data import sample_image
from patchmmd.data.distortions import gaussian_blur

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sr_loss_variants.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sr_loss_variants", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crops(n: int = 2, size: int = 32) -> torch.Tensor:
    img = sample_image("astronaut")
    return torch.stack([img[:, 40 * i : 40 * i + size, 60 : 60 + size] for i in range(n)])


@pytest.mark.parametrize("name", ["aligned-normalised", "charbonnier", "normalised-mmd", "whitened-mmd", "joint-mmd",
                                  "relu-mmd", "vgg-mmd"])
def test_each_term_is_zero_on_equal_images_and_grows_with_blur(script: ModuleType, name: str) -> None:
    x = crops()
    term = script.TERMS[name]
    assert torch.allclose(term(x, x), torch.zeros(()), atol=1e-6)
    mild, strong = term(gaussian_blur(x, 0.7), x), term(gaussian_blur(x, 2.0), x)
    assert mild.shape == (2,) and bool((mild > 0).all()) and bool((strong > mild).all())


@pytest.mark.parametrize("name", ["aligned-normalised", "charbonnier", "normalised-mmd", "joint-mmd"])
def test_each_term_has_finite_gradients_at_equal_images(script: ModuleType, name: str) -> None:
    x = crops().requires_grad_()
    script.TERMS[name](x, x.detach()).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_the_root_mmd_is_the_mean_of_the_windows_mmd(script: ModuleType) -> None:
    x, y = crops(), gaussian_blur(crops(), 1.0)
    fx, fy = torch.rand(2, 8, 32, 32, dtype=torch.float64), torch.rand(2, 8, 32, 32, dtype=torch.float64)
    # the windows' MMD² of D = 8 features written out: 3 x 3 windows of 16 px every 8, (2 / D) ‖mean fx − mean fy‖²
    per_window = torch.tensor([[[float((fx[n, :, i : i + 16, j : j + 16].mean((1, 2))
                                        - fy[n, :, i : i + 16, j : j + 16].mean((1, 2))).pow(2).sum()) * 2 / 8
                                 for j in (0, 8, 16)] for i in (0, 8, 16)] for n in range(2)], dtype=torch.float64)
    torch.testing.assert_close(script._per_window(fx, fy, 16) * (2.0 / 8), per_window, rtol=1e-12, atol=0)
    root = script._window_mmd(fx, fy, 16, root=1e-9)
    assert torch.allclose(root, per_window.sqrt().mean((1, 2)), rtol=1e-6)
    assert torch.allclose(script._window_mmd(fx, fy, 16), per_window.mean((1, 2)))
    # and on images: a positive term that is not the squared one
    assert bool((script.normalised_mmd(x, y, root=0.01) > script.normalised_mmd(x, y)).all())


def test_a_variant_is_the_preset_without_its_mmd_plus_the_weighted_term(script: ModuleType) -> None:
    x, y = crops(), gaussian_blur(crops(), 1.0)
    loss = script.make_loss("charbonnier:weight=336,base_weight_mmd=400,base_weight_local=0")
    base = mmdpp(x, y, preset="loss", out_of_range="ignore", weight_mmd=400.0, weight_local=0.0, num_scales=2)
    assert float(loss(x, y)) == pytest.approx(float((base + 336 * script.charbonnier(x, y)).mean()), rel=1e-6)
    suite_candidate = script.make_loss("mmdpp:preset=loss")
    assert float(suite_candidate(x, y)) == pytest.approx(float(mmdpp(x, y, preset="loss").mean()), rel=1e-6)


def test_calibrate_reproduces_the_documented_weights(script: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    script.calibrate(["normalised-mmd", "aligned-normalised"])
    out = capsys.readouterr().out
    assert "normalised-mmd: term" in out and "weight 210" in out and "weight 17" in out
    script.calibrate(["charbonnier", "aligned-normalised"], against="local")
    out = capsys.readouterr().out
    assert "weight 307" in out and "weight 19" in out


def test_several_patch_sizes_average_their_terms(script: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    x, y = crops(), gaussian_blur(crops(), 1.0)
    one = [script.normalised_mmd(x, y, sizes=[s]) for s in (3, 5, 7)]
    assert torch.equal(one[0], script.normalised_mmd(x, y))  # the default is the preset's 3x3 term
    assert not torch.allclose(one[0], one[1])
    assert torch.allclose(script.normalised_mmd(x, y, sizes=[3, 5, 7]), torch.stack(one).mean(0))
    script.calibrate(["normalised-mmd:sizes=[3,5]", "normalised-mmd:sizes=[3,5,7]"])
    out = capsys.readouterr().out  # the weights of docs/development-log.md, "Several patch sizes at once"
    assert "sizes=[3,5]: term" in out and "weight 224" in out and "weight 234" in out


# ------------------------------------------------------------------------------------- sliced-wasserstein
def reference(x: np.ndarray, y: np.ndarray, projections: int, seed: int, floor: float, levels: int,
              window: int) -> np.ndarray:
    """The term written out with loops: box-averaged octaves, each 3x3 patch (channel-major, as F.unfold orders
    it) centred per channel and divided by ``sqrt(‖p‖² + floor² · 27)``, each window's projections on each unit
    direction sorted for x and y, the mean squared difference, averaged over directions and windows."""
    g = torch.Generator().manual_seed(seed)
    out = np.zeros(x.shape[0])
    for level in range(levels):
        if level:
            h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
            x, y = ([a[:, :, :h, :w].reshape(a.shape[0], a.shape[1], h // 2, 2, w // 2, 2).mean((3, 5))
                     for a in (x, y)])
        dirs = torch.randn(projections, 27, generator=g).double().numpy()  # the same draws, level after level
        dirs /= np.sqrt((dirs**2).sum(1, keepdims=True))
        ph, pw = x.shape[2] - 2, x.shape[3] - 2

        def patch(a: np.ndarray, n: int, i: int, j: int) -> np.ndarray:
            p = a[n, :, i : i + 3, j : j + 3].reshape(3, 9)
            p = (p - p.mean(1, keepdims=True)).reshape(27)
            return p / np.sqrt((p**2).sum() + floor * floor * 27)

        wd = min(window, pw)
        starts_i, starts_j = range(0, ph - wd + 1, max(wd // 2, 1)), range(0, pw - wd + 1, max(wd // 2, 1))
        for n in range(x.shape[0]):
            per_window = []
            for i0 in starts_i:
                for j0 in starts_j:
                    px = np.array([patch(x, n, i, j) for i in range(i0, i0 + wd) for j in range(j0, j0 + wd)])
                    py = np.array([patch(y, n, i, j) for i in range(i0, i0 + wd) for j in range(j0, j0 + wd)])
                    w2 = [np.mean((np.sort(px @ d) - np.sort(py @ d)) ** 2) for d in dirs]
                    per_window.append(np.mean(w2))
            out[n] += np.mean(per_window)
    return out


def test_zero_on_equal_images_positive_on_different_ones(script: ModuleType) -> None:
    x = crops()
    term = script.TERMS["sliced-wasserstein"]
    assert torch.equal(term(x, x), torch.zeros(2))
    mild, strong = term(gaussian_blur(x, 0.7), x), term(gaussian_blur(x, 2.0), x)
    assert mild.shape == (2,) and bool((mild > 0).all()) and bool((strong > mild).all())


def test_equals_a_brute_force_reference(script: ModuleType) -> None:
    # 26² images: 24² patches, 2 x 2 windows of 16 every 8 at the native octave; 11² patches, one 11-px window,
    # one octave down
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 2, 3, 26, 26, generator=g, dtype=torch.float64)
    for seed in (0, 1):
        got = script.sliced_wasserstein(x, y, projections=6, seed=seed)
        want = reference(x.numpy(), y.numpy(), 6, seed, script.FLOOR, 2, 16)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=0)
    assert not np.allclose(script.sliced_wasserstein(x, y, projections=6, seed=1).numpy(),
                           reference(x.numpy(), y.numpy(), 6, 0, script.FLOOR, 2, 16), rtol=1e-3)


def test_gradient_is_finite_and_pulls_towards_the_target(script: ModuleType) -> None:
    y = crops()
    for x0 in (y, gaussian_blur(y, 1.0)):
        x = x0.clone().requires_grad_()
        script.sliced_wasserstein(x, y).sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert float(x.grad.abs().sum()) > 0
    with torch.no_grad():  # a small step down the gradient brings the blurred image closer
        before = script.sliced_wasserstein(x, y).sum()
        after = script.sliced_wasserstein(x - 1e-3 * x.grad / x.grad.abs().max(), y).sum()
    assert float(after) < float(before)


def test_the_variant_and_the_calibrate_command(script: ModuleType) -> None:
    x, y = crops(), gaussian_blur(crops(), 1.0)
    loss = script.make_loss("sliced-wasserstein:weight=2636,projections=16,seed=1")
    base = mmdpp(x, y, preset="loss", out_of_range="ignore", weight_mmd=0.0, num_scales=2)
    want = (base + 2636 * script.sliced_wasserstein(x, y, projections=16, seed=1)).mean()
    assert float(loss(x, y)) == pytest.approx(float(want), rel=1e-6)
    args = script.build_parser().parse_args(["--calibrate", "sliced-wasserstein", "sliced-wasserstein:seed=1"])
    assert args.calibrate and args.variants == ["sliced-wasserstein", "sliced-wasserstein:seed=1"]
    script.check_variant("sliced-wasserstein:seed=1", None, calibrating=True)
    with pytest.raises(TypeError):
        script.check_variant("sliced-wasserstein:directions=8", None, calibrating=True)
    with pytest.raises(ValueError, match="weight"):
        script.make_loss("sliced-wasserstein")
