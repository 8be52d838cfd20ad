"""The scoring engine behind ``patchmmd score``: a job of image pairs, journaled and resumable.

The command line is a thin layer over this module, which knows nothing of click or terminals. Its
pieces are built so that a job can also be split over several writers (``torchrun`` ranks):

* **The job** is a deterministic, stably ordered list of :class:`PairTask` (:func:`paired_tasks` for two
  folders matched by relative path, :func:`all_pair_tasks` for every unordered pair of one folder). Each
  task has a stable id derived from its two relative paths, so the same files give the same ids on any
  machine, in any run.
* :func:`shard` gives each of ``world_size`` writers a disjoint share of the tasks.
* Each writer appends finished rows to its own **journal** (:class:`Journal`, JSON lines: one header line
  naming the job, then one line per finished pair), flushed and ``fsync``-ed after every batch. A
  ``kill -9`` can leave at most a truncated last line, which reading ignores and reopening cuts off.
  :func:`find_journals` lists an output's journals of any world size and :func:`done_rows` reads their
  finished rows, so a job can be resumed by another number of writers (``patchmmd score`` shares out
  only the pairs left; see ``docs/distributed.md``).
  Reading a journal checks every row's shape (:class:`JournalError` names the line of a bad one).
* :func:`write_csv_atomic` writes the final, sorted CSV to a temporary file in the output folder, fsyncs
  it and renames it over the output (``os.replace``): the output is either absent, the old file or the
  complete new one, never half-written. File names are written readably and never as spreadsheet
  formulas (:func:`csv_text`).
* :class:`OutputLock` keeps two runs from writing one output at once (``OUT.lock``, ``flock``).

:func:`run_tasks` scores a list of tasks (loading images, batching pairs of equal shape, recording a
read error or a size mismatch in the pair's row and going on), skipping tasks already in the journal.

Example:
    >>> import tempfile, pathlib, torch
    >>> from patchmmd.io import save_image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     save_image(torch.full((3, 8, 8), i / 4), d / f"im{i}.png")
    >>> tasks = all_pair_tasks(d)
    >>> [(t.ref, t.dist) for t in tasks]
    [('im0.png', 'im1.png'), ('im0.png', 'im2.png'), ('im1.png', 'im2.png')]
    >>> [t.index for t in shard(tasks, 1, 2)]
    [1]
    >>> job = job_header("l2", {}, tasks, mode="RGB", resize=False)
    >>> with Journal.open(d / "scores.csv.journal", job) as journal:
    ...     summary = run_tasks(tasks, "l2", journal, batch_size=2)
    >>> summary.scored, summary.errors
    (3, 0)
    >>> rows = read_journal(d / "scores.csv.journal", job)
    >>> write_csv_atomic(d / "scores.csv", sorted_rows(rows, tasks), value_column="distance")
    >>> lines = (d / "scores.csv").read_text().splitlines()
    >>> lines[0], lines[1][:20]
    ('ref,dist,metric,distance,error', 'im0.png,im1.png,l2,0')
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageMode, ImageReadError, check_max_pixels, load_image

JOURNAL_FORMAT = "patchmmd-score-journal"
JOURNAL_VERSION = 1
CSV_COLUMNS_BASE = ("ref", "dist", "metric")


class JobMismatchError(ValueError):
    """An existing journal belongs to a different job (other folders, metric, options or file list)."""


class JournalError(ValueError):
    """A journal line that is valid JSON but not a row this engine writes (wrong shape or values).

    The message names the journal and the line number (1 = the header).
    """


# --------------------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class PairTask:
    """One pair to score: its position in the job, stable id, display paths and file paths.

    ``ref`` and ``dist`` are POSIX paths relative to the folder each image was found in; ``id`` depends
    only on them (not on the folders' absolute location), so it is stable across machines and runs.
    """

    index: int
    id: str
    ref: str
    dist: str
    ref_path: Path
    dist_path: Path


def task_id(ref: str, dist: str) -> str:
    """A stable 16-hex-digit id for the pair ``(ref, dist)`` of relative paths.

        File names that are not valid UTF-8 (held as :func:`os.fsdecode` gives them, with lone surrogates)
    are hashed as their raw bytes.

    Example:
        >>> task_id("a.png", "b.png") == task_id("a.png", "b.png") != task_id("b.png", "a.png")
        True
    """
    return hashlib.sha256(f"{ref}\0{dist}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def list_images(folder: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Image files under ``folder`` (recursively) as sorted relative POSIX paths, and the other files.

    A file counts as an image by its suffix (:data:`patchmmd.io.IMAGE_SUFFIXES`, any case); whether it
    really decodes is found out when it is scored. Hidden files and folders (name starting with ``.``) are
    skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist. NotADirectoryError: it is not a folder.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    images: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            (images if name.lower().endswith(IMAGE_SUFFIXES) else others).append(rel)
    return sorted(images), sorted(others)


@dataclass
class PairedJob:
    """The tasks of a two-folder job and the files that found no partner."""

    tasks: list[PairTask]
    only_ref: list[str] = field(default_factory=list)
    only_dist: list[str] = field(default_factory=list)


def paired_tasks(ref_dir: str | os.PathLike[str], dist_dir: str | os.PathLike[str]) -> PairedJob:
    """Pairs of images with the same relative path under ``ref_dir`` and ``dist_dir``, sorted by path.

    Unmatched files are returned in :attr:`PairedJob.only_ref` / :attr:`PairedJob.only_dist`; the caller
    decides whether they are an error.
    """
    refs, _ = list_images(ref_dir)
    dists, _ = list_images(dist_dir)
    dist_set = set(dists)
    ref_set = set(refs)
    common = [r for r in refs if r in dist_set]
    tasks = [
        PairTask(i, task_id(r, r), r, r, Path(ref_dir) / r, Path(dist_dir) / r) for i, r in enumerate(common)
    ]
    return PairedJob(tasks, [r for r in refs if r not in dist_set], [d for d in dists if d not in ref_set])


def all_pair_tasks(folder: str | os.PathLike[str]) -> list[PairTask]:
    """Every unordered pair ``(i, j)``, ``i < j``, of the images under ``folder`` in sorted path order."""
    names, _ = list_images(folder)
    root = Path(folder)
    tasks = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            tasks.append(PairTask(len(tasks), task_id(a, b), a, b, root / a, root / b))
    return tasks


def shard(tasks: Sequence[PairTask], rank: int, world_size: int) -> list[PairTask]:
    """The tasks of writer ``rank`` out of ``world_size``: every ``world_size``-th task from ``rank``.

    The shards are disjoint, cover the job, differ in size by at most one and keep the job's order.

    Example:
        >>> [t.index for t in shard([PairTask(i, str(i), "", "", Path(), Path()) for i in range(7)], 2, 3)]
        [2, 5]
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    return list(tasks[rank::world_size])


def tasks_digest(tasks: Iterable[PairTask]) -> str:
    """A hash of the job's task list (ids in order): changes when files are added, removed or renamed."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(t.id.encode())
    return h.hexdigest()[:16]


def job_header(
    metric: str,
    options: dict[str, Any],
    tasks: Sequence[PairTask],
    *,
    mode: str,
    resize: bool,
    **extra: Any,
) -> dict[str, Any]:
    """What identifies a job for ``--resume``: everything that changes a row's value.

    Device and batch size are left out: they do not change the result, so a job may be resumed with other
    ones. ``extra`` holds anything else the caller wants checked (e.g. the folders).
    """
    return {
        "metric": metric,
        "options": {k: options[k] for k in sorted(options)},
        "mode": mode,
        "resize": bool(resize),
        "num_tasks": len(tasks),
        "tasks": tasks_digest(tasks),
        **{k: extra[k] for k in sorted(extra)},
    }


# ----------------------------------------------------------------------------------------- the journal
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
    import re

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


def _read_lines(path: Path) -> tuple[dict[str, Any] | None, list[tuple[int, Any]], int]:
    """Header, (line number, parsed line) of each row, and the byte length of the valid prefix (complete,
    parseable lines) of a journal. The rows are not checked here (see :func:`_check_row`)."""
    data = path.read_bytes()
    header: Any = None
    rows: list[tuple[int, Any]] = []
    valid = 0
    pos = 0
    line = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # a last line without its newline: cut off by a crash
        try:
            obj = json.loads(data[pos:end])
        except ValueError:
            break  # a torn line (only the last one can be)
        line += 1
        if line == 1:
            header = obj
        else:
            rows.append((line, obj))
        pos = valid = end + 1
    return header, rows, valid


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
        detail = "; ".join(f"{k}: journal {old.get(k)!r}, now {job.get(k)!r}" for k in differ)
        raise JobMismatchError(f"{path} belongs to a different job ({detail}); rerun with the same arguments")


def _row_problem(row: Any, metric: str | None, tasks: dict[str, PairTask] | None) -> str | None:
    """Why ``row`` is not a row this engine writes, or None if it is one."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    if set(row) != ROW_KEYS:
        missing, extra = sorted(ROW_KEYS - set(row)), sorted(set(row) - ROW_KEYS)
        return "a row must have the keys " + ", ".join(sorted(ROW_KEYS)) + (
            f"; missing {', '.join(missing)}" if missing else "") + (f"; unknown {', '.join(extra)}" if extra else "")
    for key in ("id", "ref", "dist", "metric"):
        if not isinstance(row[key], str):
            return f"{key!r} must be a string, got {row[key]!r}"
    value, error = row["value"], row["error"]
    if error is not None and not (isinstance(error, str) and error):
        return f"'error' must be null or a non-empty string, got {error!r}"
    if error is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"'value' must be a number when 'error' is null, got {value!r}"
        if not math.isfinite(value):
            return f"'value' must be a finite number, got {value!r}"
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
    error``; strings where strings belong; ``value`` a finite number when ``error`` is null, and null when
    ``error`` is a non-empty string. With ``job`` the row's metric must be the job's, and with ``tasks`` its id
    must be one of theirs, with their ``ref`` and ``dist``. A value is trusted only as far as that: a
    hand-edited finite number passes.

    Raises:
        JobMismatchError: ``job`` is given and differs from the journal's.
        JournalError: a row is malformed (the message names the line).
    """
    path = Path(path)
    header, rows, _ = _read_lines(path)
    if job is not None:
        _check_header(path, header, job)
    return _checked_rows(path, rows, job, tasks)


class Journal:
    """An append-only JSON-lines journal of finished rows, durable after each :meth:`append`.

    Use :meth:`open`: it creates the journal with its header, or (``resume=True``) reopens an existing one
    for the same job, cutting off a torn last line, and exposes the ids already done in :attr:`done`.
    """

    def __init__(self, path: Path, fh: io.BufferedWriter, done: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._fh = fh
        self.done = done

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

        Reopened rows are checked as in :func:`read_journal` (against ``tasks`` when given).

        Raises:
            FileExistsError: the journal exists and ``resume`` is false.
            JobMismatchError: ``resume`` and the journal belongs to another job.
            JournalError: ``resume`` and a row of the journal is malformed.
        """
        path = Path(path)
        if path.exists():
            if not resume:
                raise FileExistsError(f"journal {path} exists: resume it or remove it")
            header, numbered, valid = _read_lines(path)
            _check_header(path, header, job)
            rows = _checked_rows(path, numbered, job, tasks)
            fh = open(path, "r+b")  # owned by the Journal, closed in close()
            fh.truncate(valid)
            fh.seek(valid)
            _fsync(fh)
            return cls(path, fh, {r["id"]: r for r in rows})
        fh = open(path, "xb")
        header = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "job": job, "created": time.time()}
        fh.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        _fsync(fh)
        _fsync_dir(path.parent)
        return cls(path, fh, {})

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (each with an ``id``) and make them durable (flush + fsync) before returning."""
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows)
        if not data:
            return
        self._fh.write(data)
        _fsync(self._fh)
        for r in rows:
            self.done[r["id"]] = r

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


# ---------------------------------------------------------------------------------------- the output
def value_column(higher_is_better: bool) -> str:
    """``"score"`` for similarity metrics (PSNR, SSIM: higher = more alike), else ``"distance"``."""
    return "score" if higher_is_better else "distance"


def sorted_rows(rows: Iterable[dict[str, Any]], tasks: Sequence[PairTask]) -> list[dict[str, Any]]:
    """The journal rows of ``tasks`` in job order (later duplicates of an id win).

    Raises:
        ValueError: some task has no row (the job is not finished).
    """
    by_id = {r["id"]: r for r in rows}
    missing = [t for t in tasks if t.id not in by_id]
    if missing:
        first = missing[0]
        raise ValueError(f"{len(missing)} of {len(tasks)} pairs have no row yet (first: {first.ref}, {first.dist})")
    return [by_id[t.id] for t in tasks]


def format_value(value: float | None) -> str:
    """A value as written in the CSV: shortest round-trip repr, empty for a missing value.

    Example:
        >>> format_value(0.1), format_value(None), format_value(float("nan"))
        ('0.1', '', 'nan')
    """
    return "" if value is None else repr(float(value))


FORMULA_CHARS = ("=", "+", "-", "@", "\t", "\r", "'")
"""A text cell starting with one of these gets a leading ``'`` in the CSV (see :func:`csv_text`)."""


