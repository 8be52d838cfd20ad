"""The fused CPU kernels of the RFF estimator (``rff_kernels.c`` beside this file), compiled on first use.

On the CPU the RFF estimator is bound by the number of ``cos``/``sin`` evaluations (features x patch
centres), not by FLOPs: PyTorch's vectorised ``cos`` runs at about 1.6 G values/s per core here, and the
convolution that feeds it writes every angle to memory. The C kernels compute the angles, a polynomial
sine/cosine and the block sums in registers, so nothing of size ``features x pixels`` is written, and the
backward pass recomputes the angles instead of storing them.

The source is compiled once per machine with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``)
into a cache folder (``$PATCHMMD_CACHE_DIR``, else ``$XDG_CACHE_HOME/patchmmd`` or ``~/.cache/patchmmd``),
and loaded with :mod:`ctypes`. Without a compiler, or with ``PATCHMMD_NATIVE=0``, or if the compiled
kernels fail a self-check against PyTorch on load, :func:`kernels` returns ``None`` and the estimator
uses its PyTorch path (same numbers to float32 rounding, slower). Only float32 CPU tensors take this path;
float64 (exact checks, ``gradcheck``) and GPU tensors always use PyTorch. Work is split over
``torch.get_num_threads()`` threads (``ctypes`` releases the GIL); results do not depend on the split.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("rff_kernels.c")
#: Frequencies per register block in the C source (``J``).
BLOCK_FEATURES = 8
#: Patch centres per register block along a row (``P * V``): rows are padded to a multiple of it.
VECTOR = 32
#: Coefficients per polynomial in the C source (``NCOEF``).
NUM_COEFFICIENTS = 7
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=fast")


def sincos_coefficients() -> tuple[torch.Tensor, torch.Tensor]:
    """Polynomials ``cos(2πr) ≈ Pc(r²)`` and ``sin(2πr) ≈ r Ps(r²)`` on ``r ∈ [-1/2, 1/2]`` (float32).

    Least squares on 4001 Chebyshev nodes in float64 (near-minimax); in float32 the evaluation's maximal
    absolute error is below 1e-6.
    """
    nodes = torch.cos(torch.linspace(0, math.pi, 4001, dtype=torch.float64)) * 0.125 + 0.125  # u = r² in [0, 1/4]
    r = nodes.sqrt()
    basis = torch.stack([nodes**i for i in range(NUM_COEFFICIENTS)], dim=1)
    cos_target = torch.cos(2 * math.pi * r)
    sin_target = torch.where(r > 0, torch.sin(2 * math.pi * r) / r.clamp_min(1e-300), torch.full_like(r, 2 * math.pi))
    pc = torch.linalg.lstsq(basis, cos_target.unsqueeze(1)).solution.squeeze(1)
    ps = torch.linalg.lstsq(basis, sin_target.unsqueeze(1)).solution.squeeze(1)
    return pc.float().contiguous(), ps.float().contiguous()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dirs() -> list[Path]:
    """Where the compiled library may live, in order of preference (the first writable one is used)."""
    root = os.environ.get("PATCHMMD_CACHE_DIR")
    if root:
        return [Path(root)]
    xdg = os.environ.get("XDG_CACHE_HOME")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    home = (Path(xdg) if xdg else Path.home() / ".cache") / "patchmmd"
    return [home, Path(tempfile.gettempdir()) / f"patchmmd-{uid}"]


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (a cache shared by different machines
    must not hand one machine's binary to another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("flags", "model name", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compile(cc: str, target: Path) -> bool:
    """Compile to ``target`` (atomically: concurrent processes may race here). ``-march=native`` first,
    then without it (compilers or targets that lack it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for arch in (["-march=native"], []):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *FLAGS, *arch, str(SOURCE), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(tmp, target)
                return True
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return False


class NativeKernels:
    """The loaded library and the thread pool that drives it."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib, self.path = lib, path
        self.cos_coef, self.sin_coef = sincos_coefficients()
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.rff_block_sums.argtypes = [p, i, i, i, i, i, i, i, i, i, p, p, i, i, p, p, p, p, p]
        lib.rff_block_sums.restype = None
        lib.rff_grad_image.argtypes = [p, i, i, i, i, i, i, i, i, i, p, p, i, p, p, p, i, i, p, i, i, p]
        lib.rff_grad_image.restype = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_key = (0, 0)
        self._lock = threading.Lock()

    def _map(self, fn, tasks: list) -> None:  # type: ignore[no-untyped-def]
        """Run ``fn(*task)`` for every task on ``torch.get_num_threads()`` threads: the calling thread and
        ``threads - 1`` pool workers take the next task from a shared counter until none is left."""
        threads = min(max(1, torch.get_num_threads()), len(tasks))
        if threads == 1:
            for t in tasks:
                fn(*t)
            return
        key = (threads - 1, os.getpid())  # a forked child inherits the pool object but not its threads
        with self._lock:
            if self._pool is None or self._pool_key != key:
                if self._pool is not None and self._pool_key[1] == key[1]:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="patchmmd")
                self._pool_key = key
            pool = self._pool
        counter = itertools.count()  # next() on it is atomic under the GIL

        def worker() -> None:
            for i in iter(lambda: next(counter), None):
                if i >= len(tasks):
                    return
                fn(*tasks[i])

        helpers = [pool.submit(worker) for _ in range(threads - 1)]
        worker()
        for f in helpers:
            f.result()

    def block_sums(self, xp: torch.Tensor, matrix: torch.Tensor, hc: int, wc: int, bh: int, bw: int,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block sums of ``cos(z)`` and ``sin(z)``: ``xp`` ``(N, C, Hp, Wp)`` float32 contiguous, padded
        so that ``Wp >= round_up(wc, VECTOR) + k - 1``; ``matrix`` ``(m, C k² + 1)`` with ``m`` a multiple of
        :data:`BLOCK_FEATURES` (filters, then the phase). Returns two ``(N, m, hc/bh, wc/bw)`` tensors."""
        n, c, hp, wp = xp.shape
        m = matrix.shape[0]
        wcp = _round_up(wc, VECTOR)
        weight = matrix[:, :-1].contiguous()
        phase = matrix[:, -1].contiguous()
        out_c = xp.new_empty(n, m, hc // bh, wc // bw)
        out_s = torch.empty_like(out_c)
        threads = max(1, torch.get_num_threads())
        groups = m // BLOCK_FEATURES
        # Frequency groups per task: about 4 tasks per thread in all (whole images when there are enough).
        per = max(1, math.ceil(groups * n / (4 * threads))) if n < 4 * threads else groups
        work = {}

        def task(i: int, g0: int, g1: int) -> None:
            buf = work.get(threading.get_ident())
            if buf is None:
                buf = work.setdefault(threading.get_ident(), torch.empty(2 * BLOCK_FEATURES * wcp))
            self.lib.rff_block_sums(
                xp[i].data_ptr(), c, hp, wp, k, hc, wc, wcp, bh, bw, weight.data_ptr(), phase.data_ptr(),
                g0 * BLOCK_FEATURES, g1 * BLOCK_FEATURES, self.cos_coef.data_ptr(), self.sin_coef.data_ptr(),
                out_c[i].data_ptr(), out_s[i].data_ptr(), buf.data_ptr(),
            )

        tasks = [(i, g, min(groups, g + per)) for i in range(n) for g in range(0, groups, per)]
        self._map(task, tasks)
        return out_c, out_s

    def grad_image(self, xp: torch.Tensor, matrix: torch.Tensor, hc: int, wc: int, bh: int, bw: int, k: int,
                   g_cos: torch.Tensor, g_sin: torch.Tensor) -> torch.Tensor:
        """Gradient with respect to ``xp`` (same shape), given the gradients of the block sums of ``cos`` and
        ``sin`` (``(N, m, hc/bh, wc/bw)`` each)."""
        n, c, hp, wp = xp.shape
        m = matrix.shape[0]
        wcp = _round_up(wc, VECTOR)
        weight = matrix[:, :-1].contiguous()
        phase = matrix[:, -1].contiguous()
        # dz = g_sin cos z - g_cos sin z = amp cos(z + phs): one cosine per angle in the kernel.
        amp = torch.hypot(g_cos, g_sin).contiguous()
        phs = torch.atan2(g_cos, g_sin).contiguous()
        # Few images: split each into bands of rows so that threads have work. The split depends on the
        # shapes only, never on the thread count, so the result does not either.
        rows = hc if n >= 4 else max(k, math.ceil(hc / 8))
        starts = list(range(0, hc, rows))
        # One buffer per (image, band of rows): bands overlap by k - 1 rows in the image.
        out = xp.new_zeros(n, len(starts), c, rows + k - 1, wp)
        work: dict[int, torch.Tensor] = {}

        def task(i: int, t: int) -> None:
            buf = work.get(threading.get_ident())
            if buf is None:
                buf = work.setdefault(threading.get_ident(), torch.empty(2 * m * wcp + c * k * k * VECTOR))
            y0 = starts[t]
            self.lib.rff_grad_image(
                xp[i].data_ptr(), c, hp, wp, k, hc, wc, wcp, bh, bw, weight.data_ptr(), phase.data_ptr(), m,
                self.cos_coef.data_ptr(), amp[i].data_ptr(), phs[i].data_ptr(), y0, min(hc, y0 + rows),
                out[i, t].data_ptr(), rows + k - 1, wp, buf.data_ptr(),
            )

        self._map(task, [(i, t) for i in range(n) for t in range(len(starts))])
        if len(starts) == 1:
            grad = out[:, 0]
            return grad if grad.shape[-2] == hp else F.pad(grad, (0, 0, 0, hp - grad.shape[-2]))
        grad = xp.new_zeros(n, c, hp, wp)
        for t, y0 in enumerate(starts):
            h = min(rows, hc - y0) + k - 1
            grad[:, :, y0 : y0 + h] += out[:, t, :, :h]
        return grad


def _round_up(v: int, to: int) -> int:
    return -(-v // to) * to


def _self_check(nk: NativeKernels) -> bool:
    """The compiled kernels against PyTorch on a small random case (catches a miscompiled library)."""
    g = torch.Generator().manual_seed(0)
    k, hc, wc, bh, bw = 3, 8, 20, 4, 5
    x = torch.rand(1, 2, hc + k - 1, _round_up(wc, VECTOR) + k - 1, generator=g)
    matrix = torch.randn(BLOCK_FEATURES, 2 * k * k + 1, generator=g) * 3
    sc, ss = nk.block_sums(x, matrix, hc, wc, bh, bw, k)
    cols = torch.nn.functional.unfold(x[..., : wc + k - 1], k)
    z = (matrix[:, :-1] @ cols + matrix[:, -1:]).view(1, -1, hc // bh, bh, wc // bw, bw)
    ref_c, ref_s = torch.cos(z).sum((3, 5)), torch.sin(z).sum((3, 5))
    gc, gs = torch.randn(2, 1, BLOCK_FEATURES, hc // bh, wc // bw, generator=g)
    grad = nk.grad_image(x, matrix, hc, wc, bh, bw, k, gc, gs)
    up = lambda t: t.repeat_interleave(bh, -2).repeat_interleave(bw, -1).reshape(1, BLOCK_FEATURES, -1)  # noqa: E731
    dz = up(gs) * torch.cos(z).reshape(1, BLOCK_FEATURES, -1) - up(gc) * torch.sin(z).reshape(1, BLOCK_FEATURES, -1)
    ref_g = F.pad(F.fold(matrix[:, :-1].t() @ dz, (hc + k - 1, wc + k - 1), k), (0, x.shape[-1] - wc - k + 1))
    return bool(
        torch.allclose(sc, ref_c, atol=1e-4) and torch.allclose(ss, ref_s, atol=1e-4)
        and torch.allclose(grad, ref_g, atol=1e-3)
    )


_ENABLED = [True]


@contextmanager
def disabled() -> Iterator[None]:
    """Within this block the RFF estimator uses its PyTorch path (to compare the two, in tests and benchmarks).

    Example:
        >>> with disabled():
        ...     kernels() is None
        True
    """
    _ENABLED.append(False)
    try:
        yield
    finally:
        _ENABLED.pop()


def kernels() -> NativeKernels | None:
    """The compiled kernels, or ``None`` where they are unavailable or turned off (``PATCHMMD_NATIVE=0``,
    :func:`disabled`)."""
    if not _ENABLED[-1] or os.environ.get("PATCHMMD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return _load()


@lru_cache(maxsize=1)
def _load() -> NativeKernels | None:
    cc = _compiler()
    if cc is None or not SOURCE.exists():
        return None
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), cc.encode(), _cpu_signature().encode(),
                    sys.platform.encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    nk = None
    for folder in _cache_dirs():
        target = folder / f"rff_kernels-{key}{suffix}"
        try:
            if target.exists() or _compile(cc, target):
                nk = NativeKernels(ctypes.CDLL(str(target)), target)
                break
        except OSError:
            continue
    if nk is None:
        return None
    if not _self_check(nk):
        warnings.warn(f"patchmmd: the compiled kernels {nk.path} failed their self-check; using PyTorch",
                      RuntimeWarning, stacklevel=3)
        return None
    return nk
