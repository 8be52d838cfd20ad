"""GPU readiness without a GPU: a second device simulated with ``torch.device("meta")``.

* ``with torch.device("meta")`` makes every tensor created without ``device=`` a meta tensor (as
  ``torch.set_default_device("cuda")`` makes it a CUDA one): what is drawn from a CPU generator, or read back with
  ``int()`` / ``float()``, must name its device.
* Meta images stand for images on a GPU: a CPU tensor combined with them is an error, and a copy from the CPU to
  them is a copy that, on a GPU, waits for the device (a host sync) at every call.
* Backward passes run inside a CPU autocast region stand for those run inside a CUDA one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import patchmmd
from patchmmd import _native
from patchmmd.core import features
from patchmmd.core.ssim import dissimilarity_map, target_moments
from patchmmd.evaluation.shift import NOISE_SIGMA, shift_pairs
from patchmmd.tasks.data import random_crops
from patchmmd.theory import cnn

rff = importlib.import_module("patchmmd.core.rff")

def _clear_caches() -> None:
    features._draw.cache_clear()
    rff._cached_features.cache_clear()
    cnn._vgg16_random_weights.cache_clear()


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Nothing drawn before the test, and nothing it drew (under another default device) left for later tests."""
    _clear_caches()
    yield
    _clear_caches()


# ------------------------------------------------------------------------------- the default device


@pytest.mark.parametrize("kind", ["stratified", "orthogonal", "iid"])
def test_features_are_drawn_on_the_cpu_whatever_the_default_device(fresh_caches, kind):
    """docs/method.md §2: the same seed gives the same features on every device. Under
    ``torch.set_default_device("cuda")`` the draws from the CPU generator would land on the GPU (an error there)."""
    want = features.random_features(3, 3, (0.135, 0.54), 64, seed=7, kind=kind, dtype=torch.float64)
    _clear_caches()
    with torch.device("meta"):
        got = features.random_features(3, 3, (0.135, 0.54), 64, seed=7, kind=kind, dtype=torch.float64,
                                       device="cpu")
    for g, w in zip(got, want, strict=True):
        assert g.device.type == "cpu"
        assert torch.equal(g, w)


