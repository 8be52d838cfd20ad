"""Regression tests from a third audit of the user-facing distances (src/patchmmd/core): what a user coming from
lpips / piq / torchmetrics / pytorch-msssim does with them (module handling, input layouts, dtypes, the errors
they meet), and the training preset's whole formula against an independent float64 reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from patchmmd import MMDPP, PatchMMD, distance_map, mmdpp, patch_mmd, precompute_target
from reference import local_term, windowed_mmd2


def _pair(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    return x, (x + 0.08 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)


def _box(a: np.ndarray, f: int) -> np.ndarray:
    """2-D box average of a ``(C, H, W)`` array by ``f``, trailing rows and columns that do not fill a box dropped."""
    c, h, w = a.shape
    return a[:, : h // f * f, : w // f * f].reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))


def _loss_preset_reference(x: np.ndarray, y: np.ndarray) -> float:
    """``preset="loss"`` with the exact estimator, from docs/method.md §3.3 alone: two levels (native and 2x box,
    weights ½ each; the second only with a short side >= 16) of ``2.29 L2 + 114 Local + 400 MMD²`` (the MMD of
    contrast-normalised 3x3 patches, floor 0.02, kernel the mean of Gaussians of width 0.5 and 1, 16-px windows every
    8 px), plus ``9.93 (1 - SSIM)`` of the images and ``29.1 (1 - SSIM)`` of their 2x box averages (scikit-image's
    SSIM with the published Gaussian window, not weighted by the levels)."""
    metrics = pytest.importorskip("skimage.metrics")
    xs, ys = 2 * x - 1, 2 * y - 1
    factors = [1, 2] if min(x.shape[1:]) // 2 >= 16 else [1]
    total = 0.0
    for f in factors:
        a, b = _box(xs, f), _box(ys, f)
        aligned = 2.29 * np.mean((a - b) ** 2) + 114 * local_term(a, b, k=3, sigma=0.1)
        mmd = np.mean([windowed_mmd2(a, b, k=3, sigma=s, window=16, stride=8, center=True, floor=0.02)
                       for s in (0.5, 1.0)])
        total += (aligned + 400 * mmd) / len(factors)
    for octave, weight in enumerate((9.93, 29.1)):
        a, b = _box(x, 2**octave), _box(y, 2**octave)
        ssim = metrics.structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=1.0)
        total += weight * (1 - ssim)
    return float(total)


@pytest.mark.parametrize("shape", [(1, 2, 32, 35), (1, 1, 24, 22)])
def test_training_preset_is_its_documented_formula(shape: tuple[int, ...]) -> None:
    """The parts are checked one by one elsewhere; this checks how the preset puts them together (levels and their
    weights, the SSIM octaves outside the level weights, the MMD weight), and the map's mean."""
    x, y = _pair(shape, seed=4, dtype=torch.float64)
    got = mmdpp(x, y, preset="loss", estimator="exact")
    expected = _loss_preset_reference(x[0].numpy(), y[0].numpy())
    assert float(got) == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(distance_map(x, y, preset="loss", estimator="exact").mean(dim=(1, 2, 3)), got,
                               rtol=1e-12, atol=0)


def _layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    strided = torch.zeros(*t.shape[:2], 2 * t.shape[2], 2 * t.shape[3])
    strided[..., ::2, ::2] = t
    return {
        "channels_last": t.contiguous(memory_format=torch.channels_last),
        "strided": strided[..., ::2, ::2],
        "transposed": t.transpose(-1, -2).contiguous().transpose(-1, -2),
    }


