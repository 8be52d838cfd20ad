"""Library side of the perceptual tasks: losses, metrics, GIM, data split, networks."""

from __future__ import annotations

import pytest
import torch

from patchmmd.metrics.registry import metric_specs
from patchmmd.metrics.weights import WeightsError, WeightsFileNotFoundError, folder_files
from patchmmd.tasks import LOSS_NAMES, LOSSES_NEEDING_WEIGHTS, TASK_LOSSES, MissingWeightsError, make_loss
from patchmmd.tasks._common import deterministic, save_model
from patchmmd.tasks.autoencoder import ConvAutoencoder, reconstruct, train_autoencoder
from patchmmd.tasks.data import random_crops, split_photos
from patchmmd.tasks.gim import generalized_mean, ring_offsets, shifted_set
from patchmmd.tasks.report import (
    Evaluator,
    high_frequency_energy,
    image_metrics,
    sharpness_ratio,
)
from patchmmd.tasks.superres import SRNet, degrade, train_superres, upscale


def _img(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n not in LOSSES_NEEDING_WEIGHTS])
def test_losses_are_differentiable_and_accept_overshoot(name: str) -> None:
    size = 16 if name == "infinite-cnn" else 24
    x = (torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1).requires_grad_(True)
    y = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    kw = {"win_size": 7} if name == "ssim" else {}
    value = make_loss(name, **kw)(x, y)
    assert value.dim() == 0 and torch.isfinite(value) and float(value.detach()) > 0
    value.backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    assert float(make_loss(name, **kw)(y, y)) == pytest.approx(0.0, abs=1e-6)


def test_loss_names_come_from_the_registry() -> None:
    distances = {s.name for s in metric_specs() if s.differentiable and not s.higher_is_better}
    assert set(LOSS_NAMES) == set(TASK_LOSSES) | distances and len(set(LOSS_NAMES)) == len(LOSS_NAMES)
    assert LOSS_NAMES[:3] == ("l2", "l1", "ssim")
    for name in ("mmdpp", "mmdpp-followup", "random-cnn", "random-vgg", "infinite-cnn", "vgg", "lpips-alex", "dists"):
        assert name in LOSS_NAMES
    assert "psnr" not in LOSS_NAMES and "ssim-downsampled" not in LOSS_NAMES  # scores, not distances
    assert set(LOSSES_NEEDING_WEIGHTS) == {"vgg", "lpips-alex", "lpips-vgg", "dists"}
    assert issubclass(MissingWeightsError, WeightsError)
    with pytest.raises(WeightsError, match="needs backbone=PATH"):
        make_loss("lpips-alex")


