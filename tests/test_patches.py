"""Patch and window helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patchmmd.core.patches import box_mean


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [((3, 3), (1, 1), (1, 1)), ((2, 2), (1, 1), (0, 0)), ((2, 3), (2, 1), (0, 1)), ((5, 5), (2, 2), (2, 2)),
     ((1, 1), (1, 1), (0, 0)), ((8, 4), (4, 2), (0, 0))],
)
def test_box_mean_equals_avg_pool2d_values_and_gradients(kernel, stride, padding):
    t = torch.rand(2, 3, 17, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, b = t.clone().requires_grad_(True), t.clone().requires_grad_(True)
    got = box_mean(a, kernel, stride, padding)
    ref = F.avg_pool2d(b, kernel, stride, padding, count_include_pad=True)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    co = torch.rand_like(ref)
    (got * co).sum().backward()
    (ref * co).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)