def csv_text(text: str) -> str:
    """A text cell (file name, metric, error) as written in the CSV: readable, and never a formula.

    * File names that are not valid UTF-8 (lone surrogates from :func:`os.fsdecode`) show their undecodable
      bytes as ``\\xNN``: ``bad\\xff.png``.
    * A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, which a spreadsheet could
      run as a formula, gets a leading ``'``; so does one starting with ``'`` itself, so that removing one
      leading ``'`` from any cell that has one gives the name back.

    Example:
        >>> csv_text("a.png"), csv_text("=1+1.png"), csv_text("'q.png"), csv_text("bad\\udcff.png")
        ('a.png', "'=1+1.png", "''q.png", 'bad\\\\xff.png')
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to (a hand-edited journal)
        text = text.encode("utf-8", "backslashreplace").decode("ascii")
    return "'" + text if text.startswith(FORMULA_CHARS) else text


def csv_line(fields: Sequence[str]) -> str:
    """One CSV record ending in ``\\n``; a field holding ``,``, ``"``, ``\\r`` or ``\\n`` is quoted.

    (``csv.writer`` with ``lineterminator="\\n"`` leaves a lone ``\\r`` unquoted, which readers take for
    a line break.)

    Example:
        >>> csv_line(["a\\rb", "c,d", 'e"f', "g"])
        '"a\\rb","c,d","e""f",g\\n'
    """
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(fields)  # quotes any field holding \r or \n
    return buf.getvalue()[:-2] + "\n"


def write_csv_atomic(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, value_column: str) -> None:
    """Write rows as CSV (``ref,dist,metric,<value_column>,error``) atomically at ``path``.

    Text cells go through :func:`csv_text` (readable non-UTF-8 names, a ``'`` before a would-be formula);
    fields holding a comma, a quote or a line break are quoted. The data goes to a temporary file in the
    same folder, is fsynced, then renamed over ``path``.
    """
    path = Path(path)
    lines = [csv_line([*CSV_COLUMNS_BASE, value_column, "error"])]
    for r in rows:
        lines.append(csv_line([
            csv_text(r["ref"]), csv_text(r["dist"]), csv_text(r["metric"]), format_value(r.get("value")),
            csv_text(r.get("error") or ""),
        ]))
    atomic_write_text(path, "".join(lines))


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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode())
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

    def __init__(self, output: Path, holder: dict[str, Any] | None) -> None:
        self.output = output
        self.holder = holder or {}
        super().__init__(f"another run ({describe_holder(self.holder)}) is writing {output}; wait for it or stop it")


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid N on HOST, started YYYY-mm-dd HH:MM:SS: COMMAND`` from a lock file's content (parts it lacks left out).

    Example:
        >>> describe_holder({"pid": 12, "host": "node1", "argv": ["patchmmd", "score"]})
        'pid 12 on node1: patchmmd score'
        >>> describe_holder({})
        'its details are unknown'
    """
    who = []
    if isinstance(holder.get("pid"), int):
        who.append(f"pid {holder['pid']}")
    if isinstance(holder.get("host"), str):
        who.append(f"on {holder['host']}")
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

        command = shlex.join(argv)
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
            OSError: the lock file cannot be created, or the file system does not support ``flock``.
        """
        import socket
        import sys

        try:
            import fcntl
        except ImportError:  # Windows
            return cls(lock_path(output), None)
        path = lock_path(output)
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
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


# ------------------------------------------------------------------------------------------- scoring
@dataclass
class RunSummary:
    """What :func:`run_tasks` did: pairs scored now, rows with an error, and tasks skipped as done."""

    scored: int = 0
    errors: int = 0
    skipped: int = 0


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ValueError: CUDA asked for but not available, or an unknown device string.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use --device cpu or auto")
    return dev


def resize_to(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(C, H, W)`` image in [0, 1] to ``size = (H, W)`` (antialiased bilinear).

    Example:
        >>> resize_to(torch.rand(3, 10, 20), (5, 10)).shape
        torch.Size([3, 5, 10])
    """
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0, 1)


