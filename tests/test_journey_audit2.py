"""A user switching from lpips / piq / torchmetrics: what README.md promises and a training loop relies on.

Out-of-range network outputs (``out_of_range``), LPIPS-style inputs in [-1, 1], targets sent to DataLoader
workers, the same values in another process, and a few training steps of a tiny autoencoder with the loss preset.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

import patchmmd


def _pair(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return x, (x + 0.05 * torch.randn(shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("preset", ["default", "loss"])
def test_clamp_passes_no_gradient_to_clamped_pixels_and_ignore_does(preset: str) -> None:
    """README: ``"clamp"`` passes no gradient to the pixels it clamps; ``"ignore"`` keeps it."""
    x, y = _pair((1, 3, 48, 48))
    out = (1.1 * x - 0.05).requires_grad_()  # a network output overshooting [0, 1] on both sides
    outside = (out.detach() < 0) | (out.detach() > 1)
    assert outside.any()
    grads = {}
    for mode in ("clamp", "ignore"):
        (g,) = torch.autograd.grad(patchmmd.MMDPP(preset, out_of_range=mode)(out, y), out)
        grads[mode] = g
    assert bool((grads["clamp"][outside] == 0).all())
    assert bool((grads["ignore"][outside] != 0).all())
    assert bool((grads["clamp"][~outside] != 0).any())


def test_lpips_style_inputs_in_minus_one_one() -> None:
    """LPIPS takes [-1, 1]; here that is refused with a message naming the fix, and the fix gives the [0, 1] values
    for the module, the loss preset and the map alike."""
    x, y = _pair((2, 3, 48, 48))
    a, b = 2 * x - 1, 2 * y - 1
    with pytest.raises(ValueError, match=r"outside value_range=\(0, 1\); pass value_range=\(lo, hi\).*\(-1, 1\)"):
        patchmmd.MMDPP()(a, b)
    for preset in ("default", "loss"):
        torch.testing.assert_close(patchmmd.MMDPP(preset, value_range=(-1, 1))(a, b), patchmmd.MMDPP(preset)(x, y))
    torch.testing.assert_close(patchmmd.distance_map(a, b, value_range=(-1, 1)), patchmmd.distance_map(x, y))


@pytest.mark.parametrize("preset", ["default", "loss"])
def test_precomputed_target_survives_pickling_for_dataloader_workers(preset: str) -> None:
    x, y = _pair((2, 3, 48, 48))
    loss_fn = patchmmd.MMDPP(preset, reduction="none")
    target = loss_fn.precompute_target(y)
    back = pickle.loads(pickle.dumps(target))
    assert isinstance(back, patchmmd.MMDPPTarget)
    assert torch.equal(loss_fn(x, back), loss_fn(x, target))
    assert torch.equal(loss_fn(x, back), loss_fn(x, y))


_CHILD = """
import json, sys, torch, patchmmd
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.rand(2, 3, 56, 40, generator=g)
y = torch.rand(2, 3, 56, 40, generator=g)
print(json.dumps({p: patchmmd.mmdpp(x, y, preset=p).tolist() for p in ("default", "loss")}
                 | {"rff": patchmmd.patch_mmd(x, y, estimator="rff").tolist()}))
"""


def test_same_seed_same_values_in_another_process() -> None:
    """A value logged by one job (1 thread) is reproduced to the last bit by another (this process's threads)."""
    run = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300, check=True)
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 56, 40, generator=g)
    y = torch.rand(2, 3, 56, 40, generator=g)
    ours = {p: patchmmd.mmdpp(x, y, preset=p).tolist() for p in ("default", "loss")}
    ours["rff"] = patchmmd.patch_mmd(x, y, estimator="rff").tolist()
    assert ours == theirs


def test_tiny_autoencoder_trains_with_the_loss_preset_under_autocast() -> None:
    """The README's AMP recipe in a training loop: a bfloat16 output compared as ``out.float()`` inside autocast,
    the loss module inside the model (no state of its own in the checkpoint), and the loss going down."""
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.ConvTranspose2d(8, 3, 4, 2, 1),
                torch.nn.Sigmoid())
            self.loss_fn = patchmmd.MMDPP(preset="loss")

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = self.net(x)
                assert out.dtype == torch.bfloat16
                return out, self.loss_fn(out.float(), x)

    data = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = Model()
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        out, loss = model(data)
        assert loss.dtype == torch.float32
        assert torch.equal(loss.detach(), patchmmd.MMDPP(preset="loss")(out.detach().float(), data))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    state = model.state_dict()
    assert not any(k.startswith("loss_fn") for k in state)
    fresh = Model()
    fresh.load_state_dict(state)
    assert torch.equal(fresh(data)[1], model(data)[1])
