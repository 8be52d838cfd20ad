"""Image layout: a channels-last image (H, W, C), as numpy and PIL give it, is refused with a clear error.

Read as channels-first, a 64x64 RGB image in (H, W, C) is a 3-pixel-wide strip with 64 channels, a valid input
that every patch distance would have scored without a word."""
from __future__ import annotations

import pytest
import torch

import patchmmd
from patchmmd.metrics.registry import get_metric

FUNCTIONS = {
    "mmdpp": patchmmd.mmdpp,
    "patch_mmd": patchmmd.patch_mmd,
    "l2_distance": patchmmd.l2_distance,
    "distance_map": patchmmd.distance_map,
    "ssim (registry)": get_metric("ssim"),
}


@pytest.mark.parametrize("shape", [(64, 48, 3), (2, 64, 48, 3), (32, 32, 1), (16, 16, 4)])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_channels_last_images_are_refused(name: str, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    fix = r"permute\(2, 0, 1\)" if len(shape) == 3 else r"permute\(0, 3, 1, 2\)"  # what turns it around
    with pytest.raises(ValueError, match=r"looks like a channels-last image.*" + fix) as e:
        FUNCTIONS[name](x, x.flip(-2))
    assert str(shape) in str(e.value)  # the shape as the caller gave it, not as a batch of one


@pytest.mark.parametrize("shape", [(3, 4, 4), (1, 3, 9, 4), (5, 8, 8), (1, 4, 16, 3)])
def test_channels_first_images_with_few_channels_or_more_width_are_accepted(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(patchmmd.patch_mmd(x, x.flip(-2))).all()