def _row(task: PairTask, metric: str, value: float | None, error: str | None) -> dict[str, Any]:
    if value is not None and not math.isfinite(value):  # the journal and the CSV hold finite values only
        value, error = None, f"the metric returned {value}"
    return {"id": task.id, "ref": task.ref, "dist": task.dist, "metric": metric, "value": value, "error": error}


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


DEFAULT_BATCH_PIXELS = 16 * 2**20
"""Pixels (height x width of the first image, summed over the pairs) in one batch of :func:`run_tasks`."""

DEFAULT_CACHE_PIXELS = 64 * 2**20
"""Pixels of loaded images that :func:`run_tasks` keeps for reuse (all-pairs jobs read each image often)."""


def _pixels(img: torch.Tensor) -> int:
    return int(img.shape[-1]) * int(img.shape[-2])


class _ImageCache:
    """A small LRU cache of loaded images, bounded in count and in pixels (the newest image always stays)."""

    def __init__(
        self,
        mode: ImageMode,
        capacity: int = 128,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        pixel_capacity: int = DEFAULT_CACHE_PIXELS,
    ) -> None:
        self.mode = mode
        self.capacity = capacity
        self.max_pixels = max_pixels
        self.pixel_capacity = pixel_capacity
        self.pixels = 0
        self._items: OrderedDict[Path, torch.Tensor | ImageReadError] = OrderedDict()

    def get(self, path: Path) -> torch.Tensor:
        if path in self._items:
            self._items.move_to_end(path)
            item = self._items[path]
        else:
            try:
                item = load_image(path, mode=self.mode, max_pixels=self.max_pixels)
            except ImageReadError as e:
                item = e
            self._items[path] = item
            self.pixels += self._size(item)
            while len(self._items) > 1 and (
                len(self._items) > self.capacity or self.pixels > self.pixel_capacity
            ):
                _, old = self._items.popitem(last=False)
                self.pixels -= self._size(old)
        if isinstance(item, ImageReadError):
            raise item
        return item

    @staticmethod
    def _size(item: torch.Tensor | ImageReadError) -> int:
        return 0 if isinstance(item, ImageReadError) else _pixels(item)


