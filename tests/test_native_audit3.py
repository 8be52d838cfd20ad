"""Regression tests from a third audit of the compiled CPU kernels (patchmmd._native): one build at a time across
processes, a bounded wait for another process's lock, and the removal of what piles up in the cache folder."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from patchmmd import _native
from test_native import _assert_good, _copy_cache, good_cache_folder
from test_native_audit2 import _env

pytestmark = pytest.mark.skipif(not _native._secure_fs(), reason="this platform always uses the PyTorch path")


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return good_cache_folder(tmp_path_factory)


# A child that loads the kernels with a "compiler" that hands back a good build slowly and logs each build; it prints
# the cache folder locks it asked for ([shared, wait, held] each).
CHILD = """if True:
    import json, sys, time
    from contextlib import contextmanager
    from pathlib import Path
    from patchmmd import _native
    good, log, me, sync = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

    def slow_build(cc, arch):
        with open(log, "a") as f:
            f.write(me + "\\n")
        time.sleep(1.5)  # the other process asks meanwhile
        return good

    _native._compile = slow_build
    _native._LOCK_WAIT = float(sys.argv[5])
    locked, locks = _native._locked, []

    @contextmanager
    def traced(dfd, shared=False, wait=None):  # each lock asked for: (shared, wait, held)
        with locked(dfd, shared, wait) as held:
            locks.append([shared, wait, held])
            yield held

    _native._locked = traced
    (sync / ("ready-" + me)).touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    t0 = time.monotonic()
    nk = _native.kernels()
    print("kernels:", nk is not None)
    print("seconds:", time.monotonic() - t0)
    print("locks:", json.dumps(locks))
"""


def _start(good: Path, log: Path, me: str, sync: Path, cache: Path, wait: float = 300.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(good), str(log), me, str(sync), str(wait)],
                            env=_env(PATCHMMD_CACHE_DIR=str(cache)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _go(sync: Path, names: list[str]) -> None:
    deadline = time.monotonic() + 120
    while not all((sync / f"ready-{n}").exists() for n in names):
        assert time.monotonic() < deadline, "the child processes did not start"
        time.sleep(0.02)
    (sync / "go").touch()


def test_first_use_from_two_processes_builds_once(good_cache, tmp_path):
    """Two processes that found the cache empty at once both compiled the library (each compiler run is seconds
    of CPU; under torchrun every rank did). The second now waits for the first's build and loads it."""
    good, log, sync, cache = good_cache[0] / good_cache[1], tmp_path / "builds.log", tmp_path / "sync", tmp_path / "c"
    sync.mkdir()
    procs = [_start(good, log, me, sync, cache) for me in ("a", "b")]
    try:
        _go(sync, ["a", "b"])
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert all(o.splitlines()[0] == "kernels: True" for o, _ in outs), outs
    assert len(log.read_text().split()) == 1, log.read_text()
    assert sorted(p.name for p in cache.iterdir()) == [good_cache[1], good_cache[1] + ".json"]
    _assert_good(cache / good_cache[1])


def test_a_lock_held_for_too_long_is_waited_for_within_bounds(good_cache, tmp_path):
    """Another process holding the cache folder's lock (stopped in the middle of a build, say) made every loader
    wait for it for ever. Past the bounded wait the loader goes on: it builds and uses its own kernels."""
    good, log, sync, cache = good_cache[0] / good_cache[1], tmp_path / "builds.log", tmp_path / "sync", tmp_path / "c"
    sync.mkdir()
    cache.mkdir(mode=0o700)
    holder = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        proc = _start(good, log, "a", sync, cache, wait=4.0)
        try:
            _go(sync, ["a"])
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the loader waited for the lock without bound")
    finally:
        os.close(holder)
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines()[0] == "kernels: True"
    assert len(log.read_text().split()) == 1
    # one bounded wait in all (the shared lock's, the default 4 s here, not held), then the build without a second
    # wait for the exclusive lock (that made it 4 + 4 + 1.5 s). Read from the locks asked for, not from a clock.
    locks = json.loads(out.splitlines()[2].removeprefix("locks: "))
    assert locks == [[True, None, False], [False, 0.0, False]], locks


# What piles up in the cache folder: old builds of other sources, compilers or CPUs, and temporary files.

DAY = 86400.0


