"""Convergence: the finite random-CNN distance tends to the analytic infinite-width one as N^-1/2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchmmd.data import sample_image
from patchmmd.theory.cnn import RandomCNNDistance
from patchmmd.theory.nngp import infinite_cnn_distance


def _real_crops(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for name, (r, c) in [("astronaut", (40, 100)), ("chelsea", (60, 150)), ("coffee", (100, 200))]:
        im = sample_image(name, dtype=torch.float64)[:, r : r + size, c : c + size]
        xs.append(im)
        ys.append((im + 0.1 * torch.randn(im.shape, generator=g, dtype=torch.float64)).clamp(0, 1))
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize(("depth", "first_layer"), [(1, "he"), (2, "zero_mean"), (3, "he")])
def test_relative_error_falls_as_inverse_sqrt_width(depth: int, first_layer: str) -> None:
    x, y = _real_crops()
    pooling = (16, 8)
    exact = infinite_cnn_distance(x, y, depth=depth, pooling=pooling, first_layer=first_layer)
    widths = [16, 32, 64, 128, 256, 512, 1024]
    errors = []
    for width in widths:
        rel = [
            ((RandomCNNDistance(width=width, depth=depth, pooling=pooling, first_layer=first_layer, seed=s,
                                reduction="none")(x, y) - exact).abs() / exact)
            for s in range(6)
        ]
        errors.append(float(torch.stack(rel).mean()))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -0.65 <= slope <= -0.35, (slope, errors)
    assert errors[-1] < 0.1