def run_tasks(
    tasks: Sequence[PairTask],
    metric: str,
    journal: Journal,
    *,
    options: dict[str, Any] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    mode: ImageMode = "RGB",
    resize: bool = False,
    progress: Callable[[int], None] | None = None,
    after_batch: Callable[[], None] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    batch_pixels: int = DEFAULT_BATCH_PIXELS,
) -> RunSummary:
    """Score the tasks not yet in ``journal`` and append their rows, one durable batch at a time.

    Pairs are read in job order in chunks of ``4 * batch_size`` pairs or ``4 * batch_pixels`` pixels,
    whichever comes first; inside a chunk, pairs whose images have the same shape are scored together in
    batches of up to ``batch_size`` pairs and ``batch_pixels`` pixels (a larger pair alone). A pair whose
    file cannot be read (or is over ``max_pixels``), whose two images differ in shape (unless ``resize``:
    the second is resized to the first) or on which the metric fails gets a row with an empty value and
    the error, and the job goes on.

    Memory is bounded whatever the files: one image is at most ``max_pixels``, the cache of loaded images
    holds at most :data:`DEFAULT_CACHE_PIXELS` (and 128 images) plus the newest, a chunk about
    ``4 * batch_pixels`` pairs plus one pair; pixels here are height x width.

    Args:
        metric: a name in :mod:`patchmmd.metrics.registry`; ``options`` go to its factory.
        progress: called with the number of tasks finished after each batch (e.g. ``tqdm.update``).
        after_batch: called after each durable batch (tests use it to slow a job down).
        max_pixels: the largest image read (:func:`patchmmd.io.load_image`); ``None``: no limit.
        batch_pixels: the pixel budget of a batch (of the pairs' first images).
    """
    from ..metrics.registry import get_metric

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(batch_pixels, bool) or not isinstance(batch_pixels, int) or batch_pixels < 1:
        raise ValueError(f"batch_pixels must be a positive integer, got {batch_pixels!r}")
    max_pixels = check_max_pixels(max_pixels)
    fn = get_metric(metric, **(options or {}))
    dev = resolve_device(device) if isinstance(device, str) else device
    cache = _ImageCache(mode, max_pixels=max_pixels)
    summary = RunSummary()
    todo = [t for t in tasks if t.id not in journal.done]
    summary.skipped = len(tasks) - len(todo)

    def commit(rows: list[dict[str, Any]]) -> None:
        journal.append(rows)
        summary.scored += sum(r["error"] is None for r in rows)
        summary.errors += sum(r["error"] is not None for r in rows)
        if progress is not None:
            progress(len(rows))
        if after_batch is not None:
            after_batch()

    groups: dict[tuple[int, ...], list[tuple[PairTask, torch.Tensor, torch.Tensor]]] = {}
    error_rows: list[dict[str, Any]] = []
    pending = pending_pixels = 0

    def flush() -> None:
        if error_rows:
            commit(error_rows)
        for items in groups.values():
            for batch in _pixel_batches(items, batch_size, batch_pixels):
                commit(_score_batch(fn, batch, metric, dev))
        error_rows.clear()
        groups.clear()

    for t in todo:
        try:
            x = cache.get(t.ref_path)
            y = cache.get(t.dist_path)
            if x.shape != y.shape:
                if resize and x.shape[0] == y.shape[0]:
                    y = resize_to(y, (x.shape[1], x.shape[2]))
                else:
                    raise ValueError(
                        f"images differ in shape: {_shape_text(x)} vs {_shape_text(y)}"
                        + ("" if resize else " (use --resize to resize the second to the first)")
                    )
        except (ImageReadError, ValueError) as e:
            error_rows.append(_row(t, metric, None, _error_text(e)))
        else:
            groups.setdefault(tuple(x.shape), []).append((t, x, y))
            pending_pixels += _pixels(x)
        pending += 1
        if pending >= 4 * batch_size or pending_pixels >= 4 * batch_pixels:
            flush()
            pending = pending_pixels = 0
    flush()
    return summary


