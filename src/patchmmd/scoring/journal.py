"""The journal of a scoring job, and the lock on its output.

Each writer appends finished rows to its own **journal** (:class:`Journal`, JSON lines: one header line naming
the job, then one line per finished pair), flushed and ``fsync``-ed after every batch. A ``kill -9`` can leave
at most a truncated last line, which reading ignores and reopening cuts off. :func:`find_journals` lists an
output's journals of any world size and :func:`done_rows` reads their finished rows, so a job can be resumed
by another number of writers. Reading a journal checks every row's shape (:class:`JournalError` names the
line of a bad one); a journal someone else could have written is not read (:class:`UntrustedJournalError`). A
journal holds at most one row per pair; :func:`drop_error_rows` rewrites one without its
error rows and :func:`drop_rows` without given rows, so that those pairs are scored again.

Each row records the :func:`file_stamp` (size, modification time) of its two image files as they were read;
:func:`changed_rows` finds the rows whose files have changed since (an image replaced in place under the same
name), whose values no longer belong to the files. Rows of a journal written before stamps were recorded have
none: whether their files changed is unknown (:func:`changed_rows` says how many).

:class:`OutputLock` keeps two runs from writing one output at once (``OUT.lock``, ``flock``). A :class:`Journal` holds
its file with ``flock`` while it is open, so that :func:`journals_in_use` finds a writer of an earlier run that lives
on without the output's lock (:class:`JournalBusyError`).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from .._trust import UntrustedFileError, read_controlled
from .errors import (
    JobMismatchError,
    JournalError,
    JournalWriteError,
    UntrustedJournalError,
    _rebuild,
    printable_text,
)
from .jobs import PairTask
from .output import _fsync, _fsync_dir, atomic_write_text

JOURNAL_FORMAT = "patchmmd-score-journal"
JOURNAL_VERSION = 1


def journal_path(output: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> Path:
    """The journal next to ``output``: ``OUT.journal``, or ``OUT.rank{r}-of-{w}.journal`` when sharded.

    Example:
        >>> journal_path("scores.csv").name, journal_path("scores.csv", 1, 4).name
        ('scores.csv.journal', 'scores.csv.rank1-of-4.journal')
    """
    out = Path(output)
    suffix = ".journal" if world_size == 1 else f".rank{rank}-of-{world_size}.journal"
    return out.with_name(out.name + suffix)


_JOURNAL_RE = r"\.(?:rank(\d+)-of-(\d+)\.)?journal"


def find_journals(output: str | os.PathLike[str]) -> list[Path]:
    """The journals of ``output`` that exist, of any world size: ``OUT.journal`` first, then the writers'
    ``OUT.rank{r}-of-{w}.journal`` by world size and rank.

    A job interrupted with one world size may be resumed with another: the done rows are read from all
    of them, and the final CSV merges all of them.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for r in (1, 0):
        ...     journal_path(d / "s.csv", r, 2).touch()
        >>> (d / "s.csv.journal").touch(); (d / "s.csv.rank0-of-2.journal.tmp").touch()
        >>> [p.name for p in find_journals(d / "s.csv")]
        ['s.csv.journal', 's.csv.rank0-of-2.journal', 's.csv.rank1-of-2.journal']
    """
    out = Path(output)
    pattern = re.compile(re.escape(out.name) + _JOURNAL_RE)
    found: list[tuple[tuple[int, int], Path]] = []
    try:
        entries = list(os.scandir(out.parent if str(out.parent) else "."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_file():
            key = (0, 0) if m.group(1) is None else (int(m.group(2)), int(m.group(1)))
            found.append((key, out.with_name(entry.name)))
    return [p for _, p in sorted(found)]


def done_rows(
    paths: Iterable[str | os.PathLike[str]],
    job: dict[str, Any],
    tasks: Sequence[PairTask] | None = None,
) -> dict[str, dict[str, Any]]:
    """The finished rows (by id) of several journals, each checked against ``job`` (and ``tasks``).

    Raises:
        JobMismatchError: a journal belongs to another job. JournalError: a row is malformed.
    """
    return {r["id"]: r for r in merge_journals(paths, job, tasks)}


ROW_KEYS = frozenset({"id", "ref", "dist", "metric", "value", "error"})
"""The keys every journal row has; a row may have :data:`STAMPS_KEY` too."""

STAMPS_KEY = "stamps"
"""The optional key of a journal row with the :func:`file_stamp` of its files: ``{"ref": STAMP, "dist": STAMP}``.
Rows written before stamps were recorded lack it."""


def file_stamp(path: str | os.PathLike[str]) -> list[int] | None:
    """What tells an image file's content changed without reading it: ``[size, mtime_ns]`` (its size in bytes and
    modification time in nanoseconds, following a symbolic link), or None when it cannot be stat'ed (missing, no
    permission, a name the system refuses).

    A file rewritten or replaced in place gets a new modification time (and usually a new size); a touched file
    gets a new stamp too, though its content is the same. Only a replacement that keeps both size and
    modification time (a copy that sets the old time back on purpose) goes unnoticed. Hashing the content would
    notice that too, but reads every byte of every image on every resume (about 16 ms for a 12 MB PNG from the
    page cache, against 2 microseconds for the stat).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.png"
        >>> _ = path.write_bytes(b"1234")
        >>> file_stamp(path)[0], file_stamp(path.with_name("b.png"))
        (4, None)
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


