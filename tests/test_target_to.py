"""A precomputed target moves to another device with ``MMDPPTarget.to`` (a copy; the original unchanged)."""

from __future__ import annotations

import pytest
import torch

from patchmmd import MMDPP, mmdpp, precompute_target


@pytest.mark.parametrize("preset", ["default", "loss"])
def test_moved_target_gives_the_same_value(preset: str) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 2, 3, 48, 48, generator=g)
    target = precompute_target(y, preset=preset)
    moved = target.to("cpu")
    assert moved is not target
    torch.testing.assert_close(mmdpp(x, moved), mmdpp(x, y, preset=preset), rtol=1e-5, atol=1e-7)


def test_every_tensor_moves_and_the_original_stays() -> None:
    y = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    target = precompute_target(y, preset="loss")
    moved = target.to("meta")
    tensors = [moved.image, *moved.features, *moved.ssim_moments]
    assert sum(t is not None for t in tensors) >= 3  # image, feature means, SSIM moments
    assert all(t.device.type == "meta" for t in tensors if t is not None)
    assert moved.device.type == "meta"
    assert all(t.device.type == "cpu" for t in [target.image, *target.features, *target.ssim_moments] if t is not None)
    assert (moved.config, moved.shape, moved.dtype, moved.levels) == (target.config, target.shape, target.dtype,
                                                                      target.levels)


def test_device_mismatch_says_how_to_move() -> None:
    y = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    target = precompute_target(y).to("meta")
    with pytest.raises(ValueError, match=r"target\.to\(device\)"):
        MMDPP()(y, target)


def test_a_dtype_is_refused() -> None:
    target = precompute_target(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3)))
    # the library's own message (torch.device(torch.float64) raises a TypeError of its own, naming no target)
    with pytest.raises(TypeError, match=r"MMDPPTarget\.to takes a device, got torch\.float64; .*y\.to\(dtype\)"):
        target.to(torch.float64)  # type: ignore[arg-type]
