"""The distances under the ``torch.func`` transforms: the same numbers as eager autograd and batched calls.

Under a transform the distances take their plain PyTorch path (no compiled kernels, no hand-written backward
passes, no checkpointing: :func:`patchmmd._autograd.functorch_active`); eager calls keep theirs. So each check
compares the two paths: ``torch.func.grad`` against ``torch.autograd.grad``, ``vmap`` over single images against
one batched call, ``jacrev``'s rows against eager backward passes, ``jvp`` against the eager gradient's inner
product. float32 gradients agree to a relative 1e-5 of their scale (the compiled kernels and PyTorch round
differently), float64 ones to 1e-10. A last check runs transforms first in a fresh process: the eager path after
them is whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import patchmmd

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, C, H, W) x 2 -> (N,)

SIZE = 24  # the training preset needs 22 px (its SSIM term's second octave)
# A map weighted by a fixed random field: every pixel of it contributes its own gradient, not only its mean.
_WEIGHTS = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
DISTANCES: dict[str, Distance] = {
    "mmdpp": lambda a, b: patchmmd.mmdpp(a, b),
    "mmdpp_loss": lambda a, b: patchmmd.mmdpp(a, b, preset="loss"),
    "distance_map": lambda a, b: (patchmmd.distance_map(a, b) * _WEIGHTS.to(a.dtype)).sum(dim=(1, 2, 3)),
    "patch_mmd_rff": lambda a, b: patchmmd.patch_mmd(a, b, estimator="rff"),
    "patch_mmd_exact": lambda a, b: patchmmd.patch_mmd(a, b, estimator="exact"),
    "local_distance": lambda a, b: patchmmd.local_distance(a, b),
    "l2_distance": lambda a, b: patchmmd.l2_distance(a, b),
}
DTYPES = [torch.float32, torch.float64]


def _pair(dtype: torch.dtype, n: int = 2, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to rounding: relative 1e-5 of the scale in float32, 1e-10 in float64."""
    tol = 1e-5 if want.dtype == torch.float32 else 1e-10
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def _autograd_grad(fn: Distance, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(t, y).sum(), t)
    return g


def test_eager_calls_see_no_transform() -> None:
    from patchmmd._autograd import functorch_active

    assert not functorch_active()
    assert torch.func.grad(lambda t: t * float(functorch_active()))(torch.tensor(1.0)) == 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(DISTANCES))
def test_grad_equals_autograd(name: str, dtype: torch.dtype) -> None:
    fn = DISTANCES[name]
    x, y = _pair(dtype)
    got = torch.func.grad(lambda a: fn(a, y).sum())(x)
    want = _autograd_grad(fn, x, y)
    assert float(want.abs().max()) > 0
    _close(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(DISTANCES))
def test_vmap_equals_batched_call(name: str, dtype: torch.dtype) -> None:
    fn = DISTANCES[name]
    x, y = _pair(dtype)
    got = torch.func.vmap(lambda a, b: fn(a[None], b[None])[0])(x, y)
    _close(got, fn(x, y))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["mmdpp", "patch_mmd_rff"])
def test_per_sample_gradients(name: str, dtype: torch.dtype) -> None:
    """vmap(grad): each image's gradient of its own distance, as one batched backward pass gives them."""
    fn = DISTANCES[name]
    x, y = _pair(dtype)
    got = torch.func.vmap(torch.func.grad(lambda a, b: fn(a[None], b[None])[0]))(x, y)
    _close(got, _autograd_grad(fn, x, y))


