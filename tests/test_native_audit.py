"""Regression tests from an audit of the compiled CPU kernels' loader (patchmmd._native)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
import torch

import patchmmd
from patchmmd import _native
from patchmmd.runtime import compiled_kernels_status
from test_native import _load_from  # the loader with the cache folder set, read afresh

needs_native = pytest.mark.skipif(_native.kernels() is None, reason="no C compiler: the PyTorch path is used")


def test_every_entry_point_the_loader_binds_is_a_required_symbol():
    """A library that lacks an entry point NativeKernels binds must be refused (deleted and rebuilt), not raise an
    AttributeError out of kernels(): the required symbols are every ``*_tasks`` / ``*_work`` function and
    ``patchmmd_openmp`` of kernels.c."""
    source = _native.SOURCE.read_text()
    exported = {line.split("(")[0].split()[-1] for line in source.splitlines()
                if line.startswith(("void ", "int64_t ", "int ")) and "(" in line}
    bound = {name for name in exported if name.endswith(("_tasks", "_work")) or name == "patchmmd_openmp"}
    assert bound <= set(_native.SYMBOLS), sorted(bound - set(_native.SYMBOLS))


@needs_native
def test_cached_library_lacking_the_ssim_kernel_is_rebuilt(tmp_path, monkeypatch):
    """A cached library (its record matching) with every other kernel but not the SSIM one used to make kernels()
    raise AttributeError on every call; it is a broken library: deleted and rebuilt."""
    nk = _load_from(monkeypatch, tmp_path / "good")
    assert nk is not None
    cache = tmp_path / "cache"
    shutil.copytree(tmp_path / "good", cache)
    lib = cache / nk.path.name
    stubs = "".join(f"void {name}(void) {{}}\n" for name in _native.SYMBOLS if name not in ("ssim_tasks", "ssim_work"))
    (tmp_path / "stub.c").write_text(stubs)
    cc = _native._compiler()
    assert cc is not None
    subprocess.run([cc, "-shared", "-fPIC", str(tmp_path / "stub.c"), "-o", str(tmp_path / "stub.so")], check=True,
                   capture_output=True)
    data = (tmp_path / "stub.so").read_bytes()
    lib.write_bytes(data)
    record_path = lib.with_name(lib.name + ".json")
    record = json.loads(record_path.read_text())
    record.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    record_path.write_text(json.dumps(record))
    rebuilt = _load_from(monkeypatch, cache)
    assert rebuilt is not None and rebuilt.path == lib
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == json.loads(record_path.read_text())["sha256"]
    assert b"ssim_tasks" in lib.read_bytes()


@needs_native
def test_loading_under_another_default_device_builds_cpu_kernels(tmp_path, monkeypatch):
    """The kernels' coefficient tensors and self-check are the CPU's whatever the default device: under
    ``torch.set_default_device("cuda")`` (here "meta", which every machine has) the first load used to raise (the
    self-check's CPU generator, a least-squares fit on the default device) or hand device memory to the C code."""
    _load_from(monkeypatch, tmp_path / "cache")  # built and cached once, as usual
    with torch.device("meta"):
        nk = _load_from(monkeypatch, tmp_path / "cache")
    assert nk is not None
    assert nk.cos_coef.device.type == "cpu" and nk.sin_coef.device.type == "cpu"


@needs_native
def test_kernel_work_buffers_are_cpu_memory_whatever_the_default_device():
    """A kernel called under another default device used to get its work buffer there (a null pointer for "meta",
    device memory for "cuda"): a segmentation fault. Run in a child process, so that a crash fails this test only."""
    code = """if True:
        import torch
        from patchmmd import _native
        nk = _native.kernels()
        assert nk is not None
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 2, 10, _native.VECTOR + 2, generator=g)
        weight, phase = torch.randn(8, 18, generator=g), torch.zeros(8)
        ref = nk.block_sums_split(x, weight, phase, 8, 20, 2, 4, 3)
        with torch.device("meta"):
            sums = nk.block_sums_split(x, weight, phase, 8, 20, 2, 4, 3)
        assert all(a.device.type == "cpu" and torch.equal(a, b) for a, b in zip(sums, ref))
        print("same sums")
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(patchmmd.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same sums" in done.stdout, (done.returncode, done.stderr[-2000:])


def _no_temporary_folder(*args: object, **kwargs: object) -> str:
    raise FileNotFoundError(2, "No usable temporary directory found")


def test_no_usable_temporary_folder_falls_back_to_pytorch(tmp_path, monkeypatch):
    """Without a writable temporary folder (a read-only root file system) nothing can be compiled: kernels() used to
    raise the OSError out of every distance call; it is the PyTorch path instead, with the same values."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with _native.disabled():
        ref = patchmmd.patch_mmd(x, x.flip(-1), estimator="rff")
    monkeypatch.setattr(tempfile, "mkdtemp", _no_temporary_folder)
    with pytest.warns(RuntimeWarning, match=r"the build failed \(.*no temporary folder to compile in"):
        assert _load_from(monkeypatch, tmp_path / "empty") is None
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(tmp_path / "empty"))
    _native._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"no temporary folder to compile in .*; using PyTorch"):
            torch.testing.assert_close(patchmmd.patch_mmd(x, x.flip(-1), estimator="rff"), ref)
    finally:
        _native._load.cache_clear()


