"""Audit of the task library (:mod:`patchmmd.tasks`): divergence after the last step, the global random state,
argument checks, the pixel losses' shapes, devices and dtypes, and the sharpness measure's closed forms."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from patchmmd.tasks import make_loss
from patchmmd.tasks._common import TrainingDiverged, fit, predict
from patchmmd.tasks.autoencoder import train_autoencoder
from patchmmd.tasks.data import Split, random_crops, split_photos
from patchmmd.tasks.gim import center_crop_common, generalized_mean, shifted_set
from patchmmd.tasks.report import Evaluator, high_frequency_energy, sharpness_ratio
from patchmmd.tasks.superres import bicubic, degrade, train_superres


def _img(h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _root_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss whose value is finite (0) at ``x == y`` but whose gradient there is NaN (the root of a sum)."""
    return (x - y).pow(2).sum().sqrt()


# ------------------------------------------------------------------ a non-finite gradient at the last step
def test_gim_stops_on_a_non_finite_gradient_even_at_the_last_step() -> None:
    # the gradient made the image NaN at the last step, and the NaN image was returned without a word
    ys = _img(8, 8)[None].expand(2, -1, -1, -1).clone()  # identical images: the mean start is x == y
    with pytest.raises(TrainingDiverged, match=r"at step 1 of 1: the gradients are NaN or infinite"):
        generalized_mean(ys, _root_l2, steps=1)


def test_fit_stops_on_a_non_finite_gradient_even_at_the_last_step() -> None:
    # the same for a network: its weights became NaN at the last step and the run "finished"
    model = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        assert model.bias is not None
        model.bias.zero_()
    batch = _img(8, 8)[None]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged, match=r"at step 1 of 1: the gradients are NaN or infinite"):
        fit(model, _root_l2, lambda g: (batch, batch), steps=1, lr=1e-3, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))  # not updated


# ------------------------------------------------------------------ the global random state
@pytest.mark.parametrize("train", ["sr", "ae"])
def test_training_leaves_the_global_random_state_alone(train: str) -> None:
    # training re-seeded torch's global generator with its seed: a caller's later draws repeated the seed's
    split = split_photos([_img(32, 64, 1), _img(32, 64, 2)], 16)
    loss = make_loss("l1")

    def run() -> Any:
        if train == "sr":
            return train_superres(split, loss, scale=2, steps=2, batch=2, width=4, blocks=1, seed=3)
        return train_autoencoder(split, loss, steps=2, batch=2, width=4, latent=2, seed=3)

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = run()
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(77)  # another global state: the same network, bit for bit
    b = run()
    assert a.history == b.history
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))


# ------------------------------------------------------------------ arguments
_SPLIT = split_photos([_img(32, 64, 1)], 16)
_YS = _img(16, 16)[None].repeat(2, 1, 1, 1)
_L1 = make_loss("l1")
_SR: dict[str, Any] = {"scale": 2, "width": 4, "blocks": 1}


def _sr(**kw: Any) -> Callable[[], Any]:
    return lambda: train_superres(_SPLIT, _L1, **{"steps": 1, **_SR, **kw})


def _ae(**kw: Any) -> Callable[[], Any]:
    return lambda: train_autoencoder(split_photos([_img(32, 64, 1)], 8), _L1,
                                     **{"steps": 1, "width": 4, "latent": 2, **kw})


def _gim(**kw: Any) -> Callable[[], Any]:
    return lambda: generalized_mean(_YS, _L1, **{"steps": 1, **kw})


