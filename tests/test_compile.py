"""``torch.compile`` of the loss in one graph: the compiled RFF kernels as PyTorch operators
(``patchmmd::rff_sums`` / ``patchmmd::rff_sums_grad``), value checks skipped while tracing, and
compiled results equal to eager ones (values and input gradients)."""

from __future__ import annotations

import pytest
import torch

import patchmmd
from patchmmd import _native
from patchmmd.core.modules import MMDPP

needs_native = pytest.mark.skipif(_native.kernels() is None, reason="no C compiler: the PyTorch path is used")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _pair(dtype: torch.dtype, device: str = "cpu", shape=(2, 3, 64, 64)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(device, dtype), y.to(device, dtype)


def _value_and_grad(fn, x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    xg = x.clone().requires_grad_(True)
    v = fn(xg, y)
    (g,) = torch.autograd.grad(v, xg)
    return v.detach(), g


def _assert_compiled_equals_eager(  # type: ignore[no-untyped-def]
    x, y, backend: str, target: bool = False, preset: str = "default"
) -> None:
    eager = MMDPP(preset=preset)
    other = eager.precompute_target(y) if target else y
    compiled = torch.compile(MMDPP(preset=preset), fullgraph=True, backend=backend)
    v_c, g_c = _value_and_grad(compiled, x, other)
    v_e, g_e = _value_and_grad(eager, x, other)
    tol = dict(rtol=1e-12, atol=1e-15) if x.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(v_c, v_e, **tol)
    torch.testing.assert_close(g_c, g_e, **tol)


@needs_native
@pytest.mark.parametrize("target", [False, True])
def test_compiled_module_equals_eager_float32_native(target):
    x, y = _pair(torch.float32)
    _assert_compiled_equals_eager(x, y, "aot_eager", target)


@pytest.mark.parametrize("target", [False, True])
def test_compiled_module_equals_eager_float64_pytorch_path(target):
    x, y = _pair(torch.float64)
    _assert_compiled_equals_eager(x, y, "aot_eager", target)


@pytest.mark.parametrize("target", [False, True])
def test_training_preset_compiles_in_one_graph_and_equals_eager(target):
    """``preset="loss"`` adds the SSIM term, an autograd function with its own backward: traced in the graph."""
    x, y = _pair(torch.float32)
    _assert_compiled_equals_eager(x, y, "aot_eager", target, preset="loss")
    explained = torch._dynamo.explain(MMDPP(preset="loss"))(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


def test_compiled_pytorch_path_float32_with_kernels_off():
    x, y = _pair(torch.float32)
    with _native.disabled():
        _assert_compiled_equals_eager(x, y, "aot_eager")


def test_compiled_pytorch_path_in_feature_chunks(monkeypatch):
    """More features than one chunk holds: chunks recomputed in the backward pass, same numbers."""
    import patchmmd.core.rff as rff

    monkeypatch.setattr(rff, "MAX_FEATURE_ELEMENTS", 2 * 64 * 64 * 50)
    x, y = _pair(torch.float64)
    _assert_compiled_equals_eager(x, y, "aot_eager")


def test_whole_loss_is_one_graph():
    x, y = _pair(torch.float32)
    explained = torch._dynamo.explain(MMDPP())(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@needs_native
def test_disabling_the_kernels_retraces():
    """``_native.disabled()`` is a guard of a compiled graph: the graph traced with the kernels is not reused."""
    x, y = _pair(torch.float32)
    compiled = torch.compile(MMDPP(), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        on = compiled(x, y)
        with _native.disabled():
            off = compiled(x, y)
            ref = MMDPP()(x, y)
    torch.testing.assert_close(off, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(on, ref, rtol=1e-4, atol=1e-7)


def test_value_checks_skipped_only_while_compiling():
    x, y = _pair(torch.float32)
    bad = x.clone()
    bad[0, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="value_range"):
        MMDPP()(bad, y)
    compiled = torch.compile(MMDPP(), fullgraph=True, backend="aot_eager")
    assert torch.isfinite(compiled(bad, y))  # not validated in the graph: documented
    # Shape checks still run when a graph is traced (without fullgraph, the error reaches the caller as is).
    with pytest.raises(ValueError, match="same shape"):
        torch.compile(MMDPP(), backend="aot_eager")(x[:1], y)


def _op_samples() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    k, hc, wc, bh, bw = 3, 8, 20, 4, 5
    out = []
    for n, c, m in ((1, 2, 8), (3, 3, 16)):
        xp = torch.rand(n, c, hc + k - 1, 32 + k - 1, generator=g)
        weight = torch.randn(m, c * k * k, generator=g) * 3
        phase = torch.rand(m, generator=g) * 6.28
        out.append((xp, weight, phase, hc, wc, bh, bw, k))
    return out


@needs_native
@pytest.mark.parametrize("sample", range(2))
def test_opcheck_block_sums(sample):
    xp, *rest = _op_samples()[sample]
    args = (xp, *rest[:2], 0.0, *rest[2:])
    torch.library.opcheck(torch.ops.patchmmd.rff_sums.default, args)
    torch.library.opcheck(torch.ops.patchmmd.rff_sums.default, (xp.clone().requires_grad_(True), *args[1:]))


@needs_native
@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("sample", range(2))
def test_opcheck_grad_ops(sample, normalized):
    """``rff_sums_grad`` of raw patches (floor 0) and of contrast-normalised ones."""
    xp, weight, phase, hc, wc, bh, bw, k = _op_samples()[sample]
    g = torch.Generator().manual_seed(1)
    shape = (xp.shape[0], weight.shape[0], hc // bh, wc // bw)
    g_cos, g_sin = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    floor = 0.05 if normalized else 0.0
    torch.library.opcheck(torch.ops.patchmmd.rff_sums_grad.default,
                          (xp, weight, phase, floor, g_cos, g_sin, hc, wc, bh, bw, k))


@needs_native
def test_op_gradient_matches_the_pytorch_reference():
    """The operator's autograd formula against autograd of the same block sums in float64 PyTorch."""
    xp, weight, phase, hc, wc, bh, bw, k = _op_samples()[1]
    g = torch.Generator().manual_seed(2)
    shape = (xp.shape[0], weight.shape[0], hc // bh, wc // bw)
    gc, gs = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    xg = xp.clone().requires_grad_(True)
    sc, ss = torch.ops.patchmmd.rff_sums(xg, weight, phase, 0.0, hc, wc, bh, bw, k)
    (grad,) = torch.autograd.grad((sc * gc + ss * gs).sum(), xg)
    xd = xp.double().requires_grad_(True)
    cols = torch.nn.functional.unfold(xd[..., : wc + k - 1], k)
    z = (weight.double() @ cols + phase.double()[:, None]).view(xp.shape[0], -1, hc // bh, bh, wc // bw, bw)
    ref = (torch.cos(z).sum((3, 5)) * gc + torch.sin(z).sum((3, 5)) * gs).sum()
    (grad_ref,) = torch.autograd.grad(ref, xd)
    torch.testing.assert_close(sc.double(), torch.cos(z).sum((3, 5)).detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(ss.double(), torch.sin(z).sum((3, 5)).detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=0, atol=1e-3 * float(grad_ref.abs().max()))


@needs_native
@pytest.mark.parametrize("sample", range(2))
def test_opcheck_normalized_sums(sample):
    xp, weight, phase, hc, wc, bh, bw, k = _op_samples()[sample]
    args = (xp, weight, phase, 0.05, hc, wc, bh, bw, k)
    torch.library.opcheck(torch.ops.patchmmd.rff_sums.default, args)
    torch.library.opcheck(torch.ops.patchmmd.rff_sums.default, (xp.clone().requires_grad_(True), *args[1:]))


@needs_native
@pytest.mark.parametrize("target", [False, True])
def test_opcheck_ssim_ops(target):
    """``ssim_map`` (with and without gradient, with and without a target's moments) and ``ssim_map_grad``."""
    g = torch.Generator().manual_seed(4)
    x, y = (torch.rand(2, 3, 19, 26, generator=g) * 2 - 1 for _ in range(2))
    taps = torch.softmax(torch.randn(11, generator=g), 0)
    ym = torch.rand(2, 6, 9, 16, generator=g) if target else None
    torch.library.opcheck(torch.ops.patchmmd.ssim_map.default, (x, y, ym, taps))
    torch.library.opcheck(torch.ops.patchmmd.ssim_map.default, (x.clone().requires_grad_(True), y, ym, taps))
    grad = torch.randn(2, 3, 9, 16, generator=g)
    torch.library.opcheck(torch.ops.patchmmd.ssim_map_grad.default, (x, y, ym, taps, grad))


@needs_native
def test_normalized_op_gradient_matches_the_pytorch_reference():
    """The normalised operator's autograd formula (through the angles and each patch's contrast factor) against
    autograd of the same sums over explicitly normalised patches in float64."""
    xp, weight, phase, hc, wc, bh, bw, k = _op_samples()[1]
    c, floor = xp.shape[1], 0.05
    g = torch.Generator().manual_seed(2)
    shape = (xp.shape[0], weight.shape[0], hc // bh, wc // bw)
    gc, gs = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    xg = xp.clone().requires_grad_(True)
    sc, ss = torch.ops.patchmmd.rff_sums(xg, weight, phase, floor, hc, wc, bh, bw, k)
    (grad,) = torch.autograd.grad((sc * gc + ss * gs).sum(), xg)
    xd = xp.double().requires_grad_(True)
    p = torch.nn.functional.unfold(xd[..., : wc + k - 1], k).view(xp.shape[0], c, k * k, -1)
    centred = (p - p.mean(dim=2, keepdim=True)).reshape(xp.shape[0], c * k * k, -1)
    s = torch.rsqrt(centred.pow(2).sum(1, keepdim=True) + c * k * k * floor**2)
    z = (weight.double() @ p.reshape(xp.shape[0], c * k * k, -1)) * s + phase.double()[:, None]
    z = z.view(xp.shape[0], -1, hc // bh, bh, wc // bw, bw)
    ref = (torch.cos(z).sum((3, 5)) * gc + torch.sin(z).sum((3, 5)) * gs).sum()
    (grad_ref,) = torch.autograd.grad(ref, xd)
    torch.testing.assert_close(sc.double(), torch.cos(z).sum((3, 5)).detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(ss.double(), torch.sin(z).sum((3, 5)).detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=0, atol=1e-3 * float(grad_ref.abs().max()))


def test_ops_reject_what_the_kernels_cannot_take():
    xp, weight, phase, hc, wc, bh, bw, k = _op_samples()[0]
    with pytest.raises(ValueError, match="float32"):
        torch.ops.patchmmd.rff_sums(xp.double(), weight, phase, 0.0, hc, wc, bh, bw, k)
    with pytest.raises(ValueError, match="too small"):
        torch.ops.patchmmd.rff_sums(xp[..., :20].contiguous(), weight, phase, 0.0, hc, wc, bh, bw, k)
    with pytest.raises(ValueError, match="multiple"):
        torch.ops.patchmmd.rff_sums(xp, weight[:5], phase[:5], 0.0, hc, wc, bh, bw, k)
    for floor in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="floor"):
            torch.ops.patchmmd.rff_sums(xp, weight, phase, floor, hc, wc, bh, bw, k)


@pytest.mark.slow
@needs_native
def test_inductor_compiled_module_equals_eager(monkeypatch, tmp_path):
    """One inductor compile (C++ code generation): the native path inside an inductor graph. A fresh cache
    folder: the on-disk AOTAutograd cache keys graphs by operator name, not by its autograd formula."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x, y = _pair(torch.float32, shape=(2, 3, 48, 48))
    _assert_compiled_equals_eager(x, y, "inductor")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_module_equals_eager_on_gpu(dtype):
    x, y = _pair(dtype, "cuda")
    _assert_compiled_equals_eager(x, y, "aot_eager")


@pytest.mark.cuda
@cuda
@pytest.mark.slow
def test_inductor_compiled_module_equals_eager_on_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x, y = _pair(torch.float32, "cuda")
    _assert_compiled_equals_eager(x, y, "inductor")


def test_functional_mmdpp_compiles_in_one_graph():
    x, y = _pair(torch.float64)
    fn = torch.compile(lambda a, b: patchmmd.mmdpp(a, b, reduction="sum"), fullgraph=True, backend="aot_eager")
    v_c, g_c = _value_and_grad(fn, x, y)
    v_e, g_e = _value_and_grad(lambda a, b: patchmmd.mmdpp(a, b, reduction="sum"), x, y)
    torch.testing.assert_close(v_c, v_e, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_c, g_e, rtol=1e-12, atol=1e-15)