def _plant(folder: Path, name: str, age: float, content: bytes = b"x") -> Path:
    path = folder / name
    path.write_bytes(content)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def _load(monkeypatch: pytest.MonkeyPatch, cache: Path, build: bytes | None) -> _native.NativeKernels | None:
    """The kernels from ``cache``; a build (when one is needed) hands back ``build`` (``None``: must not build)."""

    def fake_build(cc: str, arch: list[str]) -> bytes:
        if build is None:
            raise _native._BuildFailed("this test must not compile")
        return build

    monkeypatch.setattr(_native, "_compile", fake_build)
    monkeypatch.setenv("PATCHMMD_CACHE_DIR", str(cache))
    _native._load.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing here is worth a warning
            return _native.kernels()
    finally:
        _native._load.cache_clear()


def test_a_new_build_removes_stale_files_and_keeps_the_rest(good_cache, tmp_path, monkeypatch):
    """Every change of the source, compiler or flags left another ~150 KB library (and its record) in the cache for
    ever, and an interrupted write or load its temporary file. A new build removes the libraries of other builds
    unused for 30 days and old temporary files; recent ones, fresh load copies and other files stay."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    old, recent = 40 * DAY, 2 * DAY
    gone = [_plant(cache, "kernels-00000000000000aa.so", old), _plant(cache, "kernels-00000000000000aa.so.json", old),
            _plant(cache, "kernels-00000000000000dd.so.json", old),  # a record without its library
            _plant(cache, "kernels-00000000000000ab.so", old),  # a library without its record
            _plant(cache, ".kernels-00000000000000cc.so.99.deadbeef.tmp", 2 * 3600),
            _plant(cache, ".load-98-0123456789ab.so", 2 * 3600)]
    kept = [_plant(cache, "kernels-00000000000000bb.so", recent),
            _plant(cache, "kernels-00000000000000bb.so.json", old),  # (a library's age is its own mtime)
            _plant(cache, ".load-99-0123456789ab.so", 10),  # another process may be about to load it
            _plant(cache, ".kernels-00000000000000ee.so.97.deadbeef.tmp", 10),
            _plant(cache, "notes.txt", old)]
    (cache / "kernels-00000000000000ff.so").mkdir()  # not a regular file: not ours to remove
    os.utime(cache / "kernels-00000000000000ff.so", (time.time() - old,) * 2)
    kept.append(cache / "kernels-00000000000000ff.so")
    nk = _load(monkeypatch, cache, (good_cache[0] / good_cache[1]).read_bytes())
    assert nk is not None
    assert [p.name for p in gone if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    _assert_good(cache / good_cache[1])


def test_loading_a_cached_library_marks_it_used(good_cache, tmp_path, monkeypatch):
    """A library is stale when it was not used for 30 days, not when it was built 30 days ago: loading one whose
    mtime is older than a day refreshes it (nothing is removed or rebuilt by a mere load)."""
    lib, rec = _copy_cache(good_cache, tmp_path / "cache")
    t = time.time() - 40 * DAY
    for p in (lib, rec):
        os.utime(p, (t, t))
    other = _plant(tmp_path / "cache", "kernels-00000000000000aa.so", 40 * DAY)
    assert _load(monkeypatch, tmp_path / "cache", None) is not None
    assert time.time() - lib.stat().st_mtime < 60
    assert other.exists()  # removal happens only when a new build is cached
    _assert_good(lib)


def test_a_used_library_of_another_build_survives_a_new_build(good_cache, tmp_path, monkeypatch):
    """Two environments sharing a cache (another version, another compiler) do not take each other's library away:
    a library loaded recently is kept when the other environment caches its build."""
    lib, _ = _copy_cache(good_cache, tmp_path / "cache")
    t = time.time() - 40 * DAY
    os.utime(lib, (t, t))
    assert _load(monkeypatch, tmp_path / "cache", None) is not None  # used now
    monkeypatch.setattr(_native, "_cache_key", lambda cc: "0123456789abcdef")  # another environment's build
    assert _load(monkeypatch, tmp_path / "cache", lib.read_bytes()) is not None
    assert (tmp_path / "cache" / "kernels-0123456789abcdef.so").exists()
    _assert_good(lib)


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """``XDG_CACHE_HOME=cache`` (relative: invalid by the XDG specification) made a ``cache/patchmmd`` folder in
    whatever the current folder was, one per working folder. It is ignored: ``~/.cache/patchmmd`` is used."""
    monkeypatch.delenv("PATCHMMD_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    assert _native._cache_dirs()[0] == tmp_path / "home" / ".cache" / "patchmmd"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _native._cache_dirs()[0] == tmp_path / "xdg" / "patchmmd"
