"""VGG16 trunk (random / pretrained from a local file), the theory metrics in the registry, ``patchmmd theory``."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.core.mmdpp import get_config
from patchmmd.core.scale import downsample
from patchmmd.data import sample_image
from patchmmd.io import load_image, save_image
from patchmmd.metrics.registry import get_metric, get_spec, metric_names
from patchmmd.metrics.weights import WeightsError
from patchmmd.theory.cnn import (
    VGG16_CONV_INDICES,
    RandomCNNDistance,
    VGGDistance,
    load_vgg16_weights,
    vgg16_random_weights,
)
from patchmmd.theory.nngp import InfiniteCNNDistance

LIVE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "live-dev"


def _pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = sample_image("chelsea")[:, 50 : 50 + size, 100 : 100 + size].unsqueeze(0)
    g = torch.Generator().manual_seed(0)
    return x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _torchvision_state_dict(seed: int) -> dict[str, torch.Tensor]:
    state = {}
    for idx, (w, b) in zip(VGG16_CONV_INDICES, vgg16_random_weights(seed=seed), strict=True):
        state[f"features.{idx}.weight"] = w.float()
        state[f"features.{idx}.bias"] = b.float() + 0.01
    state["classifier.0.weight"] = torch.zeros(4, 4)
    return state


def test_random_vgg_properties() -> None:
    x, y = _pair()
    for first_layer in ("he", "zero_mean"):
        for normalize in (True, False):
            d = VGGDistance(first_layer=first_layer, normalize=normalize, reduction="none")
            v = d(x, y)
            assert v.shape == (1,) and float(v) > 0
            assert float(d(x, x)) == 0.0
            torch.testing.assert_close(d(y, x), v)
    assert not torch.equal(VGGDistance(seed=1)(x, y), VGGDistance(seed=0)(x, y))
    a = x.clone().requires_grad_(True)
    VGGDistance()(a, x).sum().backward()
    assert torch.isfinite(a.grad).all()


def _vgg_reference(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, normalize: bool) -> torch.Tensor:
    """VGGDistance as documented, from a torchvision state dict: ImageNet-normalised input, the 13 3x3 convolutions
    with ReLU, 2x2 max pooling after conv1_2, 2_2, 3_3, 4_3; taps relu1_2 ... relu5_3; per tap the squared
    difference of unit-length channel vectors summed over channels (``normalize``) or averaged over them, its mean
    over pixels, summed over the taps."""
    convs = [(state[f"features.{i}.weight"].double(), state[f"features.{i}.bias"].double())
             for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(im: torch.Tensor) -> list[torch.Tensor]:
        h, out = (im - mean) / std, []
        for j, (w, b) in enumerate(convs):
            h = torch.relu(torch.nn.functional.conv2d(h, w, b, padding=1))
            if j in (1, 3, 6, 9, 12):
                out.append(h)
            if j in (1, 3, 6, 9):
                h = torch.nn.functional.max_pool2d(h, 2)
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for fx, fy in zip(taps(x), taps(y), strict=True):
        if normalize:
            fx, fy = fx / fx.norm(dim=1, keepdim=True), fy / fy.norm(dim=1, keepdim=True)
            total = total + (fx - fy).pow(2).sum(1).mean((1, 2))
        else:
            total = total + (fx - fy).pow(2).mean((1, 2, 3))
    return total


def test_pretrained_weights_from_local_file(tmp_path: Path) -> None:
    x, y = _pair()
    path = tmp_path / "vgg16.pth"
    torch.save(_torchvision_state_dict(3), path)
    layers = load_vgg16_weights(path)
    assert len(layers) == 13 and layers[0][0].shape == (64, 3, 3, 3)
    pre = VGGDistance(weights=path, reduction="none")
    assert "pretrained" in repr(pre)
    # same filters as the random seed-3 network, biases shifted by 0.01
    torch.testing.assert_close(pre.layers()[5][0], vgg16_random_weights(seed=3)[5][0].float().double())
    torch.testing.assert_close(pre.layers()[5][1], torch.full((256,), 0.01, dtype=torch.float64))
    # the distance is the documented one, computed here from the file in float64
    state = torch.load(path, weights_only=True)
    for normalize in (True, False):
        got = VGGDistance(weights=path, normalize=normalize, reduction="none")(x.double(), y.double())
        torch.testing.assert_close(got, _vgg_reference(state, x.double(), y.double(), normalize), rtol=1e-10, atol=0)
    assert float(pre(x, y)) > 0
    # features-only layout ("0.weight") is accepted too
    features_only = {k.removeprefix("features."): v for k, v in _torchvision_state_dict(3).items() if "features" in k}
    torch.save(features_only, tmp_path / "features.pth")
    torch.testing.assert_close(VGGDistance(weights=tmp_path / "features.pth", reduction="none")(x, y), pre(x, y))
    # through the registry
    torch.testing.assert_close(get_metric("vgg", weights=str(path))(x, y), pre(x, y))


def test_pretrained_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        VGGDistance(weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="downloads nothing"):  # the one loader's error, also a FileNotFoundError
        load_vgg16_weights(tmp_path / "missing.pth")
    bad = _torchvision_state_dict(0)
    bad["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"features\.2\.weight must have shape"):
        load_vgg16_weights(tmp_path / "bad.pth")
    del bad["features.28.bias"]
    torch.save(bad, tmp_path / "missing_key.pth")
    with pytest.raises(ValueError, match="missing"):
        load_vgg16_weights(tmp_path / "missing_key.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_vgg16_weights(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights-only"):
        load_vgg16_weights(tmp_path / "junk.pth")
    # a pickle that would run code is refused (weights_only=True), never executed
    with open(tmp_path / "code.pth", "wb") as f:
        pickle.dump(_Evil(), f, protocol=2)
    with pytest.raises(ValueError, match="weights-only"):
        load_vgg16_weights(tmp_path / "code.pth")
    with pytest.raises(ValueError, match="first_layer"):
        VGGDistance(weights=tmp_path / "bad.pth", first_layer="zero_mean")


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_theory_metrics_registered() -> None:
    names = metric_names()
    for name in ("random-cnn", "random-cnn-zero-mean", "infinite-cnn", "random-vgg", "vgg"):
        assert name in names
        assert not get_spec(name).higher_is_better
    x, y = _pair(24)
    for name, opts in [("random-cnn", {"width": 32}), ("random-cnn-zero-mean", {"width": 32}),
                       ("infinite-cnn", {"depth": 1}), ("random-vgg", {})]:
        v = get_metric(name, **opts)(x, y)
        assert v.shape == (1,) and float(v) > 0, name
        assert float(get_metric(name, **opts)(x, x)) == 0.0
    with pytest.raises(ValueError, match="weights=PATH"):
        get_metric("vgg")
    with pytest.raises(ValueError, match="seed"):
        get_metric("random-vgg", weights="x.pth")


def test_scale_rule_of_the_metrics() -> None:
    """A 512x768 photo is seen at the levels of the default MMD++ scale rule; a 64x64 crop as is."""
    x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    m = get_metric("random-cnn", width=8, depth=1)
    native = get_metric("random-cnn", width=8, depth=1, scale_rule=False)
    levels = get_config("default").levels(512, 768)
    assert levels[0].factor > 1
    want = sum(lv.weight * native(downsample(x, lv.factor), downsample(y, lv.factor)) for lv in levels)
    torch.testing.assert_close(m(x, y), want)
    small_x, small_y = x[..., :64, :64], y[..., :64, :64]
    assert [lv.factor for lv in get_config("default").levels(64, 64)] == [1]  # so the check below always runs
    torch.testing.assert_close(m(small_x, small_y), native(small_x, small_y))


@pytest.mark.skipif(not LIVE_DEV.is_dir(), reason="live-dev data not present")
def test_metrics_run_on_a_full_size_live_dev_pair() -> None:
    with open(LIVE_DEV / "labels.csv", newline="") as f:
        row = next(csv.DictReader(f))
    x = load_image(LIVE_DEV / row["reference"]).unsqueeze(0)
    y = load_image(LIVE_DEV / row["distorted"]).unsqueeze(0)
    for name in ("random-cnn", "random-cnn-zero-mean"):
        with torch.no_grad():
            v = get_metric(name)(x, y)
        assert v.shape == (1,) and torch.isfinite(v).all() and float(v) > 0


def test_theory_command_default_pair_and_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["theory", "--widths", "8,16,32,64", "--seeds", "2", "--crop", "24",
                                    "--window", "16", "--stride", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Fitted log-log slope" in res.output
    for name in ("theory.csv", "theory.md", "theory.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "theory.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {int(r["width"]) for r in rows} == {8, 16, 32, 64}
    assert len({r["analytic"] for r in rows}) == 1


def test_theory_command_with_images_and_errors(tmp_path: Path) -> None:
    x, y = _pair(40)
    save_image(x, tmp_path / "a.png")
    save_image(y, tmp_path / "b.png")
    res = CliRunner().invoke(main, ["theory", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--widths", "8,16",
                                    "--seeds", "1", "--crop", "20", "--depth", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["theory", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "two images" in res.output
    res = CliRunner().invoke(main, ["theory", "--widths", "8", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "two positive widths" in res.output
    res = CliRunner().invoke(main, ["theory", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--widths", "8,16",
                                    "--crop", "20", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "identical" in res.output


def test_vgg_file_with_unexpected_keys_is_refused(tmp_path: Path) -> None:
    state = _torchvision_state_dict(0) | {"features.31.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected 1: features\.31\.weight"):
        load_vgg16_weights(tmp_path / "extra.pth")


@pytest.mark.parametrize("make", [
    lambda **kw: RandomCNNDistance(width=8, pooling=(8, 4), **kw),
    lambda **kw: VGGDistance(**kw),
    lambda **kw: InfiniteCNNDistance(depth=1, pooling=(8, 4), **kw),
])
def test_modules_default_to_the_mean(make) -> None:  # type: ignore[no-untyped-def]
    x, y = _pair(16)
    x, y = torch.cat([x, y]), torch.cat([y, x.flip(-1)])
    per_image = make(reduction="none")(x, y)
    assert per_image.shape == (2,)
    torch.testing.assert_close(make()(x, y), per_image.mean(), rtol=0, atol=0)
    torch.testing.assert_close(make(reduction="sum")(x, y), per_image.sum())


@pytest.mark.parametrize("make", [lambda: RandomCNNDistance(width=8, sigma_b2=0.1), lambda: VGGDistance(seed=1)])
def test_weights_are_non_persistent_buffers(make) -> None:  # type: ignore[no-untyped-def]
    net = make()
    names = [n for n, _ in net.named_buffers()]
    assert names and all(n.startswith(("weight", "bias")) for n in names)
    assert list(net.parameters()) == [] and net.state_dict() == {}
    assert all(b.dtype == torch.float64 for b in net.buffers())
    x, y = _pair(16)
    ref = net(x.double(), y.double())
    net.float()  # .float() / .double() / .to() cast and move the weights like any module's
    assert all(b.dtype == torch.float32 for b in net.buffers())
    assert net.layers()[0][0].dtype == torch.float32
    torch.testing.assert_close(net(x, y), ref.float(), rtol=1e-4, atol=1e-6)
    net.double()
    assert all(b.dtype == torch.float64 for b in net.buffers())
    torch.testing.assert_close(net(x.double(), y.double()), ref, rtol=1e-4, atol=0)  # float32-rounded weights
    net.to(torch.device("meta"))
    assert all(b.device.type == "meta" for b in net.buffers())
    assert net.layers()[0][0].device.type == "meta"


def test_vgg_autocast_does_not_change_the_distance() -> None:
    """Inside a ``torch.autocast`` region the distance turns autocast off (README): the same value as outside."""
    x, y = _pair(16)
    d = VGGDistance(reduction="none")
    want = d(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = d(x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
