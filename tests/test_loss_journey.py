"""An ML engineer replacing ``lpips.LPIPS`` / ``piq`` / ``pytorch_msssim`` by patchmmd as a training loss: what a
training loop relies on and what surprised."""

from __future__ import annotations

import pytest
import torch

import patchmmd


def _pair(shape: tuple[int, ...] = (2, 3, 32, 32), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return x, (x + 0.05 * torch.randn(shape, generator=g)).clamp(0, 1)


def test_an_explicit_default_preset_against_a_target_of_other_options_is_refused() -> None:
    """``mmdpp(x, target, preset="default")`` with a target of the training preset computed the training preset
    silently: ``"default"`` was the argument's default and stood for "not given", so a preset written out (from a
    configuration file, say) was taken for none, and the number was not the one asked for."""
    x, y = _pair()
    target = patchmmd.precompute_target(y, preset="loss")
    with pytest.raises(ValueError, match="the options are the target's"):
        patchmmd.mmdpp(x, target, preset="default")
    # not given: the target's options; naming them: accepted; the default preset's own target: accepted by name
    assert torch.equal(patchmmd.mmdpp(x, target), patchmmd.mmdpp(x, y, preset="loss"))
    assert torch.equal(patchmmd.mmdpp(x, target, preset="loss"), patchmmd.mmdpp(x, y, preset="loss"))
    default_target = patchmmd.precompute_target(y)
    assert torch.equal(patchmmd.mmdpp(x, default_target, preset="default"), patchmmd.mmdpp(x, y))
    # and without a target, None is the default preset
    assert torch.equal(patchmmd.mmdpp(x, y, preset=None), patchmmd.mmdpp(x, y, preset="default"))


def test_a_16_bit_output_against_a_float32_target_says_how_to_convert() -> None:
    """Under ``torch.autocast`` a network's output is 16-bit; against a tensor ``y`` the dtype error says to convert
    it (``.float()``), against a precomputed target it named the two dtypes only."""
    x, y = _pair()
    loss_fn = patchmmd.MMDPP("loss")
    target = loss_fn.precompute_target(y)
    with pytest.raises(ValueError, match=r"x\.to\(torch\.float32\) converts x \(inside torch\.autocast"):
        loss_fn(x.bfloat16(), target)
    assert torch.equal(loss_fn(x.bfloat16().float(), target), loss_fn(x.bfloat16().float(), y))


@pytest.mark.parametrize("preset", ["default", "loss"])
def test_a_compiled_loss_takes_a_second_image_size(preset: str) -> None:
    """``torch.compile(model, fullgraph=True)`` of a model whose loss is :class:`patchmmd.MMDPP`: the second image
    size a compiled function sees, PyTorch traces with symbolic (dynamic) sizes, and the window grids, computed in
    Python from the sizes, failed on them (``math.gcd`` of a symbol: "Unsupported torch.* op returned
    non-Tensor"), so validating at another size than the training crops, or the crops of a second resolution,
    raised. The graph is now specialised on the sizes: one trace per size, each equal to the eager value."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    loss_fn = patchmmd.MMDPP(preset)

    def step(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return loss_fn(torch.sigmoid(net(a)), b)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    for shape in [(2, 3, 32, 32), (2, 3, 40, 48), (1, 3, 36, 36)]:
        x, y = _pair(shape)
        value = compiled(x, y)
        torch.testing.assert_close(value, step(x, y))
        value.backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())


def test_the_training_preset_has_the_exact_gradient_and_the_default_a_stop_gradient() -> None:
    """What :class:`patchmmd.MMDPP`'s docstring says of the gradients: the training preset's is the exact one (its
    directional derivatives equal central differences, as ``torch.autograd.gradcheck`` checks), the default's is
    not, since its sub-pixel correction is a constant for autograd."""
    x, y = (t.double() for t in _pair((1, 3, 22, 22)))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for preset, exact in (("loss", True), ("default", False)):
        a = x.clone().requires_grad_()
        patchmmd.mmdpp(a, y, preset=preset).sum().backward()
        assert a.grad is not None
        analytic = float((a.grad * v).sum())
        eps = 1e-6
        numeric = float(patchmmd.mmdpp(x + eps * v, y, preset=preset) - patchmmd.mmdpp(x - eps * v, y, preset=preset))
        numeric /= 2 * eps
        error = abs(analytic - numeric) / abs(numeric)
        assert (error < 1e-5) if exact else (error > 1e-2), (preset, analytic, numeric)


@pytest.mark.parametrize("preset", ["default", "loss"])
def test_a_compiled_loss_takes_a_second_channel_count(preset: str) -> None:
    """Grayscale after RGB (or RGB after grayscale) in one compiled function: the random-feature matrix, a constant
    of the graph whose width follows the channels, was traced with a symbolic width the second time, and PyTorch
    failed building its guards (``IndexError``), with or without ``fullgraph``."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: patchmmd.mmdpp(a, b, preset=preset), backend="eager", fullgraph=True)
    for channels in (3, 1, 2):
        x, y = _pair((1, channels, 32, 32), seed=channels)
        torch.testing.assert_close(compiled(x, y), patchmmd.mmdpp(x, y, preset=preset))
