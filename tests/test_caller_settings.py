"""What the caller has set around a call does not change the numbers: autocast regions, a float64 default dtype,
the compiled kernels' self-check under both; and the properties every distance must have hold to the last bit
(``d(x, x) = 0`` for the training preset on the compiled SSIM kernel). Also the checks the deep and classic
baselines and the registry make of their inputs and options, which follow the package's own distances."""

from __future__ import annotations

import pytest
import torch

import patchmmd
from patchmmd import _native
from patchmmd.metrics import get_metric
from patchmmd.metrics.classic import ms_ssim, psnr, ssim
from patchmmd.metrics.dists import DISTS
from patchmmd.metrics.lpips import LPIPS
from patchmmd.tasks.losses import _checks_range, make_loss

G = torch.Generator().manual_seed(0)
X = torch.rand(2, 3, 48, 48, generator=G)
# A small difference: the exact estimator's |a|² + |b|² - 2 a·b cancels most of its digits here.
Y = (X + 0.003 * torch.randn(2, 3, 48, 48, generator=G)).clamp(0, 1)

DISTANCES = {
    "patch_mmd": lambda x, y: patchmmd.patch_mmd(x, y),
    "patch_mmd rff": lambda x, y: patchmmd.patch_mmd(x, y, estimator="rff"),
    "mmdpp": lambda x, y: patchmmd.mmdpp(x, y),
    "mmdpp loss": lambda x, y: patchmmd.mmdpp(x, y, preset="loss"),
    "distance_map": lambda x, y: patchmmd.distance_map(x, y),
    "local": lambda x, y: patchmmd.local_distance(x, y),
    "l2": lambda x, y: patchmmd.l2_distance(x, y),
    "module": lambda x, y: patchmmd.MMDPP(preset="loss", reduction="none")(x, y),
    "target": lambda x, y: patchmmd.mmdpp(x, patchmmd.precompute_target(y, preset="loss")),
}


@pytest.mark.parametrize("name", sorted(DISTANCES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_does_not_change_the_distances(name, dtype):
    f = DISTANCES[name]
    plain = f(X, Y)
    with torch.autocast("cpu", dtype=dtype):
        inside = f(X, Y)
    assert inside.dtype == plain.dtype == torch.float32
    assert torch.equal(inside, plain)


def test_autocast_does_not_change_the_gradient():
    x = X.clone().requires_grad_()
    (g_plain,) = torch.autograd.grad(patchmmd.mmdpp(x, Y, preset="loss").sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (g_inside,) = torch.autograd.grad(patchmmd.mmdpp(x, Y, preset="loss").sum(), x)
    assert torch.equal(g_inside, g_plain)


def test_float64_default_dtype_does_not_change_float32_results():
    plain = {name: f(X, Y) for name, f in DISTANCES.items()}
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for name, f in DISTANCES.items():
            assert torch.equal(f(X, Y), plain[name]), name
    finally:
        torch.set_default_dtype(before)


@pytest.mark.skipif(_native.kernels() is None, reason="no compiled kernels (no C compiler)")
def test_kernel_self_check_passes_whatever_the_caller_set():
    """A correct build failing its self-check would be deleted from the cache and rebuilt four times (about a
    minute), then left unused for the process."""
    nk = _native.kernels()
    assert nk is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _native._self_check(nk)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert _native._self_check(nk)
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 1, 97, 131), (3, 3, 40, 40)])
def test_training_preset_is_exactly_zero_on_equal_images(native, shape):
    """The SSIM term's factors are written so that x = y gives P = A and Q = B exactly, on the compiled kernel
    (with fused multiply-adds) as in PyTorch: d(x, x) = 0, never a rounding error of either sign."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(shape[-1]))
    ctx = _native.disabled() if not native else torch.autocast("cpu", enabled=False)
    with ctx:
        assert torch.equal(patchmmd.mmdpp(x, x, preset="loss"), torch.zeros(shape[0]))
        assert torch.equal(patchmmd.mmdpp(x, patchmmd.precompute_target(x, preset="loss")), torch.zeros(shape[0]))
        assert torch.equal(patchmmd.distance_map(x, x, preset="loss"), torch.zeros(shape[0], 1, *shape[-2:]))


def test_a_precomputed_target_accepts_its_own_preset_name():
    t = patchmmd.precompute_target(Y, preset="loss")
    assert torch.equal(patchmmd.mmdpp(X, t, preset="loss"), patchmmd.mmdpp(X, Y, preset="loss"))
    with pytest.raises(ValueError, match="the options are the target's"):
        patchmmd.mmdpp(X, t, preset="followup")
    # An equal configuration names it too, not only the very object the target holds.
    cfg = patchmmd.core.get_config("loss", seed=3)
    t3 = patchmmd.precompute_target(Y, preset=cfg)
    same = patchmmd.core.get_config("loss", seed=3)
    assert same is not cfg
    assert torch.equal(patchmmd.mmdpp(X, t3, preset=same), patchmmd.mmdpp(X, Y, preset=cfg))
    with pytest.raises(ValueError, match="the options are the target's"):
        patchmmd.mmdpp(X, t, preset="loss", weight_local=1.0)


def test_local_distance_checks_its_width():
    for sigma in (1e-200, 1e300, float("nan")):
        with pytest.raises(ValueError, match="sigma must be a finite number between"):
            patchmmd.local_distance(X, Y, sigma=sigma)


CLASSIC = {"psnr": psnr, "ssim": ssim, "ms-ssim": lambda x, y: ms_ssim(x, y, win_size=3)}
DEEP = {"lpips-alex": lambda **o: LPIPS("alex", **o), "lpips-vgg": lambda **o: LPIPS("vgg", **o),
        "dists": lambda **o: DISTS(**o)}  # random weights: the checks come before the trunk


@pytest.mark.parametrize("name", [*CLASSIC, *DEEP])
def test_baselines_check_their_inputs_as_the_distances_do(name):
    pytest.importorskip("pytorch_msssim")
    f = CLASSIC[name] if name in CLASSIC else DEEP[name]()
    x, y = X[:1], Y[:1]
    with pytest.raises(TypeError, match="floating-point"):
        f((x * 255).to(torch.uint8), (y * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"has values in .* outside \[0, "):
        f(x * 255, y * 255)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        f(bad, y)
    with pytest.raises(ValueError, match="same shape"):
        f(x, y[..., :40])
    assert f(x[0], y[0]).shape == (1,)  # a (C, H, W) image is a batch of one, as for the distances


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deep_baselines_admit_overshoot_when_asked(name):
    m = DEEP[name](out_of_range="ignore")
    over = X[:1] * 1.1
    assert torch.isfinite(m(over, Y[:1])).all()
    c = DEEP[name](out_of_range="clamp")
    assert torch.equal(c(over, Y[:1]), c(over.clamp(0, 1), Y[:1]))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]; this metric takes images in \[0, 1\]"):
        DEEP[name]()(over, Y[:1])
    with pytest.raises(ValueError, match="out_of_range must be one of"):
        DEEP[name](out_of_range="wrap")


def test_training_losses_built_from_the_baselines_ignore_the_range():
    """A network's output may overshoot [0, 1] while it trains: the losses take such values as they are."""
    assert all(_checks_range(name) for name in ("lpips-alex", "lpips-vgg", "dists", "mmdpp", "l2"))
    pytest.importorskip("pytorch_msssim")
    assert torch.isfinite(make_loss("ssim")(X * 1.2 - 0.1, Y))


