"""The fused CPU kernels (``kernels.c`` beside this file), compiled on first use: the RFF estimator's two, the
offset scan of the shift-tolerant aligned terms (:func:`patchmmd.core.aligned.tolerant_aligned`) and the SSIM
term's (:func:`patchmmd.core.ssim.dissimilarity_map`).

On the CPU the RFF estimator is bound by the number of ``cos``/``sin`` evaluations (features x patch
centres), not by FLOPs: PyTorch's vectorised ``cos`` runs at about 1.6 G values/s per core here, and the
convolution that feeds it writes every angle to memory. The C kernels compute the angles, a polynomial
sine/cosine and the block sums in registers, so nothing of size ``features x pixels`` is written, and the
backward pass recomputes the angles instead of storing them. The aligned terms' offset scan (no gradient)
is a chain of some forty elementwise operations and box filters per offset; in PyTorch every one of them
writes a full-size temporary, the C loop keeps each pixel's arithmetic in registers.

The source is compiled once per machine with the system C compiler (``$CC``, which may hold arguments such as
``ccache gcc``; else ``cc``/``gcc``/``clang``)
into a cache folder (``$PATCHMMD_CACHE_DIR``, else ``$XDG_CACHE_HOME/patchmmd`` (an absolute path; a relative one
is ignored, as the XDG specification says) or ``~/.cache/patchmmd``, else
``<tmp>/patchmmd-<uid>``), and loaded with :mod:`ctypes`. Without a compiler, or with ``PATCHMMD_NATIVE=0``,
or if the compiled kernels fail a self-check against PyTorch, :func:`kernels` returns ``None`` and the
estimator uses its PyTorch path (same numbers to float32 rounding, slower). No compiler at all is silent; a
compiler whose every build fails gives one :class:`RuntimeWarning` with the first line of its error.
:func:`status` (:func:`patchmmd.runtime.compiled_kernels_status`, ``patchmmd --version``) says in a line
whether the kernels are in use, and if not why. Only float32 CPU tensors take this path; float64 (exact
checks, ``gradcheck``) and GPU tensors always use PyTorch. Work is split over ``torch.get_num_threads()``
threads: PyTorch's own intra-op (OpenMP) threads when the library is compiled with OpenMP and shares PyTorch's
runtime (GCC on Linux: both are ``libgomp.so.1``), else a thread pool of this module (``ctypes`` releases the
GIL); results do not depend on the split. As with PyTorch's own operations, a process forked after they ran on
several threads must call ``torch.set_num_threads(1)`` before using them (GNU OpenMP's threads do not survive
a ``fork``; PyTorch's DataLoader workers do this).

What is trusted. Loading a shared library runs its code, so a cached library is loaded only if this
process can tell that it built it:

- The cache folder must be a real folder (not a symbolic link), owned by the effective user, with no
  group/other write bit; it is created with mode 0700. It is opened once (``O_NOFOLLOW``) and every file in
  it is then reached through that descriptor (``openat``), so renaming or replacing the path afterwards
  cannot redirect the loader. A folder that fails these checks (``$PATCHMMD_CACHE_DIR`` or
  ``$XDG_CACHE_HOME`` pointing at a shared folder, a ``<tmp>/patchmmd-<uid>`` planted by another user) is
  not used, with one :class:`RuntimeWarning` that says why; if no candidate folder is usable the library
  is compiled into a private ``tempfile.mkdtemp`` folder for this process only (slower start, still fast). A
  folder that cannot be made or opened (a file in the way, no permission) is passed over silently for the next
  one; if none is left, the warning says so (each new process then compiles again).
- Beside ``kernels-<key>.so`` lies a record ``kernels-<key>.so.json`` (size, SHA-256, source hash,
  compiler, flags), written by this module only after the build passed its checks. Both are written to a
  temporary name, ``fsync``-ed and renamed into place (then the folder is ``fsync``-ed), under an exclusive
  ``flock`` of the folder (readers take it shared), so a crash or a concurrent process never leaves a
  half-written library that looks valid. A process that finds no usable library takes that lock, looks
  again and only then builds, so processes starting at once build once (the others wait, at most
  :data:`_LOCK_WAIT` seconds, then build their own). Once a new build is cached, the libraries of other builds
  unused for 30 days (a load refreshes a library's ``mtime``) and old temporary files are removed
  (:func:`_remove_stale`).
  The files must be regular files (opened with ``O_NOFOLLOW``) owned by the user and not group/other
  writable, and the library's bytes, read through that descriptor, must match the record.
- The verified bytes, held in memory, are written to a fresh file (``O_EXCL``, mode 0700) in the same
  folder and that copy is loaded: on Linux through ``/proc/self/fd/<folder descriptor>/<copy>``, elsewhere
  through the folder's path after checking that it still names the opened folder. The copy is unlinked
  once loaded. So what is loaded is exactly what was verified (no check-then-swap window), and it lies on
  the same file system as the cache (a ``noexec`` ``/tmp`` does not matter). Where no file can be made in
  the cache (a read-only mount or image layer, a full disk) the copy is made the same way in a private
  ``tempfile.mkdtemp`` folder, so a verified library in a read-only cache is still used.
- Before it is used or cached a build must export the kernel symbols and pass :func:`_self_check`.

A cached library that fails any of this (no record, truncated, garbage, zero bytes, missing symbols, a
failed self-check) is deleted and rebuilt once; a folder or file with the wrong owner, mode or a symbolic
link is also reported in the warning. If the rebuild fails too, one :class:`RuntimeWarning` says why and
the PyTorch path is used. A build is compiled in a private temporary folder and is never cached unless it
passed the checks. Platforms without ``O_NOFOLLOW``, ``openat`` and file owners (Windows) always use the
PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("kernels.c")
#: Frequencies per register block in the C source (``J``).
BLOCK_FEATURES = 8
#: Patch centres per register block along a row (``P * V``): rows are padded to a multiple of it.
VECTOR = 32
#: Coefficients per polynomial in the C source (``NCOEF``).
NUM_COEFFICIENTS = 7
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=fast")
#: Compiler flags for OpenMP, tried first (see :class:`NativeKernels`: used only if it is PyTorch's runtime).
OPENMP_FLAGS = ("-fopenmp",)


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


#: The library's entry points: a build that lacks one is not used.
SYMBOLS = ("rff_block_sums_tasks", "rff_grad_image_tasks", "aligned_scan_tasks", "aligned_scan_work",
           "aligned_grad_tasks", "aligned_grad_work", "fit_inputs_tasks", "fit_inputs_work", "ssim_tasks", "ssim_work",
           "patchmmd_openmp")
_SUFFIX = ".dll" if sys.platform == "win32" else ".so"
#: Layout version of the record written beside a cached library.
_RECORD_FORMAT = 1
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _Untrusted(Exception):
    """A cache folder or file that must not be loaded from: wrong owner, writable by others, a symbolic link."""


class _Broken(Exception):
    """A library that does not match its record, cannot be loaded, lacks the kernels or fails the self-check."""


class _BuildFailed(Exception):
    """The compiler failed (or could not be run): the message says how, in a line or two of its output."""


def _compiler() -> str | None:
    """The C compiler's command line (:func:`shlex.join` of the resolved executable and its arguments): ``$CC``,
    which may hold arguments as ``make`` allows (``ccache gcc``, ``gcc -m64``), else the first of ``cc``, ``gcc``,
    ``clang`` found; ``None`` if none is.

    Example:
        >>> os.environ["CC"], saved = "cc -O1", os.environ.get("CC")
        >>> found = _compiler()
        >>> found is None or shlex.split(found)[1:] == ["-O1"]
        True
        >>> _ = os.environ.pop("CC") if saved is None else os.environ.update(CC=saved)
    """
    for text in (os.environ.get("CC"), "cc", "gcc", "clang"):
        found = _command_line(text or "")
        if found is not None:
            return found
    return None


def _command_line(text: str) -> str | None:
    """``text`` as a command line whose program is found (its resolved path, then its arguments, joined by
    :func:`shlex.join`), or ``None``: no program found, or not a command line (unbalanced quotes)."""
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    path = shutil.which(words[0]) if words else None
    return shlex.join([path, *words[1:]]) if path else None


def _cache_dirs() -> list[Path]:
    """Where the compiled library may live, in order of preference: the first that can be created and passes
    :func:`_open_private_dir` is used (if none does, a private temporary folder for this process)."""
    root = os.environ.get("PATCHMMD_CACHE_DIR")
    if root:
        return [Path(root)]
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and not os.path.isabs(xdg):  # invalid by the XDG specification: ignored (not a folder under the cwd)
        xdg = None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    dirs: list[Path] = []
    try:
        dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "patchmmd")
    except RuntimeError:  # no $HOME and no passwd entry (a container under an arbitrary user id)
        pass
    try:
        dirs.append(Path(tempfile.gettempdir()) / f"patchmmd-{uid}")
    except OSError:  # no usable temporary folder (a read-only file system)
        pass
    return dirs


def _secure_fs() -> bool:
    """Whether this platform lets the loader check what it loads without races (``O_NOFOLLOW``, ``openat``
    and friends, file owners): POSIX systems."""
    return (hasattr(os, "O_NOFOLLOW") and hasattr(os, "geteuid") and os.open in os.supports_dir_fd
            and os.rename in os.supports_dir_fd and os.unlink in os.supports_dir_fd
            and os.stat in os.supports_dir_fd)


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (a cache shared by different machines
    must not hand one machine's binary to another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("flags", "model name", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_key(cc: str) -> str:
    """What the build depends on (source, flags, compiler, CPU, platform), hashed: part of the file name."""
    return hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS + OPENMP_FLAGS).encode(), cc.encode(),
                    _cpu_signature().encode(), sys.platform.encode(), platform.machine().encode()])
    ).hexdigest()[:16]


def _compile(cc: str, arch: list[str]) -> bytes:
    """The library built from :data:`SOURCE` with ``FLAGS + arch``. Raises :class:`_BuildFailed` if the compiler
    fails (with the first lines of what it said), cannot be run, or no temporary folder can be made for it.

    It is compiled in a fresh private folder (``tempfile.mkdtemp``, mode 0700) that nobody else can write to,
    and returned as bytes (empty if the compiler claimed success but wrote nothing); the folder is removed.
    """
    try:
        build = tempfile.mkdtemp(prefix="patchmmd-build-")
    except OSError as e:  # no usable temporary folder: nothing can be compiled
        raise _BuildFailed(f"no temporary folder to compile in ({e})") from None
    try:
        out = os.path.join(build, "kernels" + _SUFFIX)
        done = subprocess.run([*shlex.split(cc), *FLAGS, *arch, str(SOURCE), "-o", out, "-lm"], capture_output=True,
                              text=True, errors="replace", timeout=120)
        if done.returncode != 0:
            raise _BuildFailed(_compiler_said(done.stderr or done.stdout, done.returncode))
        try:
            fd = os.open(out, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC)
        except FileNotFoundError:
            return b""
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except subprocess.TimeoutExpired as e:
        raise _BuildFailed(f"no result after {e.timeout:g} s") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise _BuildFailed(f"could not be run ({e})") from None
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _compiler_said(output: str, returncode: int, limit: int = 200) -> str:
    """A failed build's reason in one short line: its first error lines (else its first lines), the source's path
    written ``kernels.c``, at most ``limit`` characters; the exit status when it said nothing."""
    lines = [ln.strip().replace(str(SOURCE), SOURCE.name) for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    text = " / ".join((errors or lines)[:2])
    if not text:
        return f"exit status {returncode}, no output"
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _check_private(st: os.stat_result, what: str, path: Path) -> None:
    """Raise :class:`_Untrusted` unless ``st`` is owned by the effective user and not writable by others."""
    if st.st_uid != os.geteuid():
        raise _Untrusted(f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise _Untrusted(f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}; "
                         "`chmod go-w` it if that is not intended)")


def _open_private_dir(folder: Path) -> int:
    """A descriptor of ``folder`` (created with mode 0700 if missing), only if it is a real folder (not a
    symbolic link) owned by the effective user that no one else can write.

    Raises :class:`_Untrusted` if it exists but fails these checks, :class:`OSError` if it cannot be made.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    if stat.S_ISLNK(os.lstat(folder).st_mode):
        raise _Untrusted(f"the cache folder {folder} is a symbolic link")
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | _CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise _Untrusted(f"the cache folder {folder} is not a folder")
        _check_private(st, "the cache folder", folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Longest wait, in seconds, for another process's lock of the cache folder (it holds it while it builds): past it
#: the caller goes on without the lock, which costs at most a build of its own (what is loaded is verified anyway).
_LOCK_WAIT = 300.0


@contextmanager
def _locked(dfd: int, shared: bool = False, wait: float | None = None) -> Iterator[bool]:
    """An advisory ``flock`` of the cache folder: shared to read, exclusive to build and write (none where
    unsupported, and none after ``wait`` seconds of waiting, by default :data:`_LOCK_WAIT`), so that a reader
    never pairs one process's library with another's record and a process that finds no library waits for the
    one being built. Yields whether the lock is held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    held, deadline = False, time.monotonic() + (_LOCK_WAIT if wait is None else wait)
    while True:
        try:
            fcntl.flock(dfd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            held = True
            break
        except BlockingIOError:  # held by another process: wait for it, within bounds
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        except OSError:  # a file system without flock
            break
    try:
        yield held
    finally:
        if held:
            fcntl.flock(dfd, fcntl.LOCK_UN)


def _read_private(dfd: int, folder: Path, name: str) -> bytes:
    """The bytes of ``name`` in the opened folder, read through one ``O_NOFOLLOW`` descriptor after checking
    that it is a regular file owned by the user and not writable by others (:class:`FileNotFoundError` if
    it is missing, :class:`_Untrusted` if it fails a check)."""
    if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
        raise _Untrusted(f"the cached file {folder / name} is a symbolic link")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC, dir_fd=dfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Untrusted(f"the cached file {folder / name} is not a regular file")
        _check_private(st, "the cached file", folder / name)
        return f.read()


def _unlink(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def _write_durably(dfd: int, name: str, data: bytes) -> None:
    """Write ``name`` in the opened folder atomically and durably: a fresh temporary file (``O_EXCL``), ``fsync``,
    rename into place, ``fsync`` of the folder."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o644, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        _unlink(dfd, tmp)
        raise
    try:
        os.fsync(dfd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass


def _record(key: str, cc: str, arch: list[str], data: bytes) -> dict:
    """What we built: stored beside the library, and the library is trusted only if its bytes match it."""
    return {"format": _RECORD_FORMAT, "key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(), "compiler": cc,
            "flags": [*FLAGS, *arch]}


def _matches(record: object, key: str, data: bytes) -> bool:
    """Whether ``data`` is what the record says we built for ``key`` from the current source."""
    return (isinstance(record, dict) and record.get("format") == _RECORD_FORMAT and record.get("key") == key
            and record.get("size") == len(data) and record.get("sha256") == hashlib.sha256(data).hexdigest()
            and record.get("source_sha256") == hashlib.sha256(SOURCE.read_bytes()).hexdigest())


def _read_cached(dfd: int, folder: Path, name: str, key: str) -> bytes | None:
    """The cached library's bytes if they match its record; ``None`` if there is no cached library. Raises
    :class:`_Untrusted` (owner, mode, link) or :class:`_Broken` (no record, or bytes that do not match it).
    The caller holds the folder's lock (:func:`_locked`)."""
    try:
        data = _read_private(dfd, folder, name)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(_read_private(dfd, folder, name + ".json"))
    except FileNotFoundError:
        raise _Broken(f"the cached library {folder / name} has no record") from None
    except ValueError:
        raise _Broken(f"the record of the cached library {folder / name} is damaged") from None
    if not _matches(record, key, data):
        raise _Broken(f"the cached library {folder / name} does not match its record")
    return data


#: A cached library of another build (another source, compiler, flags or CPU) whose modification time is older
#: than this many seconds is removed when a new one is cached: its ``mtime`` is refreshed when it is loaded
#: (at most once a day), so this is the time since it was last used.
_UNUSED_FOR = 30 * 86400
#: Temporary files older than this many seconds (a crashed write or load) are removed along with them.
_TEMPORARY_FOR = 3600


def _refresh(dfd: int, name: str) -> None:
    """Mark the cached library ``name`` as used (its ``mtime``, if over a day old; not where the cache cannot be
    written), so that :func:`_remove_stale` keeps it."""
    try:
        if time.time() - os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mtime > 86400:
            os.utime(name, dir_fd=dfd, follow_symlinks=False)
    except (OSError, NotImplementedError):  # a read-only cache, or no utimensat: it may be removed as stale one day
        pass


def _remove_stale(dfd: int, keep: str) -> None:
    """Remove what piles up in the cache folder: the libraries of other builds (and their records) unused for
    :data:`_UNUSED_FOR` seconds, and temporary files (``.kernels-*.tmp`` of an interrupted write, ``.load-*`` of
    an interrupted load) older than :data:`_TEMPORARY_FOR`. Only regular files of this user with the names this
    module gives are touched. The caller holds the folder's exclusive lock, so no other process is reading or
    writing a library or a record; no process maps a cached file itself (each loads a private copy, unlinked once
    loaded), and a fresh ``.load-*`` copy another process may be about to load is left alone."""
    try:
        names = os.listdir(dfd)
    except (OSError, TypeError):  # (TypeError: a platform that cannot list a folder by its descriptor)
        return
    now, libraries = time.time(), set()
    for entry in names:
        stem = entry[: -len(".json")] if entry.endswith(_SUFFIX + ".json") else entry
        if stem.startswith("kernels-") and stem.endswith(_SUFFIX) and stem != keep:
            libraries.add(stem)
            continue
        if entry.startswith((".kernels-", ".load-")) and entry.endswith((".tmp", _SUFFIX)):
            _remove_if_older(dfd, entry, now - _TEMPORARY_FOR)
    for lib in libraries:
        removed = _remove_if_older(dfd, lib, now - _UNUSED_FOR)
        if removed:
            _unlink(dfd, lib + ".json")
        elif removed is None:  # a record without its library: old records go
            _remove_if_older(dfd, lib + ".json", now - _UNUSED_FOR)


def _remove_if_older(dfd: int, name: str, cutoff: float) -> bool | None:
    """Unlink ``name`` in the opened folder if it is a regular file of this user modified before ``cutoff``:
    whether it was removed, ``None`` if there is no such file."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mtime < cutoff:
            _unlink(dfd, name)
            return True
    except FileNotFoundError:
        return None
    except OSError:
        pass
    return False


class _NoCopy(Exception):
    """No file could be made in a folder for :func:`_dlopen_copy` (read-only, full): ``error`` says why."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _dlopen_copy(dfd: int, folder: Path, data: bytes) -> ctypes.CDLL:
    """Load ``data`` (bytes already verified or just built) from a fresh private copy in the opened folder,
    reached through its descriptor (see the module docstring); the copy is unlinked once loaded.

    Where no file can be made in that folder (a read-only cache: a read-only mount, a container image's layer;
    a full disk) the copy is made in a private temporary folder of this process instead, removed once loaded,
    so that a verified library in a cache that cannot be written is still used (raises the first folder's
    :class:`OSError` if that fails too)."""
    try:
        return _dlopen_copy_in(dfd, folder, data)
    except _NoCopy as e:
        unwritable = e.error
    try:
        private = Path(tempfile.mkdtemp(prefix="patchmmd-load-"))
    except OSError:
        raise unwritable from None
    try:
        pfd = _open_private_dir(private)
        try:
            return _dlopen_copy_in(pfd, private, data)
        finally:
            os.close(pfd)
    except (_NoCopy, _Untrusted):
        raise unwritable from None
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _dlopen_copy_in(dfd: int, folder: Path, data: bytes) -> ctypes.CDLL:
    """:func:`_dlopen_copy` in the opened folder ``dfd`` only: :class:`_NoCopy` if the copy cannot be written."""
    name = f".load-{os.getpid()}-{secrets.token_hex(6)}{_SUFFIX}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o700, dir_fd=dfd)
    except OSError as e:
        raise _NoCopy(e) from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            raise _NoCopy(e) from None
        proc = Path(f"/proc/self/fd/{dfd}")
        if proc.is_dir():
            path = proc / name
        else:
            a, b = os.stat(folder), os.fstat(dfd)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                raise _Untrusted(f"the cache folder {folder} was replaced while in use")
            path = folder / name
        return ctypes.CDLL(str(path))
    finally:
        _unlink(dfd, name)


def _kernels_from(data: bytes, dfd: int, folder: Path, name: str) -> NativeKernels:
    """Load ``data`` and check it: the kernel symbols, then :func:`_self_check`. Raises :class:`_Broken`."""
    if not data:
        raise _Broken(f"{folder / name} is empty")
    try:
        lib = _dlopen_copy(dfd, folder, data)
    except OSError as e:
        raise _Broken(f"{folder / name} cannot be loaded ({e})") from None
    missing = [s for s in SYMBOLS if not hasattr(lib, s)]
    if missing:
        raise _Broken(f"{folder / name} lacks the kernels {', '.join(missing)}")
    # The coefficients and the self-check's cases are CPU tensors whatever the default device
    # (torch.set_default_device("cuda") must neither fail the load nor hand device memory to the C code).
    with torch.device("cpu"):
        nk = NativeKernels(lib, folder / name)
        ok = _self_check(nk)
    if not ok:
        raise _Broken(f"the compiled kernels {folder / name} failed their self-check against PyTorch")
    return nk


def _store(dfd: int, name: str, data: bytes, record: dict) -> None:
    """Cache a build that passed its checks: the library, then its record (each atomically and durably). The
    caller holds the folder's exclusive lock."""
    _write_durably(dfd, name, data)
    _write_durably(dfd, name + ".json", json.dumps(record, indent=1).encode())


def _discard(dfd: int, name: str) -> None:
    """Delete a cached library that failed verification, and its record (under the folder's exclusive lock)."""
    _unlink(dfd, name)
    _unlink(dfd, name + ".json")


def _warn(reasons: list[str], outcome: str, stacklevel: int = 5) -> None:
    # the caller of kernels(): _warn, _find_or_build, _load, kernels, it (one more from _in_use)
    warnings.warn(f"patchmmd: {'; '.join(reasons)}; {outcome}", RuntimeWarning, stacklevel=stacklevel)


class NativeKernels:
    """The loaded library and the threads that run it.

    Each kernel is called through its driver in ``kernels.c`` (``*_tasks``: the tasks ``t0 <= t < t1`` of one
    call, on ``nthreads`` threads), declared with typed ``ctypes`` signatures and called in one place each.
    When the library was compiled with OpenMP and that OpenMP runtime is PyTorch's own (:func:`_shared_openmp`),
    one call runs all the tasks on PyTorch's intra-op threads: the threads PyTorch's own operations just used,
    which otherwise keep spinning for a while and compete with ours. Otherwise the tasks are spread over a
    :class:`~concurrent.futures.ThreadPoolExecutor` (``ctypes`` releases the GIL), one driver call per task;
    no PyTorch call runs on a pool thread, so nothing depends on the thread-local state of autograd, dispatch
    or ``torch.compile``. Either way the split into tasks depends on the shapes only, so results do not depend
    on the thread count.
    """

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib, self.path = lib, path
        self.cos_coef, self.sin_coef = sincos_coefficients()
        p: Any = ctypes.c_void_p  # (Any: mypy cannot type a list of ctypes classes built by unpacking)
        i, q, f = ctypes.c_int, ctypes.c_int64, ctypes.c_float
        lib.patchmmd_openmp.argtypes, lib.patchmmd_openmp.restype = [], i
        tail = [p, q, i, i, i]  # work, work_stride, t0, t1, nthreads
        # img, img_stride, C, Hp, Wp, k, hc, wc, wcp, bh, bw, W, b, floor2d, groups, per, cc, sc, out_c, out_s,
        # out_stride
        lib.rff_block_sums_tasks.argtypes = [p, q, i, i, i, i, i, i, i, i, i, p, p, f, i, i, p, p, p, p, q, *tail]
        # img, img_stride, C, Hp, Wp, k, hc, wc, wcp, bh, bw, W, b, floor2d, m, cc, amp, phs, g_stride, rows, bands,
        # gimg, gimg_stride, band_stride, Wg
        lib.rff_grad_image_tasks.argtypes = [p, q, i, i, i, i, i, i, i, i, i, p, p, f, i, p, p, p, q, i, i, p, q, q, i,
                                             *tail]
        # in, in_stride, C, H, W, r, noff, per, dys, dxs, lk_box, ridge, max_shift, nlev, factors, kloc, w_l2,
        # w_local, inv2s2, out, out_stride, off_stride
        lib.aligned_scan_tasks.argtypes = [p, p, i, i, i, i, i, i, p, p, i, f, f, i, p, i, f, f, f, p, q, q, *tail]
        # C, H, W, lk_box, kloc, nlev, factors
        lib.aligned_scan_work.argtypes, lib.aligned_scan_work.restype = [i, i, i, i, i, i, p], q
        lib.aligned_grad_work.argtypes, lib.aligned_grad_work.restype = [i, i, i, i, i, i, p], q
        # in, in_stride, C, H, W, r, noff, dys, dxs, lk_box, ridge, max_shift, nlev, factors, kloc, w_l2, w_local,
        # inv2s2, gmap, gmap_stride, grad, grad_stride
        lib.aligned_grad_tasks.argtypes = [p, p, i, i, i, i, i, p, p, i, f, f, i, p, i, f, f, f, p, q, p, q, *tail]
        # t, t_stride, C, H, W, r, b, gx, gy, ten
        lib.fit_inputs_tasks.argtypes = [p, q, i, i, i, i, i, p, p, p, *tail]
        lib.fit_inputs_work.argtypes, lib.fit_inputs_work.restype = [i, i, i], q  # H, W, b
        # x, y, ym, C, H, W, g, k, gs, out
        lib.ssim_tasks.argtypes = [p, p, p, i, i, i, p, i, p, p, *tail]
        lib.ssim_work.argtypes, lib.ssim_work.restype = [i, i], q  # W, k
        for fn in (lib.rff_block_sums_tasks, lib.rff_grad_image_tasks, lib.aligned_scan_tasks, lib.aligned_grad_tasks,
                   lib.fit_inputs_tasks, lib.ssim_tasks):
            fn.restype = None
        #: Whether the drivers run on PyTorch's own OpenMP threads (else on a pool of this object's).
        self.openmp = bool(lib.patchmmd_openmp()) and _shared_openmp()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size, self._pool_pid = 0, 0  # its max_workers, and the process that made it
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------- threads
    def _run(self, driver: Callable[[int, int, int, int], None], ntasks: int, slot_floats: int) -> None:
        """Run ``driver(t0, t1, nthreads, work)`` over the tasks ``range(ntasks)``, with a float32 work buffer of
        ``slot_floats`` values per thread (``work`` is the address of the first thread's)."""
        threads = max(1, min(torch.get_num_threads(), ntasks))
        work = torch.empty(threads, max(1, slot_floats), dtype=torch.float32, device="cpu")  # whatever the default
        w0, ws = work.data_ptr(), work.stride(0) * work.element_size()
        if self.openmp or threads == 1:
            driver(0, ntasks, threads, w0)
            return
        self._map(lambda slot, t: driver(t, t + 1, 1, w0 + slot * ws), ntasks, threads)

    def _map(self, fn: Callable[[int, int], None], ntasks: int, threads: int) -> None:
        """Run ``fn(slot, t)`` for every task ``t < ntasks`` on ``threads`` threads: the calling thread (slot 0)
        and ``threads - 1`` pool workers (slots 1, 2, ...) take the next task from a shared counter until none
        is left. ``slot`` says which per-thread work buffer to use. Returns only when every worker is done,
        also when a task raised (the first error is re-raised then)."""
        pool = self._pool_for(threads - 1)
        counter = itertools.count()  # next() on it is atomic under the GIL

        def worker(slot: int) -> None:
            while (t := next(counter)) < ntasks:
                fn(slot, t)

        helpers = [pool.submit(worker, s) for s in range(1, threads)]
        try:
            worker(0)
        finally:
            for f in helpers:
                f.result()

    def _pool_for(self, workers: int) -> ThreadPoolExecutor:
        """This process's pool, with at least ``workers`` threads (a caller submits only as many jobs as it needs).

        Several Python threads may call the kernels at once with different thread counts, so a pool that was
        handed out is never shut down (a caller may be about to submit to it): the pool only grows. When more
        workers are needed a bigger one replaces it and the old one is dropped, not shut down: its threads exit
        once the last caller holding it is done and it is garbage-collected (the executor's weak reference wakes
        them). A forked child inherits the pool object but not its threads: it makes its own.
        """
        pid = os.getpid()
        with self._lock:
            if self._pool is None or self._pool_pid != pid or self._pool_size < workers:
                self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="patchmmd")
                self._pool_size, self._pool_pid = max(1, workers), pid
            return self._pool

    # ------------------------------------------------------------------------------ the computations
    def block_sums(self, xp: torch.Tensor, matrix: torch.Tensor, hc: int, wc: int, bh: int, bw: int,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block sums of ``cos(z)`` and ``sin(z)``: ``xp`` ``(N, C, Hp, Wp)`` float32 contiguous, padded
        so that ``Wp >= round_up(wc, VECTOR) + k - 1``; ``matrix`` ``(m, C k² + 1)`` with ``m`` a multiple of
        :data:`BLOCK_FEATURES` (filters, then the phase). Returns two ``(N, m, hc/bh, wc/bw)`` tensors."""
        return self.block_sums_split(xp, matrix[:, :-1].contiguous(), matrix[:, -1].contiguous(), hc, wc, bh, bw, k)

    def block_sums_split(self, xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, hc: int, wc: int,
                         bh: int, bw: int, k: int, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`block_sums` with the filters ``(m, C k²)`` and phases ``(m,)`` apart (contiguous float32).

        ``floor`` > 0: the angles of contrast-normalised patches, ``z_j = s · weight_j . P + phase_j`` with
        ``s = 1 / sqrt(‖Π P‖² + C k² floor²)`` of each patch (the filters projected by Π for the normalised
        patch's angle, docs/method.md §3.3).
        """
        n, c, hp, wp = xp.shape
        m = weight.shape[0]
        wcp = _round_up(wc, VECTOR)
        out_c = xp.new_empty(n, m, hc // bh, wc // bw)
        out_s = torch.empty_like(out_c)
        groups = m // BLOCK_FEATURES
        # Tasks: images x runs of `per` frequency groups, about 4 a thread (whole images when there are enough);
        # every feature's sums are computed alone, so the split does not change the values.
        threads = max(1, torch.get_num_threads())
        per = max(1, math.ceil(groups * n / (4 * threads))) if n < 4 * threads else groups
        ntasks = n * -(-groups // per)
        # A thread's work: the accumulators, and (contrast-normalised patches) one band of rows' factors s.
        slot = (2 * BLOCK_FEATURES + (bh if floor > 0 else 0)) * wcp

        def driver(t0: int, t1: int, nthreads: int, work: int) -> None:
            self.lib.rff_block_sums_tasks(
                xp.data_ptr(), xp.stride(0), c, hp, wp, k, hc, wc, wcp, bh, bw, weight.data_ptr(), phase.data_ptr(),
                c * k * k * floor * floor, groups, per, self.cos_coef.data_ptr(),
                self.sin_coef.data_ptr(), out_c.data_ptr(), out_s.data_ptr(), out_c.stride(0), work,
                slot, t0, t1, nthreads,
            )

        self._run(driver, ntasks, slot)
        return out_c, out_s

    def ssim(self, x: torch.Tensor, y: torch.Tensor, y_moments: torch.Tensor | None, taps: torch.Tensor,
             grad: torch.Tensor | None = None) -> torch.Tensor:
        """SSIM_u of every channel and valid position, ``(N, C, H - k + 1, W - k + 1)``, of ``x`` and ``y`` (``(N, C, H,
        W)``, internal scale) under the separable window ``taps`` (``k``), the target's moments ``y_moments`` (``(N,
        2 C, H - k + 1, W - k + 1)``) read instead of filtered when given; with ``grad`` (the gradient of those
        values), the gradient with respect to ``x`` instead. Contiguous float32 throughout (core/ssim.py)."""
        n, c, h, w = x.shape
        k = taps.numel()
        out = x.new_empty(n, c, h, w) if grad is not None else x.new_empty(n, c, h - k + 1, w - k + 1)
        slot = int(self.lib.ssim_work(w, k))

        def driver(t0: int, t1: int, nthreads: int, work: int) -> None:
            self.lib.ssim_tasks(
                x.data_ptr(), y.data_ptr(), None if y_moments is None else y_moments.data_ptr(), c, h, w,
                taps.data_ptr(), k, None if grad is None else grad.data_ptr(), out.data_ptr(), work, slot, t0, t1,
                nthreads,
            )

        self._run(driver, n * c, slot)
        return out

    def grad_image(self, xp: torch.Tensor, matrix: torch.Tensor, hc: int, wc: int, bh: int, bw: int, k: int,
                   g_cos: torch.Tensor, g_sin: torch.Tensor) -> torch.Tensor:
        """Gradient with respect to ``xp`` (same shape), given the gradients of the block sums of ``cos`` and
        ``sin`` (``(N, m, hc/bh, wc/bw)`` each)."""
        amp, phs = grad_polar(g_cos, g_sin)
        return self.grad_image_polar(xp, matrix[:, :-1].contiguous(), matrix[:, -1].contiguous(), amp, phs,
                                     hc, wc, bh, bw, k)

    def grad_image_polar(self, xp: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor, amp: torch.Tensor,
                         phs: torch.Tensor, hc: int, wc: int, bh: int, bw: int, k: int,
                         floor: float = 0.0) -> torch.Tensor:
        """:meth:`grad_image` from the gradients in polar form (:func:`grad_polar`, contiguous float32), the
        filters and phases apart, for :meth:`block_sums_split` with its ``floor`` (0: the patches as they are;
        > 0: contrast-normalised patches, the gradient through their factor ``s`` included)."""
        n, c, hp, wp = xp.shape
        m = weight.shape[0]
        wcp = _round_up(wc, VECTOR)
        # Few images: split each into bands of rows so that threads have work. The split depends on the
        # shapes only, never on the thread count, so the result does not either.
        rows = hc if n >= 4 else max(k, math.ceil(hc / 8))
        starts = list(range(0, hc, rows))
        # One buffer per (image, band of rows), zeroed by its task: bands overlap by k - 1 rows in the image.
        out = xp.new_empty(n, len(starts), c, rows + k - 1, wp)
        slot = 2 * m * wcp + (c * k * k + c) * VECTOR

        def driver(t0: int, t1: int, nthreads: int, work: int) -> None:
            self.lib.rff_grad_image_tasks(
                xp.data_ptr(), xp.stride(0), c, hp, wp, k, hc, wc, wcp, bh, bw, weight.data_ptr(), phase.data_ptr(),
                c * k * k * floor * floor, m, self.cos_coef.data_ptr(), amp.data_ptr(), phs.data_ptr(),
                amp.stride(0), rows, len(starts), out.data_ptr(), out.stride(0), out.stride(1), wp, work, slot, t0, t1,
                nthreads,
            )

        self._run(driver, n * len(starts), slot)
        if len(starts) == 1:
            grad = out[:, 0]
            return grad if grad.shape[-2] == hp else F.pad(grad, (0, 0, 0, hp - grad.shape[-2]))
        grad = xp.new_zeros(n, c, hp, wp)
        for t, y0 in enumerate(starts):
            h = min(rows, hc - y0) + k - 1
            grad[:, :, y0 : y0 + h] += out[:, t, :, :h]
        return grad

    def aligned_scan(
        self, x: torch.Tensor, yp: torch.Tensor, fit: Sequence[torch.Tensor] | None, *, radius: int,
        offsets: Sequence[tuple[int, int]], lk_box: int, ridge: float, max_shift: float, factors: Sequence[int],
        local_patch_size: int, weight_l2: float, weight_local: float, inv2s2: float,
    ) -> torch.Tensor:
        """The per-pixel aligned maps of every offset at every level (``aligned_scan`` of ``kernels.c``):
        ``(N, len(offsets), sum_l (H // f_l) (W // f_l))``, the levels one after the other.

        ``x`` ``(N, C, H, W)`` and ``yp`` (``y`` replicate-padded by ``radius``) contiguous float32; ``fit``
        (the sub-pixel fit, or ``None``): x's two gradients ``(N, C, H, W)``, y's two padded gradients, x's
        structure tensor ``(N, 3, H, W)`` and y's padded one. A task is an image and a run of offsets (all of
        them when there are images enough for the threads), which the kernel takes band of rows by band of rows:
        every offset reads a band's inputs while they are in the cache. Each offset's maps are computed alone, so
        the split does not change the values."""
        n, c, h, w = x.shape
        out = x.new_empty(n, len(offsets), sum((h // f) * (w // f) for f in factors))
        ptrs, strides, dys, dxs, fac = _scan_arguments(x, yp, fit, offsets, factors)
        slot = self.lib.aligned_scan_work(c, h, w, lk_box, local_patch_size, len(factors), fac)
        threads = max(1, torch.get_num_threads())
        runs = min(len(offsets), -(-2 * threads // max(1, n)))  # about two tasks a thread
        per = -(-len(offsets) // runs)

        def driver(t0: int, t1: int, nthreads: int, work: int) -> None:
            self.lib.aligned_scan_tasks(
                ptrs, strides, c, h, w, radius, len(offsets), per, dys, dxs, lk_box, ridge, max_shift, len(factors),
                fac, local_patch_size, weight_l2, weight_local, inv2s2, out.data_ptr(), out.stride(0),
                out.stride(1), work, slot, t0, t1, nthreads,
            )

        self._run(driver, n * -(-len(offsets) // per), slot)
        return out

    def aligned_grad(
        self, x: torch.Tensor, yp: torch.Tensor, fit: Sequence[torch.Tensor] | None, gmap: torch.Tensor, *,
        radius: int, offsets: Sequence[tuple[int, int]], lk_box: int, ridge: float, max_shift: float,
        factors: Sequence[int], local_patch_size: int, weight_l2: float, weight_local: float, inv2s2: float,
    ) -> torch.Tensor:
        """The gradient with respect to ``x`` (``(N, C, H, W)``) of ``sum(gmap * maps)``, ``maps`` the output of
        :meth:`aligned_scan` at ``offsets`` (``aligned_grad`` of ``kernels.c``; the sub-pixel correction is a
        constant). ``gmap``: ``(N, len(offsets), sum_l (H // f_l) (W // f_l))`` contiguous float32; other
        arguments as for :meth:`aligned_scan`. One task per image: it takes the offsets a few at a time, the
        image band of rows by band of rows for them as the scan does, keeping their level means, then forms each
        offset's gradient from those."""
        n, c, h, w = x.shape
        grad = torch.empty_like(x)
        ptrs, strides, dys, dxs, fac = _scan_arguments(x, yp, fit, offsets, factors)
        slot = self.lib.aligned_grad_work(c, h, w, lk_box, local_patch_size, len(factors), fac)

        def driver(t0: int, t1: int, nthreads: int, work: int) -> None:
            self.lib.aligned_grad_tasks(
                ptrs, strides, c, h, w, radius, len(offsets), dys, dxs, lk_box, ridge, max_shift, len(factors), fac,
                local_patch_size, weight_l2, weight_local, inv2s2, gmap.data_ptr(), gmap.stride(0), grad.data_ptr(),
                grad.stride(0), work, slot, t0, t1, nthreads,
            )

        self._run(driver, n, slot)
        return grad

    def fit_inputs(self, t: torch.Tensor, *, radius: int, lk_box: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """The sub-pixel fit's inputs of the images ``t`` (``(N, C, H, W)`` contiguous float32), each
        replicate-padded by ``radius`` (``fit_inputs`` of ``kernels.c``): the central differences along the width
        and the height (``(N, C, H + 2 radius, W + 2 radius)`` each) and the ``lk_box`` box means of the
        structure tensor's three products summed over channels (``(N, 3, ...)``), as
        :func:`patchmmd.core.aligned._gradients` and :func:`~patchmmd.core.aligned.structure_tensor` followed by
        a replicate padding compute them. One task per image."""
        n, c, h, w = t.shape
        hp, wp = h + 2 * radius, w + 2 * radius
        gx, gy, ten = t.new_empty(n, c, hp, wp), t.new_empty(n, c, hp, wp), t.new_empty(n, 3, hp, wp)
        slot = int(self.lib.fit_inputs_work(h, w, lk_box))

        def driver(t0: int, t1: int, nthreads: int, work: int) -> None:
            self.lib.fit_inputs_tasks(t.data_ptr(), t.stride(0), c, h, w, radius, lk_box, gx.data_ptr(),
                                      gy.data_ptr(), ten.data_ptr(), work, slot, t0, t1, nthreads)

        self._run(driver, n, slot)
        return gx, gy, ten


def _scan_arguments(x: torch.Tensor, yp: torch.Tensor, fit: Sequence[torch.Tensor] | None,
                    offsets: Sequence[tuple[int, int]], factors: Sequence[int]) -> tuple[Any, Any, Any, Any, Any]:
    """The ``ctypes`` arguments shared by ``aligned_scan_tasks`` and ``aligned_grad_tasks``: the eight input
    pointers and their per-image strides (``x``, ``yp``, the fit's six or NULL), the offsets' rows and
    columns, and the level factors."""
    inputs = [x, yp, *(fit or ())]
    ptrs = (ctypes.c_void_p * 8)(*[t.data_ptr() for t in inputs], *[None] * (8 - len(inputs)))
    strides = (ctypes.c_int64 * 8)(*[t.stride(0) for t in inputs], *[0] * (8 - len(inputs)))
    dys = (ctypes.c_int * len(offsets))(*[o[0] for o in offsets])
    dxs = (ctypes.c_int * len(offsets))(*[o[1] for o in offsets])
    fac = (ctypes.c_int * len(factors))(*factors)
    return ptrs, strides, dys, dxs, fac


def _shared_openmp() -> bool:
    """Whether exactly one OpenMP runtime is mapped into this process (read from ``/proc/self/maps``): then the
    library's OpenMP is PyTorch's own and its threads are PyTorch's intra-op threads. Two runtimes (a compiler
    whose OpenMP is not the one PyTorch ships) would each keep a team of threads competing for the cores, and
    where it cannot be told (no ``/proc``) the answer is no."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "omp" in line}
    except OSError:
        return False
    runtimes = {p for p in paths if os.path.basename(p).startswith(("libgomp", "libomp", "libiomp"))}
    return len(runtimes) == 1


def grad_polar(g_cos: torch.Tensor, g_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of the block sums of ``cos z`` and ``sin z`` in the form the backward kernel takes:
    ``dz = g_sin cos z - g_cos sin z = amp cos(z + phs)`` (one cosine per angle in the kernel)."""
    return torch.hypot(g_cos, g_sin).contiguous(), torch.atan2(g_cos, g_sin).contiguous()


def _round_up(v: int, to: int) -> int:
    return -(-v // to) * to


def _self_check(nk: NativeKernels) -> bool:
    """The compiled kernels against PyTorch on small random cases (catches a miscompiled library). The cases are
    float32 with autocast off whatever the caller has set: a default dtype of float64 or an autocast region around
    the first call must not make a correct build look wrong (and have it deleted and rebuilt)."""
    with torch.autocast("cpu", enabled=False):
        g = torch.Generator().manual_seed(0)
        return (_self_check_rff(nk, g) and _self_check_normalized(nk, g) and _self_check_scan(nk, g)
                and _self_check_ssim(nk, g))


def _self_check_rff(nk: NativeKernels, g: torch.Generator) -> bool:
    """:meth:`NativeKernels.block_sums` and :meth:`NativeKernels.grad_image` against PyTorch."""
    k, hc, wc, bh, bw = 3, 8, 20, 4, 5
    x = torch.rand(1, 2, hc + k - 1, _round_up(wc, VECTOR) + k - 1, generator=g, dtype=torch.float32)
    matrix = torch.randn(BLOCK_FEATURES, 2 * k * k + 1, generator=g, dtype=torch.float32) * 3
    sc, ss = nk.block_sums(x, matrix, hc, wc, bh, bw, k)
    cols = torch.nn.functional.unfold(x[..., : wc + k - 1], k)
    z = (matrix[:, :-1] @ cols + matrix[:, -1:]).view(1, -1, hc // bh, bh, wc // bw, bw)
    ref_c, ref_s = torch.cos(z).sum((3, 5)), torch.sin(z).sum((3, 5))
    gc, gs = torch.randn(2, 1, BLOCK_FEATURES, hc // bh, wc // bw, generator=g, dtype=torch.float32)
    grad = nk.grad_image(x, matrix, hc, wc, bh, bw, k, gc, gs)
    up = lambda t: t.repeat_interleave(bh, -2).repeat_interleave(bw, -1).reshape(1, BLOCK_FEATURES, -1)  # noqa: E731
    dz = up(gs) * torch.cos(z).reshape(1, BLOCK_FEATURES, -1) - up(gc) * torch.sin(z).reshape(1, BLOCK_FEATURES, -1)
    ref_g = F.pad(F.fold(matrix[:, :-1].t() @ dz, (hc + k - 1, wc + k - 1), k), (0, x.shape[-1] - wc - k + 1))
    return bool(
        torch.allclose(sc, ref_c, atol=1e-4) and torch.allclose(ss, ref_s, atol=1e-4)
        and torch.allclose(grad, ref_g, atol=1e-3)
    )


def _self_check_ssim(nk: NativeKernels, g: torch.Generator) -> bool:
    """:meth:`NativeKernels.ssim` (values, and the gradient for a random upstream gradient) against the same
    formulas in float64: the moments' gradients of core/ssim.py's closed form, spread back with transposed
    convolutions (no autograd)."""
    from ..core.ssim import _moments, _ssim_parts, _window, moment_grads

    x, y = torch.rand(2, 1, 2, 16, 19, generator=g, dtype=torch.float32) * 2 - 1
    taps = _window(torch.float32, torch.device("cpu"))
    k = taps.numel()
    gs = torch.randn(1, 2, 16 - k + 1, 19 - k + 1, generator=g, dtype=torch.float32)
    values, grad = nk.ssim(x, y, None, taps), nk.ssim(x, y, None, taps, gs)
    t64, gs64 = taps.double(), gs.double()
    xd, yd, mx, my, exx, eyy, exy = _moments(x.double(), y.double(), None, t64)
    a, b, p, q = _ssim_parts(mx, my, exx, eyy, exy)
    ref = a * b / (p * q)
    cols, rows = t64.view(1, 1, k, 1).expand(2, 1, k, 1), t64.view(1, 1, 1, k).expand(2, 1, 1, k)
    spread = [F.conv_transpose2d(F.conv_transpose2d(d, cols, groups=2), rows, groups=2)
              for d in moment_grads(mx, my, a, b, p, q, ref, gs64)[:3]]
    ref_g = 0.5 * (spread[0] + 2 * xd * spread[1] + yd * spread[2])
    return bool(torch.allclose(values.double(), ref, atol=1e-5)
                and torch.allclose(grad.double(), ref_g, atol=1e-4 * float(ref_g.abs().max())))


def _self_check_normalized(nk: NativeKernels, g: torch.Generator) -> bool:
    """The kernels on contrast-normalised patches against the same sums and their gradient in float64, in closed
    form from the explicit patches (no autograd: the check may run under torch.no_grad or inference mode)."""
    k, hc, wc, bh, bw, c, floor = 3, 4, 40, 2, 8, 2, 0.05
    wcp = _round_up(wc, VECTOR)
    x = torch.rand(2, c, hc + k - 1, wcp + k - 1, generator=g, dtype=torch.float32)
    x[:, :, :, :12] = 0.25 + 0.001 * x[:, :, :, :12]  # nearly flat: the floor decides
    weight = torch.randn(BLOCK_FEATURES, c * k * k, generator=g, dtype=torch.float32) * 3
    phase = torch.rand(BLOCK_FEATURES, generator=g, dtype=torch.float32) * 6
    sc, ss = nk.block_sums_split(x, weight, phase, hc, wc, bh, bw, k, floor)
    gc, gs = torch.randn(2, 2, BLOCK_FEATURES, hc // bh, wc // bw, generator=g, dtype=torch.float32)
    gx = nk.grad_image_polar(x, weight, phase, *grad_polar(gc, gs), hc, wc, bh, bw, k, floor)
    w64 = weight.double()
    p = F.unfold(x[..., : wc + k - 1].double(), k).view(2, c, k * k, -1)
    cp = (p - p.mean(dim=2, keepdim=True)).reshape(2, c * k * k, -1)  # Π p
    s = torch.rsqrt(cp.pow(2).sum(1, keepdim=True) + c * k * k * floor**2)  # (2, 1, hc wc)
    a = w64 @ p.reshape(2, c * k * k, -1)
    z = (a * s + phase.double().view(-1, 1)).view(2, -1, hc, wc)
    blocks = (2, BLOCK_FEATURES, hc // bh, bh, wc // bw, bw)
    ref_c, ref_s = torch.cos(z).view(blocks).sum((3, 5)), torch.sin(z).view(blocks).sum((3, 5))
    up = lambda t: t.double().repeat_interleave(bh, -2).repeat_interleave(bw, -1)  # noqa: E731
    dz = (up(gs) * torch.cos(z) - up(gc) * torch.sin(z)).reshape(2, BLOCK_FEATURES, -1)  # dL/dz
    g_s = (dz * a).sum(1, keepdim=True)  # dL/ds
    g_p = s * (w64.t() @ dz) - g_s * s.pow(3) * cp  # ds/dp = -s³ Π p
    ref_gx = F.pad(F.fold(g_p, (hc + k - 1, wc + k - 1), k), (0, x.shape[-1] - wc - k + 1))
    return bool(
        torch.allclose(sc.double(), ref_c, atol=1e-4) and torch.allclose(ss.double(), ref_s, atol=1e-4)
        and torch.allclose(gx.double(), ref_gx, atol=1e-3 * float(ref_gx.abs().max()))
    )


def _self_check_scan(nk: NativeKernels, g: torch.Generator) -> bool:
    """:meth:`NativeKernels.aligned_scan` against the PyTorch functions it fuses, with and without the fit, and
    :meth:`NativeKernels.fit_inputs` against the fit's inputs computed by PyTorch."""
    from ..core.aligned import _gradients, aligned_map, displacement_correction, structure_tensor
    from ..core.scale import downsample

    x, y = torch.rand(2, 1, 2, 12, 10, generator=g, dtype=torch.float32) * 2 - 1
    pad = lambda t: F.pad(t, (1, 1, 1, 1), mode="replicate").contiguous()  # noqa: E731
    gx, gy = _gradients(x), _gradients(y)
    tx, ty = structure_tensor(gx, 3), structure_tensor(gy, 3)
    fit = [gx[0], gx[1], pad(gy[0]), pad(gy[1]), tx, pad(ty)]
    yp, read = pad(y), (lambda t: t[..., 2:14, 0:10])  # offset (1, -1)
    ok = True
    for with_fit in (False, True):
        out = nk.aligned_scan(x, yp, fit if with_fit else None, radius=1, offsets=[(1, -1)], lk_box=3, ridge=1e-3,
                              max_shift=1.0, factors=[1, 2], local_patch_size=3, weight_l2=0.5, weight_local=2.0,
                              inv2s2=50.0)
        e = x - read(yp)
        if with_fit:
            e = e - displacement_correction(e, gx, (read(fit[2]), read(fit[3])), tx, read(fit[5]), window=3)
        # inv2s2 = 50 is local_sigma 0.1 / 9 on 3x3 patches: s = 0.1, 1 / (2 s²) = 50
        ref = [aligned_map(downsample(e, f), weight_l2=0.5, weight_local=2.0, local_patch_size=3,
                           local_sigma=0.1 / 9).flatten(1) for f in (1, 2)]
        ok = ok and torch.allclose(out[:, 0], torch.cat(ref, dim=1), rtol=1e-4, atol=1e-6)
    fx, fy, ft = nk.fit_inputs(y.contiguous(), radius=1, lk_box=3)
    return ok and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip((fx, fy, ft), fit[2:4] + fit[5:],
                                                                                 strict=True))


_ENABLED = [True]
#: Held while :func:`_load` runs: the first call's build is done once, however many threads ask at once.
_LOADING = threading.RLock()


def _new_loading_lock() -> None:
    """A forked child's lock (another thread of the parent may have held it at the fork, and never releases it
    in the child)."""
    global _LOADING
    _LOADING = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_loading_lock)


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


def _turned_off() -> str | None:
    """``PATCHMMD_NATIVE=<value>`` when that variable turns the kernels off, else ``None``."""
    value = os.environ.get("PATCHMMD_NATIVE", "1").strip()
    return f"PATCHMMD_NATIVE={value}" if value.lower() in ("0", "false", "no", "off") else None


def kernels() -> NativeKernels | None:
    """The compiled kernels, or ``None`` where they are unavailable or turned off (``PATCHMMD_NATIVE=0``,
    :func:`disabled`)."""
    if not _ENABLED[-1] or _turned_off():
        return None
    with _LOADING:  # threads that ask at once wait for the one build (not one build each)
        return _load()


def status() -> str:
    """Whether the compiled kernels are in use, in a line: ``in use (...)`` (how the work is split, on how many
    threads) or ``off: <why>`` (turned off, no compiler, this platform, the build failed, ...). Loads them (once
    per process, see :func:`kernels`) unless they are turned off."""
    off = _turned_off() or (None if _ENABLED[-1] else "turned off here by patchmmd._native.disabled()")
    if off:
        return f"off: {off}"
    with _LOADING:
        nk = _load()
    if nk is None:
        return f"off: {_WHY_NOT[0] or 'not loaded'}"
    threads = torch.get_num_threads()
    how = "OpenMP on PyTorch's threads" if nk.openmp else "thread pool"
    return f"in use ({how}, {threads} thread{'s' if threads != 1 else ''})"


#: Why the last run of :func:`_load` gave no kernels ("" when it gave them): the one record of the outcome,
#: said by :func:`status`.
_WHY_NOT = [""]


@lru_cache(maxsize=1)
def _load() -> NativeKernels | None:
    """The compiled kernels, or ``None`` (the reason recorded in :data:`_WHY_NOT`): see :func:`_find_or_build`."""
    nk, why = _find_or_build()
    _WHY_NOT[0] = why
    return nk


def _find_or_build() -> tuple[NativeKernels | None, str]:
    """Find, verify and load the cached library, or build, check and cache it (see the module docstring): the
    kernels and ``""``, or ``None`` and why not (said in a warning too, except where nothing can be built: no
    compiler, no source, a platform without the secure file-system calls)."""
    if not _secure_fs():
        return None, ("this platform lacks the file-system calls that let the loader check what it loads "
                      "(O_NOFOLLOW, openat, file owners)")
    if not SOURCE.exists():
        return None, f"the kernels' source {SOURCE} is missing"
    cc = _compiler()
    wanted = os.environ.get("CC", "").strip()
    if wanted and cc is not None and _command_line(wanted) is None:  # the user's choice passed over: said
        _warn([f"$CC ({wanted!r}) names no executable found"], f"using {cc} instead")
    if cc is None:
        return None, "no C compiler found (looked for $CC, cc, gcc, clang)"
    key = _cache_key(cc)
    name = f"kernels-{key}{_SUFFIX}"
    refused: list[str] = []  # security refusals: always said (once)
    unusable: list[str] = []  # cache folders that cannot be made or opened (not a folder, no permission)
    dfd, folder, private = -1, Path(), False
    for candidate in _cache_dirs():
        try:
            dfd, folder = _open_private_dir(candidate), candidate
            break
        except _Untrusted as e:
            refused.append(f"{e}: not used")
        except OSError as e:  # said only if no folder is usable (the defaults fall back to the next one silently)
            unusable.append(f"the cache folder {candidate} cannot be used ({e})")
    if dfd < 0:
        refused += unusable  # each new process would compile again, silently slower to start: said
        try:
            folder, private = Path(tempfile.mkdtemp(prefix="patchmmd-")), True
            dfd = _open_private_dir(folder)
        except (OSError, _Untrusted) as e:
            why = f"no private folder for the compiled kernels ({e})"
            _warn([*refused, why], "using PyTorch")
            return None, why
        if refused:
            refused.append("compiling into a private temporary folder for this process instead (every new process "
                           "compiles them again)")
    problems: list[str] = []  # said only if no working kernels come out of this
    wait = _LOCK_WAIT  # for both locks together: the exclusive one is not waited for after the shared one timed out
    try:
        try:
            with _locked(dfd, shared=True) as held:  # (waits while another process builds: then its library is found)
                wait = _LOCK_WAIT if held else 0.0
                data = _read_cached(dfd, folder, name, key)
            if data is not None:
                return _in_use(_kernels_from(data, dfd, folder, name), dfd, name, refused)
        except (_Untrusted, _Broken, OSError):
            pass  # looked at again below, under the exclusive lock, and said from there
        # One process builds at a time: one that waited here finds the library the other cached.
        with _locked(dfd, wait=wait) as held:
            try:
                data = _read_cached(dfd, folder, name, key)
                if data is not None:
                    return _in_use(_kernels_from(data, dfd, folder, name), dfd, name, refused)
            except (_Untrusted, _Broken, OSError) as e:
                reason = (str(e) if not isinstance(e, OSError)
                          else f"the cached library {folder / name} is unreadable ({e})")
                (refused if isinstance(e, _Untrusted) else problems).append(reason)
                try:
                    _discard(dfd, name)
                except OSError:
                    pass
            # rebuild once: with OpenMP and -march=native, else without one or both of them
            failed = ""  # what the compiler said the last time it failed
            for arch in (["-march=native", *OPENMP_FLAGS], ["-march=native"], [*OPENMP_FLAGS], []):
                try:
                    data = _compile(cc, arch)
                except _BuildFailed as e:
                    failed = f"the build failed ({' '.join([cc, *arch])}: {e})"
                    continue
                try:
                    nk = _kernels_from(data, dfd, folder, name)
                except (_Untrusted, _Broken) as e:
                    problems.append(f"the new build ({' '.join(arch) or 'no -march'}): {e}")
                    continue
                said = list(refused)
                if not private:
                    try:
                        _store(dfd, name, data, _record(key, cc, arch, data))
                        if held:  # (only under the exclusive lock: another process may be reading otherwise)
                            _remove_stale(dfd, name)
                    except OSError as e:  # said: each new process would compile again, silently slower to start
                        said.append(f"could not cache the compiled kernels in {folder} ({e}); every new process "
                                    "compiles them again")
                if said:
                    _warn(said, "the compiled kernels are in use")
                return nk, ""
        reasons = [failed, *problems] if failed else problems
        _warn([*refused, *reasons], "using PyTorch")
        return None, "; ".join(reasons)
    finally:
        os.close(dfd)
        if private:
            shutil.rmtree(folder, ignore_errors=True)


def _in_use(nk: NativeKernels, dfd: int, name: str, refused: list[str]) -> tuple[NativeKernels, str]:
    """The outcome of :func:`_find_or_build` for kernels loaded from the cache: marked as used, refusals said."""
    _refresh(dfd, name)
    if refused:
        _warn(refused, "the compiled kernels are in use", stacklevel=6)
    return nk, ""


# The PyTorch operators (``torch.ops.patchmmd.*``), registered on import; they use the names above.
from . import ops as ops  # noqa: E402
from .ops import aligned_grad as aligned_grad  # noqa: E402
from .ops import aligned_scan as aligned_scan  # noqa: E402
from .ops import fit_inputs as fit_inputs  # noqa: E402
from .ops import rff_sums as rff_sums  # noqa: E402
from .ops import rff_sums_grad as rff_sums_grad  # noqa: E402
from .ops import ssim_map as ssim_map  # noqa: E402
from .ops import ssim_map_grad as ssim_map_grad  # noqa: E402
