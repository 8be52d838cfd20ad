"""How much TF32 arithmetic on NVIDIA GPUs (Ampere and newer) changes MMD++, emulated on the CPU.

On those GPUs PyTorch runs float32 cuDNN convolutions in TF32 by default
(``torch.backends.cudnn.conv.fp32_precision == "tf32"``, the old ``torch.backends.cudnn.allow_tf32 = True``),
and float32 matrix products too after ``torch.set_float32_matmul_precision("high")``
(``torch.backends.cuda.matmul.fp32_precision = "tf32"``), which many training scripts set. TF32 rounds both
operands of each multiplication to a 10-bit mantissa and accumulates in float32. This script emulates that on
the CPU and measures what it changes in the package's float32 values and gradients.

Emulation: a :class:`~torch.utils._python_dispatch.TorchDispatchMode` (:class:`TF32Emulation`) sees every ATen
operation after autograd, so it catches ``F.conv2d`` / ``conv_transpose2d`` (``aten.convolution``), their
backward pass (``aten.convolution_backward``) and the GEMMs that ``torch.matmul``, ``@``, ``einsum``,
``F.linear``, ``bmm`` and ``baddbmm`` become (``aten.mm``, ``bmm``, ``addmm``, ``baddbmm``, ..., forward and
backward), also inside the package's own autograd functions. For each, it rounds the float32 operands
(:func:`round_tf32`: round to nearest, ties to even, of the bit pattern to 10 mantissa bits; ``--rounding
truncate`` drops the 13 low bits instead) and runs the float32 operation on them; an added bias and the
accumulator (``beta * self`` of ``addmm``) stay float32, as in cuDNN and cuBLAS. Float32 convolutions that PyTorch
gives to its own depthwise CUDA kernel rather than to cuDNN (``groups == in_channels > 1``, not transposed, the
contiguous layout the package convolves in on a GPU: ``is_depthwise`` / ``use_cudnn_depthwise`` in ATen's
``Convolution.cpp``) are left exact: SSIM's and the blur's separable filters are such convolutions. Settings:

* ``conv``: the PyTorch default on such GPUs, the cuDNN convolutions in TF32;
* ``conv+matmul``: and the matrix products (``set_float32_matmul_precision("high")``);
* ``+depthwise``: and the depthwise convolutions too, as cuDNN runs them when their input is channels-last. Eager
  calls never pass them so (``patches._conv_format``), but ``torch.compile`` of a graph without gradient may:
  inductor's layout optimisation (``GraphLowering.decide_layout_opt``) then makes every convolution's input and
  filter channels-last, and for an inference graph it is on unless grouped convolutions dominate its flops or the
  graph has 300 nodes or more per convolution. ``mmdpp(preset="loss")`` traced without gradient qualifies (402
  nodes, SSIM's four depthwise convolutions; checked on the CPU with the heuristic's GPU branch); a training
  graph of small convolutions does not, so this column's gradients are an upper bound. Only the jobs with a
  depthwise convolution are rerun.

The compiled CPU kernels (``patchmmd._native``) do not run through these PyTorch operations: the script turns
them off (``patchmmd._native.disabled()``, the same as ``PATCHMMD_NATIVE=0``) and measures the PyTorch path, which
is what runs on a GPU. Every convolution cuDNN runs is taken to run in TF32: an upper bound, cuDNN picks the
kernel. Not emulated: the GPU's own float32 summation order and fused multiply-adds (float32 rounding, the order of
the ``--fp64`` column: exact float32 against float64, for scale).

The emulation is first checked against an independent reference (operands rounded by hand in float64 with NumPy,
products summed in float64). Then, on the shipped photos (the shift check's crops of their 256 x 256 centre,
:func:`patchmmd.evaluation.shift.shift_pairs`: 252 x 252) under Gaussian noise σ 0.03, Gaussian blur σ 1 px,
JPEG quality 50 and a 1 px shift, it prints per setting the relative change of each value against exact float32
(largest and median over the 12 pairs), of the gradient ``d mmdpp / dx`` (smallest cosine similarity, largest
``|g_tf32 - g| / |g|``), and for how many photos the order of the four distortions changes.

    python benchmarks/tf32_emulation.py --threads 2 --fp64

On an NVIDIA GPU, ``--device cuda`` measures instead of emulating: the same pairs and quantities on the GPU
with TF32 off (``ieee``: ``torch.backends.cudnn.allow_tf32 = False``, matmul precision ``highest``), with
PyTorch's defaults (``default``: cuDNN convolutions may use TF32), with ``set_float32_matmul_precision("high")``
(``high``), and ``torch.compile`` of the loss preset and of its SSIM term alone, without gradient, under the
defaults (``compiled``), each against float64 on the CPU, beside float32 on the CPU (the compiled kernels on).
Only the old flags are set (``allow_tf32``, ``set_float32_matmul_precision``): mixing them with the
``fp32_precision`` API is an error in recent PyTorch, and inductor reads the old ones.

    python benchmarks/tf32_emulation.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import patchmmd
from patchmmd import _native
from patchmmd.data import sample_image, sample_names
from patchmmd.data.distortions import jpeg
from patchmmd.evaluation.shift import shift_pairs

aten = torch.ops.aten

#: The settings, each ``(conv, matmul, depthwise)``: what runs in TF32.
SETTINGS: dict[str, tuple[bool, bool, bool]] = {
    "conv": (True, False, False),
    "conv+matmul": (True, True, False),
    "+depthwise": (True, True, True),
}

#: GEMMs cuBLAS runs in TF32 under ``set_float32_matmul_precision("high")``: the positions of their two matrices.
GEMMS: dict[Any, tuple[int, int]] = {
    aten.mm: (0, 1), aten.bmm: (0, 1),
    aten.addmm: (1, 2), aten.addmm_: (1, 2), aten.baddbmm: (1, 2), aten.baddbmm_: (1, 2),
    aten.addbmm: (1, 2), aten.addbmm_: (1, 2), aten._addmm_activation: (1, 2),
}

ROUNDINGS = ("nearest", "truncate")

#: The key of :attr:`TF32Emulation.counts` for the depthwise convolutions (forward or backward) left exact.
EXACT_DEPTHWISE = "depthwise (exact)"


def round_tf32(t: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """The TF32 value of each float32 element, as float32: the mantissa rounded to its 10 high bits, to nearest
    with ties to even (``"nearest"``) or towards zero (``"truncate"``). Infinities and NaNs are kept; a value beyond
    TF32's largest rounds to infinity. Other dtypes are returned unchanged.

    Example:
        >>> round_tf32(torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 0.3])).tolist()
        [1.0, 1.001953125, 0.300048828125]
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if t.dtype != torch.float32:
        return t
    bits = t.view(torch.int32)
    sign = bits & torch.iinfo(torch.int32).min
    magnitude = bits & 0x7FFFFFFF
    special = magnitude >= 0x7F800000  # inf and NaN: kept (and kept out of the integer addition)
    magnitude = magnitude.masked_fill(special, 0)
    if rounding == "nearest":  # half of the dropped unit, less one unless the kept last bit is odd: ties to even
        magnitude = magnitude + (0x0FFF + ((magnitude >> 13) & 1))
    rounded = ((magnitude & ~0x1FFF) | sign).view(torch.float32)
    return torch.where(special, t, rounded)