@pytest.mark.parametrize(("name", "options", "exc", "match"), [
    ("mmdpp", {"bogus": 1}, TypeError, r"unknown option\(s\) \['bogus'\]"),
    ("mmdpp", {"reduction": "mean"}, TypeError, "one value per image"),
    ("mmdpp", {"preset": "nope"}, ValueError, "preset must be one of"),
    ("mmdpp", {"weight_mmd": -1}, ValueError, "weight_mmd"),
    ("mmdpp", {"value_range": (1, 0)}, ValueError, "value_range must be a pair"),
    ("mmdpp", {"out_of_range": "wrap"}, ValueError, "out_of_range must be one of"),
    ("mmdpp-pixelwise", {"preset": "loss"}, TypeError, "use the 'mmdpp' metric to choose a preset"),
    ("mmdpp-followup", {"bogus": 1}, TypeError, r"unknown option\(s\) \['bogus'\]"),
    ("l2", {"bogus": 1}, TypeError, r"unknown option\(s\) \['bogus'\] for l2"),
    ("local", {"reduction": "sum"}, TypeError, "one value per image"),
    ("patch-mmd", {"bogus": 1}, TypeError, r"unknown option\(s\) \['bogus'\] for patch-mmd"),
    ("random-cnn", {"scale_rule": "no"}, ValueError, "scale_rule must be True or False"),
    ("psnr", {"max_db": -5}, ValueError, "max_db must be a finite number > 0"),
])
def test_registry_refuses_bad_options_when_the_metric_is_built(name, options, exc, match):
    with pytest.raises(exc, match=match):
        get_metric(name, **options)


def test_registry_mmdpp_options_reach_the_distance():
    m = get_metric("mmdpp", preset="loss", weight_local=3.0, out_of_range="clamp")
    assert torch.equal(m(X, Y), patchmmd.mmdpp(X, Y, preset="loss", weight_local=3.0))
    assert torch.equal(get_metric("mmdpp-pixelwise", num_features=256)(X, Y),
                       patchmmd.mmdpp(X, Y, preset="pixelwise", num_features=256))
