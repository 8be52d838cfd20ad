"""Patch and window helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patchmmd.core.patches import box_mean, reflect_pad, separable_filter, window_grid


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


def _filter_reference(t: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """The valid separable filtering as explicit float64 sums of shifted slices."""
    t, taps = t.double(), taps.double()
    k = taps.numel()
    h, w = t.shape[-2] - k + 1, t.shape[-1] - k + 1
    rows = sum(taps[j] * t[..., :, j:j + w] for j in range(k))
    return sum(taps[i] * rows[..., i:i + h, :] for i in range(k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_separable_filter_values_gradients_and_layout(dtype, layout):
    """Against float64 sums of shifted slices, for either input layout (on the CPU the filter runs on a
    channels-last copy); the result is contiguous, and float32 agrees bitwise with the plain layout."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 5, 19, 23, generator=gen).to(dtype).contiguous(memory_format=layout).requires_grad_(True)
    taps = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=dtype)
    out = separable_filter(x, taps)
    assert out.shape == (2, 5, 15, 19) and out.dtype == dtype and out.is_contiguous()
    tol = {torch.float32: 1e-6, torch.float64: 1e-14, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.double(), _filter_reference(x.detach(), taps), rtol=tol, atol=tol)
    co = torch.rand(out.shape, generator=gen).to(dtype)
    (got,) = torch.autograd.grad(out, x, co)
    xd = x.detach().double().requires_grad_(True)
    (ref,) = torch.autograd.grad(_filter_reference(xd, taps), xd, co.double())
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
    if dtype == torch.float32:
        c = x.shape[1]
        plain = F.conv2d(F.conv2d(x.detach().contiguous(), taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c),
                         taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
        assert torch.equal(out, plain)


@pytest.mark.parametrize(("shape", "patch_size"), [((2, 3, 5, 7), 3), ((1, 2, 6, 5), 5), ((1, 1, 4, 9), 7),
                                                   ((1, 3, 2, 2), 3)])
def test_reflect_pad_gradient_equals_pytorch_and_differentiates_twice(shape, patch_size):
    """reflect_pad's own backward (the border folded back with slices) against F.pad's, and gradcheck /
    gradgradcheck in float64; sizes down to one pixel more than the padding."""
    p = patch_size // 2
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)), requires_grad=True)
    out = reflect_pad(x, patch_size)
    ref = F.pad(x, (p,) * 4, mode="reflect")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    co = torch.rand_like(ref)
    (got,) = torch.autograd.grad(out, x, co)
    (want,) = torch.autograd.grad(ref, x, co)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: reflect_pad(t, patch_size), (x,))
    assert torch.autograd.gradgradcheck(lambda t: reflect_pad(t, patch_size), (x,))


def test_reflect_pad_keeps_pytorchs_errors():
    x = torch.rand(1, 1, 2, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="Padding size should be less than the corresponding input dimension"):
        reflect_pad(x, 5)  # padding 2 needs more than 2 rows


@pytest.mark.parametrize(("height", "width", "window", "stride"),
                         [(20, 24, 8, 4), (33, 17, 8, 4), (64, 64, 32, 16), (16, 40, 16, 8), (12, 12, None, 8),
                          (30, 45, 6, 3), (9, 50, 12, 6), (24, 24, 8, 8)])
def test_pool_fast_adjoint_equals_autograd(height, width, window, stride):
    """The window pooling's adjoint (two average-pooling backward passes) against autograd through pool_fast,
    float64, including grids whose windows leave rows and columns uncovered and one-window grids."""
    grid = window_grid(height, width, window, stride)
    g = torch.rand(3, 2, grid.rows, grid.cols, dtype=torch.float64, generator=torch.Generator().manual_seed(height))
    t = torch.zeros(3, 2, height, width, dtype=torch.float64, requires_grad=True)
    (ref,) = torch.autograd.grad(grid.pool_fast(t), t, g)
    got = grid.pool_fast_adjoint(g)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
