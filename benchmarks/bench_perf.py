"""Speed and memory of MMD++ against LPIPS (AlexNet / VGG16 trunks), SSIM and the exact estimator.

All methods run in one process, interleaved round by round (so load changes hit every method alike), in the
listed order in even rounds and the reverse order in odd ones (so no method always follows the same one), and
each cell is the median over the rounds. Times are relative to LPIPS-alex in the same configuration; the spread
is the lowest and highest of the per-round ratios to LPIPS-alex (``ratio_min``, ``ratio_max``).

    python benchmarks/bench_perf.py                       # 64²x16, 256²x4, 1024²x1, forward and fwd+bwd
    python benchmarks/bench_perf.py --threads 1 --out benchmarks/results/cpu_1thread.csv --md docs/x.md
    python benchmarks/bench_perf.py --scaling             # default distance, 256² .. 2048², fitted exponent
    python benchmarks/bench_perf.py --scaling-thp         # the same with PyTorch's huge-page allocation off / on
    python benchmarks/bench_perf.py --memory              # peak memory per method (one subprocess each; Linux)
    python benchmarks/bench_perf.py --memory --unrelated  # the same for unrelated image pairs
    python benchmarks/bench_perf.py --accuracy            # fast path vs exact estimator on distorted photos
    python benchmarks/bench_perf.py --device cuda         # on a GPU (peak memory from the CUDA allocator)
    python benchmarks/bench_perf.py --kernels             # thread scaling of the compiled kernels' work

LPIPS: the trunks (torchvision's AlexNet / VGG16 ``features``) and the five 1x1 heads are defined here with
random weights: the time does not depend on the weight values. As in the ``lpips`` package, both images go
through the trunk at every call, one after the other, and the backward pass runs through ``x``'s trunk only
(earlier versions of this script ran one trunk pass on the concatenated pair, whose backward pass also ran
through ``y``'s half: LPIPS was slower than the package, and ratios to it too small; docs/performance.md says
which tables were measured so). ``mmdpp-default-torch`` is the default distance without the compiled CPU
kernels (:mod:`patchmmd._native`), to show what they bring. ``--compiled`` adds ``torch.compile`` (inductor)
of the default distance with the kernels (``mmdpp-default-compiled``) and on its PyTorch path
(``mmdpp-default-compiled-torch``); the warm-up round includes the compilation.

    python benchmarks/bench_perf.py --threads 1 --compiled --configs 64x16,256x4 --modes forward+backward \
        --only mmdpp-default,mmdpp-default-torch,mmdpp-default-compiled,mmdpp-default-compiled-torch
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import patchmmd
from patchmmd import _native
from patchmmd.core.mmdpp import precompute_target

# ------------------------------------------------------------------------------------------------- LPIPS
ALEX = [(3, 64, 11, 4, 2), "R", "M", (64, 192, 5, 1, 2), "R", "M", (192, 384, 3, 1, 1), "R",
        (384, 256, 3, 1, 1), "R", (256, 256, 3, 1, 1), "R"]
VGG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class LPIPSArch(nn.Module):
    """LPIPS v0.1's computation on a random AlexNet or VGG16 trunk: unit-normalised features of five layers,
    squared differences, 1x1 heads, spatial means."""

    def __init__(self, net: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        taps: list[int] = []
        chans: list[int] = []
        if net == "alex":
            for spec in ALEX:
                if spec == "R":
                    layers.append(nn.ReLU(inplace=True))  # as torchvision's trunks, which lpips uses
                    taps.append(len(layers))
                    chans.append(layers[-2].out_channels)  # type: ignore[union-attr]
                elif spec == "M":
                    layers.append(nn.MaxPool2d(3, 2))
                else:
                    cin, cout, k, s, p = spec  # type: ignore[misc]
                    layers.append(nn.Conv2d(cin, cout, k, s, p))
        else:
            cin = 3
            for i, v in enumerate(VGG):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                    continue
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
                if i + 1 == len(VGG) or VGG[i + 1] == "M":
                    taps.append(len(layers))
                    chans.append(cin)
        self.trunk = nn.Sequential(*layers)
        self.taps = taps
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in chans)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if len(out) < len(self.taps) and i + 1 == self.taps[len(out)]:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # As lpips.LPIPS.forward: each image through the trunk on its own, so a target without gradient costs a
        # forward pass only (one trunk pass on the concatenated pair would also backpropagate through y's half).
        total = x.new_zeros(x.shape[0])
        for head, fx, fy in zip(self.heads, self._features(x), self._features(y), strict=True):
            total = total + head((fx - fy).pow(2)).mean((1, 2, 3))
        return total


# ----------------------------------------------------------------------------------------------- methods
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: Also time ``torch.compile`` (inductor) of the default distance (``--compiled``).
COMPILED = [False]


def _compiled(native: bool) -> Metric:
    """``torch.compile`` (inductor) of the default distance, with the compiled CPU kernels in the graph as
    operators (``native``) or on its PyTorch path (``_native.disabled()``, which the graph is guarded on)."""
    fn = torch.compile(patchmmd.MMDPP(reduction="none"), dynamic=False)
    if native:
        return fn

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with _native.disabled():
            return fn(x, y)

    return run


def methods(device: str, size: int, with_exact: bool) -> dict[str, Metric]:
    alex, vgg = LPIPSArch("alex").to(device), LPIPSArch("vgg").to(device)
    out: dict[str, Metric] = {
        "lpips-alex": alex,
        "lpips-vgg": vgg,
        "mmdpp-default": lambda x, y: patchmmd.mmdpp(x, y),
        "mmdpp-default-256f": lambda x, y: patchmmd.mmdpp(x, y, num_features=256),
        "mmdpp-default-torch": _torch_path,
        "mmdpp-default-target": _with_target("default"),
        "mmdpp-followup": lambda x, y: patchmmd.mmdpp(x, y, preset="followup"),
        "mmdpp-pixelwise": lambda x, y: patchmmd.mmdpp(x, y, preset="pixelwise"),
        "mmdpp-loss": lambda x, y: patchmmd.mmdpp(x, y, preset="loss"),
        "mmdpp-loss-target": _with_target("loss"),
    }
    try:
        import pytorch_msssim

        out["ssim"] = lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False)
    except ImportError:
        pass
    if COMPILED[0]:
        out["mmdpp-default-compiled"] = _compiled(True)
        out["mmdpp-default-compiled-torch"] = _compiled(False)
    if with_exact:
        out["exact-default"] = lambda x, y: patchmmd.mmdpp(x, y, estimator="exact")
    return out


#: Per preset, the last target image and its precomputed features (one entry per preset, so that two
#: ``-target`` methods interleaved in one round do not evict each other's and time the precomputation).
_TARGETS: dict[str, tuple[torch.Tensor, object]] = {}


def _torch_path(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default distance on its PyTorch path (without the compiled CPU kernels), for comparison."""
    with _native.disabled():
        return patchmmd.mmdpp(x, y)


