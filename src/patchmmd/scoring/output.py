"""The output of a scoring job: the sorted rows as CSV (or JSON), written atomically, with readable cells.

:func:`write_output_atomic` writes the final rows to a temporary file in the output folder, fsyncs it and renames
it over the output (``os.replace``): the output is either absent, the old file or the complete new one, never
half-written (a temporary file a killed process left is removed by :func:`remove_stale_temporaries`). An output
named ``*.json`` gets a JSON array (:func:`write_json_atomic`), any other the CSV (:func:`write_csv_atomic`). File
names are written readably (:func:`readable_text`) and, in the CSV, never as spreadsheet formulas (:func:`csv_text`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .jobs import PairTask

CSV_COLUMNS_BASE = ("ref", "dist", "metric")


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


def readable_text(text: str) -> str:
    """A file name (or any text) as valid Unicode: names that are not valid UTF-8 (lone surrogates from
    :func:`os.fsdecode`) show their undecodable bytes as ``\\xNN``.

    Example:
        >>> readable_text("bad\\udcff.png"), readable_text("é.png")
        ('bad\\\\xff.png', 'é.png')
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to (a hand-edited journal)
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def csv_text(text: str) -> str:
    """A text cell (file name, metric, error) as written in the CSV: readable, and never a formula.

    * File names that are not valid UTF-8 are written as :func:`readable_text` writes them: ``bad\\xff.png``.
    * A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, which a spreadsheet could
      run as a formula, gets a leading ``'``; so does one starting with ``'`` itself, so that removing one
      leading ``'`` from any cell that has one gives the name back.

    Example:
        >>> csv_text("a.png"), csv_text("=1+1.png"), csv_text("'q.png"), csv_text("bad\\udcff.png")
        ('a.png', "'=1+1.png", "''q.png", 'bad\\\\xff.png')
    """
    text = readable_text(text)
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


def write_json_atomic(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, value_column: str) -> None:
    """Write rows as a JSON array of objects ``{"ref", "dist", "metric", <value_column>, "error"}`` atomically at
    ``path``: the CSV's fields, with names as :func:`readable_text` writes them (no formula guard: JSON is not
    run by spreadsheets), a missing or non-finite value as ``null`` (strict JSON, as every JSON file of the package:
    :func:`patchmmd.evaluation.report.json_text`) and no error as ``null``."""
    from ..evaluation.report import json_text

    out = [{"ref": readable_text(r["ref"]), "dist": readable_text(r["dist"]), "metric": readable_text(r["metric"]),
            value_column: r.get("value"), "error": readable_text(r["error"]) if r.get("error") else None}
           for r in rows]
    atomic_write_text(path, json_text(out, indent=1))


def write_output_atomic(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, value_column: str) -> None:
    """The job's output: JSON when ``path`` ends in ``.json`` (any case), else CSV."""
    writer = write_json_atomic if Path(path).suffix.lower() == ".json" else write_csv_atomic
    writer(path, rows, value_column=value_column)


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