def changed_rows(
    rows: Iterable[dict[str, Any]],
    tasks: Sequence[PairTask],
    stamp: Callable[[Path], list[int] | None] = file_stamp,
) -> tuple[dict[str, list[str]], int]:
    """The rows whose image files changed since they were scored, and how many rows record no stamps.

    Each file is stat'ed once (``stamp``), however many rows it is in. A row changed when the stamp of its
    ``ref`` or ``dist`` file differs from the one it records (a file that could not be stat'ed then or now
    counts as changed unless it cannot be now either); its value, or its error, belongs to the old file. Rows
    without stamps (journals of an earlier version) are counted, not judged. Rows of ids not in ``tasks`` are
    left out.

    Returns:
        ``{id: [changed file paths]}`` of the changed rows (the paths of ``tasks``, as strings), and the number
        of rows without stamps.

    Example:
        >>> import tempfile
        >>> from patchmmd.scoring.jobs import all_pair_tasks
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ("a.png", "b.png"):
        ...     _ = (d / name).write_bytes(b"x")
        >>> (t,) = all_pair_tasks(d)
        >>> row = {"id": t.id, "stamps": {"ref": file_stamp(d / "a.png"), "dist": file_stamp(d / "b.png")}}
        >>> changed_rows([row], [t])
        ({}, 0)
        >>> _ = (d / "b.png").write_bytes(b"xy")
        >>> changed, unstamped = changed_rows([row, {"id": t.id}], [t])
        >>> changed == {t.id: [str(d / "b.png")]}, unstamped
        (True, 1)
    """
    by_id = {t.id: t for t in tasks}
    now: dict[Path, list[int] | None] = {}
    changed: dict[str, list[str]] = {}
    unstamped = 0
    for row in rows:
        task = by_id.get(row["id"])
        if task is None:
            continue
        stamps = row.get(STAMPS_KEY)
        if stamps is None:
            unstamped += 1
            continue
        files = []
        for role, path in (("ref", task.ref_path), ("dist", task.dist_path)):
            if path not in now:
                now[path] = stamp(path)
            if now[path] != stamps[role]:
                files.append(str(path))
        if files:
            changed[row["id"]] = files
    return changed, unstamped