@pytest.mark.parametrize("fn", [
    lambda a, b: mmdpp(a, b), lambda a, b: mmdpp(a, b, preset="loss"), lambda a, b: patch_mmd(a, b, estimator="rff"),
], ids=["default", "loss", "patch_mmd_rff"])
def test_memory_layouts_give_the_same_values_and_gradients(fn) -> None:  # type: ignore[no-untyped-def]
    """channels_last, strided and transposed views (the compiled kernels read raw memory) and expanded batches and
    channels (stride 0) give the contiguous tensors' values and gradients."""
    x, y = _pair((2, 3, 40, 46), seed=1)
    xr = x.clone().requires_grad_()
    ref = fn(xr, y)
    (gref,) = torch.autograd.grad(ref.sum(), xr)
    for name, xv in _layouts(x).items():
        for yv in _layouts(y).values():
            leaf = xv.detach().requires_grad_()
            value = fn(leaf, yv)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
            torch.testing.assert_close(value, ref.detach(), rtol=1e-5, atol=1e-7, msg=name)
            torch.testing.assert_close(grad, gref, rtol=1e-4, atol=1e-7, msg=name)
    expanded = fn(x[:1].expand(3, -1, -1, -1), y[:1].expand(3, -1, -1, -1))
    torch.testing.assert_close(expanded, fn(x[:1], y[:1]).expand(3), rtol=1e-5, atol=1e-7)
    gray = x[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(fn(gray, y), fn(gray.contiguous(), y), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset", ["default", "loss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_one_tensor_as_both_images_and_images_at_the_range_ends(preset: str, dtype: torch.dtype) -> None:
    """``loss_fn(x, x)`` with one tensor in both places (both paths of the graph reach it), and images exactly at 0
    and 1: finite gradients in the input's dtype, and zero distance and gradient where the images are equal."""
    x, _ = _pair((1, 3, 32, 30), seed=2)
    for a, b in ((x, None), (torch.zeros_like(x), None), (torch.ones_like(x), None),
                 (torch.zeros_like(x), torch.ones_like(x)), ((x > 0.5).float(), x)):
        leaf = a.to(dtype).requires_grad_()
        other = leaf if b is None else b.to(dtype)
        d = mmdpp(leaf, other, preset=preset)
        (grad,) = torch.autograd.grad(d.sum(), leaf)
        assert grad.dtype == dtype and bool(torch.isfinite(grad).all()) and bool(torch.isfinite(d).all())
        if b is None:  # zero to float32 rounding: SSIM's moments of flat bright images leave about 3e-5 (noise of
            # sigma 1e-4 on [0, 1], far below visibility, already gives 0.02)
            assert float(d.detach()) == 0 and float(grad.abs().max()) < 1e-4


@pytest.mark.parametrize("module", [MMDPP(), MMDPP("loss", reduction="none"), PatchMMD(estimator="rff")],
                         ids=["default", "loss", "patch_mmd"])
def test_modules_replicate_save_and_load_like_loss_modules(module: torch.nn.Module) -> None:
    x, y = _pair((2, 3, 40, 40), seed=3)
    ref = module(x, y)
    # DataParallel's replica, a whole-module torch.save, a strict state_dict round trip, train/eval and .half()
    assert torch.equal(module._replicate_for_data_parallel()(x, y), ref)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x, y), ref)
    module.load_state_dict(module.state_dict(), strict=True)
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    assert torch.equal(module.train()(x, y), ref) and torch.equal(module.eval()(x, y), ref)
    assert torch.equal(module.half()(x, y), ref)  # nothing to cast: the inputs' dtype decides


def test_module_repr_shows_every_setting() -> None:
    """A module built with ``out_of_range="clamp"`` printed as if it raised on out-of-range values."""
    text = repr(MMDPP("loss", out_of_range="clamp", reduction="sum"))
    assert "out_of_range='clamp'" in text and "reduction='sum'" in text and "contrast_floor=0.02" in text
    assert "out_of_range='ignore'" in repr(PatchMMD(out_of_range="ignore"))