def test_vgg_loss_needs_a_weight_file(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="weights"):
        make_loss("vgg")
    with pytest.raises(MissingWeightsError, match="not found"):
        make_loss("vgg", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="vgg"):
        make_loss("mmdpp", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("lpips")
    with pytest.raises(ValueError, match="no options"):
        make_loss("l2", foo=1)


def test_metrics_identity_and_blur_sharpness() -> None:
    y = _img(32, 32)[None]
    m = image_metrics(y, y, distances=("mmdpp",))
    assert m["psnr"] == 100.0 and m["ssim"] == pytest.approx(1.0) and m["mmdpp"] == 0.0 and m["sharpness"] == 1.0
    blurred = torch.nn.functional.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness_ratio(blurred, y) < 0.5
    assert float(high_frequency_energy(torch.full((1, 3, 8, 8), 0.3))) == 0.0


def test_ring_offsets_and_shifted_set() -> None:
    assert ring_offsets(4, 2) == [(0, 0), (0, 2), (2, 0), (0, -2), (-2, 0)]
    img = _img(20, 30)
    ys, offs = shifted_set(img, 4, size=10, max_shift=2)
    assert ys.shape == (5, 3, 10, 10)
    top, left = 5, 10
    for crop, (dy, dx) in zip(ys, offs, strict=True):
        assert torch.equal(crop, img[:, top + dy : top + dy + 10, left + dx : left + dx + 10])
    with pytest.raises(ValueError, match="does not fit"):
        shifted_set(img, 2, size=18, max_shift=2)


def test_gim_l2_answer_is_the_pixel_mean() -> None:
    ys, _ = shifted_set(_img(40, 40), 4, size=24, max_shift=3)
    loss = make_loss("l2")
    mean = ys.mean(0, keepdim=True)
    res = generalized_mean(ys, loss, steps=3, init="mean")
    # The pixel mean is the minimum: Adam only jitters there (it normalises rounding-level gradients).
    assert float((res.image - mean).abs().max()) < 0.05
    assert float(loss(res.image.expand_as(ys), ys)) == pytest.approx(float(loss(mean.expand_as(ys), ys)), abs=1e-4)
    noisy = generalized_mean(ys, loss, steps=60, lr=0.05, init="noise", seed=3)
    assert float(loss(noisy.image.expand_as(ys), ys)) < float(loss(noisy.start.expand_as(ys), ys))
    assert noisy.history[-1] < noisy.history[0]


def test_gim_mmdpp_decreases_loss_and_is_deterministic() -> None:
    ys, _ = shifted_set(_img(40, 40), 2, size=32, max_shift=3)
    loss = make_loss("mmdpp")
    with deterministic(0):
        a = generalized_mean(ys, loss, steps=3)
    with deterministic(0):
        b = generalized_mean(ys, loss, steps=3)
    assert torch.equal(a.image, b.image) and a.history == b.history
    assert a.history[-1] < a.history[0]
    assert float(a.image.min()) >= 0 and float(a.image.max()) <= 1


def test_deterministic_restores_the_global_setting() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(1):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_split_never_trains_on_heldout_pixels() -> None:
    img = _img(64, 100)
    s = split_photos([img], 32)
    assert s.train[0].shape == (3, 64, 68) and s.heldout.shape == (2, 3, 32, 32)
    assert torch.equal(s.heldout[1], img[:, 32:64, 68:100])
    crops = random_crops(s.train, 32, 5, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match="too small"):
        split_photos([_img(64, 50)], 32)


def test_networks_shapes_and_sr_starts_bilinear() -> None:
    x = _img(32, 32)[None]
    assert ConvAutoencoder(8, 4)(x).shape == x.shape
    net = SRNet(scale=2, width=8, blocks=1)
    low = degrade(x, 2)
    up = torch.nn.functional.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(net(low), up)
    with pytest.raises(ValueError, match="multiples"):
        degrade(_img(30, 32)[None], 4)


def test_training_is_deterministic_and_learns() -> None:
    split = split_photos([_img(32, 64, 1), _img(32, 64, 2)], 16)
    loss = make_loss("l1")
    a = train_autoencoder(split, loss, steps=3, width=8, latent=4, seed=5)
    b = train_autoencoder(split, loss, steps=3, width=8, latent=4, seed=5)
    assert a.history == b.history
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    sr = train_superres(split, loss, scale=2, steps=3, width=8, blocks=1, seed=5)
    assert len(sr.history) == 3 and all(map(lambda v: v == v, sr.history))
    # it learns: more steps from the same start lower the held-out loss (the autoencoder's by far; the SR network
    # starts as bilinear upsampling, and these photos are noise, so its gain is small but there)
    held = split.heldout
    ae = [float(loss(reconstruct(train_autoencoder(split, loss, steps=n, width=8, latent=4, seed=5).model, held),
                     held)) for n in (1, 20)]
    assert ae[1] < 0.8 * ae[0], ae
    low = degrade(held, 2)
    sr_loss = [float(loss(upscale(train_superres(split, loss, scale=2, steps=n, width=8, blocks=1, seed=5).model, low),
                          held)) for n in (1, 20)]
    assert sr_loss[1] < sr_loss[0], sr_loss


def test_deterministic_restores_warn_only() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True, warn_only=False)
        with deterministic(1):
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with deterministic(1):
            pass
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _model_class(dotted: str) -> type[torch.nn.Module]:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_saved_state_dict_rebuilds_the_trained_networks(tmp_path) -> None:
    # the record save_model returns (metrics.json's "model") + torch.load(weights_only=True) give the same network
    split = split_photos([_img(32, 64, 1), _img(32, 64, 2)], 16)
    loss = make_loss("l1")
    ae = train_autoencoder(split, loss, steps=2, width=8, latent=4, seed=5).model
    sr = train_superres(split, loss, scale=2, steps=2, width=8, blocks=1, seed=5).model
    cases = [("ae", ae, split.heldout, reconstruct, ConvAutoencoder, {"width": 8, "latent": 4}),
             ("sr", sr, degrade(split.heldout, 2), upscale, SRNet, {"scale": 2, "width": 8, "blocks": 1})]
    for name, model, inputs, outputs, cls, args in cases:
        before = outputs(model, inputs)
        folder = tmp_path / name
        folder.mkdir()
        record = save_model(model, folder)
        assert record == {"file": "model.pt", "class": f"{cls.__module__}.{cls.__name__}", "args": args}
        state = torch.load(folder / record["file"], weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        fresh = _model_class(record["class"])(**record["args"])
        assert not torch.equal(outputs(fresh.eval(), inputs), before)  # a fresh initialisation is not the trained one
        fresh.load_state_dict(state)
        assert torch.equal(outputs(fresh.eval(), inputs), before)
        with torch.no_grad():
            assert torch.equal(fresh(inputs), model(inputs))  # unclamped too
    with pytest.raises(TypeError, match="config"):
        save_model(torch.nn.Linear(2, 2), tmp_path)


def test_evaluator_deep_distances_need_a_weights_folder(tmp_path) -> None:
    assert folder_files("lpips-alex") == {"backbone": "alexnet.pth", "weights": "lpips/alex.pth"}
    assert folder_files("dists") == {"backbone": "vgg16.pth", "weights": "dists.pt"}
    assert folder_files("mmdpp") == {}
    with pytest.raises(WeightsError, match=r"lpips-vgg needs the published weights: .*"
                                           r"\(here: lpips/vgg.pth, vgg16.pth\), given as weights_dir"):
        Evaluator(["mmdpp", "lpips-vgg"])
    with pytest.raises(WeightsError, match=r"^lpips-alex, dists need the published weights"):  # all of them at once
        Evaluator(["lpips-alex", "mmdpp", "dists"])
    with pytest.raises(WeightsFileNotFoundError, match=r"vgg16.pth not found \(needed by dists\)"):
        Evaluator(["dists"], weights_dir=tmp_path)
    assert set(Evaluator(["mmdpp"], weights_dir=tmp_path).distances) == {"mmdpp"}  # a folder no distance reads


def _nan_from(step: int) -> tuple[list[int], object]:
    """A loss that is the L2 error until call ``step`` (0-based), then NaN; and the list of its calls."""
    calls: list[int] = []

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(calls))
        value = (x - y).pow(2).mean()
        return value * float("nan") if len(calls) > step else value

    return calls, loss