def _with_target(preset: str) -> Metric:
    """A training loop's use: the fixed target's features are computed once, outside the timed step."""

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        held = _TARGETS.get(preset)
        if held is None or held[0] is not y:  # the tensor itself, not its id (ids are reused once freed)
            held = _TARGETS[preset] = (y, precompute_target(y, preset=preset))
        return patchmmd.mmdpp(x, held[1])  # type: ignore[arg-type]

    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(fn: Callable, x: torch.Tensor, y: torch.Tensor, mode: str, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            fn(x, y)
    else:
        xg = x.detach().requires_grad_(True)
        fn(xg, y).sum().backward()
    _sync(device)
    return time.perf_counter() - t0


#: ``--unrelated``: ``y`` independent of ``x`` (the aligned terms' worst case: any offset may win anywhere).
UNRELATED = [False]


def images(n: int, size: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    if UNRELATED[0]:
        y = torch.rand(n, 3, size, size, generator=g)
    else:
        y = (x + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return x.to(device), y.to(device)


def bench(configs: list[tuple[int, int]], modes: list[str], repeats: int, device: str, exact_max: int,
          only: list[str] | None) -> list[dict[str, object]]:
    rows = []
    for size, n in configs:
        fns = methods(device, size, size <= exact_max)
        if only:
            fns = {k: v for k, v in fns.items() if k in only or k == "lpips-alex"}
        x, y = images(n, size, device)
        for mode in modes:
            times: dict[str, list[float]] = {k: [] for k in fns}
            for fn in fns.values():  # warm-up (feature draws, caches, allocator)
                run_once(fn, x, y, mode, device)
            for r in range(repeats):
                # Reversed every other round: what runs just before a method (a parallel operation's spinning
                # threads, a large buffer freed) changes its time, and a fixed order would bias the same ratios.
                for name, fn in (list(fns.items()) if r % 2 == 0 else reversed(fns.items())):
                    times[name].append(run_once(fn, x, y, mode, device))
            ref = statistics.median(times["lpips-alex"])
            for name, ts in times.items():
                med = statistics.median(ts)
                ratios = [t / t0 for t, t0 in zip(ts, times["lpips-alex"], strict=True)]  # same round
                rows.append(dict(device=device, threads=torch.get_num_threads(), size=size, batch=n, mode=mode,
                                 method=name, median_s=med, vs_lpips_alex=med / ref, repeats=repeats,
                                 ratio_min=min(ratios), ratio_max=max(ratios)))
                print(f"{size:5d}² x{n:<3d} {mode:16s} {name:28s} {med * 1e3:10.1f} ms  {med / ref:7.3f}x lpips-alex "
                      f"(rounds {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return rows


def scaling(sizes: list[int], repeats: int, device: str) -> list[dict[str, object]]:
    """Default distance fwd+bwd at batch 1, sizes interleaved; log-log fit of time against pixel count."""
    data = {s: images(1, s, device) for s in sizes}
    fn = lambda x, y: patchmmd.mmdpp(x, y)  # noqa: E731
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for s in sizes:
        run_once(fn, *data[s], "forward+backward", device)
    for r in range(repeats):
        for s in (sizes if r % 2 == 0 else sizes[::-1]):  # odd rounds in the reverse order (as in bench)
            times[s].append(run_once(fn, *data[s], "forward+backward", device))
    med = {s: statistics.median(v) for s, v in times.items()}
    slope = _exponent(sizes, [med[s] for s in sizes])
    rows = []
    for s in sizes:
        rows.append(dict(device=device, threads=torch.get_num_threads(), size=s, batch=1, mode="forward+backward",
                         method="mmdpp-default", median_s=med[s], exponent=slope, repeats=repeats))
        print(f"{s:5d}²  {med[s] * 1e3:10.1f} ms", flush=True)
    print(f"fitted exponent of time vs pixel count: {slope:.3f}")
    return rows


_MEM_CHILD = """
import json, sys, torch
sys.path.insert(0, {bench_dir!r})
torch.set_num_threads({threads})
import bench_perf as b
b.UNRELATED[0] = {unrelated}
b.COMPILED[0] = {compiled}
fn = b.methods("cpu", {size}, True)[{method!r}]
x, y = b.images({n}, {size}, "cpu")
b.run_once(fn, x, y, {mode!r}, "cpu")  # warm-up: feature draws, compiled kernels, allocator
base = b.rss_mb("VmRSS")
try:  # reset the peak-RSS counter (VmHWM) to the current RSS, so that the peak is this call's alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError as e:  # the process's peak since it started (the warm-up's, the models' building) is not this
    sys.exit(f"the peak RSS of one call is read from Linux's /proc/self: cannot reset it here ({{e}})")
b.run_once(fn, x, y, {mode!r}, "cpu")
peak = b.rss_mb("VmHWM")
if base is None or peak is None:
    sys.exit("the peak RSS of one call is read from Linux's /proc/self/status (VmRSS, VmHWM): not readable here")
print(json.dumps(dict(peak_mb=peak, above_inputs_mb=peak - base)))
"""


_SCALING_CHILD = """
import json, sys, torch
sys.path.insert(0, {bench_dir!r})
torch.set_num_threads({threads})
import bench_perf as b
b.UNRELATED[0] = {unrelated}
rows = b.scaling({sizes!r}, {repeats}, "cpu")
print(json.dumps(dict(times={{r["size"]: r["median_s"] for r in rows}}, peak_mb=b.rss_mb("VmHWM"))))
"""


def _run_child(code: str, what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter and return the JSON object of its last line; a failing child ends the
    script with its error (the last lines of its stderr), not a bare ``CalledProcessError``."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        why = "\n".join(out.stderr.strip().splitlines()[-8:]) or (
            f"killed by signal {-out.returncode} (out of memory?)" if out.returncode < 0 else "no error output")
        raise SystemExit(f"bench_perf.py: the subprocess for {what} failed (exit status {out.returncode}):\n{why}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _exponent(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log time against log pixel count."""
    lx, ly = [math.log(s * s) for s in sizes], [math.log(t) for t in times]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def _mb(value: float | None) -> str:
    return f"{value:.0f} MB" if value is not None else "not readable"


def scaling_thp(sizes: list[int], rounds: int, repeats: int) -> list[dict[str, object]]:
    """``--scaling`` with PyTorch's transparent-huge-page allocation off and on (``THP_MEM_ALLOC_ENABLE``, read
    by PyTorch's CPU allocator, so one subprocess per setting), the two settings alternating for ``rounds``
    rounds (off first in even rounds, on first in odd ones); per size the median over the rounds of each child's
    median of ``repeats`` calls, its ratio to THP off and the lowest and highest ratio of one round's pair."""
    settings = ("0", "1")
    got: dict[str, list[dict[str, Any]]] = {v: [] for v in settings}
    code = _SCALING_CHILD.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), sizes=sizes,
                                 repeats=repeats, threads=torch.get_num_threads(), unrelated=UNRELATED[0])
    for r in range(rounds):
        for v in (settings if r % 2 == 0 else settings[::-1]):
            res = _run_child(code, f"--scaling-thp THP_MEM_ALLOC_ENABLE={v}",
                             env={**os.environ, "THP_MEM_ALLOC_ENABLE": v})
            got[v].append(res)
            print(f"round {r + 1} THP_MEM_ALLOC_ENABLE={v}: "
                  + ", ".join(f"{s}² {res['times'][str(s)] * 1e3:.1f} ms" for s in sizes)
                  + f", peak RSS {_mb(res['peak_mb'])}", flush=True)
    rows = []
    med = {v: [statistics.median(g["times"][str(s)] for g in got[v]) for s in sizes] for v in settings}
    for v in settings:
        slope = _exponent(sizes, med[v])
        peaks = [g["peak_mb"] for g in got[v]]
        peak = None if None in peaks else max(peaks)  # not readable (not Linux): no figure rather than 0
        for s, t, t0 in zip(sizes, med[v], med["0"], strict=True):
            ratios = [g["times"][str(s)] / g0["times"][str(s)] for g, g0 in zip(got[v], got["0"], strict=True)]
            rows.append(dict(device="cpu", threads=torch.get_num_threads(), size=s, batch=1, mode="forward+backward",
                             method="mmdpp-default", thp=v, median_s=t, vs_thp_off=t / t0, ratio_min=min(ratios),
                             ratio_max=max(ratios), exponent=slope, peak_mb=peak, rounds=rounds, repeats=repeats))
        print(f"THP_MEM_ALLOC_ENABLE={v}: " + ", ".join(f"{s}² {t * 1e3:.1f} ms" for s, t in zip(sizes, med[v],
                                                                                               strict=True))
              + f"; exponent {slope:.3f}; largest peak RSS {_mb(peak)}", flush=True)
    return rows


def kernel_scaling(configs: list[tuple[int, int]], repeats: int, threads: int) -> list[dict[str, object]]:
    """Thread scaling of what the compiled CPU kernels run, in the default distance: its MMD term forward+backward
    (``rff_sums`` for both images, ``rff_sums_grad``) and its aligned terms without gradient (the offset
    scan ``aligned_scan``), each on 1 and on ``threads`` threads, interleaved, medians; the speedup's spread is the
    lowest and highest ratio of one round's pair."""
    parts: dict[str, tuple[str, Callable]] = {
        "mmd-term": ("forward+backward", lambda x, y: patchmmd.mmdpp(x, y, weight_l2=0.0, weight_local=0.0)),
        "aligned-scan": ("forward", lambda x, y: patchmmd.mmdpp(x, y, weight_mmd=0.0)),
    }
    before = torch.get_num_threads()
    rows: list[dict[str, object]] = []
    try:
        for size, n in configs:
            x, y = images(n, size, "cpu")
            times: dict[tuple[str, int], list[float]] = {(p, t): [] for p in parts for t in (1, threads)}
            for r in range(repeats + 1):  # round 0 warms up; odd rounds in the reverse order (as in bench)
                for (name, t), ts in (list(times.items()) if r % 2 == 0 else reversed(times.items())):
                    torch.set_num_threads(t)
                    mode, fn = parts[name]
                    dt = 1000 * run_once(fn, x, y, mode, "cpu")
                    if r:
                        ts.append(dt)
            for name in parts:
                one, many = statistics.median(times[(name, 1)]), statistics.median(times[(name, threads)])
                speedups = [a / b for a, b in zip(times[(name, 1)], times[(name, threads)], strict=True)]  # same round
                rows.append(dict(size=size, batch=n, part=name, mode=parts[name][0], ms_1_thread=one,
                                 threads=threads, ms_threads=many, speedup=one / many, speedup_min=min(speedups),
                                 speedup_max=max(speedups), repeats=repeats))
                print(f"{size:>5}² x{n:<3} {name:14s} 1 thread {one:8.2f} ms   {threads} threads {many:8.2f} ms   "
                      f"x{one / many:.2f}", flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


def rss_mb(field: str) -> float | None:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident memory of this process in MB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory(configs: list[tuple[int, int]], modes: list[str], device: str, exact_max: int,
           only: list[str] | None) -> list[dict[str, object]]:
    rows = []
    for size, n in configs:
        names = list(methods(device, size, size <= exact_max))
        if only:
            names = [k for k in names if k in only or k == "lpips-alex"]
        for mode in modes:
            for name in names:
                if device.startswith("cuda"):
                    # the targets an earlier method precomputed (other images, another preset) would stay on the GPU
                    # and count in this one's peak: each measurement starts without them, as in a fresh CPU child
                    _TARGETS.clear()
                    fn = methods(device, size, True)[name]
                    x, y = images(n, size, device)
                    run_once(fn, x, y, mode, device)  # warm-up, as in the CPU child (feature draws, a target)
                    dev = torch.device(device)  # cuda:N: that GPU's counters, not the current one's
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = torch.cuda.memory_allocated(dev)
                    run_once(fn, x, y, mode, device)
                    peak = torch.cuda.max_memory_allocated(dev)
                    res = dict(peak_mb=peak / 2**20, above_inputs_mb=(peak - base) / 2**20)
                else:
                    code = _MEM_CHILD.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), size=size, n=n,
                                             method=name, mode=mode, threads=torch.get_num_threads(),
                                             unrelated=UNRELATED[0], compiled=COMPILED[0])
                    res = _run_child(code, f"--memory {name} {size}x{n} {mode}")
                rows.append(dict(device=device, threads=torch.get_num_threads(), size=size, batch=n, mode=mode,
                                 method=name, peak_mb=res["peak_mb"], above_inputs_mb=res["above_inputs_mb"]))
                print(f"{size:5d}² x{n:<3d} {mode:16s} {name:22s} peak {res['peak_mb']:8.1f} MB "
                      f"(+{res['above_inputs_mb']:.1f} MB during the call)", flush=True)
    return rows


def accuracy(feature_counts: list[int]) -> list[dict[str, object]]:
    """The default distance's fast RFF path against the exact estimator on :func:`distortion_suite`
    (48 distorted 64x64 photo crops): Spearman correlation and relative errors, for float64 (PyTorch path)
    and float32 (the compiled kernels on the CPU), with the default and each of ``feature_counts`` features."""
    from scipy.stats import spearmanr

    from patchmmd.core.mmdpp import PRESETS
    from patchmmd.data import distortion_suite

    ref, dist, _ = distortion_suite()
    exact = patchmmd.mmdpp(ref, dist, estimator="exact")
    rows = []
    default = PRESETS["default"].num_features
    counts = [default, *(c for c in feature_counts if c != default)]
    for count, dtype in itertools.product(counts, (torch.float64, torch.float32)):
        fast = patchmmd.mmdpp(ref.to(dtype), dist.to(dtype), num_features=count).double()
        rel = (fast - exact).abs() / exact
        rows.append(dict(num_features=count, dtype=str(dtype).replace("torch.", ""), pairs=len(ref),
                         spearman=float(spearmanr(fast.numpy(), exact.numpy()).statistic),
                         median_rel_error=float(rel.median()), max_rel_error=float(rel.max())))
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v: object) -> str:  # a table to read: 4 significant digits (the CSV keeps every digit)
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


MODES = ("forward", "forward+backward")


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``SIZExBATCH,...`` (``64x16,256x4``) into (size, batch) pairs; ValueError naming the bad item."""
    configs = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            size, batch = (int(v) for v in parts)
        except ValueError:
            raise ValueError(f"--configs: {item!r} is not SIZExBATCH (two positive integers, e.g. 256x4)") from None
        if size < 1 or batch < 1:
            raise ValueError(f"--configs: {item!r} is not SIZExBATCH (two positive integers, e.g. 256x4)")
        configs.append((size, batch))
    return configs


def parse_modes(text: str) -> list[str]:
    """``forward``, ``forward+backward`` or both, comma-separated; ValueError for anything else (``run_once``
    would time any other word as forward+backward under that label)."""
    modes = [m.strip() for m in text.split(",")]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"--modes: unknown mode(s) {', '.join(map(repr, bad))}; choose from {', '.join(MODES)}")
    return modes


def parse_sizes(text: str, option: str, at_least: int = 1) -> list[int]:
    """``256,512,...`` into positive integers, at least ``at_least`` distinct ones; ValueError naming ``option``."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) < at_least:
        raise ValueError(f"{option}: {text!r} is not {at_least} or more distinct positive integers, comma-separated")
    return sizes


def check_only(only: list[str], available: list[str]) -> None:
    """ValueError naming each ``--only`` method that this run does not have (a typo would otherwise leave just
    ``lpips-alex`` timed, silently)."""
    problems = []
    for name in only:
        if name in available:
            continue
        if name in ("mmdpp-default-compiled", "mmdpp-default-compiled-torch"):
            problems.append(f"{name!r} needs --compiled")
        elif name == "ssim":
            problems.append("'ssim' needs the pytorch_msssim package, which is not installed")
        else:
            problems.append(f"unknown method {name!r}")
    if problems:
        raise ValueError(f"--only: {'; '.join(problems)} (methods: {', '.join(available)})")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--configs", default=None, help="SIZExBATCH,... (square images; default 64x16,256x4,1024x1)")
    p.add_argument("--modes", default=None, help="forward, forward+backward or both (the default)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--exact-max", type=int, default=None,
                   help="largest size at which the exact estimator runs (default 64)")
    p.add_argument("--only", default=None, help="comma-separated method names (lpips-alex always runs)")
    p.add_argument("--scaling", action="store_true", help="time vs image size of the default distance")
    p.add_argument("--scaling-sizes", default=None, help="with --scaling: sizes (default 256,512,1024,2048)")
    p.add_argument("--scaling-thp", action="store_true",
                   help="--scaling with THP_MEM_ALLOC_ENABLE=0 and =1 alternating, one subprocess each, --repeats "
                        "rounds (3 calls per size in each)")
    p.add_argument("--memory", action="store_true", help="peak memory instead of time")
    p.add_argument("--unrelated", action="store_true",
                   help="y independent of x (default: x plus noise); the aligned terms' worst case for memory")
    p.add_argument("--kernels", action="store_true",
                   help="thread scaling (1 vs --threads, default 2) of the compiled kernels' work")
    p.add_argument("--accuracy", action="store_true", help="fast path vs exact estimator on distorted photo crops")
    p.add_argument("--accuracy-features", default=None,
                   help="with --accuracy: feature counts to compare besides the default's (default 256,512)")
    p.add_argument("--compiled", action="store_true",
                   help="add torch.compile (inductor) of the default distance, with and without the C kernels")
    p.add_argument("--out", default=None, help="CSV file")
    p.add_argument("--md", default=None, help="Markdown table file")
    return p


# which table reads which option (the timing table, the default, reads --configs, --modes and --exact-max)
_READ_BY = {
    "configs": ("timing", "--memory", "--kernels"),
    "modes": ("timing", "--memory"),
    "exact_max": ("timing", "--memory"),
    "scaling_sizes": ("--scaling", "--scaling-thp"),
    "accuracy_features": ("--accuracy",),
}


def chosen_tables(a: argparse.Namespace) -> list[str]:
    """The table flags given (``--scaling-thp`` is ``--scaling`` with the huge-page setting, so it counts once)."""
    return [flag for flag, on in (("--kernels", a.kernels), ("--accuracy", a.accuracy),
                                  ("--scaling-thp", a.scaling_thp), ("--scaling", a.scaling and not a.scaling_thp),
                                  ("--memory", a.memory)) if on]


def refuse_ignored_options(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """One table a run (the others would be dropped silently), and an option given for a table that does not read
    it is refused, not dropped silently."""
    tables = chosen_tables(a)
    if len(tables) > 1:
        p.error(f"{tables[0]} and {tables[1]} are two different tables: run them one at a time")
    table = tables[0] if tables else "timing"
    for dest, tables in _READ_BY.items():
        if getattr(a, dest) is not None and table not in tables:
            where = "the timing table (no table flag)" if tables[0] == "timing" else tables[0]
            others = ", ".join(t for t in tables[1:])
            p.error(f"--{dest.replace('_', '-')} is read by {where}{' and ' + others if others else ''}, "
                    f"not by {'the timing table' if table == 'timing' else table}")


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    a = p.parse_args(argv)
    refuse_ignored_options(p, a)
    a.configs = "64x16,256x4,1024x1" if a.configs is None else a.configs
    a.modes = "forward,forward+backward" if a.modes is None else a.modes
    a.exact_max = 64 if a.exact_max is None else a.exact_max
    a.scaling_sizes = "256,512,1024,2048" if a.scaling_sizes is None else a.scaling_sizes
    a.accuracy_features = "256,512" if a.accuracy_features is None else a.accuracy_features
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be at least 1")
    if a.kernels and a.threads == 1:
        p.error("--kernels compares 1 thread with --threads threads: give --threads 2 or more (default 2)")
    try:
        configs = parse_configs(a.configs)
        modes = parse_modes(a.modes)
        scaling_sizes = parse_sizes(a.scaling_sizes, "--scaling-sizes", at_least=2)  # a fitted exponent needs two
        feature_counts = parse_sizes(a.accuracy_features, "--accuracy-features") if a.accuracy_features else []
        only = [v.strip() for v in a.only.split(",")] if a.only else None
        if only and not (a.kernels or a.accuracy or a.scaling or a.scaling_thp):
            available = [*methods("cpu", 64, True)]
            if a.compiled:
                available += ["mmdpp-default-compiled", "mmdpp-default-compiled-torch"]
            check_only(only, available)
    except ValueError as e:
        p.error(str(e))
    if only and "exact-default" in only and all(size > a.exact_max for size, _ in configs):
        p.error(f"--only: exact-default runs at sizes up to --exact-max {a.exact_max} only, and --configs has none")
    # the other tables time fixed methods on the CPU: an option they would ignore is refused, not dropped silently
    fixed = [flag for flag, on in (("--kernels", a.kernels), ("--accuracy", a.accuracy), ("--scaling", a.scaling),
                                   ("--scaling-thp", a.scaling_thp)) if on]
    if only and fixed:
        p.error(f"--only chooses the methods of the timing and --memory tables, not of {fixed[0]}")
    if a.compiled and fixed:
        p.error(f"--compiled adds methods to the timing and --memory tables, not to {fixed[0]}")
    if a.unrelated and a.accuracy:
        p.error("--unrelated chooses the image pairs of the timed tables; --accuracy uses distorted photos")
    cpu_only = [flag for flag in fixed if flag != "--scaling"]
    if cpu_only and a.device != "cpu":
        p.error(f"{cpu_only[0]} runs on the CPU only (got --device {a.device})")
    if a.out and a.md and os.path.realpath(a.out) == os.path.realpath(a.md):
        p.error(f"--out and --md name one file ({a.out}): the Markdown table would overwrite the CSV")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    UNRELATED[0] = a.unrelated
    COMPILED[0] = a.compiled
    if a.compiled:
        torch._dynamo.config.cache_size_limit = 64  # one graph per size, mode and variant
    for path in (a.out, a.md):  # the output folders made before the run: a bad path fails now, not after it
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nk = _native.kernels()
    print(f"device={a.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"native-kernels={'yes' if nk is not None else 'no (PyTorch path)'}", flush=True)
    if a.kernels:
        rows = kernel_scaling(configs, a.repeats, a.threads or 2)
    elif a.accuracy:
        rows = accuracy(feature_counts)
    elif a.scaling_thp:
        rows = scaling_thp(scaling_sizes, a.repeats, 3)
    elif a.scaling:
        rows = scaling(scaling_sizes, a.repeats, a.device)
    elif a.memory:
        rows = memory(configs, modes, a.device, a.exact_max, only)
    else:
        rows = bench(configs, modes, a.repeats, a.device, a.exact_max, only)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if a.md:
        with open(a.md, "w") as f:
            f.write(markdown(rows))


if __name__ == "__main__":
    main()
