"""Regression tests of the theory module's audit: the random and infinite CNNs, VGG16, their registry metrics and
``patchmmd theory``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import invoke
from patchmmd.io import save_image
from patchmmd.metrics.registry import get_metric
from patchmmd.theory import RandomCNNDistance, VGGDistance, kappa1, load_vgg16_weights, nngp_kernel
from patchmmd.theory.nngp import InfiniteCNNDistance, check_pooling, infinite_cnn_distance


def _pair(size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g), torch.rand(1, 3, size, size, generator=g)


@pytest.mark.parametrize(
    "make", [lambda: RandomCNNDistance(width=8, pooling=(8, 4)), lambda: VGGDistance()], ids=["random-cnn", "vgg"]
)
def test_a_call_under_inference_mode_leaves_the_module_usable_as_a_loss(make) -> None:  # type: ignore[no-untyped-def]
    # The float64 buffers are cast to the input's float32 once and cached; a cast made under inference_mode was an
    # inference tensor, and every later call with autograd failed ("Inference tensors cannot be saved for backward").
    x, y = _pair()
    net = make()
    with torch.inference_mode():
        before = net(x, y)
    a = x.clone().requires_grad_(True)
    value = net(a, y)
    value.backward()
    assert a.grad is not None and bool(torch.isfinite(a.grad).all())
    torch.testing.assert_close(value.detach(), before.clone())


def test_random_cnn_features_keep_the_input_dtype_and_ignore_autocast() -> None:
    x, _ = _pair()
    net = RandomCNNDistance(width=8)
    assert net.features(x.half()).dtype == torch.float16
    assert net.features(x.double()).dtype == torch.float64
    full = net.features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = net.features(x)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, full, rtol=0, atol=0)


@pytest.mark.parametrize("pooling", [np.array([8, 4]), np.array(["global"])])
def test_pooling_as_an_array_is_refused_with_the_pooling_message(pooling) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="pooling must be a"):
        check_pooling(pooling)
    with pytest.raises(ValueError, match="pooling must be a"):
        InfiniteCNNDistance(pooling=pooling)
    with pytest.raises(ValueError, match="pooling must be a"):
        RandomCNNDistance(width=4, pooling=pooling)
    assert check_pooling("global") == "global" and check_pooling(None) is None
    assert check_pooling([np.int64(8), 4]) == (8, 4)


def test_vgg_weights_of_the_wrong_type_are_named() -> None:
    with pytest.raises(TypeError, match=r"weights must be None or the path .* got int"):
        VGGDistance(weights=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"path must be the path .* got list"):
        load_vgg16_weights(["vgg16.pth"])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kappa1_refuses_non_cosines_in_16_bit(dtype: torch.dtype) -> None:
    # The rounding tolerance was 1024 units in the last place: 1.0 for float16, 8.0 for bfloat16, so 2 and 5 passed.
    for bad in (2.0, 5.0, -1.5):
        with pytest.raises(ValueError, match="c must hold cosines"):
            kappa1(torch.tensor([0.5, bad], dtype=dtype))
    eps = float(torch.finfo(dtype).eps)
    v = kappa1(torch.tensor([1.0 + 2 * eps, -1.0 - 2 * eps], dtype=dtype))  # rounding noise: still clamped
    assert v.tolist() == pytest.approx([1.0, 0.0], abs=1e-3)


def test_nngp_kernel_checks_channels_and_batch_dimensions() -> None:
    P = torch.rand(2, 4, 27)
    with pytest.raises(ValueError, match="channels must be an integer"):
        nngp_kernel(P, P, depth=1, channels="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels must be an integer"):
        nngp_kernel(P, P, depth=1, first_layer="patch_norm", channels=0)
    with pytest.raises(ValueError, match="batch dimensions that broadcast"):
        nngp_kernel(P, torch.rand(3, 5, 27), depth=1)
    assert nngp_kernel(P, torch.rand(1, 5, 27), depth=1).shape == (2, 4, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nngp_kernel_computes_16_bit_inputs_in_float32(dtype: torch.dtype) -> None:
    # In float16, p·p overflowed for ‖p‖ > 256 and the kernel was NaN; the value here (2500) is a float16 number.
    P = torch.full((2, 27), 50.0, dtype=dtype)
    K = nngp_kernel(P, P, depth=2)
    assert K.dtype == dtype
    torch.testing.assert_close(K, torch.full((2, 2), 2500.0).to(dtype), rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    Q = (torch.rand(6, 27, generator=g) * 2 - 1).to(dtype)
    want = nngp_kernel(Q.float(), Q.float(), depth=3, first_layer="zero_mean", channels=3).to(dtype)
    torch.testing.assert_close(nngp_kernel(Q, Q, depth=3, first_layer="zero_mean", channels=3), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["infinite-cnn", "random-cnn", "random-vgg"])
def test_scale_rule_metrics_report_the_callers_images(name: str) -> None:
    m = get_metric(name, **({"width": 8} if name == "random-cnn" else {}), scale_rule=True)
    big = torch.rand(1, 3, 600, 400)
    # The images were downsampled before the metric saw them: the error showed (200, 133) and (100, 66).
    with pytest.raises(ValueError, match=r"\(1, 3, 600, 400\) and \(1, 3, 300, 200\)"):
        m(big, big[..., :300, :200])
    # avg_pool2d failed first: "not implemented for 'Byte'", "must be Tensor, not NoneType".
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        m((big * 255).byte(), (big * 255).byte())
    with pytest.raises(TypeError, match=r"y must be a torch\.Tensor"):
        m(big, None)
    with pytest.raises(ValueError, match="at least one image and one channel"):
        m(big[:, :0], big[:, :0])


def test_scale_rule_leaves_an_image_below_its_patches_to_the_metric() -> None:
    # A 2-pixel-high image: the rule raised about base_size, an option these metrics do not have.
    x = torch.rand(1, 3, 2, 40, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    with pytest.raises(ValueError, match="at least 3x3 pixels"):
        get_metric("infinite-cnn", depth=1)(x, y)
    # with 1x1 patches the image is valid; the rule's only level for it is native resolution
    scaled = get_metric("infinite-cnn", depth=1, kernel_size=1, pooling="global")(x, y)
    native = infinite_cnn_distance(x, y, depth=1, kernel_size=1, pooling="global")
    torch.testing.assert_close(scaled, native)


def test_theory_command_refuses_images_below_the_patch_size(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    save_image(torch.rand(3, 2, 2, generator=g), tmp_path / "a.png")
    save_image(torch.rand(3, 2, 2, generator=g), tmp_path / "b.png")
    res = invoke("theory", tmp_path / "a.png", tmp_path / "b.png", "--widths", "4,8", "--seeds", "1",
                 "--out", tmp_path / "o")
    assert res.exit_code == 1, res.output  # the images are unfit, the command line is not wrong
    assert "too small" in res.output and "2x2" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_theory_command_says_widths_must_differ(tmp_path: Path) -> None:
    res = invoke("theory", "--widths", "8,8", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "all different" in res.output and "'8,8'" in res.output


def test_options_that_would_be_ignored_or_change_the_metric_are_refused(tmp_path: Path) -> None:
    """``random-cnn-zero-mean`` with ``first_layer="he"`` quietly became ``random-cnn``; ``VGGDistance`` with a
    weights file ignored ``seed`` (as it refuses ``first_layer``)."""
    from patchmmd.metrics.trunks import vgg16_features

    with pytest.raises(ValueError, match="random-cnn-zero-mean has first_layer='zero_mean', got first_layer='he'"):
        get_metric("random-cnn-zero-mean", first_layer="he")
    get_metric("random-cnn-zero-mean", first_layer="zero_mean")  # saying what it is anyway is fine
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg16_features().state_dict().items()}, path)
    VGGDistance(weights=path)
    with pytest.raises(ValueError, match="seed applies to random filters only, got seed=5 with weights="):
        VGGDistance(weights=path, seed=5)


@pytest.mark.parametrize("name", ["random-cnn", "random-cnn-zero-mean", "infinite-cnn", "random-vgg", "vgg"])
def test_unknown_options_of_the_theory_metrics_name_the_metric_and_the_valid_ones(name: str) -> None:
    """They gave Python's "RandomCNNDistance.__init__() got an unexpected keyword argument", as the package's
    other registry metrics no longer do."""
    valid = r"valid options are \[.*'scale_rule'"
    with pytest.raises(TypeError, match=rf"unknown option\(s\) \['bogus'\] for {name}; {valid}"):
        get_metric(name, bogus=1)
