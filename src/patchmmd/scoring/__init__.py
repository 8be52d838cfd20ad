"""The scoring engine behind ``patchmmd score``: a job of image pairs, journaled and resumable.

The command line is a thin layer over this package, which knows nothing of click or terminals. Its
pieces are built so that a job can also be split over several writers (``torchrun`` ranks):

* :mod:`.jobs` — **the job**: a deterministic, stably ordered list of :class:`PairTask`
  (:func:`paired_tasks` for two folders matched by relative path, returned in a :class:`PairedJob` with the
  images that have no partner; :func:`all_pair_tasks` for every unordered pair of one folder). Each task has a
  stable id derived from its two relative paths, so the same files give the same ids on any machine, in any run.
  :func:`shard` gives each of ``world_size`` writers a disjoint share.
* :mod:`.journal` — each writer appends finished rows to its own **journal** (:class:`Journal`, JSON lines:
  one header line naming the job, then one line per finished pair), flushed and ``fsync``-ed after every
  batch. A ``kill -9`` can leave at most a truncated last line, which reading ignores and reopening cuts off.
  :func:`find_journals` lists an output's journals of any world size and :func:`done_rows` reads their
  finished rows, so a job can be resumed by another number of writers (see ``docs/distributed.md``).
  Each row records the size and modification time of its two image files (:func:`file_stamp`), so that
  :func:`changed_rows` finds the rows of images replaced in place since, which a resumed job scores again.
  Reading a journal checks every row's shape (:class:`JournalError` names the line of a bad one).
  :class:`OutputLock` keeps two runs from writing one output at once (``OUT.lock``, ``flock``); each open
  journal is held with ``flock`` too, so that :func:`journals_in_use` finds a writer of an earlier run still alive.
* :mod:`.output` — :func:`write_output_atomic` writes the final, sorted rows (CSV, or a JSON array for an
  output named ``*.json``) to a temporary file in the output folder, fsyncs it and renames it over the output
  (``os.replace``): the output is either absent, the old file or the complete new one, never half-written.
  File names are written readably (:func:`readable_text`) and never as spreadsheet formulas (:func:`csv_text`).
* :mod:`.runner` — :func:`run_tasks` scores a list of tasks (loading images, batching pairs of equal shape,
  recording a read error or a size mismatch in the pair's row and going on), skipping tasks already in the
  journal; :class:`ScoreRunner` runs a whole :class:`ScoreJob` (output and resume rules, the lock, rank
  agreement, journals, final CSV), reporting through callbacks.
* :mod:`.errors` — :class:`ScoringError` and its subclasses: what is wrong, never in terms of flags; file names
  in messages and error rows are shown escaped (:func:`printable_text`), one plain line whatever they hold.
* :mod:`.distributed` — the launch (``torchrun``) and its collectives.

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

from ..runtime import resolve_device
from .errors import (
    FinalizeError,
    FolderError,
    InconsistentJournalsError,
    JobInterrupted,
    JobMismatchError,
    JournalError,
    JournalOpenError,
    JournalWriteError,
    MetricSetupError,
    NoPairsError,
    NothingToResumeError,
    OutputExistsError,
    OutputPathError,
    RankFailedError,
    ScoringError,
    UntrustedJournalError,
    error_text,
    printable_paths,
    printable_text,
)
from .jobs import (
    PairedJob,
    PairTask,
    all_pair_tasks,
    job_header,
    list_images,
    paired_tasks,
    shard,
    task_id,
    tasks_digest,
)
from .journal import (
    JOURNAL_FORMAT,
    JOURNAL_VERSION,
    ROW_KEYS,
    STAMPS_KEY,
    Journal,
    JournalBusyError,
    OutputLock,
    OutputLockedError,
    changed_rows,
    describe_holder,
    done_rows,
    drop_error_rows,
    drop_rows,
    file_stamp,
    find_journals,
    journal_path,
    journals_in_use,
    lock_path,
    merge_journals,
    read_journal,
)
from .output import (
    CSV_COLUMNS_BASE,
    FORMULA_CHARS,
    atomic_write_text,
    creation_mode,
    csv_line,
    csv_text,
    format_value,
    readable_text,
    remove_stale_temporaries,
    remove_stale_temporaries_in,
    sorted_rows,
    value_column,
    write_csv_atomic,
    write_json_atomic,
    write_output_atomic,
)
from .runner import (
    DEFAULT_BATCH_PIXELS,
    DEFAULT_CACHE_PIXELS,
    DEFAULT_MODE_HINT,
    DEFAULT_RESIZE_HINT,
    ChangedErrorRows,
    ChangedImages,
    IgnoredFiles,
    LockUnavailable,
    Notice,
    RunSummary,
    ScoreJob,
    ScoreResult,
    ScoreRunner,
    UnmatchedImages,
    UnstampedRows,
    _ImageCache,
    check_metric,
    finalize,
    resize_to,
    run_tasks,
)

__all__ = [
    "CSV_COLUMNS_BASE", "DEFAULT_BATCH_PIXELS", "DEFAULT_CACHE_PIXELS", "DEFAULT_MODE_HINT", "DEFAULT_RESIZE_HINT",
    "FORMULA_CHARS", "JOURNAL_FORMAT", "JOURNAL_VERSION", "ROW_KEYS", "STAMPS_KEY", "ChangedErrorRows",
    "ChangedImages", "FinalizeError", "FolderError", "IgnoredFiles", "InconsistentJournalsError", "JobInterrupted",
    "JobMismatchError", "Journal", "JournalBusyError", "JournalError",
    "JournalOpenError", "JournalWriteError", "LockUnavailable", "MetricSetupError", "NoPairsError",
    "NothingToResumeError", "Notice", "OutputExistsError", "OutputLock", "OutputLockedError", "OutputPathError",
    "PairTask", "PairedJob", "RankFailedError", "RunSummary", "ScoreJob", "ScoreResult", "ScoreRunner",
    "ScoringError", "UnmatchedImages", "UnstampedRows", "UntrustedJournalError", "_ImageCache", "all_pair_tasks",
    "atomic_write_text", "changed_rows", "check_metric", "creation_mode", "csv_line", "csv_text", "describe_holder",
    "done_rows", "drop_error_rows", "drop_rows", "error_text", "file_stamp", "finalize", "find_journals",
    "format_value", "job_header", "journal_path",
    "journals_in_use", "list_images",
    "lock_path", "merge_journals", "paired_tasks", "printable_paths", "printable_text", "read_journal", "readable_text",
    "remove_stale_temporaries", "remove_stale_temporaries_in",
    "resize_to", "resolve_device", "run_tasks", "shard", "sorted_rows", "task_id", "tasks_digest", "value_column",
    "write_csv_atomic", "write_json_atomic", "write_output_atomic",
]
