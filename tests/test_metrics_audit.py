"""Audit of the registry and the baseline metrics (PSNR, SSIM, MS-SSIM, LPIPS, DISTS) as a user of lpips / piq /
pytorch-msssim / torchmetrics would call them: references in float64, autocast, channels, options, random state.

Everything runs on small random weight files (no published weights, no download).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from patchmmd.metrics.classic import ms_ssim, psnr, ssim
from patchmmd.metrics.dists import DISTS
from patchmmd.metrics.lpips import LPIPS
from patchmmd.metrics.registry import get_metric
from patchmmd.metrics.trunks import alexnet_features, vgg16_features


def _pair(shape: tuple[int, ...], seed: int = 0, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return x, (x + noise * torch.randn(shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return random_weight_files(tmp_path_factory.mktemp("audit_weights"))


def random_weight_files(d: Path) -> dict[str, Path]:
    """Random weight files in the published layouts (AlexNet and VGG16 trunks, LPIPS heads, DISTS alpha/beta),
    written in ``d``."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        alex, vgg = alexnet_features().state_dict(), vgg16_features().state_dict()
    files = {"alex": d / "alexnet.pth", "vgg": d / "vgg16.pth", "alex_head": d / "alex.pth", "dists": d / "dists.pt"}
    torch.save(alex, files["alex"])
    torch.save(vgg, files["vgg"])
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
                for k, c in enumerate((64, 192, 384, 256, 256))}, files["alex_head"])
    torch.save({"alpha": torch.rand(1, 1475, 1, 1, generator=g), "beta": torch.rand(1, 1475, 1, 1, generator=g)},
               files["dists"])
    return files


# ------------------------------------------------------------------------------------------- independent references


def _gaussian_filter(x: torch.Tensor, size: int, sigma: float = 1.5) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float64) - size // 2
    w = torch.exp(-(c**2) / (2 * sigma**2))
    w = w / w.sum()
    n = x.shape[1]
    x = F.conv2d(x, w.view(1, 1, 1, size).expand(n, 1, 1, size), groups=n)
    return F.conv2d(x, w.view(1, 1, size, 1).expand(n, 1, size, 1), groups=n)


