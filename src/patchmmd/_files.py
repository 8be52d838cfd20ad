"""Writing files durably and atomically, and cleaning up after a writer that was killed: the package's one way to
replace a file (batch scoring's outputs and journals, the evaluation caches, training checkpoints, saved images).

A file is written to a temporary file in its folder (``.NAME.XXXXXXXX.tmp``), fsynced, given the mode of any new
file and renamed over the target (then the folder is fsynced): the target is the old file or the new one, never
half of one. :func:`remove_stale_temporaries` / :func:`remove_stale_temporaries_in` remove the temporaries a
killed writer left, for callers that hold the lock of what they write.

This module needs only the standard library: low-level modules (:mod:`patchmmd.io`) use it without loading the
scoring package, which re-exports it (:mod:`patchmmd.scoring.output`).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "creation_mode", "remove_stale_temporaries",
           "remove_stale_temporaries_in"]


def creation_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the process's umask.

    Example:
        >>> creation_mode() & ~0o666
        0
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it; set back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` by a file holding ``text`` (UTF-8) atomically: temp file, fsync, ``os.replace``.

    The file gets the mode of any new file (``0o666`` less the umask, see :func:`creation_mode`), as the
    journals do, not the ``0o600`` of a temporary file.
    """
    atomic_write_bytes(path, text.encode())


def _temp_prefix(name: str) -> str:
    """The start of the name of :func:`atomic_write_bytes`'s temporary files for a file named ``name``:
    ``.NAME.``, or for a name longer than 40 characters its first 31 and a hash of the whole name.

    The temporary name is never longer than any name the file system allows (an output or journal with a long
    name would otherwise be refused only at the very end, on every resume), and it tells which file it was for,
    so that :func:`remove_stale_temporaries` removes no other file's.

    Example:
        >>> _temp_prefix("s.csv"), len(_temp_prefix("x" * 300))
        ('.s.csv.', 42)
    """
    if len(name) <= 40:
        return f".{name}."
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f".{name[:31]}~{digest}."


# the random part of tempfile.mkstemp's names: 8 of these characters
_TEMP_RANDOM = r"[a-z0-9_]{8}\.tmp"


def remove_stale_temporaries(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Remove the temporary files :func:`atomic_write_bytes` left next to ``paths`` when a process writing one of
    them was killed (``kill -9``, a power cut) before it renamed the temporary file; returns those removed.

    Only regular files of this user (no symbolic links) named as that function names the temporary files of
    exactly these paths are removed. Call it only while no other process can be writing them (e.g. holding the
    lock of the output they belong to). Files that cannot be examined or removed are left as they are.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in (".s.csv.ab12_xyz.tmp", ".s.csv.old.ab12_xyz.tmp", "s.csv"):
        ...     (d / name).touch()
        >>> [p.name for p in remove_stale_temporaries([d / "s.csv"])], sorted(p.name for p in d.iterdir())
        (['.s.csv.ab12_xyz.tmp'], ['.s.csv.old.ab12_xyz.tmp', 's.csv'])
    """
    import re

    by_folder: dict[Path, list[str]] = {}
    for p in map(Path, paths):
        by_folder.setdefault(p.parent, []).append(re.escape(_temp_prefix(p.name)))
    removed: list[Path] = []
    for folder, prefixes in by_folder.items():
        removed += _remove_temporaries(folder, re.compile(f"(?:{'|'.join(prefixes)}){_TEMP_RANDOM}"), False)
    return removed


def remove_stale_temporaries_in(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove every temporary file :func:`atomic_write_bytes` left in ``folder`` and the folders below it (not
    through symbolic links) when a process writing there was killed; returns those removed.

    For a folder only one command writes (an evaluation's cache), whose lock the caller holds: any file named as
    that function names its temporary files is a dead process's. Only regular files of this user are removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "sub").mkdir()
        >>> for name in (".a.json.ab12_xyz.tmp", "sub/.b.npy.zz99_xyz.tmp", "a.json", ".hidden"):
        ...     (d / name).touch()
        >>> sorted(p.name for p in remove_stale_temporaries_in(d)), sorted(p.name for p in d.rglob("*"))
        (['.a.json.ab12_xyz.tmp', '.b.npy.zz99_xyz.tmp'], ['.hidden', 'a.json', 'sub'])
    """
    import re

    return _remove_temporaries(Path(folder), re.compile(rf"\..+\.{_TEMP_RANDOM}"), True)


def _remove_temporaries(folder: Path, pattern: Any, recursive: bool) -> list[Path]:
    """Remove the regular files of this user in ``folder`` whose names ``pattern`` matches whole (and, with
    ``recursive``, in the folders below, never through a symbolic link); files that cannot be examined or removed
    are left as they are."""
    import stat

    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if recursive and entry.is_dir(follow_symlinks=False):
                removed += _remove_temporaries(folder / entry.name, pattern, True)
                continue
            if not pattern.fullmatch(entry.name):
                continue
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(folder / entry.name)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by a file holding ``data`` atomically, as :func:`atomic_write_text` does.

    The temporary file is named ``.NAME.XXXXXXXX.tmp`` (see :func:`_temp_prefix`); one a killed process left behind
    is removed by :func:`remove_stale_temporaries`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            _fsync(fh)
        os.chmod(tmp, creation_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync(fh: io.BufferedIOBase) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