def _read_lines(path: Path) -> tuple[dict[str, Any] | None, list[tuple[int, Any]], int, bool]:
    """Header, (line number, parsed line) of each row, the byte length of the valid prefix (complete,
    parseable lines) of a journal, and whether it holds no complete line at all (a crash as it was created,
    before its header line was written out: it holds no row). The rows are not checked here (see
    :func:`_checked_rows`). The file is read once.

    Only the last line may be torn (a crash while appending): it is left out. A line that is not JSON with
    more after it was damaged otherwise, and the finished rows after it would be lost.

    Raises:
        JournalError: a line before the last is not JSON (the message names it).
        UntrustedJournalError: someone else could have written the journal (see :mod:`patchmmd._trust`).
    """
    try:
        data = read_controlled(path)
    except UntrustedFileError as e:
        raise UntrustedJournalError(f"{path}: {e.problem}; whoever can write it decides the scores a resumed job "
                                    f"keeps. {e.fix}") from None
    header: Any = None
    rows: list[tuple[int, Any]] = []
    valid = 0
    pos = 0
    line = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # a last line without its newline: cut off by a crash
        line += 1
        try:
            obj = json.loads(data[pos:end])
        except ValueError:
            if data[end + 1:]:
                raise JournalError(f"{path}, line {line}: not a JSON line, and lines follow it") from None
            break  # a torn last line
        if line == 1:
            header = obj
        else:
            rows.append((line, obj))
        pos = valid = end + 1
    return header, rows, valid, valid == 0 and b"\n" not in data


def _line(obj: Any) -> bytes:
    """One journal line: ``obj`` as JSON with sorted keys and a newline (the header and every row)."""
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


def _open_nofollow(path: str, flags: int) -> int:
    """``os.open`` for :func:`open`'s ``opener`` that refuses a symbolic link (``OSError``, ``errno.ELOOP``)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def _hold(fh: Any, path: Path) -> None:
    """Take an exclusive ``flock`` on an open journal, held until it is closed: no two processes append to one
    journal (a writer of an earlier run still alive would overwrite the rows of the new one, or they its rows).

    Raises:
        JournalBusyError: another process holds it. (A file system without ``flock``, or Windows: no lock.)
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalBusyError(path) from None
    except OSError:  # no flock on this file system: as for the output's lock, go on
        pass