@needs_native
def test_cached_kernels_load_without_a_temporary_folder(tmp_path, monkeypatch):
    """The default cache folders list ``<tmp>/patchmmd-<uid>`` last: a failing tempfile.gettempdir() used to make
    kernels() raise even though the first folder holds a good library."""
    monkeypatch.delenv("PATCHMMD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _native._load.cache_clear()
    try:
        assert _native.kernels() is not None  # built and cached in $XDG_CACHE_HOME/patchmmd
        _native._load.cache_clear()
        monkeypatch.setattr(tempfile, "gettempdir", _no_temporary_folder)
        monkeypatch.setattr(tempfile, "mkdtemp", _no_temporary_folder)
        nk = _native.kernels()
        assert nk is not None and nk.path.parent == tmp_path / "xdg" / "patchmmd"
    finally:
        _native._load.cache_clear()


@needs_native
def test_no_home_folder_uses_the_temporary_cache_folder(tmp_path, monkeypatch):
    """A process whose home cannot be determined (no $HOME and a user id with no passwd entry, as containers run
    under arbitrary ids): Path.home() raises RuntimeError, which used to escape from every distance call; the
    next folder, ``<tmp>/patchmmd-<uid>``, is used."""

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    for name in ("PATCHMMD_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _native._load.cache_clear()
    try:
        nk = _native.kernels()
        assert nk is not None and nk.path.parent == tmp_path / f"patchmmd-{os.getuid()}"
    finally:
        _native._load.cache_clear()


@needs_native
def test_kernels_built_but_not_cached_are_used_and_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cache that cannot be written (a full disk) made every new process compile the kernels again (about 15 s)
    with nothing said; the kernels are used and one warning says why the next process will compile again."""

    def full(dfd: int, name: str, data: bytes, record: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_native, "_store", full)
    with pytest.warns(RuntimeWarning, match="could not cache the compiled kernels .* every new process compiles them "
                                            "again; the compiled kernels are in use") as caught:
        assert _load_from(monkeypatch, tmp_path / "cache") is not None
    assert len([w for w in caught if "patchmmd" in str(w.message)]) == 1
    assert list((tmp_path / "cache").iterdir()) == []


# The thread pool (the kernels off PyTorch's OpenMP threads): shared by Python threads whose thread counts differ.

@needs_native
def test_a_pool_handed_out_keeps_accepting_work_when_the_thread_count_changes():
    """A call that needed another thread count used to shut down the pool another call had just taken (and was
    about to submit to): "cannot schedule new futures after shutdown". A pool handed out is never shut down."""
    nk = _native.kernels()
    assert nk is not None
    pool = nk._pool_for(2)
    bigger = nk._pool_for(5)  # more workers: a new pool
    smaller = nk._pool_for(1)  # fewer: the pool at hand
    assert smaller is bigger
    assert [f.result() for f in [p.submit(pow, 2, 3) for p in (pool, bigger, smaller)]] == [8, 8, 8]


@needs_native
def test_map_from_several_python_threads_with_varying_thread_counts():
    """Several Python threads run tasks through the pool at once, each with its own changing thread count: every
    task runs once, on a slot below the call's thread count, and no call fails."""
    nk = _native.kernels()
    assert nk is not None
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        try:
            for i in range(150):
                threads, ntasks = 2 + (seed + i) % 5, 1 + (seed * 7 + i) % 13
                done: list[tuple[int, int]] = []
                nk._map(lambda slot, t, done=done: done.append((slot, t)), ntasks, threads)
                assert sorted(t for _, t in done) == list(range(ntasks))
                assert all(0 <= slot < threads for slot, _ in done)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the race needs a switch between taking and using the pool
    try:
        callers = [threading.Thread(target=caller, args=(s,)) for s in range(6)]
        for c in callers:
            c.start()
        for c in callers:
            c.join()
    finally:
        sys.setswitchinterval(before)
    assert not errors, errors[:3]


@needs_native
def test_kernels_on_the_pool_from_several_python_threads_give_the_same_results(monkeypatch):
    """The kernels through the thread pool (as if their OpenMP were not PyTorch's), called from several Python
    threads at once with different thread counts: no error, and the same values as on one thread."""
    from test_native import _kernel_outputs

    nk = _native.kernels()
    assert nk is not None
    local = threading.local()
    monkeypatch.setattr(torch, "get_num_threads", lambda: getattr(local, "threads", 1))
    ref = _kernel_outputs(nk)  # one thread
    monkeypatch.setattr(nk, "openmp", False)
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        try:
            for i in range(3):
                local.threads = 2 + (seed + i) % 4
                for a, b in zip(_kernel_outputs(nk), ref, strict=True):
                    assert torch.equal(a, b)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    callers = [threading.Thread(target=caller, args=(s,)) for s in range(4)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert not errors, errors[:3]


# Why the compiled kernels are not in use: said in a warning where something went wrong, and by the status line.

def _status_from(monkeypatch: pytest.MonkeyPatch, folder: Path) -> str:
    """compiled_kernels_status() with the cache folder set, the kernels loaded afresh (as _load_from)."""
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(folder))
    _native._load.cache_clear()
    try:
        return compiled_kernels_status()
    finally:
        _native._load.cache_clear()


def test_status_when_turned_off(monkeypatch):
    monkeypatch.setenv("PATCHMMD_NATIVE", "0")
    assert compiled_kernels_status() == "off: PATCHMMD_NATIVE=0"
    monkeypatch.setenv("PATCHMMD_NATIVE", "off")
    assert compiled_kernels_status() == "off: PATCHMMD_NATIVE=off"
    monkeypatch.delenv("PATCHMMD_NATIVE")
    with _native.disabled():
        assert compiled_kernels_status().startswith("off: turned off here by patchmmd._native.disabled()")


@pytest.mark.skipif(not _native._secure_fs(), reason="this platform always uses the PyTorch path")
def test_no_compiler_is_silent_and_said_by_the_status(tmp_path, monkeypatch):
    """No C compiler is the documented fallback: no warning, but the status says so."""
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load_from(monkeypatch, tmp_path / "cache") is None
        assert _status_from(monkeypatch, tmp_path / "cache") == (
            "off: no C compiler found (looked for $CC, cc, gcc, clang)")
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not _native._secure_fs(), reason="this platform always uses the PyTorch path")
def test_compiler_that_always_fails_is_said_once_with_its_error(tmp_path, monkeypatch):
    """A compiler whose every build fails used to leave the PyTorch path in use with nothing said: one warning
    names the compiler and its first error line (shortened), and the status says the build failed."""
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\n"
                    "echo 'In file included from kernels.c:1:' >&2\n"
                    "echo 'fake-cc: fatal error: math.h: No such file or directory' >&2\n"
                    f"echo '{'x' * 500}' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(_native, "_compiler", lambda: str(fake))
    with pytest.warns(RuntimeWarning, match=r"the build failed \(.*fake-cc: fake-cc: fatal error: math.h: No such "
                                            r"file or directory\); using PyTorch") as caught:
        assert _load_from(monkeypatch, tmp_path / "cache") is None
    said = [str(w.message) for w in caught if "patchmmd" in str(w.message)]
    assert len(said) == 1 and "x" * 200 not in said[0], said
    with pytest.warns(RuntimeWarning, match="the build failed"):
        status = _status_from(monkeypatch, tmp_path / "cache")
    assert status.startswith(f"off: the build failed ({fake}: fake-cc: fatal error: math.h"), status
    assert list((tmp_path / "cache").iterdir()) == []  # nothing cached


def test_compiler_output_is_shortened_to_its_first_error_lines():
    out = f"{_native.SOURCE}: In function 'f':\n{_native.SOURCE}:3:5: error: expected ';'\n  3 | int x\n"
    assert _native._compiler_said(out, 1) == "kernels.c:3:5: error: expected ';'"
    assert _native._compiler_said("", 1) == "exit status 1, no output"
    assert _native._compiler_said("warning: odd\nsomething else\nmore\n", 1) == "warning: odd / something else"
    long = _native._compiler_said("error: " + "y" * 1000, 1)
    assert len(long) == 200 and long.endswith("...")


@needs_native
def test_status_when_in_use():
    nk = _native.kernels()
    assert nk is not None
    how = "OpenMP on PyTorch's threads" if nk.openmp else "thread pool"
    assert compiled_kernels_status() == f"in use ({how}, {torch.get_num_threads()} thread" + (
        "s)" if torch.get_num_threads() != 1 else ")")


def test_version_option_says_torch_and_the_compiled_kernels_lazily(monkeypatch):
    """``patchmmd --version``: the version, then PyTorch's and the kernels' status, computed only when asked."""
    click_testing = pytest.importorskip("click.testing")
    from patchmmd.cli import main

    calls: list[int] = []
    monkeypatch.setattr(_native, "status", lambda: calls.append(1) or "in use (a test)")
    runner = click_testing.CliRunner()
    assert runner.invoke(main, ["--help"]).exit_code == 0
    assert calls == []
    r = runner.invoke(main, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"patchmmd, version {patchmmd.__version__}", f"torch {torch.__version__}",
                                     "compiled kernels: in use (a test)"]
    monkeypatch.undo()
    monkeypatch.setenv("PATCHMMD_NATIVE", "0")
    r = runner.invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.splitlines()[-1] == "compiled kernels: off: PATCHMMD_NATIVE=0", r.output
