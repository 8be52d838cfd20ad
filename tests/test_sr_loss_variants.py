"""scripts/sr_loss_variants.py, the script behind the loss variants of docs/development-log.md: its terms, its
losses and the weight rule (the training and judging need the published weights and are not run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

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