def journals_in_use(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The journals among ``paths`` that another process has open for writing (a :class:`Journal` holds its file
    with ``flock``): writers of an earlier run still alive, e.g. ranks of a launch whose rank 0, which held the
    output's lock, was killed. Their rows are not final yet, and reopening one would make two processes append to
    it. Journals that cannot be opened or locked (no ``flock`` on the file system) are not counted.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "s.csv.journal"
        >>> with Journal.open(p, {"metric": "l2"}):
        ...     [q.name for q in journals_in_use([p])]
        ['s.csv.journal']
        >>> journals_in_use([p])
        []
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return []
    busy: list[Path] = []
    for p in map(Path, paths):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops a lock taken here
    return busy


def _check_header(path: Path, header: Any, job: dict[str, Any]) -> None:
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise JobMismatchError(f"{path} is not a patchmmd score journal (or its header is damaged)")
    if header.get("version") != JOURNAL_VERSION:
        raise JobMismatchError(f"{path} has journal version {header.get('version')}, expected {JOURNAL_VERSION}")
    old = header.get("job", {})
    if not isinstance(old, dict):
        raise JobMismatchError(f"{path} is not a patchmmd score journal (or its header is damaged)")
    differ = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
    if differ:
        # the list of pairs is recorded as a hash: say what changed in words
        pairs = [k for k in ("num_tasks", "tasks") if k in differ]
        parts = [f"{k}: journal {old.get(k)!r}, now {job.get(k)!r}" for k in differ if k not in pairs]
        files = not parts  # only the list of pairs differs: the image files changed, not the arguments
        if pairs:
            parts.append(f"num_tasks, tasks: {old.get('num_tasks')!r} pairs in the journal, {job.get('num_tasks')!r} "
                         "now, not the same ones" + (": image files were added, removed or renamed in the folders"
                                                     if files else ""))
        detail = "; ".join(parts)
        same = "the same arguments and image files" if pairs else "the same arguments"
        raise JobMismatchError(f"{path} belongs to a different job ({detail}); rerun with {same}")


def _row_problem(row: Any, metric: str | None, tasks: dict[str, PairTask] | None) -> str | None:
    """Why ``row`` is not a row this engine writes, or None if it is one."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    if set(row) - {STAMPS_KEY} != ROW_KEYS:
        missing, extra = sorted(ROW_KEYS - set(row)), sorted(set(row) - ROW_KEYS - {STAMPS_KEY})
        return "a row must have the keys " + ", ".join(sorted(ROW_KEYS)) + f" (and may have {STAMPS_KEY})" + (
            f"; missing {', '.join(missing)}" if missing else "") + (f"; unknown {', '.join(extra)}" if extra else "")
    if STAMPS_KEY in row:
        problem = _stamps_problem(row[STAMPS_KEY])
        if problem is not None:
            return problem
    for key in ("id", "ref", "dist", "metric"):
        if not isinstance(row[key], str):
            return f"{key!r} must be a string, got {row[key]!r}"
    value, error = row["value"], row["error"]
    if error is not None and not (isinstance(error, str) and error):
        return f"'error' must be null or a non-empty string, got {error!r}"
    if error is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"'value' must be a number when 'error' is null, got {value!r}"
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            return f"'value' must be a finite number, got {_short(value)}"
    elif value is not None:
        return f"'value' must be null when there is an error, got {value!r}"
    if metric is not None and row["metric"] != metric:
        return f"'metric' is {row['metric']!r}, but the job's metric is {metric!r}"
    if tasks is not None:
        task = tasks.get(row["id"])
        if task is None:
            return f"'id' {row['id']!r} is not a pair of this job"
        if (row["ref"], row["dist"]) != (task.ref, task.dist):
            theirs = f"({row['ref']!r}, {row['dist']!r})"
            return f"'id' {row['id']!r} is the pair ({task.ref!r}, {task.dist!r}), not {theirs}"
    return None


def _stamps_problem(stamps: Any) -> str | None:
    """Why ``stamps`` is not a row's :data:`STAMPS_KEY` as this engine writes it, or None if it is one."""
    if isinstance(stamps, dict) and set(stamps) == {"ref", "dist"} and all(
        s is None or (isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s) and s[0] >= 0)
        for s in stamps.values()
    ):
        return None
    return ("'stamps' must be an object with the keys dist and ref, each [size, mtime_ns] (integers, the size not "
            f"negative) or null, got {_short(stamps)}")