@pytest.mark.parametrize("preset", ["default", "loss", "followup"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_of_cpu_images_under_another_default_device(fresh_caches, preset, dtype):
    """A program that sets another default device (``torch.set_default_device("cuda")``) and scores CPU tensors
    gets the values it gets without it: the random features and the SSIM window are drawn where they should be."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(1, 3, 32, 32, generator=g, dtype=dtype) for _ in range(2))
    want = patchmmd.mmdpp(x, y, preset=preset)
    _clear_caches()
    with torch.device("meta"):
        got = patchmmd.mmdpp(x, y, preset=preset)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_random_network_weights_are_drawn_on_the_cpu_whatever_the_default_device(fresh_caches):
    """theory/cnn.py: "Weights are drawn in float64 on the CPU from a torch.Generator": under another default
    device the draws from the CPU generator would land there (an error on a GPU, and a cached VGG16 on it)."""
    want = cnn.random_cnn_weights(3, 8, 2, sigma_b2=0.5, seed=3)
    want_vgg = cnn.vgg16_random_weights(seed=1)
    _clear_caches()
    with torch.device("meta"):
        got = cnn.random_cnn_weights(3, 8, 2, sigma_b2=0.5, seed=3)
        got_vgg = cnn.vgg16_random_weights(seed=1)
    for (w, b), (w0, b0) in zip([*got, *got_vgg], [*want, *want_vgg], strict=True):
        assert w.device.type == "cpu" and torch.equal(w, w0)
        assert b is not None and b0 is not None and b.device.type == "cpu" and torch.equal(b, b0)


def test_training_crops_are_drawn_on_the_generators_device():
    """tasks/data.py: the crops' positions come from the run's (CPU) generator, also under another default
    device (where ``torch.randint(..., generator=cpu_generator)`` would fail)."""
    regions = [torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    want = random_crops(regions, 8, 5, torch.Generator().manual_seed(4))
    with torch.device("meta"):
        got = random_crops(regions, 8, 5, torch.Generator().manual_seed(4))
    assert got.device.type == "cpu" and torch.equal(got, want)


def test_generalized_mean_noise_start_is_drawn_on_the_cpu():
    """tasks/gim.py: ``init="noise"`` is "drawn on the CPU (the same start on every device)"."""
    from patchmmd.tasks import gim

    ys = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    want = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(5))

    class Stop(Exception):
        pass

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # the start is all this test looks at
        raise Stop(x[:1].detach().clone())

    with torch.device("meta"), pytest.raises(Stop) as stopped:
        gim.generalized_mean(ys, loss, steps=1, init="noise", seed=5)
    start = stopped.value.args[0]
    assert start.device.type == "cpu" and torch.equal(start, want)


# ------------------------------------------------------------------------------- images on another device


def test_shift_pairs_of_an_image_on_another_device():
    """evaluation/shift.py: the noise was drawn on the CPU and added to the image on its own device (a device
    mismatch for a GPU image); it is drawn on the CPU (the same noise everywhere) and moved to the image."""
    x = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    pairs = shift_pairs(x.to("meta"), seed=3)
    assert all(a.device.type == b.device.type == "meta" for a, b in pairs.values())
    ref = x[:, 2:-2, 2:-2]
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(shift_pairs(x, seed=3)["noise"][1], (ref + NOISE_SIGMA * noise).clamp(0, 1),
                               rtol=0, atol=0)


class _HostToDevice(TorchDispatchMode):
    """Records every operator that makes a meta tensor out of a CPU tensor of more than one element (on a GPU: a
    copy from the host that waits for the device), or combines the two."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        host = any(t.device.type == "cpu" and t.dim() > 0 for t in inputs)
        if host and any(t.device.type == "meta" for t in inputs + outputs):
            self.events.append(str(func))
        return out


def test_ssim_term_copies_nothing_from_the_host_at_every_call():
    """core/ssim.py: the Gaussian window was built on the CPU and copied to the images' device at every call (a
    host sync per training step on a GPU, forward and backward, at each octave); it is kept per dtype and
    device."""
    xs, ys = torch.empty(2, 3, 32, 32, device="meta"), torch.empty(2, 3, 32, 32, device="meta")

    def step() -> None:
        x = xs.clone().requires_grad_(True)
        dissimilarity_map(x, ys).sum().backward()
        dissimilarity_map(x, ys, target_moments(ys)).sum().backward()

    step()  # the first call may build what later ones reuse
    watch = _HostToDevice()
    with watch:
        step()
    assert watch.events == []


# ------------------------------------------------------------------------------- backward inside autocast


@pytest.mark.parametrize(("preset", "create_graph"), [("loss", False), ("loss", True), ("default", True)])
@pytest.mark.parametrize("native", [False, True], ids=["pytorch", "compiled-kernels"])
def test_backward_inside_autocast_is_computed_as_outside(preset, create_graph, native):
    """The distances compute in full precision inside an autocast region (validation.full_precision); the hand-written
    backward passes (SSIM's closed form, the RFF estimator's graph of the gradient) did not, when the backward pass
    itself ran inside the region: their convolutions and matrix products ran in 16 bits (a 1-6 % error here, on
    the PyTorch path that GPUs take; the compiled kernels' graph of the gradient, recorded by graph_vjp, the same)."""
    g = torch.Generator().manual_seed(0)
    x0, y = (torch.rand(2, 3, 32, 32, generator=g) for _ in range(2))
    grads = []
    for inside in (False, True):
        x = x0.clone().requires_grad_(True)
        with contextlib.nullcontext() if native else _native.disabled(), contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            value = patchmmd.mmdpp(x, y, preset=preset).sum()
            if not inside:
                stack.close()
            (grad,) = torch.autograd.grad(value, x, create_graph=create_graph)
        grads.append(grad.detach())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)