def _depthwise(inp: torch.Tensor, weight: torch.Tensor, transposed: bool, groups: int) -> bool:
    """ATen's ``ConvParams::is_depthwise``: a convolution PyTorch gives to its own CUDA kernel in float32."""
    return (not transposed and inp.dim() in (4, 5) and inp.shape[1] == groups and groups > 1
            and weight.shape[0] % inp.shape[1] == 0)


class TF32Emulation(TorchDispatchMode):
    """Within it, the operations TF32 would touch run on TF32-rounded operands (see the module docstring).

    ``counts`` tallies the operations rounded, by name, and the depthwise convolutions left exact
    (:data:`EXACT_DEPTHWISE`).
    """

    def __init__(self, *, conv: bool = True, matmul: bool = False, depthwise: bool = False,
                 rounding: str = "nearest") -> None:
        super().__init__()
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.conv, self.matmul, self.depthwise, self.rounding = conv, matmul, depthwise, rounding
        self.counts: dict[str, int] = {}
        self._memo: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _round_at(self, args: tuple[Any, ...], positions: tuple[int, ...], name: str) -> tuple[Any, ...]:
        self.counts[name] = self.counts.get(name, 0) + 1
        out = list(args)
        for i in positions:
            out[i] = self._rounded(out[i])
        return tuple(out)

    def _rounded(self, t: Any) -> Any:
        """:func:`round_tf32` of ``t``, remembered for the last few tensors: the RFF path multiplies the same
        unfolded patches with one chunk of features after another."""
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            return t
        key = (t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t._version)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (t, round_tf32(t, self.rounding))  # t kept: its memory is not reused meanwhile
            if len(self._memo) > 8:
                del self._memo[next(iter(self._memo))]
        return hit[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if self.conv and packet in (aten.convolution, aten.convolution_backward):
            # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups);
            # convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
            # output_padding, groups, output_mask)
            forward = packet is aten.convolution
            inp, weight = (args[0], args[1]) if forward else (args[1], args[2])
            transposed, groups = (args[6], args[8]) if forward else (args[7], args[9])
            if self.depthwise or not _depthwise(inp, weight, transposed, groups):
                args = self._round_at(args, (0, 1) if forward else (0, 1, 2), packet.__name__)
            else:
                self.counts[EXACT_DEPTHWISE] = self.counts.get(EXACT_DEPTHWISE, 0) + 1
        elif self.matmul and packet in GEMMS:
            args = self._round_at(args, GEMMS[packet], packet.__name__)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ validation
def reference_round(a: np.ndarray, rounding: str = "nearest") -> np.ndarray:
    """:func:`round_tf32` computed independently, with NumPy: each value a multiple of its TF32 quantum
    ``2^(e - 11)`` (``|a| = m 2^e``, ``m`` in [0.5, 1); ``e`` at least -125, float32's smallest normal exponent,
    below which the quantum stays ``2^-136``), rounded in float64 (``np.round`` rounds ties to even), then cast to
    float32 (beyond its range: infinity)."""
    a64 = np.asarray(a, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        quantum = np.ldexp(1.0, np.maximum(np.frexp(a64)[1], -125) - 11)
        scaled = a64 / quantum
        kept = np.round(scaled) if rounding == "nearest" else np.trunc(scaled)
        return (kept * quantum).astype(np.float32)


def _conv_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid cross-correlation ``(N, C, H, W) x (O, C, kh, kw)`` in float64 (what ``F.conv2d`` computes)."""
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[-2:], axis=(2, 3))  # (N, C, H', W', kh, kw)
    return np.einsum("nchwij,ocij->nohw", windows, w)


def _full_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The transposed convolution with ``(C, O, k, k)`` filters, stride 1, in float64: the full correlation with the
    flipped filters (the input gradient of :func:`_conv_reference`, and ``F.conv_transpose2d``)."""
    k = w.shape[-1] - 1
    return _conv_reference(np.pad(x, ((0, 0), (0, 0), (k, k), (k, k))), w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a64 - b64).max() / np.abs(b64).max())


def validate(rounding: str) -> list[tuple[str, float, float]]:
    """Checks of the emulation against NumPy float64 on hand-rounded operands: per check, the emulated result's
    and plain float32's largest error relative to the largest reference value. Raises ``AssertionError`` if the
    rounding differs from the reference anywhere, or an emulated result is not at float32 level (1e-5) while the
    plain float32 one is off by TF32's (> 1e-4)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(200_000, generator=g) * torch.exp(torch.randn(200_000, generator=g) * 10)
    edges = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 3 * 2**-11), 2 - 2**-23, 3 * 2**-12 + 2**-23, 2**-149,
                          3 * 2**-137, 2**-126 - 2**-149, 3.4028235e38, 0.0, -0.0, math.inf, -math.inf, math.nan])
    v = torch.cat([v, edges, edges.nextafter(torch.tensor(0.0))])
    if not np.array_equal(round_tf32(v, rounding).numpy(), reference_round(v.numpy(), rounding), equal_nan=True):
        raise AssertionError("round_tf32 differs from the NumPy reference")
    rows: list[tuple[str, float, float]] = []
    x = torch.rand(2, 3, 12, 12, generator=g) * 2 - 1
    w = torch.randn(8, 3, 3, 3, generator=g) * 7
    gy = torch.randn(2, 8, 10, 10, generator=g)
    r = lambda t: reference_round(t.numpy(), rounding).astype(np.float64)  # noqa: E731  (float64 sums)
    with TF32Emulation(conv=True, matmul=True, rounding=rounding):
        conv = F.conv2d(x, w)
    rows.append(("conv2d", _rel(conv, _conv_reference(r(x), r(w))), _rel(F.conv2d(x, w), _conv_reference(r(x), r(w)))))
    # The input gradient of the convolution (its backward pass): a full correlation with the flipped filter.
    xg = x.clone().requires_grad_(True)
    with TF32Emulation(conv=True, rounding=rounding):
        (grad,) = torch.autograd.grad(F.conv2d(xg, w), xg, gy)
    (plain,) = torch.autograd.grad(F.conv2d(xg, w), xg, gy)
    ref = _full_reference(r(gy), r(w))
    rows.append(("conv2d backward (input)", _rel(grad, ref), _rel(plain, ref)))
    # conv_transpose2d with stride 2: the full correlation of the zero-stuffed input with the flipped filters.
    t, wt = torch.rand(1, 4, 5, 5, generator=g) * 3, torch.randn(4, 2, 3, 3, generator=g)
    with TF32Emulation(conv=True, rounding=rounding):
        out = F.conv_transpose2d(t, wt, stride=2)
    stuffed = np.zeros((1, 4, 9, 9))
    stuffed[..., ::2, ::2] = r(t)
    ref = _full_reference(stuffed, r(wt))
    rows.append(("conv_transpose2d", _rel(out, ref), _rel(F.conv_transpose2d(t, wt, stride=2), ref)))
    a, b = torch.randn(7, 64, generator=g), torch.randn(3, 64, 9, generator=g) * 100
    with TF32Emulation(conv=False, matmul=True, rounding=rounding):
        prod = a @ b
    ref = np.einsum("ik,bkj->bij", r(a), r(b))
    rows.append(("matmul (bmm)", _rel(prod, ref), _rel(a @ b, ref)))
    lin_w, bias = torch.randn(5, 64, generator=g), torch.randn(5, generator=g)
    with TF32Emulation(conv=False, matmul=True, rounding=rounding):
        lin = F.linear(a, lin_w, bias)
    ref = r(a) @ r(lin_w).T + bias.double().numpy()
    rows.append(("linear (addmm)", _rel(lin, ref), _rel(F.linear(a, lin_w, bias), ref)))
    # A depthwise convolution stays exact unless asked (PyTorch's own CUDA kernel runs it).
    taps = torch.randn(3, 1, 1, 5, generator=g)
    with TF32Emulation(conv=True, matmul=True, rounding=rounding):
        dw = F.conv2d(x, taps, groups=3)
    if not torch.equal(dw, F.conv2d(x, taps, groups=3)):
        raise AssertionError("a depthwise convolution was rounded without depthwise=True")
    with TF32Emulation(conv=True, depthwise=True, rounding=rounding):
        dw = F.conv2d(x, taps, groups=3)
    ref = np.concatenate([_conv_reference(r(x)[:, i : i + 1], r(taps)[i : i + 1]) for i in range(3)], axis=1)
    rows.append(("depthwise conv2d", _rel(dw, ref), _rel(F.conv2d(x, taps, groups=3), ref)))
    for name, emulated, plain_err in rows:
        if not (emulated < 1e-5 and plain_err > 1e-4):
            raise AssertionError(f"{name}: emulated error {emulated:.2e}, plain float32 error {plain_err:.2e}")
    return rows


# ------------------------------------------------------------------------------------------------ measurement
def photo_pairs() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """References and distorted copies ``(12, 3, 252, 252)`` and labels ``photo/distortion``."""
    refs, others, labels = [], [], []
    for i, name in enumerate(sample_names()):
        img = sample_image(name)
        left = (img.shape[-1] - 256) // 2
        pairs = shift_pairs(img[:, :, left : left + 256], seed=i)
        ref = pairs["noise"][0]
        for kind, other in (("noise 0.03", pairs["noise"][1]), ("blur 1px", pairs["blur"][1]),
                            ("jpeg q50", jpeg(ref, 50)), ("shift 1px", pairs["shift-1px"][1])):
            refs.append(ref)
            others.append(other)
            labels.append(f"{name}/{kind}")
    return torch.stack(refs), torch.stack(others), labels


def _with_gradient(preset: str) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """``mmdpp`` of a preset and its gradient ``d mmdpp / dx``, from one pass."""

    def run(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        xg = x.clone().requires_grad_(True)
        value = patchmmd.mmdpp(xg, y, preset=preset)
        (grad,) = torch.autograd.grad(value.sum(), xg)
        return {f"mmdpp {preset}": value.detach(), f"grad {preset}": grad}

    return run


#: What is measured: per job, ``(x, y) -> {name: (N, ...) tensor}``. The map's mean adds the spreading of the
#: per-window values onto the pixels (transposed convolutions); the SSIM term alone is the loss preset's.
JOBS: dict[str, Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]] = {
    "mmdpp default + gradient": _with_gradient("default"),
    "mmdpp loss + gradient": _with_gradient("loss"),
    "distance_map default": lambda x, y: {
        "distance_map default, mean": patchmmd.distance_map(x, y).mean(dim=(1, 2, 3))},
    "SSIM term alone": lambda x, y: {"loss: SSIM term alone": patchmmd.mmdpp(
        x, y, preset="loss", weight_l2=0.0, weight_local=0.0, weight_mmd=0.0)},
}


def evaluate(x: torch.Tensor, y: torch.Tensor, mode: TF32Emulation | None, jobs: list[str] | None = None,
             kernels: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
    """The values and gradients of ``jobs`` (default all of :data:`JOBS`), under ``mode`` if given, on the PyTorch
    path (the compiled CPU kernels turned off, unless ``kernels``: as a user gets float32 on the CPU), and per job
    the operations ``mode`` counted."""
    values: dict[str, torch.Tensor] = {}
    counts: dict[str, dict[str, int]] = {}
    path = contextlib.nullcontext() if kernels else _native.disabled()
    with path, (mode if mode is not None else contextlib.nullcontext()):
        for job in jobs or list(JOBS):
            before = dict(mode.counts) if mode is not None else {}
            values.update(JOBS[job](x, y))
            after = mode.counts if mode is not None else {}
            counts[job] = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    return values, counts


def _ranking_changes(exact: torch.Tensor, other: torch.Tensor, photos: int) -> int:
    """How many photos' order of their four distortions differs."""
    e, o = exact.view(photos, -1), other.view(photos, -1)
    return sum(not torch.equal(e[i].argsort(), o[i].argsort()) for i in range(photos))


#: A cell of a value the setting computes as the one before it (no depthwise convolution to round).
SAME = "as before"


def _fmt(v: float) -> str:
    return f"{v:.1e}"


def report(columns: dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]], photos: int,
           missing: str = SAME) -> list[str]:
    """Markdown table rows: per quantity, per column ``name: (reference, results)``; ``missing`` fills the cells
    of a quantity a column did not compute."""
    names = list(next(iter(columns.values()))[0])
    lines = ["| quantity | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in (n for n in names if not n.startswith("grad")):
        cells = []
        for ref, res in columns.values():
            if name not in res:
                cells.append(missing)
                continue
            e = ref[name].double()
            rel = ((res[name].double() - e).abs() / e.abs()).tolist()
            cells.append(f"{_fmt(max(rel))} ({_fmt(statistics.median(rel))})")
        lines.append(f"| {name}: rel. change, max (median) | " + " | ".join(cells) + " |")
    for name in (n for n in names if n.startswith("grad")):
        cos_cells, rel_cells = [], []
        for ref, res in columns.values():
            if name not in res:
                cos_cells.append(missing)
                rel_cells.append(missing)
                continue
            g, h = ref[name].double().flatten(1), res[name].double().flatten(1)
            cos = F.cosine_similarity(g, h, dim=1)
            rel = (h - g).norm(dim=1) / g.norm(dim=1)
            cos_cells.append(f"{float(cos.min()):.7f}")
            rel_cells.append(f"{_fmt(float(rel.max()))} ({_fmt(float(rel.median()))})")
        lines.append(f"| {name}: cosine, min | " + " | ".join(cos_cells) + " |")
        lines.append(f"| {name}: rel. norm of difference, max (median) | " + " | ".join(rel_cells) + " |")
    for name in ("mmdpp default", "mmdpp loss"):
        cells = [f"{_ranking_changes(ref[name], res[name], photos)} of {photos}" if name in res else missing
                 for ref, res in columns.values()]
        lines.append(f"| {name}: photos whose distortion order changes | " + " | ".join(cells) + " |")
    return lines


@contextlib.contextmanager
def cuda_precision(conv_tf32: bool, matmul: str) -> Iterator[None]:
    """cuDNN convolutions in TF32 or not, and ``torch.set_float32_matmul_precision(matmul)``, for the block."""
    old = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = conv_tf32
    torch.set_float32_matmul_precision(matmul)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


#: ``--device cuda``: per column, ``(cuDNN convolutions in TF32, matmul precision)``.
GPU_SETTINGS: dict[str, tuple[bool, str]] = {
    "ieee": (False, "highest"),
    "default": (True, "highest"),
    "high": (True, "high"),
}

#: ``--device cuda``, the ``compiled`` column: values only, compiled and run without gradient.
COMPILED_JOBS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mmdpp loss": lambda x, y: patchmmd.mmdpp(x, y, preset="loss"),
    "loss: SSIM term alone": lambda x, y: patchmmd.mmdpp(x, y, preset="loss", weight_l2=0.0, weight_local=0.0,
                                                          weight_mmd=0.0),
}