def _short(value: Any) -> str:
    """``repr(value)``, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked_rows(
    path: Path,
    rows: list[tuple[int, Any]],
    job: dict[str, Any] | None,
    tasks: Sequence[PairTask] | None,
) -> list[dict[str, Any]]:
    metric = None if job is None else job.get("metric")
    by_id = None if tasks is None else {t.id: t for t in tasks}
    out = []
    for line, row in rows:
        problem = _row_problem(row, metric, by_id)
        if problem is not None:
            raise JournalError(f"{path}, line {line}: {problem}")
        if row["value"] is not None:
            row["value"] = float(row["value"])
        out.append(row)
    return out


def read_journal(
    path: str | os.PathLike[str],
    job: dict[str, Any] | None = None,
    tasks: Sequence[PairTask] | None = None,
) -> list[dict[str, Any]]:
    """The rows of a journal (a torn last line ignored); with ``job``, check the journal belongs to it.

    Every row is checked for its shape: a JSON object with exactly the keys ``id, ref, dist, metric, value,
    error`` and possibly ``stamps`` (see :data:`STAMPS_KEY`); strings where strings belong; ``value`` a finite
    number when ``error`` is null, and null when ``error`` is a non-empty string. With ``job`` the row's metric
    must be the job's, and with ``tasks`` its id must be one of theirs, with their ``ref`` and ``dist``. A value
    is trusted only as far as that: a hand-edited finite number passes.

    Raises:
        JobMismatchError: ``job`` is given and differs from the journal's.
        JournalError: a row is malformed (the message names the line).
    """
    path = Path(path)
    header, rows, _, cut = _read_lines(path)
    if cut:
        return []
    if job is not None:
        _check_header(path, header, job)
    return _checked_rows(path, rows, job, tasks)


class Journal:
    """An append-only JSON-lines journal of finished rows, durable after each :meth:`append`.

    Use :meth:`open`: it creates the journal with its header, or (``resume=True``) reopens an existing one
    for the same job, cutting off a torn last line, and exposes the ids already done in :attr:`done`.
    """

    def __init__(self, path: Path, fh: io.BufferedIOBase, done: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._fh = fh
        self.done = done
        self._failed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        job: dict[str, Any],
        *,
        resume: bool = False,
        tasks: Sequence[PairTask] | None = None,
    ) -> Journal:
        """Create (or with ``resume``, reopen) the journal at ``path`` for ``job``.

        Reopened rows are checked as in :func:`read_journal` (against ``tasks`` when given). The journal is held
        with an exclusive ``flock`` while it is open (see :func:`journals_in_use`).

        Raises:
            JournalBusyError: another process has the journal open (a writer of an earlier run still running).
            OSError: the journal is not a regular file (``errno.EINVAL``; e.g. a FIFO, whose read would block).
            FileExistsError: the journal exists and ``resume`` is false.
            JobMismatchError: ``resume`` and the journal belongs to another job.
            JournalError: ``resume`` and a row of the journal is malformed.
        """
        path = Path(path)
        if path.exists():
            if not path.is_file():  # a FIFO would block the read below for ever; a folder is no journal either
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            if not resume:
                raise FileExistsError(f"journal {path} exists: resume it or remove it")
            header, numbered, valid, cut = _read_lines(path)
            if cut:  # start it again (never through a symbolic link: it is emptied)
                return cls._start(path, job, open(path, "r+b", opener=_open_nofollow))
            _check_header(path, header, job)
            rows = _checked_rows(path, numbered, job, tasks)
            fh = open(path, "r+b")  # owned by the Journal, closed in close()
            try:
                _hold(fh, path)  # before cutting it: another process may still be appending to it
                fh.truncate(valid)
                fh.seek(valid)
                _fsync(fh)
            except BaseException:
                fh.close()
                raise
            return cls(path, fh, {r["id"]: r for r in rows})
        return cls._start(path, job, open(path, "xb"))

    @classmethod
    def _start(cls, path: Path, job: dict[str, Any], fh: io.BufferedIOBase) -> Journal:
        """Write the header (only) into ``fh``, made durable."""
        try:
            _hold(fh, path)
            fh.truncate(0)
            fh.seek(0)
            header = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "job": job, "created": time.time()}
            fh.write(_line(header))
            _fsync(fh)
        except BaseException:
            fh.close()
            raise
        _fsync_dir(path.parent)
        return cls(path, fh, {})

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (each with an ``id``) and make them durable (flush + fsync) before returning.

        Raises:
            JournalWriteError: the rows could not be written (e.g. a full disk); the rows appended before are
                kept, and at most a torn last line follows them, which reopening cuts off.
        """
        rows = list(rows)
        data = b"".join(_line(r) for r in rows)
        if not data:
            return
        try:
            self._fh.write(data)
            _fsync(self._fh)
        except OSError as e:
            self._failed = True
            raise JournalWriteError(f"cannot write the journal {self.path}: {e.strerror or e}", path=self.path) from e
        for r in rows:
            self.done[r["id"]] = r

    def close(self) -> None:
        """Close the journal. After a failed :meth:`append`, an error writing out what it left buffered is not
        raised again (that failure is already reported, and the journal holds its valid rows)."""
        try:
            self._fh.close()
        except OSError:
            if not self._failed:
                raise

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def drop_error_rows(
    path: str | os.PathLike[str],
    job: dict[str, Any] | None = None,
    tasks: Sequence[PairTask] | None = None,
) -> int:
    """Rewrite the journal at ``path`` without its error rows (and without a torn last line), atomically;
    returns how many rows were dropped (0: the file is left as it is).

    The pairs of the dropped rows count as not done, so resuming scores them again, and the journal still holds
    at most one row per pair: the rows of several writers' journals never disagree, whatever their order. Run
    it only while holding the output's lock, before any writer opens the journal. The rows are checked as in
    :func:`read_journal` (against ``job`` and ``tasks`` when given).

    Raises:
        JobMismatchError, JournalError: as :func:`read_journal`. OSError: the journal cannot be rewritten.

    Example:
        >>> import tempfile
        >>> from patchmmd.scoring.jobs import task_id
        >>> p = Path(tempfile.mkdtemp()) / "s.csv.journal"
        >>> row = dict(ref="a.png", dist="a.png", metric="l2")
        >>> with Journal.open(p, {"metric": "l2"}) as j:
        ...     j.append([dict(row, id="1", value=0.5, error=None), dict(row, id="2", value=None, error="OSError")])
        >>> drop_error_rows(p), [r["id"] for r in read_journal(p)], drop_error_rows(p)
        (1, ['1'], 0)
    """
    return _drop(path, lambda r: r["error"] is not None, job, tasks)


