"""A metric test harness in the manner of torchmetrics' ``MetricTester`` and kornia's ``BaseTester``.

One table, :data:`CASES`, describes every registered metric once: the small options that keep it fast, the
input shape it needs, its module form, its best value, the dtype it returns, its half-precision tolerance
and the tiny setup of its float64 ``gradcheck``. :class:`MetricTester` runs the checks of one case on one
device; ``tests/test_metric_harness.py`` parametrises them over every case, dtype and device.

What a case does *not* satisfy is declared in one place, :data:`EXCEPTIONS` (``(metric, check) -> reason``);
the suite turns each entry into a visible skip, and a test refuses entries naming unknown metrics or checks.

Example (the whole check list of one metric, as the suite runs it)::

    tester = MetricTester(CASES["l2"], device="cpu", weights={})
    tester.check_identity(torch.float32)
    tester.check_gradcheck()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import patchmmd
from patchmmd.metrics.baselines import DISTS, LPIPS, alexnet_features, vgg16_features
from patchmmd.metrics.registry import Metric, get_metric, get_spec
from patchmmd.theory.cnn import VGG16_CONV_INDICES, vgg16_random_weights

#: Every check the suite runs per case (the names :data:`EXCEPTIONS` may use).
CHECKS = (
    "shape", "identity", "symmetry", "batch", "module", "gradients", "gradcheck", "half", "compile", "device",
    "map",
)

#: The ``(N, C, H, W)`` input shape unless a case needs more: small, so the harness stays fast on 2 cores.
SHAPE = (2, 3, 32, 32)
#: Tiny inputs of the float64 gradcheck (few pixels, two channels: cheap finite differences).
GRAD_SHAPE = (1, 2, 6, 7)


class WeightFile(str):
    """A placeholder option value: the key of a weight file :func:`write_weight_files` writes."""


ModuleFactory = Callable[[Mapping[str, object], str], nn.Module]


@dataclass(frozen=True)
class MetricCase:
    """How the harness exercises one registered metric.

    Attributes:
        name: the registry name.
        options: passed to ``get_metric`` (and to the module form); :class:`WeightFile` values are replaced
            by the path of the matching file.
        shape: the input shape of every check but gradcheck.
        module: ``(options, reduction) -> nn.Module`` computing the same values, or ``None``.
        module_reduces: the module takes ``reduction=`` (LPIPS and DISTS return ``(N,)`` only).
        best: the value at ``x == y`` (0 for distances, the top score for ``higher_is_better`` metrics).
        out_dtype: ``None``: the result has the input's dtype (the library's rule, 16-bit inputs computed in
            float32); otherwise the dtype every result has.
        half_rtol: relative tolerance of 16-bit inputs against float32 inputs. Rounding the inputs moves
            the value and a 16-bit result is rounded again (``bfloat16``: 8 significant bits, ``float16``:
            11). Measured worst cases over all metrics: 8e-4 (float16), 4e-3 (bfloat16).
        grad_options, grad_shape: options and input shape of the float64 gradcheck.
        compile: compare ``torch.compile(metric, backend="aot_eager")`` with eager (``"slow"``: and mark
            the case slow; tracing takes several seconds).
    """

    name: str
    options: Mapping[str, object] = field(default_factory=dict)
    shape: tuple[int, int, int, int] = SHAPE
    module: ModuleFactory | None = None
    module_reduces: bool = True
    best: float = 0.0
    out_dtype: torch.dtype | None = None
    half_rtol: Mapping[torch.dtype, float] = field(
        default_factory=lambda: {torch.float16: 2e-3, torch.bfloat16: 1e-2})
    grad_options: Mapping[str, object] = field(default_factory=dict)
    grad_shape: tuple[int, int, int, int] = GRAD_SHAPE
    compile: bool | str = False


def _mmdpp_module(preset: str) -> ModuleFactory:
    return lambda opts, reduction: patchmmd.MMDPP(preset, reduction=reduction, **opts)  # type: ignore[arg-type]


def _patch_mmd_module(estimator: str) -> ModuleFactory:
    return lambda opts, reduction: patchmmd.PatchMMD(
        estimator=estimator, reduction=reduction, **opts)  # type: ignore[arg-type]


def _random_cnn_module(first_layer: str) -> ModuleFactory:
    # the registered metric adds the scale rule, the identity on images up to 128 px (one level, weight 1)
    return lambda opts, reduction: patchmmd.RandomCNNDistance(
        first_layer=first_layer, reduction=reduction, **opts)  # type: ignore[arg-type]


def _vgg_module(opts: Mapping[str, object], reduction: str) -> nn.Module:
    return patchmmd.VGGDistance(reduction=reduction, **opts)  # type: ignore[arg-type]


def _infinite_cnn_module(opts: Mapping[str, object], reduction: str) -> nn.Module:
    return patchmmd.InfiniteCNNDistance(reduction=reduction, **opts)  # type: ignore[arg-type]


def _lpips_module(net: str) -> ModuleFactory:
    return lambda opts, reduction: LPIPS.from_files(net, opts["backbone"], opts["weights"])


def _dists_module(opts: Mapping[str, object], reduction: str) -> nn.Module:
    return DISTS.from_files(opts["backbone"], opts["weights"])


_F32 = torch.float32
_TINY_MMD = {"window": 4, "stride": 2}

#: One case per registered metric.
CASES: dict[str, MetricCase] = {c.name: c for c in [
    # ---------------------------------------------------------------- the library's own distances
    # gradcheck without the sub-pixel fit, whose correction is a stop-gradient (docs/method.md §3.2; its
    # gradient is checked against finite differences in test_shift_tolerance.py)
    MetricCase("mmdpp", module=_mmdpp_module("default"), compile="slow",
               grad_options={**_TINY_MMD, "num_features": 16, "subpixel": False}),
    MetricCase("mmdpp-followup", module=_mmdpp_module("followup"), grad_options={**_TINY_MMD, "num_features": 16}),
    MetricCase("mmdpp-pixelwise", module=_mmdpp_module("pixelwise"),
               grad_options={**_TINY_MMD, "num_features": 16}),
    MetricCase("patch-mmd", {"window": 16, "stride": 8}, module=_patch_mmd_module("exact"), compile="slow",
               grad_options=_TINY_MMD),
    MetricCase("patch-mmd-rff", {"num_features": 64}, module=_patch_mmd_module("rff"),
               grad_options={**_TINY_MMD, "num_features": 16}),
    MetricCase("local", compile=True),
    MetricCase("l2", compile=True),
    # ---------------------------------------------------------------- theory
    MetricCase("random-cnn", {"width": 64, "pooling": (16, 8)}, module=_random_cnn_module("he"),
               grad_options={"width": 8, "pooling": (4, 2), "in_channels": 2}),
    MetricCase("random-cnn-zero-mean", {"width": 64, "pooling": (16, 8)}, module=_random_cnn_module("zero_mean"),
               grad_options={"width": 8, "pooling": (4, 2), "in_channels": 2}),
    MetricCase("infinite-cnn", {"pooling": (16, 8)}, module=_infinite_cnn_module,
               grad_options={"pooling": (4, 2)}),
    MetricCase("random-vgg", {"seed": 0}, module=_vgg_module, grad_shape=(1, 3, 16, 16)),
    MetricCase("vgg", {"weights": WeightFile("vgg_torchvision")}, module=_vgg_module, grad_shape=(1, 3, 16, 16)),
    # ---------------------------------------------------------------- baselines
    MetricCase("psnr", best=100.0),
    MetricCase("ssim", best=1.0, out_dtype=_F32),
    MetricCase("ssim-downsampled", best=1.0, out_dtype=_F32),
    MetricCase("ms-ssim", {"win_size": 3}, shape=(2, 3, 48, 48), best=1.0, out_dtype=_F32),
    MetricCase("lpips-alex", {"backbone": WeightFile("alexnet"), "weights": WeightFile("lpips_alex")},
               shape=(2, 3, 64, 64), module=_lpips_module("alex"), module_reduces=False, out_dtype=_F32),
    MetricCase("lpips-vgg", {"backbone": WeightFile("vgg16"), "weights": WeightFile("lpips_vgg")},
               module=_lpips_module("vgg"), module_reduces=False, out_dtype=_F32),
    MetricCase("dists", {"backbone": WeightFile("vgg16"), "weights": WeightFile("dists")},
               module=_dists_module, module_reduces=False, out_dtype=_F32),
]}

#: Registered metrics the harness leaves out entirely, with the reason (none: every metric is covered).
EXCLUDED: dict[str, str] = {}

#: Cases that are convolutional networks run by cuDNN on a GPU, whose backward pass is not bit-reproducible
#: there (:meth:`MetricTester.check_gradcheck`).
CONVOLUTION_NETWORKS = frozenset({"random-cnn", "random-cnn-zero-mean", "random-vgg", "vgg"})

_FLOAT32_INSIDE = "computes in float32 whatever the input dtype, so a float64 gradcheck measures float32 rounding"
_NO_REDUCTION = "its module (LPIPS / DISTS) has no reduction= option: the module is checked with (N,) results only"

#: The one table of declared exceptions: ``(metric, check) -> reason``. Every metric is symmetric (no
#: "symmetry" entries), every one is differentiable.
EXCEPTIONS: dict[tuple[str, str], str] = {
    **{(name, "module"): "no module form: the functional (registry) metric is the only API"
       for name in ("local", "l2", "psnr", "ssim", "ssim-downsampled", "ms-ssim")},
    **{(name, "gradcheck"): _FLOAT32_INSIDE
       for name in ("ssim", "ssim-downsampled", "ms-ssim", "lpips-alex", "lpips-vgg", "dists")},
    **{(name, "map"): "no spatial map (its MetricSpec has no map_factory)"
       for name in CASES if not get_spec(name).has_map},
    **{(name, "compile"): "torch.compile is checked for the core metrics only (mmdpp, patch-mmd, local, l2)"
       for name in CASES if not CASES[name].compile},
}


# ------------------------------------------------------------------------------------------- weight files
def write_weight_files(directory: Path) -> dict[str, Path]:
    """Small random weight files in the layouts the weight-needing metrics read (never a download).

    Trunks keep torchvision's layout with PyTorch's default initialisation; heads are positive (as trained
    LPIPS heads are), so distances of distinct images are positive.
    """
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        alex, vgg = alexnet_features().state_dict(), vgg16_features().state_dict()
    files = {"alexnet": directory / "alexnet.pth", "vgg16": directory / "vgg16.pth"}
    torch.save({f"features.{k}": v for k, v in alex.items()}, files["alexnet"])
    torch.save(vgg, files["vgg16"])
    for net, chans in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        files[f"lpips_{net}"] = directory / f"lpips_{net}.pth"
        torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for k, c in enumerate(chans)},
                   files[f"lpips_{net}"])
    files["dists"] = directory / "dists.pt"
    torch.save({"alpha": torch.rand(1, 1475, 1, 1, generator=gen), "beta": torch.rand(1, 1475, 1, 1, generator=gen)},
               files["dists"])
    files["vgg_torchvision"] = directory / "vgg16_full.pth"
    state: dict[str, torch.Tensor] = {}
    for idx, (w, b) in zip(VGG16_CONV_INDICES, vgg16_random_weights(seed=3), strict=True):
        state[f"features.{idx}.weight"], state[f"features.{idx}.bias"] = w.float(), b.float() + 0.01
    torch.save(state, files["vgg_torchvision"])
    return files


# ------------------------------------------------------------------------------------------------ tester
def images(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
    margin: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded pair ``x, y`` in ``[margin, 1 - margin]``: ``y`` is ``x`` plus clipped Gaussian noise (σ 0.2).

    Drawn in float64 on the CPU, then cast and moved: every dtype and device sees the same images.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x, y = x.clamp(margin, 1 - margin), y.clamp(margin, 1 - margin)
    return x.to(device, dtype), y.to(device, dtype)


def assert_rounding_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, loose: bool = False
) -> None:
    """``actual == expected`` up to the rounding of ``dtype`` computations (``loose``: across devices)."""
    if dtype == torch.float64:
        rtol, atol = 1e-9, 1e-12
    else:
        rtol, atol = (1e-4 if loose else 2e-5), 1e-6
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


class MetricTester:
    """Runs the harness checks of one :class:`MetricCase` on one device (each ``check_*`` asserts)."""

    def __init__(self, case: MetricCase, device: str = "cpu", weights: Mapping[str, Path] | None = None) -> None:
        self.case = case
        self.spec = get_spec(case.name)
        self.device = device
        self.weights = dict(weights or {})

    # ----------------------------------------------------------------------------------------- helpers
    def assert_close(self, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                     loose: bool = False) -> None:
        """:func:`assert_rounding_close` at the precision the metric computes in for ``dtype`` inputs: a case
        with ``out_dtype`` (the deep trunks and SSIM run in float32 whatever the input) to that dtype's rounding."""
        assert_rounding_close(actual, expected, self.expected_dtype(dtype), loose)

    def options(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        """The case's options (or ``options``) with weight-file placeholders resolved to paths."""
        opts = dict(self.case.options if options is None else options)
        for key, value in opts.items():
            if isinstance(value, WeightFile):
                if value not in self.weights:
                    raise KeyError(f"{self.case.name}: no weight file {value!r} (pass weights=write_weight_files())")
                opts[key] = str(self.weights[value])
        return opts

    def metric(self, options: Mapping[str, object] | None = None) -> Metric:
        return get_metric(self.case.name, **self.options(options))

    def inputs(self, dtype: torch.dtype = torch.float32, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        return images(self.case.shape, dtype, self.device, **kw)  # type: ignore[arg-type]

    def expected_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.case.out_dtype or dtype

    def _worse(self, value: torch.Tensor) -> torch.Tensor:
        """``True`` where ``value`` is strictly worse than the best value (more different)."""
        best = torch.tensor(self.case.best, dtype=value.dtype, device=value.device)
        return value < best if self.spec.higher_is_better else value > best

    # ------------------------------------------------------------------------------------------ checks
    def check_shape(self, dtype: torch.dtype) -> None:
        """``(N,)``, finite, in the documented dtype, on the input's device, and worse than at ``x == y``."""
        x, y = self.inputs(dtype)
        d = self.metric()(x, y)
        assert d.shape == (x.shape[0],), d.shape
        assert d.dtype == self.expected_dtype(dtype), (d.dtype, dtype)
        assert d.device == x.device
        assert bool(torch.isfinite(d).all()), d
        assert bool(self._worse(d).all()), f"{self.case.name}: distinct images not worse than identical: {d}"

    def check_identity(self, dtype: torch.dtype) -> None:
        """``d(x, x)`` is the best value: 0 for a distance, the top score for a similarity."""
        x, _ = self.inputs(dtype)
        d = self.metric()(x, x.clone())
        best = torch.full_like(d, self.case.best)
        torch.testing.assert_close(d, best, rtol=0, atol=1e-12 if d.dtype == torch.float64 else 1e-5)

    def check_symmetry(self, dtype: torch.dtype) -> None:
        x, y = self.inputs(dtype)
        m = self.metric()
        self.assert_close(m(x, y), m(y, x), dtype)

    def check_batch(self, dtype: torch.dtype) -> None:
        """The metric of a batch equals the metric of each item alone (no cross-talk between images)."""
        x, y = self.inputs(dtype)
        m = self.metric()
        per_item = torch.cat([m(x[i : i + 1], y[i : i + 1]) for i in range(x.shape[0])])
        self.assert_close(m(x, y), per_item, dtype)
        # and an image's value does not depend on its batch-mates
        other = self.inputs(dtype, seed=1)[0]
        mixed = m(torch.cat([x[:1], other]), torch.cat([y[:1], other]))
        self.assert_close(mixed[:1], per_item[:1], dtype)

    def check_module(self, dtype: torch.dtype) -> None:
        """The module form equals the functional metric; ``reduction`` none/mean/sum == ``.mean()``/``.sum()``."""
        assert self.case.module is not None
        x, y = self.inputs(dtype)
        per = self.metric()(x, y)
        opts = self.options()
        module = self.case.module(opts, "none").to(self.device)
        assert isinstance(module, nn.Module)
        self.assert_close(module(x, y), per, dtype)
        if self.case.module_reduces:
            for reduction, expected in (("mean", per.mean()), ("sum", per.sum())):
                got = self.case.module(opts, reduction).to(self.device)(x, y)
                assert got.shape == ()
                self.assert_close(got, expected, dtype)

    def check_gradients(self, dtype: torch.dtype) -> None:
        """Finite gradients to both inputs at ``x != y`` and at ``x == y``, where they vanish (an optimum): there
        at most 1e-5 times the largest gradient at ``x != y`` (every metric gives 0 or rounding, at most 1e-6
        times it; an absolute bound would not do, since the gradients at ``x != y`` range from 3e-5 to 0.8)."""
        x0, y0 = self.inputs(dtype, margin=0.05)
        m = self.metric()
        largest: dict[str, float] = {}
        for name, (a, b) in {"x != y": (x0, y0), "x == y": (x0, x0)}.items():
            a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
            ga, gb = torch.autograd.grad(m(a, b).sum(), (a, b))
            for g in (ga, gb):
                assert g.dtype == dtype and bool(torch.isfinite(g).all()), f"{self.case.name} at {name}: {g}"
            largest[name] = max(float(ga.abs().max()), float(gb.abs().max()))
        assert largest["x != y"] > 0, f"{self.case.name}: zero gradient at x != y"
        assert largest["x == y"] <= 1e-5 * largest["x != y"], f"{self.case.name}: not 0 at x == y: {largest}"

    def check_gradcheck(self) -> None:
        """``torch.autograd.gradcheck`` in float64 on tiny inputs (fast mode), away from the [0, 1] bounds.

        On a GPU, cuDNN's convolution backward passes sum in an order that changes from run to run (the deep
        trunks' and the random CNNs' gradients on an H200 were "not reentrant" at tolerance 0): two backward
        passes may differ in the last float64 bits. ``nondet_tol`` allows 1e-12 there, far below the 1e-7 by
        which the analytical gradient must match the numerical one. The package's own distances pass at 0."""
        x, y = images(self.case.grad_shape, torch.float64, self.device, seed=2, margin=0.1)
        m = self.metric(self.case.grad_options or self.case.options)
        x.requires_grad_(True)
        y.requires_grad_(True)
        nondet_tol = 1e-12 if self.device != "cpu" and self.case.name in CONVOLUTION_NETWORKS else 0.0
        assert torch.autograd.gradcheck(m, (x, y), eps=1e-6, atol=1e-7, rtol=1e-4, fast_mode=True,
                                        nondet_tol=nondet_tol)

    def check_half(self, dtype: torch.dtype) -> None:
        """16-bit inputs: the documented result dtype, within ``half_rtol`` of float32, finite gradients."""
        x, y = self.inputs(torch.float32)
        m = self.metric()
        ref = m(x, y)
        xh, yh = x.to(dtype), y.to(dtype)
        got = m(xh, yh)
        assert got.dtype == (self.case.out_dtype or dtype), (got.dtype, dtype)
        torch.testing.assert_close(got.float(), ref.float(), rtol=self.case.half_rtol[dtype], atol=1e-6)
        xh.requires_grad_(True)
        (g,) = torch.autograd.grad(m(xh, yh).float().sum(), (xh,))
        assert g.dtype == dtype and bool(torch.isfinite(g).all())

    def check_compile(self, dtype: torch.dtype) -> None:
        """``torch.compile(metric, backend="aot_eager")`` gives the eager values (and gradients)."""
        torch._dynamo.reset()
        x, y = self.inputs(dtype)
        m = self.metric()
        compiled = torch.compile(m, backend="aot_eager")
        self.assert_close(compiled(x, y), m(x, y), dtype)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        (ge,) = torch.autograd.grad(m(xe, y).sum(), (xe,))
        (gc,) = torch.autograd.grad(compiled(xc, y).sum(), (xc,))
        self.assert_close(gc, ge, dtype)

    def check_map(self, dtype: torch.dtype) -> None:
        """The registered spatial map: ``(N, 1, H, W)``, non-negative, its pixel mean the metric's value."""
        assert self.spec.map_factory is not None
        x, y = self.inputs(dtype)
        dmap = self.spec.map_factory(**self.options())(x, y)
        assert dmap.shape == (x.shape[0], 1, *x.shape[-2:]) and dmap.dtype == dtype
        assert bool((dmap >= 0).all())
        self.assert_close(dmap.mean(dim=(1, 2, 3)), self.metric()(x, y), dtype)

    def check_device(self, dtype: torch.dtype) -> None:
        """The values on this device equal the CPU's (the same images, the same seeds)."""
        x, y = self.inputs(dtype)
        m = self.metric()
        cpu = m(x.cpu(), y.cpu())
        self.assert_close(m(x, y).cpu(), cpu, dtype, loose=True)


def exception(name: str, check: str) -> str | None:
    """The declared reason why ``check`` does not apply to metric ``name`` (``None``: it applies)."""
    return EXCEPTIONS.get((name, check))