def test_distance_map_under_vmap_is_the_batched_map() -> None:
    x, y = _pair(torch.float32, n=2)
    got = torch.func.vmap(lambda a, b: patchmmd.distance_map(a[None], b[None], preset="loss")[0])(x, y)
    _close(got, patchmmd.distance_map(x, y, preset="loss"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jacrev_of_a_distance_map(dtype: torch.dtype) -> None:
    """The full Jacobian of a 12x12 map of the training preset (the SSIM term at its first octave only: the
    second needs 22 px; 64 features, for time) with respect to the image: a dozen of its rows against eager
    backward passes, and the sum of all of them against the gradient of the map's sum."""
    x, y = _pair(dtype, n=1, size=12)

    def dmap(a: torch.Tensor) -> torch.Tensor:
        return patchmmd.distance_map(a, y, preset="loss", weight_ssim=9.93, num_features=64)

    jac = torch.func.jacrev(dmap)(x)
    assert jac.shape == (1, 1, 12, 12, 1, 3, 12, 12)
    rows = jac.reshape(144, *x.shape)
    t = x.clone().requires_grad_(True)
    out = dmap(t).reshape(144)
    for i in torch.randperm(144, generator=torch.Generator().manual_seed(2))[:12].tolist():
        (want,) = torch.autograd.grad(out[i], t, retain_graph=True)
        _close(rows[i], want)
    _close(rows.sum(dim=0), torch.autograd.grad(out.sum(), t)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["mmdpp", "patch_mmd_rff"])
def test_jvp_is_the_gradients_inner_product(name: str, dtype: torch.dtype) -> None:
    """Forward mode: the directional derivative of each image's distance is its gradient's inner product (the
    sub-pixel fit of the default preset a constant, as in the backward pass: ``torch.no_grad`` alone does not
    stop forward mode)."""
    fn = DISTANCES[name]
    x, y = _pair(dtype)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    value, tangent = torch.func.jvp(lambda a: fn(a, y), (x,), (v,))
    _close(value, fn(x, y))
    _close(tangent, (_autograd_grad(fn, x, y) * v).sum(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", ["mmdpp", "mmdpp_loss", "patch_mmd_rff", "patch_mmd_exact"])
def test_hessian_and_jacfwd_equal_eager_double_backward(name: str) -> None:
    """Second order: ``hessian`` (forward over reverse mode) against rows of eager double backward, and
    ``jacfwd`` against the eager gradient (float64, one 12x12 image; the training preset with 64 features and
    its SSIM term at the first octave only, as in the Jacobian check above)."""
    x, y = _pair(torch.float64, n=1, size=12)
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "mmdpp": lambda a: patchmmd.mmdpp(a, y).sum(),
        "mmdpp_loss": lambda a: patchmmd.mmdpp(a, y, preset="loss", weight_ssim=9.93, num_features=64).sum(),
        "patch_mmd_rff": lambda a: patchmmd.patch_mmd(a, y, estimator="rff").sum(),
        "patch_mmd_exact": lambda a: patchmmd.patch_mmd(a, y, estimator="exact").sum(),
    }
    f = fns[name]
    hess = torch.func.hessian(f)(x).reshape(x.numel(), x.numel())
    t = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(t), t, create_graph=True)
    flat = g.reshape(-1)
    rows = [torch.autograd.grad(flat[i], t, retain_graph=True)[0].reshape(-1) for i in range(0, x.numel(), 61)]
    assert float(torch.stack(rows).abs().max()) > 0
    _close(hess[::61], torch.stack(rows))
    _close(torch.func.jacfwd(f)(x), g.detach())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_under_functional_call(dtype: torch.dtype) -> None:
    module = patchmmd.MMDPP(preset="loss", reduction="sum", num_features=128)
    params = dict(module.named_parameters()) | dict(module.named_buffers())
    x, y = _pair(dtype)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, params, (a, b))

    _close(loss(x, y), module(x, y))
    _close(torch.func.grad(loss)(x, y), _autograd_grad(lambda a, b: module(a, b)[None], x, y))
    _close(torch.func.vmap(lambda a, b: loss(a[None], b[None]))(x, y),
           patchmmd.mmdpp(x, y, preset="loss", num_features=128))


def test_grad_against_a_precomputed_target() -> None:
    x, y = _pair(torch.float32)
    target = patchmmd.precompute_target(y)
    got = torch.func.grad(lambda a: patchmmd.mmdpp(a, target).sum())(x)
    _close(got, _autograd_grad(lambda a, _: patchmmd.mmdpp(a, target), x, y))


def test_a_precomputed_target_is_a_constant_in_forward_mode() -> None:
    x, y = _pair(torch.float32)
    value, tangent = torch.func.jvp(lambda b: patchmmd.mmdpp(x, patchmmd.precompute_target(b)), (y,),
                                    (torch.ones_like(y),))
    _close(value, patchmmd.mmdpp(x, y))
    assert torch.equal(tangent, torch.zeros_like(value))


def test_values_are_still_checked_under_vmap() -> None:
    """One image out of range (or not finite) in a vmapped batch raises, as an eager call on the batch does."""
    x, y = _pair(torch.float32, n=3)  # the second of three images is bad
    bad = x.clone()
    bad[1, 0, 0, 0] = 3.0

    def per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return patchmmd.mmdpp(a[None], b[None])

    with pytest.raises(ValueError, match=r"x has values in \[.*, 3\], outside value_range=\(0, 1\)"):
        torch.func.vmap(per_image)(bad, y)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        torch.func.vmap(torch.func.grad(lambda a, b: per_image(a, b).sum()))(bad, y)
    with pytest.raises(ValueError, match="y has values in"):
        torch.func.grad(lambda a: patchmmd.l2_distance(a, y * 2).sum())(x)
    clamped = torch.func.vmap(lambda a, b: patchmmd.l2_distance(a[None], b[None], out_of_range="clamp"))
    _close(clamped(x * 2, y)[:, 0], patchmmd.l2_distance(x * 2, y, out_of_range="clamp"))


_FRESH = """
import torch, patchmmd
from patchmmd import _native
g = torch.Generator().manual_seed(0)
x, y = torch.rand(2, 2, 3, 24, 24, generator=g)
t = x.clone().requires_grad_(True)
torch.func.jacrev(lambda a: patchmmd.mmdpp(a, y, preset="loss"))(x)  # the loss preset's features, the SSIM window
patchmmd.mmdpp(t, y, preset="loss").sum().backward()
torch.func.vmap(lambda a, b: patchmmd.mmdpp(a[None], b[None]))(x, y)  # the default preset's features
patchmmd.mmdpp(t, y).sum().backward()
print(_native.status())
"""


def test_transforms_first_leave_the_eager_path_whole() -> None:
    """In a fresh process transformed calls come first: the constants they make and cache (random features, the
    SSIM window) are plain tensors, so the eager calls after them load and use the compiled kernels (a transform's
    tensor, dead once it returned, has no data pointer for them), and vmap's draw of the features is allowed."""
    from patchmmd import _native

    if not _native.status().startswith("in use"):
        pytest.skip(f"the compiled kernels are off here: {_native.status()}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(patchmmd.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().startswith("in use"), run.stdout