@pytest.mark.parametrize(("make", "hint"), [
    (lambda x: x > 0.5, r"got torch\.bool; convert a mask with x\.float\(\) \(True is 1\)$"),
    (lambda x: (x * 255).to(torch.uint8), r"got torch\.uint8; convert 8-bit images with x\.float\(\) / 255, or "
                                             r"with x\.float\(\) and value_range=\(0, 255\)$"),
    (lambda x: (x * 65535).to(torch.int32), r"got torch\.int32; convert it with x\.float\(\) and pass "
                                            r"value_range=\(lo, hi\) of its scale"),
    (lambda x: x.to(torch.complex64), r"got torch\.complex64; a complex tensor is not an image"),
], ids=["bool", "uint8", "int32", "complex64"])
def test_non_float_images_get_a_conversion_that_is_right_for_them(make, hint: str) -> None:  # type: ignore[no-untyped-def]
    """Every non-float tensor was told ``convert integer images with x.float() / 255``: followed for a boolean mask,
    that gives an almost black image (True = 1/255) and a near-zero distance; for a 16-bit image a range error."""
    x = make(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    for fn in (mmdpp, patch_mmd):
        with pytest.raises(TypeError, match=r"^x must be a floating-point tensor .*" + hint):
            fn(x, x)


def test_a_16_bit_network_output_against_a_float32_target_says_how_to_match_them() -> None:
    """Under ``torch.autocast`` a network's output is 16-bit while the target is float32: the common AMP loop."""
    x, y = _pair((1, 3, 32, 32))
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.sigmoid(conv(x))
        with pytest.raises(TypeError, match=r"^x and y must have the same dtype, got torch\.bfloat16 and "
                                            r"torch\.float32; convert one to the other's .*autocast"):
            MMDPP()(out, y)
        value = MMDPP()(out.float(), y)  # as the message says: computed outside autocast, in float32
    assert value.dtype == torch.float32
    assert torch.equal(value, MMDPP()(out.detach().float(), y))


def test_a_target_moved_to_a_dtype_is_refused_clearly() -> None:
    """``target.to(torch.float64)``, as for a tensor or module, ended in torch's own ``device()`` argument error."""
    target = precompute_target(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(TypeError, match=r"^MMDPPTarget\.to takes a device, got torch\.float64; .*y\.to\(dtype\)"):
        target.to(torch.float64)  # type: ignore[arg-type]
    assert target.to(torch.device("cpu")).device == target.to("cpu").device == torch.device("cpu")


def test_ssim_style_data_range_points_to_value_range() -> None:
    """``data_range=255`` (scikit-image, pytorch-msssim, piq, torchmetrics) is refused with the name to use."""
    x = torch.rand(1, 3, 32, 32) * 255
    for call in (lambda: mmdpp(x, x, data_range=255), lambda: MMDPP(data_range=255)):
        with pytest.raises(TypeError, match=r"^unknown option\(s\) \['data_range'\] \(the pixel range is "
                                            r"value_range=\(lo, hi\), e\.g\. \(0, 255\)\); valid options"):
            call()
    assert float(mmdpp(x, x.flip(-1), value_range=(0, 255))) == float(mmdpp(x / 255, x.flip(-1) / 255))


def test_autocast_of_other_device_types_is_off_inside_the_distances() -> None:
    """The distances turn autocast off for Apple's mps and Intel's xpu as well as the CPU and CUDA (only those two
    were turned off: on an mps or xpu device an autocast region reached the distances' products)."""
    from patchmmd.core.validation import full_precision

    seen: list[bool] = []

    @full_precision
    def probe() -> None:
        seen.extend(torch.is_autocast_enabled(d) for d in ("cpu", "mps", "xpu"))

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("mps", dtype=torch.float16), \
            torch.autocast("xpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("mps") and torch.is_autocast_enabled("xpu")
        probe()
    assert seen == [False, False, False]


def test_the_8_bit_hint_follows_the_value_range_given() -> None:
    """With value_range=(0, 255) the hint said "x.float() / 255" too: followed, it gave a near-black image inside
    the range and a distance about 59,000 times too small, silently. It now says x.float() there, and names both
    ways without a range."""
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"with x\.float\(\) \(its values on the scale of value_range=\(0, 255\)\)$"):
        mmdpp(x, x, value_range=(0, 255))
    with pytest.raises(TypeError, match=r"x\.float\(\) / 255, or with x\.float\(\) and value_range=\(0, 255\)$"):
        mmdpp(x, x)
    with pytest.raises(TypeError, match=r"x\.float\(\) / 255"):  # a malformed range: the plain hint, no crash
        mmdpp(x, x, value_range=5)


def test_a_pytorch_without_mps_or_xpu_autocast_still_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before about 2.5, torch.autocast("mps"/"xpu", enabled=False) raised "unsupported autocast device_type": such
    a PyTorch is detected once, and the distances then turn off the CPU's and CUDA's autocast only."""
    from patchmmd import _autograd

    real = torch.autocast

    def old_autocast(device_type: str, *args: object, **kwargs: object) -> object:
        if device_type in ("mps", "xpu"):
            raise RuntimeError(f"User specified an unsupported autocast device_type '{device_type}'")
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", old_autocast)
    assert not _autograd._autocast_known("mps") and _autograd._autocast_known("cpu")
    monkeypatch.setattr(_autograd, "AUTOCAST_MPS_XPU", False)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with real("cpu", dtype=torch.bfloat16):
        got = mmdpp(x, (x * 0.9).clamp(0, 1))
    monkeypatch.undo()
    assert torch.equal(got, mmdpp(x, (x * 0.9).clamp(0, 1)))