_BAD: dict[str, tuple[Callable[[], Any], str]] = {
    # silently accepted before: no training at all, or a bool / negative count taken as a number
    "sr steps=0": (_sr(steps=0), "steps must be an integer >= 1"),
    "sr steps=-1": (_sr(steps=-1), "steps must be an integer >= 1"),
    "sr steps=True": (_sr(steps=True), "steps must be an integer >= 1"),
    "sr lr=0": (_sr(lr=0.0), "lr must be a finite number > 0"),
    "sr blocks=-1": (_sr(blocks=-1), "blocks must be an integer >= 0"),
    "ae steps=0": (_ae(steps=0), "steps must be an integer >= 1"),
    "gim steps=0": (_gim(steps=0), "steps must be an integer >= 1"),
    "gim lr=inf": (_gim(lr=math.inf), "lr must be a finite number > 0"),
    "split holdout=-0.5": (lambda: split_photos([_img(32, 64)], 16, holdout=-0.5), "holdout must be"),
    "split max_tiles=0": (lambda: split_photos([_img(32, 64)], 16, max_tiles=0), "max_tiles must be"),
    "split crop=True": (lambda: split_photos([_img(32, 64)], True), "crop must be an integer >= 1"),
    "center crop size=0": (lambda: center_crop_common([_img(16, 16), _img(16, 16)], 0), "size must be"),
    # tracebacks from deep inside torch / Python before (TypeError, RuntimeError, ZeroDivisionError)
    "sr steps=2.5": (_sr(steps=2.5), "steps must be an integer >= 1"),
    "sr batch=0": (_sr(batch=0), "batch must be an integer >= 1"),
    "sr batch=2.0": (_sr(batch=2.0), "batch must be an integer >= 1"),
    "sr scale=0": (lambda: train_superres(_SPLIT, _L1, steps=1, scale=0), "scale must be an integer >= 1"),
    "sr width=0": (_sr(width=0), "width must be an integer >= 1"),
    "sr seed=1.5": (_sr(seed=1.5), "seed must be an integer"),
    "sr lr=-1": (_sr(lr=-1e-3), "lr must be a finite number > 0"),
    "sr lr=nan": (_sr(lr=math.nan), "lr must be a finite number > 0"),
    "ae latent=0": (_ae(latent=0), "latent must be an integer >= 1"),
    "gim seed=1.5": (_gim(seed=1.5, init="noise"), "seed must be an integer"),
    "split crop=0": (lambda: split_photos([_img(32, 64)], 0), "crop must be an integer >= 1"),
    "split crop=-4": (lambda: split_photos([_img(32, 64)], -4), "crop must be an integer >= 1"),
    "split crop=8.0": (lambda: split_photos([_img(32, 64)], 8.0), "crop must be an integer >= 1"),  # type: ignore[arg-type]
    "split no images": (lambda: split_photos([], 16), "no images"),
    "split holdout=nan": (lambda: split_photos([_img(32, 64)], 16, holdout=math.nan), "holdout must be"),
    "split 2-D image": (lambda: split_photos([torch.rand(32, 64)], 16), r"must be \(C, H, W\)"),
    "random crops n=0": (lambda: random_crops(_SPLIT.train, 16, 0, torch.Generator()), "n must be"),
    "random crops too big": (lambda: random_crops(_SPLIT.train, 64, 1, torch.Generator()), "smaller than the 64 px"),
    "degrade scale=0": (lambda: degrade(torch.rand(1, 3, 8, 8), 0), "scale must be an integer >= 1"),
    "degrade scale=2.0": (lambda: degrade(torch.rand(1, 3, 8, 8), 2.0), "scale must be"),  # type: ignore[arg-type]
    "bicubic scale=0": (lambda: bicubic(torch.rand(1, 3, 8, 8), 0), "scale must be an integer >= 1"),
    "shifted set max_shift=-2": (lambda: shifted_set(torch.rand(3, 16, 16), 2, size=16, max_shift=-2),
                                 "max_shift must be an integer >= 0"),
    "shifted set size=8.0": (lambda: shifted_set(torch.rand(3, 16, 16), 2, size=8.0), "size must be"),  # type: ignore[arg-type]
    "predict no images": (lambda: predict(torch.nn.Identity(), torch.rand(0, 3, 8, 8)), "no images"),
    "sharpness of 1 px rows": (lambda: sharpness_ratio(torch.rand(1, 3, 1, 8), torch.rand(1, 3, 1, 8)),
                               "at least 2x2 px"),
    # a grey photo trained an RGB network: a conv shape error at the first step
    "sr grey photos": (lambda: train_superres(split_photos([torch.rand(1, 32, 64)], 16), _L1, steps=1, **_SR),
                       "RGB images"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_arguments_are_refused_with_a_message_naming_them(case: str) -> None:
    call, message = _BAD[case]
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ make_loss
@pytest.mark.parametrize("name", ["l2", "l1"])
def test_pixel_losses_refuse_images_of_different_shapes(name: str) -> None:
    # they broadcast (2, 3, H, W) against (2, 1, H, W) with only a warning, as no other loss does
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        make_loss(name)(x, y)
    with pytest.raises(ValueError, match="same shape"):
        make_loss("mmdpp")(x, y)  # what the registry's distances say


def test_ssim_loss_options_are_checked_when_it_is_built() -> None:
    # a bad win_size was only found at the first training step; an unknown option gave Python's bare TypeError
    for bad in (8, 0, True, 2.5):
        with pytest.raises(ValueError, match="win_size must be an odd integer >= 1"):
            make_loss("ssim", win_size=bad)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['bogus'\] for ssim; valid options are \['win_size'\]"):
        make_loss("ssim", bogus=1)
    x = torch.rand(1, 3, 16, 16)
    assert float(make_loss("ssim", win_size=7)(x, x)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ devices and dtypes
def test_gim_noise_start_is_on_the_images_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # the noise start was drawn on the CPU and stayed there: images on a GPU met a CPU image in the loss
    import patchmmd.tasks.gim as gim

    class Seen(Exception):
        pass

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise Seen(x.device)

    monkeypatch.setattr(gim, "check_finite", lambda *args: None)  # a meta tensor has no values to check
    ys = torch.empty(2, 3, 8, 8, device="meta")
    with pytest.raises(Seen) as seen:
        gim.generalized_mean(ys, loss, steps=1, init="noise")
    assert seen.value.args[0] == torch.device("meta")


def test_networks_train_on_float64_photos() -> None:
    # the network stayed float32: "Input type (double) and bias type (float) should be the same"
    split = split_photos([_img(32, 64, 1, torch.float64)], 16)
    sr = train_superres(split, _L1, steps=1, **_SR)
    ae = train_autoencoder(split, _L1, steps=1, width=4, latent=2)
    assert all(p.dtype == torch.float64 for p in [*sr.model.parameters(), *ae.model.parameters()])
    assert predict(sr.model, degrade(split.heldout, 2)).dtype == torch.float64


# ------------------------------------------------------------------ report
def test_evaluator_takes_one_distance_name_as_a_string() -> None:
    # a string was iterated letter by letter: "unknown metric 'm'"
    assert list(Evaluator("mmdpp").distances) == ["mmdpp"]


def test_high_frequency_energy_matches_closed_forms() -> None:
    # the reflect-padded Laplacian of a cosine symmetric about both borders is (2 cos w - 2) times it, exactly
    w_px, k = 17, 3
    omega = k * math.pi / (w_px - 1)
    j = torch.arange(w_px, dtype=torch.float64)
    row = 0.5 + 0.25 * torch.cos(omega * j)
    img = row.expand(2, 3, 9, w_px).clone()
    expected = float(((2 * math.cos(omega) - 2) * 0.25 * torch.cos(omega * j)).pow(2).mean())
    assert torch.allclose(high_frequency_energy(img), torch.full((2,), expected, dtype=torch.float64), rtol=1e-12)
    assert float(high_frequency_energy(img.float()).mean()) == pytest.approx(expected, rel=1e-5)
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0  # columns 3 and 4 answer -1 and +1 to the Laplacian: 2 of 8 columns
    assert float(high_frequency_energy(step)) == pytest.approx(2 / 8)
    assert float(high_frequency_energy(torch.full((1, 3, 8, 8), 0.3))) == 0.0
    assert math.isnan(sharpness_ratio(step, torch.full((1, 3, 8, 8), 0.3)))
    assert sharpness_ratio(img, img) == 1.0


def test_split_tiles_never_overlap_training_columns() -> None:
    for h, w, crop, holdout in ((64, 100, 32, 0.25), (40, 57, 8, 0.3), (33, 48, 16, 0.0)):
        img = torch.arange(3 * h * w, dtype=torch.float64).view(3, h, w)
        s: Split = split_photos([img], crop, holdout=holdout)
        trained = set(s.train[0][0].flatten().tolist())
        assert not trained & set(s.heldout[:, 0].flatten().tolist())
        assert len(s.heldout) == h // crop
