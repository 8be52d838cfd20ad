"""Baseline metrics: values, registration, and the weight-file rules of LPIPS/DISTS (local files only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from patchmmd.metrics.classic import psnr
from patchmmd.metrics.dists import DISTS
from patchmmd.metrics.lpips import LPIPS
from patchmmd.metrics.registry import get_metric, get_spec, metric_names, metric_specs
from patchmmd.metrics.trunks import VGG16_CONV_INDICES, alexnet_features, conv_layers, vgg16_features, vgg16_taps
from patchmmd.metrics.weights import WeightsError


def test_registered() -> None:
    for name in ("psnr", "ssim", "ssim-downsampled", "ms-ssim", "lpips-alex", "lpips-vgg", "dists"):
        assert name in metric_names() and get_spec(name).group == "baselines"
    assert get_spec("psnr").higher_is_better and get_spec("ssim").higher_is_better
    assert get_spec("ms-ssim").higher_is_better
    assert not get_spec("lpips-alex").higher_is_better and not get_spec("dists").higher_is_better


def test_psnr_values() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[1] += 0.01
    v = psnr(x, y)
    assert v[0].item() == pytest.approx(100.0) and v[1].item() == pytest.approx(40.0, abs=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:, :, :4])


def test_ssim_family() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 200, 200, generator=g)
    y = (x + 0.1 * torch.rand(2, 3, 200, 200, generator=g)).clamp(0, 1)
    for name in ("ssim", "ssim-downsampled", "ms-ssim"):
        m = get_metric(name)
        same, diff = m(x, x), m(x, y)
        assert same.shape == (2,) and torch.allclose(same, torch.ones(2), atol=1e-5)
        assert (diff < 1).all()
    small = torch.rand(1, 3, 64, 64, generator=g)
    with pytest.raises(ValueError, match=r"ms-ssim with win_size=11 needs images larger than 160 px"):
        get_metric("ms-ssim")(small, small)
    assert get_metric("ms-ssim", win_size=3)(small, small).item() == pytest.approx(1.0, abs=1e-5)
    # the downsampled variant pools by round(min(H, W) / 256): 512 px -> factor 2
    big = torch.rand(1, 3, 512, 512, generator=g)
    pooled = torch.nn.functional.avg_pool2d(big, 2)
    noisy = (big + 0.05).clamp(0, 1)
    ref = get_metric("ssim")(pooled, torch.nn.functional.avg_pool2d(noisy, 2))
    assert get_metric("ssim-downsampled")(big, noisy).item() == pytest.approx(ref.item(), abs=1e-6)


def test_module_imports_without_pytorch_msssim() -> None:
    code = ("import sys; sys.modules['pytorch_msssim'] = None\n"
            "from patchmmd.metrics.registry import get_metric, get_spec\n"
            "print(get_spec('ssim').name)\n"
            "try:\n    get_metric('ssim')\nexcept ImportError as e:\n    print('ImportError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ssim\nImportError") and "pip install" in out


def _save_trunk(path: Path, features: torch.nn.Sequential, full: bool) -> Path:
    sd = features.state_dict()
    if full:  # a whole torchvision checkpoint: features.* plus a classifier to ignore
        sd = {f"features.{k}": v for k, v in sd.items()} | {"classifier.1.weight": torch.zeros(4, 2)}
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    files = {
        "alex": _save_trunk(d / "alexnet.pth", alexnet_features(), full=True),
        "vgg": _save_trunk(d / "vgg16.pth", vgg16_features(), full=False),
    }
    for net, chans in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        # the lpips package's layout (with the dropout at model.0)
        heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(chans)}
        torch.save(heads, d / f"{net}_head.pth")
        files[f"{net}_head"] = d / f"{net}_head.pth"
    torch.save({"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}, d / "dists.pt")
    files["dists"] = d / "dists.pt"
    return files


@pytest.mark.parametrize("name", ["lpips-alex", "lpips-vgg", "dists"])
def test_deep_baselines_from_files(name: str, weight_files: dict[str, Path]) -> None:
    net = "alex" if name == "lpips-alex" else "vgg"
    head = weight_files["dists"] if name == "dists" else weight_files[f"{net}_head"]
    m = get_metric(name, backbone=str(weight_files[net]), weights=str(head))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = (x + 0.2 * torch.rand(2, 3, 64, 64, generator=g)).clamp(0, 1)
    same, diff = m(x, x), m(x, y)
    assert same.shape == (2,) and same.abs().max().item() < 1e-5
    assert (diff > same + 1e-6).all()
    # the loaded trunk is the saved one
    module = m.module  # type: ignore[attr-defined]
    saved = torch.load(weight_files[net], weights_only=True)
    key = "features.0.weight" if "features.0.weight" in saved else "0.weight"
    assert torch.equal(module.features[0].weight, saved[key])


def test_lpips_matches_definition(weight_files: dict[str, Path]) -> None:
    """LPIPS = Σ_layers spatial mean of w·(unit-normalised feature difference)², computed independently: the AlexNet
    trunk written out from the weight file (torchvision's layout: 11x11 stride 4 padding 2, 5x5 padding 2 and three
    3x3 padding 1 convolutions, 3x3 stride 2 max pools after the first two)."""
    m = LPIPS.from_files("alex", weight_files["alex"], weight_files["alex_head"])
    heads = torch.load(weight_files["alex_head"], weights_only=True)
    trunk = torch.load(weight_files["alex"], weights_only=True)

    def taps(img: torch.Tensor) -> list[torch.Tensor]:  # the ReLU after each convolution, where LPIPS taps
        out, h = [], img
        for i, stride, padding in ((0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1)):
            if i in (3, 6):
                h = F.max_pool2d(h, 3, 2)
            h = torch.relu(F.conv2d(h, trunk[f"features.{i}.weight"], trunk[f"features.{i}.bias"], stride=stride,
                                    padding=padding))
            out.append(h)
        return out

    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    total = 0.0
    for k, (fx, fy) in enumerate(zip(taps(((2 * x - 1) - shift) / scale), taps(((2 * y - 1) - shift) / scale),
                                     strict=True)):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += float(((nx - ny) ** 2 * w).sum(1).mean())
    assert m(x, y).item() == pytest.approx(total, rel=1e-5)


def _dists_reference(trunk: dict[str, torch.Tensor], head: dict[str, torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """DISTS (Ding et al. 2020) written out in float64 from the weight files: the input and the five VGG16 stages
    (ImageNet-normalised input, 2x2 max-pools replaced by L2 pooling: the square root of a stride-2 [1, 2, 1]²/16
    Hann average of squares, padding 1), S1 of the channel means, S2 of the channel (co)variances, c1 = c2 = 1e-6,
    alpha and beta normalised to sum 1 together, distance 1 − Σ(alpha S1 + beta S2)."""
    stages = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))  # torchvision's conv indices per stage
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    taps = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    hann = taps[:, None] * taps[None, :] / 4.0

    def features(img: torch.Tensor) -> list[torch.Tensor]:
        h, out = (img - mean) / std, [img]
        for s, convs in enumerate(stages):
            if s:
                c = h.shape[1]
                h = (F.conv2d(h * h, hann.expand(c, 1, 3, 3), stride=2, padding=1, groups=c) + 1e-12).sqrt()
            for i in convs:
                h = torch.relu(F.conv2d(h, trunk[f"{i}.weight"].double(), trunk[f"{i}.bias"].double(), padding=1))
            out.append(h)
        return out

    alpha, beta = head["alpha"].double().flatten(), head["beta"].double().flatten()
    total, start = alpha.sum() + beta.sum(), 0
    s = torch.zeros(x.shape[0], dtype=torch.float64)
    for f0, f1 in zip(features(x.double()), features(y.double()), strict=True):
        a, b = alpha[start : start + f0.shape[1]] / total, beta[start : start + f0.shape[1]] / total
        start += f0.shape[1]
        m0, m1 = f0.mean((2, 3)), f1.mean((2, 3))
        v0, v1 = f0.var((2, 3), unbiased=False), f1.var((2, 3), unbiased=False)
        cov = ((f0 - m0[..., None, None]) * (f1 - m1[..., None, None])).mean((2, 3))
        s1 = (2 * m0 * m1 + 1e-6) / (m0**2 + m1**2 + 1e-6)
        s2 = (2 * cov + 1e-6) / (v0 + v1 + 1e-6)
        s = s + (a * s1).sum(1) + (b * s2).sum(1)
    assert start == alpha.numel() == 1475  # every weight used once: 3 + 64 + 128 + 256 + 512 + 512 channels
    return 1 - s


def test_dists_equals_its_definition_in_float64(weight_files: dict[str, Path]) -> None:
    """DISTS against :func:`_dists_reference` on the fixture's random trunk and random alpha/beta (max pooling
    instead of L2 pooling, or a missing input normalisation, move these values by 1e-2)."""
    m = DISTS.from_files(weight_files["vgg"], weight_files["dists"])
    trunk = torch.load(weight_files["vgg"], weights_only=True)
    head = torch.load(weight_files["dists"], weights_only=True)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = torch.stack([1 - x[0], (x[1] + 0.1 * torch.randn(3, 64, 64, generator=g)).clamp(0, 1)])
    got = m(x, y)
    assert got.dtype == torch.float32 and bool(((got > 0) & (got <= 1)).all())
    torch.testing.assert_close(got.double(), _dists_reference(trunk, head, x, y), rtol=1e-5, atol=1e-6)


def test_weight_file_errors(tmp_path: Path, weight_files: dict[str, Path]) -> None:
    with pytest.raises(WeightsError, match="metric 'lpips-alex' needs backbone=PATH"):
        get_metric("lpips-alex")
    with pytest.raises(WeightsError, match="needs weights=PATH"):
        get_metric("lpips-alex", backbone=str(weight_files["alex"]))
    with pytest.raises(WeightsError, match="backbone file not found"):
        get_metric("dists", backbone=str(tmp_path / "none.pth"), weights=str(weight_files["dists"]))
    # a VGG file where AlexNet is expected: refused, listing the differences
    with pytest.raises(WeightsError, match=r"does not match the expected layout.*(missing|unexpected|wrong shape)"):
        get_metric("lpips-alex", backbone=str(weight_files["vgg"]), weights=str(weight_files["alex_head"]))
    # wrong head shapes
    with pytest.raises(WeightsError, match=r"wrong shape: 0.weight \(1, 64, 1, 1\) \(expected \(1, 128, 1, 1\)\)|"
                                           r"wrong shape"):
        get_metric("lpips-vgg", backbone=str(weight_files["vgg"]), weights=str(weight_files["alex_head"]))
    torch.save({"alpha": torch.rand(1, 10, 1, 1)}, tmp_path / "bad_dists.pt")
    with pytest.raises(WeightsError, match="missing 1: beta"):
        get_metric("dists", backbone=str(weight_files["vgg"]), weights=str(tmp_path / "bad_dists.pt"))
    # files are data only: pickled objects are refused by weights_only loading
    torch.save({"x": Path("evil")}, tmp_path / "obj.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        get_metric("dists", backbone=str(tmp_path / "obj.pth"), weights=str(weight_files["dists"]))
    (tmp_path / "junk.pth").write_bytes(b"not a file of tensors")
    with pytest.raises(WeightsError, match="cannot read"):
        get_metric("dists", backbone=str(tmp_path / "junk.pth"), weights=str(weight_files["dists"]))


def test_baselines_module_gathers_the_split_modules() -> None:
    from patchmmd.metrics import baselines, classic, dists, lpips, trunks, weights

    assert baselines.psnr is classic.psnr and baselines.ssim is classic.ssim and baselines.LPIPS is lpips.LPIPS
    assert baselines.DISTS is dists.DISTS and baselines.WeightsError is weights.WeightsError
    assert baselines.vgg16_features is trunks.vgg16_features and baselines.load_weights is weights.load_weights


def test_every_registration_is_differentiable_as_stated() -> None:
    """Each spec's ``differentiable`` holds: gradients reach the first input, finite and non-zero."""
    g = torch.Generator().manual_seed(4)
    for spec in metric_specs():
        if spec.name in ("lpips-alex", "lpips-vgg", "dists", "vgg"):  # need files: checked below / in theory tests
            continue
        size = 176 if spec.name == "ms-ssim" else 32
        x = torch.rand(1, 3, size, size, generator=g).requires_grad_(True)
        y = torch.rand(1, 3, size, size, generator=g)
        opts = {"width": 16} if spec.name.startswith("random-cnn") else {}
        opts = {"depth": 1} if spec.name == "infinite-cnn" else opts
        get_metric(spec.name, **opts)(x, y).sum().backward()
        assert spec.differentiable, spec.name
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, spec.name