def measure_on_gpu(x: torch.Tensor, y: torch.Tensor, device: str
                   ) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The columns of ``--device cuda``: CPU float32 and each GPU setting against CPU float64."""
    truth, _ = evaluate(x.double(), y.double(), None)
    columns = {"CPU fp32": (truth, evaluate(x, y, None, kernels=True)[0])}
    xd, yd = x.to(device), y.to(device)
    for setting, (conv_tf32, matmul) in GPU_SETTINGS.items():
        with cuda_precision(conv_tf32, matmul):
            values = {k: v.cpu() for k, v in evaluate(xd, yd, None)[0].items()}
        columns[f"GPU {setting}"] = (truth, values)
    compiled: dict[str, torch.Tensor] = {}
    with cuda_precision(True, "highest"), torch.no_grad():
        for name, fn in COMPILED_JOBS.items():
            try:
                compiled[name] = torch.compile(fn, fullgraph=True)(xd, yd).cpu()
            except Exception as e:  # reported, not fatal: the other columns stand
                print(f"compiled {name}: {type(e).__name__}: {e}".splitlines()[0])
    columns["GPU compiled, no grad"] = (truth, compiled)
    return columns


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    p.add_argument("--rounding", choices=ROUNDINGS, default="nearest",
                   help="how an operand becomes TF32: round to nearest even (default), or drop the low bits")
    p.add_argument("--fp64", action="store_true", help="also compare exact float32 with float64 (slower)")
    p.add_argument("--device", default="cpu",
                   help="cpu (the default): emulate TF32; cuda: measure it on the GPU (see the module's docstring)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.device != "cpu":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: no CUDA device")
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(args.device)}, {args.threads} CPU threads")
        y, x, labels = photo_pairs()
        print(f"{len(labels)} pairs of {tuple(x.shape[1:])} (x: distorted, y: reference); against float64 on the CPU:")
        print("\n".join(report(measure_on_gpu(x, y, args.device), len(sample_names()), missing="-")))
        print(f"\n({time.perf_counter() - start:.0f} s)")
        return
    print(f"torch {torch.__version__}, {args.threads} threads, rounding: {args.rounding}")
    print("emulation against NumPy float64 on hand-rounded operands (largest error / largest value):")
    for name, emulated, plain in validate(args.rounding):
        print(f"  {name:24s} emulated TF32 {emulated:.1e}   plain float32 {plain:.1e}")
    with _native.disabled():
        print(f"compiled kernels: {_native.status()}")
    y, x, labels = photo_pairs()
    print(f"{len(labels)} pairs of {tuple(x.shape[1:])}: {', '.join(labels[:4])}, ... (x: distorted, y: reference)")
    exact, _ = evaluate(x, y, None)
    columns = {}
    if args.fp64:  # float32's own rounding, for scale
        columns["fp32 vs fp64"] = (evaluate(x.double(), y.double(), None)[0], exact)
    ops: dict[str, dict[str, dict[str, int]]] = {}
    for setting, (conv, matmul, depthwise) in SETTINGS.items():
        mode = TF32Emulation(conv=conv, matmul=matmul, depthwise=depthwise, rounding=args.rounding)
        # +depthwise differs from conv+matmul only where a depthwise convolution runs
        jobs = [j for j, c in ops["conv+matmul"].items() if EXACT_DEPTHWISE in c] if depthwise else None
        values, ops[setting] = evaluate(x, y, mode, jobs)
        columns[setting] = (exact, values)
    print("\nOperations per job (forward and backward) in TF32, and the depthwise convolutions left exact:")
    for setting, per_job in ops.items():
        for job, c in per_job.items():
            print(f"  {setting:12s} {job:26s} " + (", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"))
    print(f"\nAgainst exact float32{' (the first column: exact float32 against float64)' if args.fp64 else ''}:")
    print("\n".join(report(columns, len(sample_names()))))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