def test_training_stops_at_the_first_non_finite_loss_and_says_so() -> None:
    # a diverged run used to go on for every remaining step on NaN, then fail in the evaluation with
    # "x contains NaN or Inf values", naming no step
    from patchmmd.tasks._common import TrainingDiverged

    split = split_photos([torch.rand(3, 48, 96, generator=torch.Generator().manual_seed(0))], 16)
    calls, loss = _nan_from(3)
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 4 of 50: the loss is NaN or infinite"):
        train_superres(split, loss, scale=2, steps=50, batch=2, lr=1e-3, width=4, blocks=1, seed=0)
    assert len(calls) == 4  # stopped there
    calls, loss = _nan_from(2)
    ys = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.raises(TrainingDiverged, match="at step 3 of 20: the loss is"):
        generalized_mean(ys, loss, steps=20, lr=0.01, init="mean", seed=0)
    assert len(calls) == 3


def test_training_stops_when_the_outputs_are_not_finite() -> None:
    from patchmmd.tasks._common import TrainingDiverged, fit

    model = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.bias.fill_(float("inf"))
    calls, loss = _nan_from(100)
    batch = (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(TrainingDiverged, match="at step 1 of 5: the outputs hold NaN or infinite"):
        fit(model, loss, lambda g: batch, steps=5, lr=1e-3, seed=0)
    assert calls == []  # the loss never saw them (its own input check would name only "x")
