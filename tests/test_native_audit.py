"""Regression tests from an audit of the compiled CPU kernels' loader (patchmmd._native)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import patchmmd
from patchmmd import _native
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
    assert _load_from(monkeypatch, tmp_path / "empty") is None
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(tmp_path / "empty"))
    _native._load.cache_clear()
    try:
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