def drop_rows(
    path: str | os.PathLike[str],
    ids: Collection[str],
    job: dict[str, Any] | None = None,
    tasks: Sequence[PairTask] | None = None,
) -> int:
    """Rewrite the journal at ``path`` without the rows of the pairs ``ids`` (and without a torn last line),
    atomically; returns how many rows were dropped (0: the file is left as it is).

    As :func:`drop_error_rows`, for any rows: e.g. those whose image files changed (:func:`changed_rows`), so that
    resuming scores those pairs again. The same rules hold: only under the output's lock, before any writer
    opens the journal.

    Raises:
        JobMismatchError, JournalError: as :func:`read_journal`. OSError: the journal cannot be rewritten.
    """
    ids = frozenset(ids)
    return _drop(path, lambda r: r["id"] in ids, job, tasks)


def _drop(
    path: str | os.PathLike[str],
    drop: Callable[[dict[str, Any]], bool],
    job: dict[str, Any] | None,
    tasks: Sequence[PairTask] | None,
) -> int:
    path = Path(path)
    header, numbered, _, cut = _read_lines(path)
    if cut:
        return 0
    if job is not None:
        _check_header(path, header, job)
    rows = _checked_rows(path, numbered, job, tasks)
    keep = [r for r in rows if not drop(r)]
    if len(keep) == len(rows):
        return 0
    atomic_write_text(path, b"".join(_line(obj) for obj in (header, *keep)).decode())
    return len(rows) - len(keep)