def _ssim_reference(x: torch.Tensor, y: torch.Tensor, size: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Wang et al.'s SSIM and contrast-structure maps' means per image and channel, float64, 'valid' windows."""
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _gaussian_filter(x, size), _gaussian_filter(y, size)
    vx = _gaussian_filter(x * x, size) - mx**2
    vy = _gaussian_filter(y * y, size) - my**2
    cov = _gaussian_filter(x * y, size) - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    return (lum * cs).flatten(2).mean(-1), cs.flatten(2).mean(-1)


def test_psnr_and_ssim_equal_float64_references() -> None:
    pytest.importorskip("pytorch_msssim")
    x, y = _pair((2, 3, 40, 37), noise=0.1)
    x, y = x.double(), y.double()
    mse = (x - y).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(1 / mse), rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(x, y).double(), _ssim_reference(x, y)[0].mean(1), rtol=0, atol=1e-6)
    # per image equals in a batch, and d(x, x) is the best value
    torch.testing.assert_close(ssim(x, y), torch.cat([ssim(x[i:i + 1], y[i:i + 1]) for i in range(2)]))
    assert torch.equal(ssim(x, x), torch.ones(2)) and torch.equal(psnr(x, x), torch.full((2,), 100.0).double())


def test_ms_ssim_equals_a_float64_reference() -> None:
    pytest.importorskip("pytorch_msssim")
    x, y = _pair((1, 3, 50, 51), noise=0.1)
    x, y = x.double(), y.double()
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    value = torch.ones(1, 3, dtype=torch.float64)
    a, b = x, y
    for scale, w in enumerate(weights):
        s, cs = _ssim_reference(a, b, 3)
        value = value * (s if scale == 4 else cs).relu() ** w
        pad = [side % 2 for side in a.shape[2:]]  # pytorch-msssim's 2x2 average pooling of odd sides
        a, b = F.avg_pool2d(a, 2, padding=pad), F.avg_pool2d(b, 2, padding=pad)
    torch.testing.assert_close(ms_ssim(x, y, win_size=3).double(), value.mean(1), rtol=0, atol=1e-6)


def test_psnr_gradcheck_in_float64() -> None:
    x, y = _pair((1, 2, 5, 6), seed=1, noise=0.2)
    x = x.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: psnr(a, y.double()), (x,))


# ------------------------------------------------------------------------------------------------------- autocast


def test_ssim_and_ms_ssim_compute_in_float32_inside_autocast() -> None:
    """Under ``torch.autocast`` pytorch-msssim's convolutions ran in bfloat16 and ``E[x²] − μ²`` cancelled: SSIM of
    two close images came out as 1.0078 (above its maximum 1), MS-SSIM as 1.09, in bfloat16."""
    pytest.importorskip("pytorch_msssim")
    x, y = _pair((1, 3, 168, 168), noise=0.01)
    x = 0.5 + 0.5 * x
    for f in (ssim, ms_ssim):
        expected = f(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = f(x, y)
        assert got.dtype == torch.float32, f.__name__
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert (got <= 1).all(), f.__name__


@pytest.mark.parametrize("name", ["lpips-alex", "dists"])
def test_deep_baselines_compute_in_float32_inside_autocast(name: str, weight_files: dict[str, Path]) -> None:
    """The trunks ran in bfloat16 inside ``torch.autocast`` (1 % off on published weights), though documented to
    run in float32 whatever the input; the package's distances turn autocast off, and so do the baselines now."""
    backbone, head = (("alex", "alex_head") if name == "lpips-alex" else ("vgg", "dists"))
    m = get_metric(name, backbone=str(weight_files[backbone]), weights=str(weight_files[head]))
    x, y = _pair((1, 3, 48, 48))
    expected = m(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------------------- channels


@pytest.mark.parametrize("make", [lambda: LPIPS("alex"), DISTS], ids=["lpips", "dists"])
def test_deep_baselines_name_the_channels_they_take(make: object) -> None:
    """A 4-channel (RGBA) batch stopped in a broadcasting ``RuntimeError`` ("size of tensor a (4) must match");
    grayscale is taken as the image repeated in R, G and B."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = make()  # type: ignore[operator]  # random weights: channels do not depend on them
    x, y = _pair((1, 4, 40, 40))
    with pytest.raises(ValueError, match=r"must have 3 channels \(RGB\) or 1 \(grayscale\) .*got 4 channels"):
        m(x, y)
    gray, gray_y = x[:, :1], y[:, :1]
    torch.testing.assert_close(m(gray, gray_y), m(gray.expand(-1, 3, -1, -1), gray_y.expand(-1, 3, -1, -1)))


# ------------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(("name", "option", "valid"), [
    ("psnr", "reduction", "['data_range', 'max_db']"),
    ("ssim", "reduction", "['out_of_range', 'win_size']"),
    ("ssim-downsampled", "size_average", "['out_of_range', 'win_size']"),
    ("ms-ssim", "weights", "['win_size']"),
    ("lpips-alex", "net", "['backbone', 'out_of_range', 'weights']"),
    ("lpips-vgg", "normalize", "['backbone', 'out_of_range', 'weights']"),
    ("dists", "require_grad", "['backbone', 'out_of_range', 'weights']"),
])
def test_registry_names_the_metric_and_its_options_for_an_unknown_option(name: str, option: str, valid: str) -> None:
    """Python's own message named the private factory ("_psnr() got an unexpected keyword argument")."""
    expected = f"unknown option(s) ['{option}'] for {name}; valid options are {valid}"
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        get_metric(name, **{option: 1})


# --------------------------------------------------------------------------------------------------- random state


def test_building_the_deep_baselines_leaves_the_global_random_state(weight_files: dict[str, Path]) -> None:
    """Building a metric from files drew its throwaway initial weights from the global generator, so the caller's
    next ``torch.rand`` changed with whether a metric had been built."""
    builds = {
        "lpips-alex": lambda: get_metric("lpips-alex", backbone=str(weight_files["alex"]),
                                         weights=str(weight_files["alex_head"])),
        "dists": lambda: get_metric("dists", backbone=str(weight_files["vgg"]), weights=str(weight_files["dists"])),
        "LPIPS.from_files": lambda: LPIPS.from_files("alex", weight_files["alex"], weight_files["alex_head"]),
    }
    for what, build in builds.items():
        state = torch.get_rng_state()
        build()
        assert torch.equal(torch.get_rng_state(), state), what
    # still the files' weights
    m = get_metric("lpips-alex", backbone=str(weight_files["alex"]), weights=str(weight_files["alex_head"]))
    saved = torch.load(weight_files["alex"], weights_only=True)
    assert torch.equal(m.module.features[0].weight, saved["0.weight"])  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------------- dtypes


def test_ssim_downsampled_pools_a_16_bit_input_in_float32() -> None:
    """SSIM computes in float32 whatever the input dtype; the downsampling step pooled 16-bit inputs in 16 bits."""
    pytest.importorskip("pytorch_msssim")
    x, y = _pair((1, 3, 384, 384), noise=0.02)
    x16, y16 = x.half(), y.half()
    got = ssim(x16, y16, downsample=True)
    assert got.dtype == torch.float32
    assert torch.equal(got, ssim(x16.float(), y16.float(), downsample=True))
    assert math.isfinite(got.item())


def test_ssim_downsampled_rounds_the_factor_as_the_reference_code() -> None:
    """``ssim.m``'s ``f = max(1, round(min(M, N) / 256))`` is MATLAB's ``round`` (halves up): 640 px pools by 3.
    Python's ``round(2.5)`` is 2, which pooled 640 px images by 2."""
    pytest.importorskip("pytorch_msssim")
    x, y = _pair((1, 1, 640, 648), noise=0.1)
    expected = ssim(F.avg_pool2d(x, 3), F.avg_pool2d(y, 3))
    torch.testing.assert_close(get_metric("ssim-downsampled")(x, y), expected, rtol=0, atol=1e-6)
    from patchmmd.metrics.classic import _downsampling_factor

    assert [_downsampling_factor(s) for s in (127, 128, 383, 384, 639, 640, 1151, 1152)] == [1, 1, 1, 2, 2, 3, 4, 5]


@pytest.mark.parametrize("name", [["psnr"], {"psnr": 1}])
def test_registry_names_the_argument_for_a_name_that_is_not_a_string(name: object) -> None:
    """An unhashable name stopped in the registry's dict lookup ("unhashable type: 'list'")."""
    with pytest.raises(TypeError, match=r"^name must be a metric name \(a str\), got "):
        get_metric(name)  # type: ignore[arg-type]


def test_spec_factories_name_the_metric_for_an_unknown_option_too() -> None:
    """The evaluation harness builds metrics with ``get_spec(name).factory(**options)``: the same message there, and
    the factory's signature (what the training losses inspect) is kept."""
    import inspect

    from patchmmd.metrics.registry import get_spec

    with pytest.raises(TypeError, match=r"^unknown option\(s\) \['reduction'\] for psnr; valid options are"):
        get_spec("psnr").factory(reduction="sum")
    assert list(inspect.signature(get_spec("lpips-alex").factory).parameters) == ["backbone", "weights", "out_of_range"]


def test_a_failed_load_of_the_built_in_metrics_is_not_a_loaded_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in module that fails to import left the registry marked as loaded: the first lookup raised, every
    later one silently saw the metrics registered so far."""
    from patchmmd.metrics import registry

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "BUILTIN_MODULES", (*registry.BUILTIN_MODULES, "patchmmd.metrics._no_such_module"))
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="_no_such_module"):
            registry.metric_names()