def _pixel_batches(
    items: Sequence[tuple[PairTask, torch.Tensor, torch.Tensor]], batch_size: int, batch_pixels: int
) -> Iterator[list[tuple[PairTask, torch.Tensor, torch.Tensor]]]:
    """Consecutive items, at most ``batch_size`` of them and ``batch_pixels`` pixels (a larger item alone)."""
    batch: list[tuple[PairTask, torch.Tensor, torch.Tensor]] = []
    pixels = 0
    for item in items:
        size = _pixels(item[1])
        if batch and (len(batch) == batch_size or pixels + size > batch_pixels):
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += size
    if batch:
        yield batch


def _shape_text(img: torch.Tensor) -> str:
    c, h, w = img.shape
    return f"{w}x{h} ({c} channel{'s' if c != 1 else ''})"


def _score_batch(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: list[tuple[PairTask, torch.Tensor, torch.Tensor]],
    metric: str,
    dev: torch.device,
) -> list[dict[str, Any]]:
    x = torch.stack([b[1] for b in batch]).to(dev)
    y = torch.stack([b[2] for b in batch]).to(dev)
    try:
        with torch.no_grad():
            values = fn(x, y).detach().double().cpu().tolist()
        return [_row(t, metric, v, None) for (t, _, _), v in zip(batch, values, strict=True)]
    except (ValueError, TypeError, RuntimeError) as e:
        if len(batch) == 1:
            return [_row(batch[0][0], metric, None, _error_text(e))]
        # Find the culprit(s): score one by one.
        return [r for item in batch for r in _score_batch(fn, [item], metric, dev)]


def finalize(
    output: str | os.PathLike[str],
    tasks: Sequence[PairTask],
    job: dict[str, Any],
    *,
    value_column: str,
    world_size: int = 1,
    keep_journals: bool = False,
    journals: Sequence[str | os.PathLike[str]] | None = None,
) -> list[dict[str, Any]]:
    """Merge the writers' journals, write the sorted CSV atomically, then remove the journals.

    Run by one process (rank 0) once every writer has finished. The journals are those of ``world_size``
    writers, or ``journals`` when given (e.g. :func:`find_journals`, after resuming with another world
    size). Returns the rows written.

    Raises:
        ValueError: some task has no row in any journal. JobMismatchError: a journal is from another job.
        JournalError: a journal row is malformed.
    """
    if journals is None:
        paths = [journal_path(output, r, world_size) for r in range(world_size)]
    else:
        paths = [Path(p) for p in journals]
    rows = sorted_rows(merge_journals(paths, job, tasks), tasks)
    write_csv_atomic(output, rows, value_column=value_column)
    if not keep_journals:
        for p in paths:
            p.unlink(missing_ok=True)
    return rows