def merge_journals(
    paths: Iterable[str | os.PathLike[str]],
    job: dict[str, Any],
    tasks: Sequence[PairTask] | None = None,
) -> list[dict[str, Any]]:
    """All rows of several writers' journals (each checked against ``job`` and ``tasks``), for the final CSV."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(read_journal(p, job, tasks))
    return rows



# ------------------------------------------------------------------------------------------- the lock
class OutputLockedError(RuntimeError):
    """Another run holds the lock on the output; :attr:`holder` is what it wrote in the lock file."""

    def __reduce__(self) -> tuple[Any, ...]:  # pickles with its attributes (sent between ranks)
        return _rebuild, (type(self), self.args, self.__dict__)

    def __init__(self, output: Path, holder: dict[str, Any] | None) -> None:
        self.output = output
        self.holder = holder or {}
        super().__init__(f"another run ({describe_holder(self.holder)}) is writing {output}; wait for it or stop it")


class JournalBusyError(OutputLockedError):
    """Another process has a journal of the output open for writing (see :func:`journals_in_use`): a writer of an
    earlier run is still running, although no run holds the output's lock (e.g. a rank of a launch whose rank 0 was
    killed). :attr:`journal` is the journal, :attr:`output` the output it belongs to."""

    def __init__(self, journal: Path) -> None:
        self.journal = Path(journal)
        self.output = self.journal.with_name(re.sub(_JOURNAL_RE + "$", "", self.journal.name))
        self.holder = {}
        RuntimeError.__init__(self, f"another process is still writing the journal {self.journal} (a writer of an "
                                    f"earlier run on {self.output} that is still running, e.g. a rank whose rank 0 "
                                    "was stopped); wait for it or stop it")


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid N on HOST, started YYYY-mm-dd HH:MM:SS: COMMAND`` from a lock file's content (parts it lacks left out).

    Example:
        >>> describe_holder({"pid": 12, "host": "node1", "argv": ["patchmmd", "score"]})
        'pid 12 on node1: patchmmd score'
        >>> describe_holder({})
        'its details are unknown'

    The text is the lock file's, which whoever holds the lock wrote: characters that are not printable (a line
    break, a terminal's escape sequence) are shown escaped, as ``\\n`` or ``\\x1b``, so that the message stays one
    plain line.
    """
    who = []
    if isinstance(holder.get("pid"), int):
        who.append(f"pid {holder['pid']}")
    if isinstance(holder.get("host"), str):
        who.append(f"on {printable_text(holder['host'])}")
    parts = [" ".join(who)] if who else []
    if isinstance(holder.get("started"), (int, float)):
        try:
            parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])))
        except (OverflowError, OSError, ValueError):
            pass
    text = ", ".join(parts)
    argv = holder.get("argv")
    if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
        import shlex

        command = printable_text(shlex.join(argv))
        command = command if len(command) <= 200 else command[:197] + "..."
        text = f"{text}: {command}" if text else command
    return text or "its details are unknown"


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file next to ``output``: ``OUT.lock``.

    Example:
        >>> lock_path("runs/scores.csv").as_posix()
        'runs/scores.csv.lock'
    """
    out = Path(output)
    return out.with_name(out.name + ".lock")


class OutputLock:
    """An exclusive lock on an output (its CSV and journals) for the time of one run: ``OUT.lock``.

    :meth:`acquire` creates ``OUT.lock``, takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on it and writes the
    holder's pid, host name, start time and command line into it (JSON); :meth:`release` removes the file
    and drops the lock. The kernel drops the lock when the process ends in any way, so a file left behind
    by ``kill -9`` or a crash does not block the next run, which takes it over. Where ``fcntl`` does not
    exist (Windows) no lock is taken.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "s.csv"
        >>> with OutputLock.acquire(out):
        ...     try:
        ...         OutputLock.acquire(out)
        ...     except OutputLockedError as e:
        ...         print(str(e).startswith("another run (pid"))
        True
        >>> lock_path(out).exists()
        False
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, output: str | os.PathLike[str], *, argv: Sequence[str] | None = None) -> OutputLock:
        """Lock ``output`` (whose folder must exist) for this process; ``argv`` is recorded (default ``sys.argv``).

        Raises:
            OutputLockedError: another process holds the lock.
            OSError: the lock file cannot be created or is a symbolic link (``errno.ELOOP``; never followed),
                or the file system does not support ``flock``.
        """
        import socket
        import sys

        try:
            import fcntl
        except ImportError:  # Windows
            return cls(lock_path(output), None)
        path = lock_path(output)
        for _ in range(100):
            # O_NOFOLLOW: a symbolic link planted at OUT.lock must not make us truncate and write its target
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                             0o666)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise OSError(e.errno, "it is a symbolic link; remove it", str(path)) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputLockedError(Path(output), holder) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder we waited for removes the file before it drops the lock: if the name no longer
            # leads to the file we locked, another run may already hold a new one; try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - a lock file replaced 100 times in a row
            raise OSError(f"could not lock {path}: it keeps being replaced")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "argv": list(sys.argv if argv is None else argv)}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info, sort_keys=True).encode() + b"\n")
        except OSError:
            pass  # the lock holds without the details
        return cls(path, fd)

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (false where none can be taken, on Windows, and once released)."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            try:
                if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                    os.unlink(self.path)  # while still holding the lock: see acquire
            except OSError:
                pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 65536, 0)
        holder = json.loads(data)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None
