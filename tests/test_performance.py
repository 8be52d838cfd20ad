"""Performance internals, non-timed: the fast RFF path, the precomputed target, torch.compile,
bounded memory at 2048², and the fast path's accuracy against the exact estimator on photos."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import patchmmd.core.rff as rff
from patchmmd.core.features import random_features
from patchmmd.core.mmdpp import MMDPPTarget, mmdpp, precompute_target
from patchmmd.core.modules import MMDPP
from patchmmd.core.patches import window_grid
from patchmmd.data import distortion_suite


def _pair(shape=(2, 3, 64, 64), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype)
    y = (x + 0.2 * torch.randn(*shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize(
    ("kind", "r", "hw", "window"),
    [("stratified", 512, (64, 64), 32), ("stratified", 7, (50, 70), 32), ("iid", 16, (40, 33), None),
     ("orthogonal", 12, (64, 64), 20), ("stratified", 9, (31, 47), 8)],
)
def test_fast_path_equals_reference(kind, r, hw, window):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    w, b = random_features(3, 3, 0.54, r, seed=1, kind=kind, dtype=torch.float64)
    grid = window_grid(*hw, window, 16)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = rff.pooled_cos_features(xr, w, b, grid)
    fast = rff.rff_window_means(xf, rff.paired_features(w, b), grid)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-13)
    co = torch.randn_like(ref)
    (ref * co).sum().backward()
    (fast * co).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=0, atol=1e-12)


def test_pairs_detected_only_for_the_stratified_law():
    w, b = random_features(3, 3, 0.54, 512, seed=0)
    assert (rff.paired_features(w, b).m, rff.paired_features(w, b).n_sin) == (256, 256)
    w, b = random_features(3, 3, 0.54, 512, seed=0, kind="iid")
    assert (rff.paired_features(w, b).m, rff.paired_features(w, b).n_sin) == (512, 0)


def test_recomputing_backward_equals_saved_backward(monkeypatch):
    x, y = _pair()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va = mmdpp(xa, y)
    (ga,) = torch.autograd.grad(va.sum(), xa)
    monkeypatch.setattr(rff, "MAX_FEATURE_ELEMENTS", 0)
    monkeypatch.setattr(rff, "TILE_ELEMENTS", 4096)
    vb = mmdpp(xb, y)
    (gb,) = torch.autograd.grad(vb.sum(), xb)
    torch.testing.assert_close(vb, va, rtol=1e-12, atol=0)
    torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-15)


def test_tiles_sized_for_a_gpu_give_the_cpu_values_and_gradients():
    """Devices other than the CPU tile the fused RFF pass 64 times larger (kernel launches, not caches, bound
    the time there): few tiles instead of many, the same numbers. Checked on the CPU in float64, with the CPU's
    tile size set to the device one, in a call that saves the features and in one that recomputes them."""
    assert rff.DEVICE_TILE_ELEMENTS > rff.TILE_ELEMENTS
    assert len(rff._tiles(4, 256, 256 * 256, torch.device("meta"))[0][1]) < len(
        rff._tiles(4, 256, 256 * 256, torch.device("cpu"))[0][1])
    x, y = _pair(shape=(3, 3, 96, 80))
    for max_elements in (rff.MAX_FEATURE_ELEMENTS, 0):  # saved / recomputed backward
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rff, "MAX_FEATURE_ELEMENTS", max_elements)
            xa = x.clone().requires_grad_(True)
            va = mmdpp(xa, y)
            (ga,) = torch.autograd.grad(va.sum(), xa)
            mp.setattr(rff, "TILE_ELEMENTS", rff.DEVICE_TILE_ELEMENTS)
            xb = x.clone().requires_grad_(True)
            vb = mmdpp(xb, y)
            (gb,) = torch.autograd.grad(vb.sum(), xb)
        torch.testing.assert_close(vb, va, rtol=1e-12, atol=0)
        torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("options", [{}, {"preset": "followup"}, {"estimator": "exact", "window": 16, "stride": 8}])
@pytest.mark.parametrize("size", [48, 200])
def test_precomputed_target_equals_normal_call(options, size):
    if options.get("estimator") == "exact" and size > 48:
        pytest.skip("the exact estimator is slow at this size; 48 px covers it")
    x, y = _pair(shape=(2, 3, size, size))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    target = precompute_target(y, **options)
    assert isinstance(target, MMDPPTarget)
    va = mmdpp(xa, y, **options)
    vb = mmdpp(xb, target, preset=target.config)
    torch.testing.assert_close(vb, va, rtol=1e-12, atol=1e-15)
    (ga,) = torch.autograd.grad(va.sum(), xa)
    (gb,) = torch.autograd.grad(vb.sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-15)


def test_module_precompute_target_and_errors():
    x, y = _pair(dtype=torch.float32)
    m = MMDPP(reduction="none")
    t = m.precompute_target(y)
    torch.testing.assert_close(m(x, t), m(x, y), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="options"):
        mmdpp(x, t, num_features=64)
    with pytest.raises(ValueError, match="shape"):
        mmdpp(x[:1], t)
    with pytest.raises(ValueError, match="other options"):
        MMDPP(num_features=64)(x, t)


@pytest.mark.slow
def test_torch_compile_of_the_module():
    """One small compile, the whole loss in one graph (the compiled RFF kernels are PyTorch operators);
    ``aot_eager`` keeps CI free of a C++ toolchain and fast on 2 cores. Values and gradients equal the eager
    module's (more cases in ``tests/test_compile.py``)."""
    x, y = _pair(shape=(2, 3, 48, 48), dtype=torch.float32)
    compiled = torch.compile(MMDPP(), backend="aot_eager", fullgraph=True)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va, vb = compiled(xa, y), MMDPP()(xb, y)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-8)


# The peak is read from /proc/self/status (VmHWM: this process's own memory since exec). ru_maxrss is not
# usable here: Linux carries the forking parent's high-water mark into the child across exec, so under a
# long pytest session it reports the test runner's size.
_MEM_SCRIPT = """
import json, resource, torch, patchmmd
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.rand(1, 3, 2048, 2048, generator=g)
y = (x + 0.05 * torch.randn(1, 3, 2048, 2048, generator=g)).clamp(0, 1)
with torch.no_grad():
    v = float(patchmmd.mmdpp(x, y))
try:
    with open("/proc/self/status") as f:
        peak = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak, "value": v}))
"""


def test_forward_2048_peak_memory_below_1_5_gb():
    """Peak resident memory of a whole process (interpreter, PyTorch, the two images) for one forward."""
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT], capture_output=True, text=True, check=True, timeout=300)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["value"] > 0
    assert res["peak_mb"] <= 1536, res


@pytest.fixture(scope="module")
def suite_exact():
    ref, dist, _ = distortion_suite()
    return ref, dist, mmdpp(ref, dist, estimator="exact")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32 on the CPU: the compiled kernels
def test_fast_path_ranks_like_the_exact_estimator_on_photos(suite_exact, dtype):
    from scipy.stats import spearmanr

    ref, dist, exact = suite_exact
    fast = mmdpp(ref.to(dtype), dist.to(dtype)).double()
    rho = spearmanr(fast.numpy(), exact.numpy()).statistic
    rel = ((fast - exact).abs() / exact).median()
    assert rho >= 0.99, (rho, float(rel))
    assert rel <= 0.02