def test_deep_baselines_pass_gradients(weight_files: dict[str, Path]) -> None:
    assert all(get_spec(n).differentiable for n in ("lpips-alex", "lpips-vgg", "dists"))
    g = torch.Generator().manual_seed(5)
    for name, net, head in (("lpips-vgg", "vgg", "vgg_head"), ("dists", "vgg", "dists")):
        x = torch.rand(1, 3, 32, 32, generator=g).requires_grad_(True)
        m = get_metric(name, backbone=str(weight_files[net]), weights=str(weight_files[head]))
        m(x, torch.rand(1, 3, 32, 32, generator=g)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_one_vgg16_trunk() -> None:
    """``vgg16_taps`` on a ``vgg16_features`` trunk's convolutions is torchvision's ``features[:i + 1]`` at the taps."""
    torch.manual_seed(0)
    f = vgg16_features()
    assert [i for i, m in enumerate(f) if isinstance(m, torch.nn.Conv2d)] == list(VGG16_CONV_INDICES)
    x = torch.rand(1, 3, 32, 32)
    taps = vgg16_taps(x, conv_layers(f))
    for tap, i in zip(taps, (3, 8, 15, 22, 29), strict=True):
        assert torch.equal(tap, f[: i + 1](x))


def _published_weights() -> Path:
    """The published weights (``python ../shared/tools/published_weights.py WEIGHTS``): ``$PATCHMMD_WEIGHTS``, else
    ``../weights`` beside the repository; the test skips when the files are absent."""
    import os

    d = Path(os.environ.get("PATCHMMD_WEIGHTS") or Path(__file__).resolve().parents[2] / "weights")
    files = ("alexnet.pth", "vgg16.pth", "lpips/alex.pth", "lpips/vgg.pth", "dists.pt")
    if not all((d / f).is_file() for f in files):
        pytest.skip(f"published weights not found in {d} (set PATCHMMD_WEIGHTS)")
    return d


#: The official packages' values (lpips 0.1.4 with normalize=True; DISTS_pytorch 0.1, batch_average=False) on the
#: pair of the test below, with the published weights.
_OFFICIAL = {
    "lpips-alex": [0.014368805103003979, 0.01277262531220913],
    "lpips-vgg": [0.05294723063707352, 0.045204997062683105],
    "dists": [0.06239724159240723, 0.04931187629699707],
}


@pytest.mark.parametrize("name", list(_OFFICIAL))
def test_deep_baselines_equal_the_official_packages_on_published_weights(name: str) -> None:
    d = _published_weights()
    trunk = "alexnet.pth" if name == "lpips-alex" else "vgg16.pth"
    head = "dists.pt" if name == "dists" else f"lpips/{name.removeprefix('lpips-')}.pth"
    m = get_metric(name, backbone=str(d / trunk), weights=str(d / head))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 48, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, 64, 48, generator=g)).clamp(0, 1)
    torch.testing.assert_close(m(x, y), torch.tensor(_OFFICIAL[name]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("net", "side"), [("alex", 31), ("vgg", 16)])
def test_lpips_says_the_smallest_image_its_trunk_takes(net: str, side: int) -> None:
    # below it PyTorch stopped inside the trunk with "Output size is too small"
    m = LPIPS(net)  # random weights: the sizes do not depend on them
    assert m.min_side == side
    small = torch.rand(1, 3, side - 1, 64)
    with pytest.raises(ValueError, match=rf"at least {side}x{side} pixels \(what the .* trunk's strides"):
        m(small, small)
    ok = torch.rand(2, 3, side, side)
    assert m(ok, ok.flip(-1)).shape == (2,)  # the smallest side runs: the check is exact
    features = alexnet_features() if net == "alex" else vgg16_features()
    with pytest.raises(RuntimeError, match="too small"):  # what the check stands in front of
        features(torch.rand(1, 3, side - 1, side - 1))


def test_out_of_range_errors_name_the_options_the_metric_has() -> None:
    # the message used to suggest value_range=, which no baseline takes
    from patchmmd.metrics.classic import ms_ssim, ssim

    x = torch.rand(1, 3, 200, 200) * 255
    with pytest.raises(ValueError, match=r"outside \[0, data_range\] = \[0, 1\]; pass data_range=255 for images in"):
        psnr(x, x)
    assert psnr(x, x.flip(-1), data_range=255.0).shape == (1,)
    with pytest.raises(ValueError, match=r"takes images in \[0, 1\]: divide 8-bit .*, or out_of_range='clamp'"):
        ssim(x, x)
    with pytest.raises(ValueError, match=r"takes images in \[0, 1\]: .*\(x \+ 1\) / 2$"):  # no out_of_range option
        ms_ssim(x, x)
    with pytest.raises(ValueError, match=r"takes images in \[0, 1\]") as info:
        LPIPS("alex")(x[..., :64, :64], x[..., :64, :64])
    assert "value_range" not in str(info.value) and "outside [0, 1]; this metric" in str(info.value)
