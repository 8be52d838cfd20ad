"""The output of a scoring job: the sorted rows as CSV (or JSON), written atomically, with readable cells.

:func:`write_output_atomic` writes the final rows to a temporary file in the output folder, fsyncs it and renames
it over the output (``os.replace``): the output is either absent, the old file or the complete new one, never
half-written (a temporary file a killed process left is removed by :func:`remove_stale_temporaries`). An output
named ``*.json`` gets a JSON array (:func:`write_json_atomic`), any other the CSV (:func:`write_csv_atomic`). File
names are written readably (:func:`readable_text`) and, in the CSV, never as spreadsheet formulas (:func:`csv_text`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._files import (  # noqa: F401  (re-exported: the package's file writing, where it was first defined)
    _fsync,
    _fsync_dir,
    _temp_prefix,
    atomic_write_bytes,
    atomic_write_text,
    creation_mode,
    remove_stale_temporaries,
    remove_stale_temporaries_in,
)
from .errors import printable_text, readable_text
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
        raise ValueError(f"{len(missing)} of {len(tasks)} pairs have no row yet (first: "
                         f"{printable_text(first.ref)}, {printable_text(first.dist)})")
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
