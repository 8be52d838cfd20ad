"""Regression tests from a second audit of the compiled CPU kernels (patchmmd._native): the loader with a cache that
cannot be written or used, first use from several threads and processes, and the operators on edge cases."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import patchmmd
from patchmmd import _native
from patchmmd._native import ops
from test_native import _assert_good, _copy_cache, _kernel_outputs, _load_from, good_cache_folder

needs_native = pytest.mark.skipif(_native.kernels() is None, reason="no C compiler: the PyTorch path is used")


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return good_cache_folder(tmp_path_factory)


def _env(**extra: str) -> dict[str, str]:
    """The environment of a child process that imports this checkout's patchmmd."""
    path = os.pathsep.join([str(Path(patchmmd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` behave as on a read-only file system for the loader: creating a file in it (through its
    descriptor, as the loader does) fails with EROFS. Root ignores permission bits, hence not a chmod."""
    ino = folder.stat().st_ino
    real_open = os.open

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT and dir_fd is not None and os.fstat(dir_fd).st_ino == ino:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "supports_dir_fd", os.supports_dir_fd | {fake_open})  # (as os.open, for _secure_fs)
    monkeypatch.setattr(os, "open", fake_open)


def _no_build(cc: str, arch: list[str]) -> bytes:
    raise _native._BuildFailed("this test must not compile")


# A cache that cannot be written: the verified library in it is used, a new build is used (and said).

def test_verified_library_in_a_read_only_cache_is_used(good_cache, tmp_path, monkeypatch):
    """The loader loads a private copy of the verified bytes, which it wrote into the cache folder: in a read-only
    cache (a read-only mount, a container image's layer) that failed, the good library was called "cannot be
    loaded", four builds followed (each failing to load the same way: about 20 s) and the PyTorch path ran, in every
    process. The copy is made in a private temporary folder instead, and nothing is compiled."""
    lib, _ = _copy_cache(good_cache, tmp_path / "cache")
    before = sorted(p.name for p in lib.parent.iterdir())
    _read_only(monkeypatch, lib.parent)
    monkeypatch.setattr(_native, "_compile", _no_build)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nk = _load_from(monkeypatch, lib.parent)
    assert nk is not None and nk.path == lib
    assert sorted(p.name for p in lib.parent.iterdir()) == before
    assert list((tmp_path / "tmp").iterdir()) == []  # the private copy's folder is removed
    _assert_good(lib)


@needs_native
def test_read_only_empty_cache_builds_uses_and_says_it_cannot_cache(tmp_path, monkeypatch):
    """An empty read-only cache: the build is used (it was thrown away as "cannot be loaded", four times), with
    the one warning that it could not be cached."""
    (tmp_path / "cache").mkdir(mode=0o700)
    _read_only(monkeypatch, tmp_path / "cache")
    with pytest.warns(RuntimeWarning, match=r"could not cache the compiled kernels .*Read-only file system.* every "
                                            r"new process compiles them again; the compiled kernels are in use"):
        nk = _load_from(monkeypatch, tmp_path / "cache")
    assert nk is not None
    assert list((tmp_path / "cache").iterdir()) == []


def _can_mount_read_only(folder: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    f = shlex.quote(str(folder))
    probe = f"mount --bind {f} {f} && mount -o remount,bind,ro {f} && ! touch {f}/probe 2>/dev/null"
    done = subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True, timeout=30)
    return done.returncode == 0


def test_really_read_only_cache_in_a_child_process(good_cache, tmp_path):
    """The same on a real read-only bind mount (root in a mount namespace; skipped elsewhere)."""
    lib, _ = _copy_cache(good_cache, tmp_path / "cache")
    if not _can_mount_read_only(lib.parent):
        pytest.skip("needs root and unshare to mount a folder read-only")
    code = ("import warnings; warnings.simplefilter('error'); from patchmmd import _native; "
            "print(_native.status()); print(_native.kernels().path)")
    f = shlex.quote(str(lib.parent))
    script = (f"mount --bind {f} {f} && mount -o remount,bind,ro {f} && "
              f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    env = _env(PATCHMMD_CACHE_DIR=str(lib.parent))
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0].startswith("in use"), done.stdout
    assert done.stdout.splitlines()[1] == str(lib)


def test_unusable_cache_folder_that_was_asked_for_is_said(tmp_path, monkeypatch):
    """``$PATCHMMD_CACHE_DIR`` that cannot be a folder (a file in the way): the kernels were compiled into a private
    temporary folder, silently, in every process (seconds each). One warning says so."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(_native, "_compile", _no_build)  # the warning is the point, not the build
    with pytest.warns(RuntimeWarning, match=r"the cache folder .*file cannot be used \(.*Not a directory.*\); "
                                            r"compiling into a private temporary folder for this process instead "
                                            r"\(every new process compiles them again\)") as caught:
        assert _load_from(monkeypatch, tmp_path / "file") is None
    assert len([w for w in caught if "patchmmd" in str(w.message)]) == 1
    assert (tmp_path / "file").read_text() == "not a folder"


# First use from several threads and processes.

def test_first_use_from_several_threads_builds_once(good_cache, tmp_path, monkeypatch):
    """Threads calling kernels() at once on an empty cache each compiled the library (three threads: three builds
    and three loaded copies, each with its own thread pool). They wait for one build and share its kernels."""
    data = (good_cache[0] / good_cache[1]).read_bytes()
    builds: list[list[str]] = []

    def slow_build(cc: str, arch: list[str]) -> bytes:
        builds.append(arch)
        time.sleep(0.5)  # the others ask meanwhile
        return data

    monkeypatch.setattr(_native, "_compile", slow_build)
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(tmp_path / "cache"))
    _native._load.cache_clear()
    got: list[object] = []
    try:
        threads = [threading.Thread(target=lambda: got.append(_native.kernels())) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _native._load.cache_clear()
    assert len(builds) == 1
    assert len(got) == 3 and got[0] is not None and all(k is got[0] for k in got)


@needs_native
def test_first_use_from_two_processes_at_once(tmp_path):
    """Two processes that find the same cache empty: both build, both get working kernels, and the cache ends
    with one library that matches its record (no half-written file, no temporary names left)."""
    code = ("from patchmmd import _native; nk = _native.kernels(); print('kernels:', nk is not None, "
            "nk and nk.path)")
    env = _env(PATCHMMD_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1000:] for _, e in outs]
    assert all(o.startswith("kernels: True") for o, _ in outs), outs
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".json", names
    _assert_good(tmp_path / "cache" / names[0])


@needs_native
def test_kernels_on_openmp_from_several_python_threads_give_the_same_results():
    """The OpenMP drivers (PyTorch's own threads) called from several Python threads at once: the same values."""
    nk = _native.kernels()
    assert nk is not None
    ref = _kernel_outputs(nk)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            for a, b in zip(_kernel_outputs(nk), ref, strict=True):
                assert torch.equal(a, b)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert not errors, errors[:3]


# No compiler, and the documented switch, in a fresh process.

@pytest.mark.skipif(not _native._secure_fs(), reason="this platform always uses the PyTorch path")
def test_no_compiler_in_a_fresh_process(tmp_path):
    """``$CC`` naming no program and no ``cc``/``gcc``/``clang`` on the path: no warning, nothing written, the status
    says why, and the distance is the PyTorch path's."""
    code = """if True:
        import warnings
        warnings.simplefilter("error")
        import torch, patchmmd
        from patchmmd import _native
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        v = patchmmd.mmdpp(x, x.flip(-1))
        print(_native.status())
        with _native.disabled():
            print(torch.equal(v, patchmmd.mmdpp(x, x.flip(-1))))
    """
    empty = tmp_path / "bin"
    empty.mkdir()
    env = _env(CC="/nonexistent/cc", PATH=str(empty), PATCHMMD_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["off: no C compiler found (looked for $CC, cc, gcc, clang)", "True"]
    assert not (tmp_path / "cache").exists()


def test_native_switch_off_in_a_fresh_process(tmp_path):
    """``PATCHMMD_NATIVE=0`` in the environment: nothing is compiled or cached, and the status says so."""
    code = "from patchmmd import _native; print(_native.kernels() is None, _native.status())"
    env = _env(PATCHMMD_NATIVE="0", PATCHMMD_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True off: PATCHMMD_NATIVE=0"
    assert not (tmp_path / "cache").exists()


# The operators on edge cases.

@needs_native
@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_rff_sums_double_backward_on_an_empty_batch(floor):
    """The double-backward path (_plain_sums) reshaped with -1, which is ambiguous for an empty batch: ``create_graph``
    raised where the op and its first backward accept N = 0."""
    xp = torch.rand(0, 3, 6, _native.VECTOR + 2, requires_grad=True)
    weight, phase = torch.randn(8, 27), torch.rand(8)
    sc, ss = torch.ops.patchmmd.rff_sums(xp, weight, phase, floor, 4, 8, 2, 4, 3)
    (grad,) = torch.autograd.grad((sc + ss).sum(), xp, create_graph=True)
    assert grad.shape == xp.shape
    ref = ops._plain_sums(xp.detach(), weight, phase, floor, 4, 8, 2, 4, 3)
    assert [t.shape for t in ref] == [(0, 8, 2, 2)] * 2


@needs_native
@pytest.mark.parametrize(("n", "c", "hc", "wc", "bh", "bw", "k", "m", "floor"), [
    (1, 1, 1, 1, 1, 1, 1, 8, 0.0),      # one patch centre, 1x1 patches
    (1, 3, 1, 1, 1, 1, 3, 8, 0.05),     # one centre, normalised
    (2, 3, 5, 33, 5, 11, 3, 16, 0.0),   # a width one past the vector width
    (1, 1, 7, 31, 7, 31, 5, 8, 0.1),    # one block, a width one short of it
    (3, 3, 9, 65, 3, 13, 1, 24, 0.1),   # 1x1 patches normalised (the floor alone)
    (40, 1, 4, 8, 2, 4, 3, 8, 0.02),    # a large batch of small images
])
def test_rff_ops_against_float64_on_odd_sizes(n, c, hc, wc, bh, bw, k, m, floor):
    g = torch.Generator().manual_seed(n + c + hc + wc)
    xp = torch.rand(n, c, hc + k - 1, _native._round_up(wc, _native.VECTOR) + k - 1, generator=g) * 2 - 1
    weight, phase = torch.randn(m, c * k * k, generator=g) * 2, torch.rand(m, generator=g) * 6
    xg = xp.clone().requires_grad_(True)
    sc, ss = torch.ops.patchmmd.rff_sums(xg, weight, phase, floor, hc, wc, bh, bw, k)
    gc, gs = torch.randn(sc.shape, generator=g), torch.randn(ss.shape, generator=g)
    (grad,) = torch.autograd.grad((sc * gc + ss * gs).sum(), xg)
    xd = xp.double().requires_grad_(True)
    rc, rs = ops._plain_sums(xd, weight.double(), phase.double(), floor, hc, wc, bh, bw, k)
    (ref,) = torch.autograd.grad((rc * gc.double() + rs * gs.double()).sum(), xd)
    torch.testing.assert_close(sc.double(), rc.detach(), rtol=0, atol=2e-6 * bh * bw)
    torch.testing.assert_close(ss.double(), rs.detach(), rtol=0, atol=2e-6 * bh * bw)
    torch.testing.assert_close(grad.double(), ref, rtol=0, atol=1e-5 * max(1.0, float(ref.abs().max())))


def _scan_sample(subpixel: bool) -> tuple:
    g = torch.Generator().manual_seed(5)
    x, y = (torch.rand(2, 3, 12, 10, generator=g) * 2 - 1 for _ in range(2))
    yp = F.pad(y, (1, 1, 1, 1), mode="replicate").contiguous()
    fit: list[torch.Tensor] = []
    if subpixel:
        gxx, gxy, tx = torch.ops.patchmmd.fit_inputs(x, 0, 3)
        gyx, gyy, typ = torch.ops.patchmmd.fit_inputs(y, 1, 3)
        fit = [gxx, gxy, gyx, gyy, tx, typ]
    return x, yp, fit, 1, [0, 0, 1, -1, -1, 1], 3, 1e-3, 1.0, [1, 2], 3, 0.5, 2.0, 50.0


@needs_native
@pytest.mark.parametrize("subpixel", [False, True])
def test_opcheck_aligned_ops(subpixel):
    """``aligned_scan`` and ``aligned_grad`` (their fake kernels and schemas), with and without the fit's inputs."""
    x, yp, fit, r, offsets, *fixed = _scan_sample(subpixel)
    torch.library.opcheck(torch.ops.patchmmd.aligned_scan.default, (x, yp, fit, r, offsets, *fixed))
    maps = torch.ops.patchmmd.aligned_scan(x, yp, fit, r, offsets, *fixed)
    gmap = torch.randn(maps.shape, generator=torch.Generator().manual_seed(6))
    torch.library.opcheck(torch.ops.patchmmd.aligned_grad.default, (x, yp, fit, gmap, r, offsets, *fixed))


@needs_native
@pytest.mark.parametrize("radius", [0, 2])
def test_opcheck_fit_inputs(radius):
    y = torch.rand(2, 3, 9, 14, generator=torch.Generator().manual_seed(7))
    torch.library.opcheck(torch.ops.patchmmd.fit_inputs.default, (y, radius, 3))


@needs_native
@pytest.mark.parametrize("floor", [1e-25, 1e25])
def test_rff_ops_refuse_a_floor_whose_float32_square_is_out_of_range(floor):
    """The kernels take C k² floor² as a float32, and 0 there means raw patches: a tiny positive floor silently gave
    the raw patches' sums (their PyTorch double-backward path normalises), a huge one NaN. Both are refused."""
    g = torch.Generator().manual_seed(8)
    xp = torch.rand(1, 3, 10, _native.VECTOR + 2, generator=g)
    weight, phase = torch.randn(8, 27, generator=g), torch.rand(8, generator=g)
    with pytest.raises(ValueError, match="floor"):
        torch.ops.patchmmd.rff_sums(xp, weight, phase, floor, 8, 20, 4, 5, 3)
    grads = torch.zeros(2, 1, 8, 2, 4)
    with pytest.raises(ValueError, match="floor"):
        torch.ops.patchmmd.rff_sums_grad(xp, weight, phase, floor, *grads, 8, 20, 4, 5, 3)
    for ok in (1e-4, 1.0):  # the range the distances allow (and more) is taken
        sc, _ = torch.ops.patchmmd.rff_sums(xp, weight, phase, ok, 8, 20, 4, 5, 3)
        rc, _ = ops._plain_sums(xp.double(), weight.double(), phase.double(), ok, 8, 20, 4, 5, 3)
        torch.testing.assert_close(sc.double(), rc, rtol=0, atol=1e-4)
