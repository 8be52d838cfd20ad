"""Whether a file the package reads back is under the user's control: one rule for every such reader.

The package reads back files that decide what it reports: weight files (:mod:`patchmmd.metrics.weights`), the
journal of a resumed scoring job (:mod:`patchmmd.scoring.journal`) and the caches of the evaluation
(:mod:`patchmmd.evaluation.runner`, :mod:`patchmmd.evaluation.suite_cache`). Whoever can write such a file, or
replace it in its folder, decides the numbers. So on POSIX each is read only if

* the file (after symbolic links) is a regular file owned by the user or root, writable by no one else (not by
  others; by its group only if that is the user's own group), and
* its folder has the same owners and is writable by no one else, unless it is sticky (as ``/tmp`` is: others
  cannot replace a file they do not own there).

The check is made on the open file (:func:`check_controlled` takes its descriptor), so the file checked is the
file read. Windows has no POSIX owners and modes; nothing is checked there.

Example:
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "values.json"
    >>> _ = path.write_text("{}")
    >>> read_controlled(path)
    b'{}'
    >>> os.chmod(path, 0o666)
    >>> try:
    ...     read_controlled(path)
    ... except UntrustedFileError as e:
    ...     print(e.problem, "|", e.fix)
    the file is writable by others (mode 666) | Copy it into a folder of yours, or `chmod go-w` it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["UntrustedFileError", "check_controlled", "open_without_blocking", "read_controlled"]


class UntrustedFileError(PermissionError):
    """A file someone other than the user (or root) could have written.

    Attributes:
        path: the file.
        problem: what is wrong, e.g. ``"the file is writable by others (mode 666)"``.
        fix: what makes it safe (a ``chmod`` or a copy), one sentence.
    """

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}. {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


def check_controlled(fd: int, path: str | os.PathLike[str]) -> None:
    """:class:`UntrustedFileError` unless the open file ``fd`` (found at ``path``) and its folder are under the
    user's control (see the module's docstring); ``OSError`` if it is not a regular file or its folder cannot be
    examined."""
    path = Path(path)
    if not hasattr(os, "geteuid"):  # Windows: no POSIX owners and modes to check
        return
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file")
    _check(path, st, "the file", "Copy it into a folder of yours, or `chmod go-w` it.")
    folder = Path(os.path.realpath(path)).parent
    _check(path, os.stat(folder), f"its folder {folder}",
           "Copy the file into a folder of yours, or `chmod go-w` the folder.", sticky_ok=True)


def read_controlled(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``, read from the descriptor :func:`check_controlled` approved.

    Raises:
        UntrustedFileError: someone else could have written the file or replaced it.
        OSError: it cannot be opened or read, or it is not a regular file (a FIFO is refused, not waited on: it is
            opened without blocking).
    """
    with open_without_blocking(path) as f:
        check_controlled(f.fileno(), path)
        return f.read()


def open_without_blocking(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, in binary, without blocking: a FIFO put in a file's place is not waited on
    (:func:`check_controlled` then refuses it as not a regular file)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))  # (Windows: a raw descriptor is text mode without it)
    return os.fdopen(fd, "rb")


def _check(path: Path, st: os.stat_result, subject: str, fix: str, sticky_ok: bool = False) -> None:
    euid, egid = os.geteuid(), os.getegid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (euid, 0):
        raise UntrustedFileError(path, f"{subject} is owned by uid {st.st_uid}, not by you (uid {euid}) or root",
                                 "Copy the file into a folder of yours.")
    if sticky_ok and st.st_mode & stat.S_ISVTX:
        return
    if mode & 0o002 or (mode & 0o020 and st.st_gid != egid):
        raise UntrustedFileError(path, f"{subject} is writable by {'others' if mode & 0o002 else 'its group'} "
                                 f"(mode {mode:o})", fix)
