"""Scoring: :func:`run_tasks` scores a list of pairs into a journal; :class:`ScoreRunner` runs a whole job.

:func:`run_tasks` loads images (through a small bounded cache), batches pairs of equal shape, records a read
error or a size mismatch in the pair's row and goes on, skipping tasks already in the journal.
:func:`finalize` merges the writers' journals into the final CSV.

:class:`ScoreRunner` is the job-level runner behind ``patchmmd score``: it builds the tasks, applies the
output and resume rules, takes the output lock, shares the pairs out over the ranks of a launch (all ranks
stop if one fails), scores them into journals and writes the CSV. It reports through callbacks and raises
:class:`~patchmmd.scoring.errors.ScoringError` subclasses; it knows nothing of terminals or flags.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..core.validation import check_positive_int
from ..io import DEFAULT_MAX_PIXELS, ImageMode, ImageReadError, check_max_pixels, file_in_the_way, load_image
from ..metrics.weights import file_stamps
from ..runtime import resolve_device, shape_text
from . import distributed
from .errors import (
    FinalizeError,
    FolderError,
    InconsistentJournalsError,
    JobInterrupted,
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
    error_text,
    printable_text,
)
from .jobs import PairTask, all_pair_tasks, job_header, list_images, paired_tasks, shard, tasks_digest
from .journal import (
    STAMPS_KEY,
    Journal,
    JournalBusyError,
    OutputLock,
    OutputLockedError,
    changed_rows,
    done_rows,
    drop_rows,
    file_stamp,
    find_journals,
    journal_path,
    journals_in_use,
    lock_path,
    merge_journals,
    read_journal,
)
from .output import remove_stale_temporaries, sorted_rows, value_column, write_output_atomic

T = TypeVar("T")


@dataclass
class RunSummary:
    """What :func:`run_tasks` did: pairs scored now, rows with an error, and tasks skipped as done."""

    scored: int = 0
    errors: int = 0
    skipped: int = 0



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


DEFAULT_RESIZE_HINT = "resize=True resizes the second to the first"
"""What :func:`run_tasks` suggests in the error row of a pair of images that differ in size."""

DEFAULT_MODE_HINT = 'mode="RGB" or mode="L" reads every image with the same channels'
"""What :func:`run_tasks` suggests in the error row of a pair of images that differ in channels (``mode="keep"``),
which resizing cannot mend."""

DEFAULT_BATCH_PIXELS = 16 * 2**20
"""Pixels (height x width of the first image, summed over the pairs) in one batch of :func:`run_tasks`."""

DEFAULT_CACHE_PIXELS = 64 * 2**20
"""Pixels of loaded images that :func:`run_tasks` keeps for reuse (all-pairs jobs read each image often)."""


def _pixels(img: torch.Tensor) -> int:
    return int(img.shape[-1]) * int(img.shape[-2])


class _ImageCache:
    """A small LRU cache of loaded images, bounded in count and in pixels (the newest image always stays).

    Each image is kept with the :func:`~patchmmd.scoring.journal.file_stamp` its file had just before it was read
    (:meth:`stamp`), so that a row records the stamps of the files its value comes from: a file changed after the
    stamp was taken (even while it was read) has another stamp by the time a resume compares them.
    """

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
        self._stamps: dict[Path, list[int] | None] = {}

    def stamp(self, path: Path) -> list[int] | None:
        """The stamp of ``path`` taken as its cached image was read (or its reading failed); for a file not cached
        (not read, or its reading ran out of memory), its stamp now."""
        return self._stamps[path] if path in self._stamps else file_stamp(path)

    def get(self, path: Path) -> torch.Tensor:
        if path in self._items:
            self._items.move_to_end(path)
            item = self._items[path]
        else:
            stamp = file_stamp(path)  # before reading: a change while it is read makes the stamp differ later
            try:
                item = load_image(path, mode=self.mode, max_pixels=self.max_pixels)
            except ImageReadError as e:
                item = e
            self._items[path] = item
            self._stamps[path] = stamp
            self.pixels += self._size(item)
            while len(self._items) > 1 and (
                len(self._items) > self.capacity or self.pixels > self.pixel_capacity
            ):
                gone, old = self._items.popitem(last=False)
                del self._stamps[gone]
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
    resize_hint: str = DEFAULT_RESIZE_HINT,
    mode_hint: str = DEFAULT_MODE_HINT,
) -> RunSummary:
    """Score the tasks not yet in ``journal`` and append their rows, one durable batch at a time.

    Each row records the :func:`~patchmmd.scoring.journal.file_stamp` of its two files, taken just before they
    were read (``stamps``; see :func:`~patchmmd.scoring.journal.changed_rows`).

    Pairs are read in job order in chunks of ``4 * batch_size`` pairs or ``4 * batch_pixels`` pixels,
    whichever comes first; inside a chunk, pairs whose images have the same shape are scored together in
    batches of up to ``batch_size`` pairs and ``batch_pixels`` pixels (a larger pair alone). A pair whose
    file cannot be read (or is over ``max_pixels``, or runs out of memory as it is decoded), whose two images
    differ in shape (unless ``resize``: the second is resized to the first) or on which the metric fails (out of
    memory included; the pairs of a batch that fails are scored again one by one) gets a row with an empty value
    and the error, and the job goes on.

    Memory is bounded whatever the files: one image is at most ``max_pixels``, the cache of loaded images
    holds at most :data:`DEFAULT_CACHE_PIXELS` (and 128 images) plus the newest, a chunk about
    ``4 * batch_pixels`` pairs plus one pair; pixels here are height x width.

    Args:
        metric: a name in :mod:`patchmmd.metrics.registry`; ``options`` go to its factory.
        progress: called with the number of tasks finished after each batch (e.g. ``tqdm.update``).
        after_batch: called after each durable batch (tests use it to slow a job down).
        max_pixels: the largest image read (:func:`patchmmd.io.load_image`); ``None``: no limit.
        batch_pixels: the pixel budget of a batch (of the pairs' first images).
        resize_hint: added in brackets to a size-mismatch error when ``resize`` is off (a front end names
            its own option here).
        mode_hint: added in brackets to a channel-mismatch error (``mode="keep"``), with or without ``resize``.
    """
    from ..metrics.registry import get_metric

    batch_size = check_positive_int("batch_size", batch_size)
    batch_pixels = check_positive_int("batch_pixels", batch_pixels)
    max_pixels = check_max_pixels(max_pixels)
    fn = get_metric(metric, **(options or {}))
    dev = resolve_device(device) if isinstance(device, str) else device
    cache = _ImageCache(mode, max_pixels=max_pixels)
    summary = RunSummary()
    todo = [t for t in tasks if t.id not in journal.done]
    summary.skipped = len(tasks) - len(todo)
    stamps: dict[str, dict[str, list[int] | None]] = {}  # of the pairs read and not yet committed, by id

    def commit(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            r[STAMPS_KEY] = stamps.pop(r["id"], {"ref": None, "dist": None})
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

    def load(path: Path, role: str, pair: dict[str, list[int] | None]) -> torch.Tensor:
        try:
            return cache.get(path)
        finally:  # an unreadable file's stamp too: a resume tells when its error row is of a changed file
            pair[role] = cache.stamp(path)

    for t in todo:
        pair: dict[str, list[int] | None] = {}
        stamps[t.id] = pair
        try:
            x = load(t.ref_path, "ref", pair)
            y = load(t.dist_path, "dist", pair)
            if x.shape != y.shape:
                if x.shape[0] != y.shape[0]:
                    hint = mode_hint
                elif resize:
                    y = resize_to(y, (x.shape[1], x.shape[2]))
                    hint = None
                else:
                    hint = resize_hint
                if hint is not None:
                    raise ValueError(f"images differ in shape: {shape_text(x)} vs {shape_text(y)}"
                                     + (f" ({hint})" if hint else ""))
        except (ImageReadError, ValueError, MemoryError) as e:  # MemoryError: e.g. decoding a huge image
            if "dist" not in pair:  # not read, as the first failed: its stamp as it is (the row holds either way)
                pair["dist"] = cache.stamp(t.dist_path)
            error_rows.append(_row(t, metric, None, error_text(e, paths=(t.ref_path, t.dist_path))))
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


def _score_batch(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: list[tuple[PairTask, torch.Tensor, torch.Tensor]],
    metric: str,
    dev: torch.device,
) -> list[dict[str, Any]]:
    try:
        # moving the batch is inside: a device out of memory for the batch scores its pairs one by one
        x = torch.stack([b[1] for b in batch]).to(dev)
        y = torch.stack([b[2] for b in batch]).to(dev)
        with torch.no_grad():
            values = fn(x, y).detach().double().cpu().tolist()
        return [_row(t, metric, v, None) for (t, _, _), v in zip(batch, values, strict=True)]
    except (ValueError, TypeError, RuntimeError, MemoryError) as e:  # out of memory: torch's or Python's
        if len(batch) == 1:
            return [_row(batch[0][0], metric, None, error_text(e))]
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
    """Merge the writers' journals, write the sorted rows atomically (CSV, or JSON for a ``.json`` output), then
    remove the journals.

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
    write_output_atomic(output, rows, value_column=value_column)
    if not keep_journals:
        for p in paths:
            p.unlink(missing_ok=True)
    return rows


# --------------------------------------------------------------------------------------- the job runner
@dataclass(frozen=True)
class ScoreJob:
    """What to score and where: a paired job (``folders = (ref_dir, dist_dir)``) or an all-pairs one
    (``all_pairs=True``, ``folders = (folder,)``), the metric and its options, how images are read, the
    output CSV and what to do with an existing one (``resume`` or ``overwrite``, not both). ``retry_errors``
    (with ``resume`` only) scores again the pairs whose journal rows hold an error; rows with a value are kept.

    Device, batch size and the launch are not part of the job: they do not change its result.

    Raises:
        ValueError: the number of folders does not fit the kind of job; both ``resume`` and ``overwrite``;
            ``retry_errors`` without ``resume``.

    Example:
        >>> ScoreJob(("ref", "dist"), output=Path("s.csv")).kind
        'paired'
        >>> ScoreJob(("ref",), output=Path("s.csv"))
        Traceback (most recent call last):
        ...
        ValueError: a paired job takes two folders (reference, distorted), got 1
    """

    folders: tuple[str | os.PathLike[str], ...]
    output: Path
    all_pairs: bool = False
    metric: str = "mmdpp"
    options: Mapping[str, Any] = field(default_factory=dict)
    mode: ImageMode = "RGB"
    resize: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    resume: bool = False
    overwrite: bool = False
    retry_errors: bool = False

    def __post_init__(self) -> None:
        n = len(self.folders)
        if self.all_pairs and n != 1:
            raise ValueError(f"an all-pairs job takes one folder, got {n}")
        if not self.all_pairs and n != 2:
            raise ValueError(f"a paired job takes two folders (reference, distorted), got {n}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue a job, or start it over")
        if self.retry_errors and not self.resume:
            raise ValueError("retry_errors goes with resume: it scores again the error rows of a job's journals")
        object.__setattr__(self, "output", Path(self.output))

    @property
    def kind(self) -> str:
        """``"all-pairs"`` or ``"paired"`` (as recorded in the journal)."""
        return "all-pairs" if self.all_pairs else "paired"


@dataclass(frozen=True)
class IgnoredFiles:
    """Notice: files without an image suffix in a folder (``role``: ``folder``, ``ref`` or ``dist``)."""

    role: str
    files: list[str]


@dataclass(frozen=True)
class UnmatchedImages:
    """Notice: images of a paired job without a partner (skipped)."""

    only_ref: list[str]
    only_dist: list[str]


@dataclass(frozen=True)
class LockUnavailable:
    """Notice: the output could not be locked (e.g. no ``flock`` on its file system); the job goes on."""

    output: Path
    error: OSError


@dataclass(frozen=True)
class ChangedImages:
    """Notice (when resuming): ``pairs`` finished rows are dropped to be scored again because image files of theirs
    (``files``, paths as the job reads them) changed since they were scored, in size or modification time."""

    pairs: int
    files: list[str]


@dataclass(frozen=True)
class ChangedErrorRows:
    """Notice (when resuming without ``retry_errors``): ``rows`` error rows are of image files (``files``) that
    changed since they were scored; they are kept, as every error row is unless ``retry_errors`` is set, which
    scores them again."""

    rows: int
    files: list[str]


@dataclass(frozen=True)
class UnstampedRows:
    """Notice (when resuming): ``rows`` finished rows come from a journal of an earlier version, which recorded no
    file stamps: they are kept, though whether their image files changed since cannot be told."""

    rows: int


Notice = IgnoredFiles | UnmatchedImages | LockUnavailable | ChangedImages | ChangedErrorRows | UnstampedRows


@dataclass
class ScoreResult:
    """What a job did. ``rows`` (the CSV's rows) is filled on rank 0 only; the counts cover every rank."""

    output: Path
    rows: list[dict[str, Any]]
    scored: int
    errors: int
    skipped: int
    world_size: int
    seconds: float
    retried: int = 0
    """Error rows of the journals dropped to be scored again (``retry_errors``)."""
    changed: int = 0
    """Rows with a value dropped to be scored again because an image file of their pair changed since."""

    @property
    def error_rows(self) -> int:
        """Rows of the CSV with an error."""
        return sum(1 for r in self.rows if r.get("error"))


@dataclass(frozen=True)
class _Built:
    tasks: list[PairTask]
    job: dict[str, Any]
    value_column: str


@dataclass
class _Reached:
    """How far a run got, for what an interruption outside the scoring says is saved."""

    tasks: list[PairTask] | None = None  # the job's pairs, once listed
    header: dict[str, Any] | None = None  # the job as the journals record it
    mine: list[PairTask] | None = None  # this rank's share of what is left
    scored: bool = False  # this rank's share is in its journal


class _Terminated(BaseException):
    """SIGTERM (a launcher stopping the survivors after a rank failed), raised in the main thread."""


_AGREED_ERRORS: tuple[type[BaseException], ...] = (ScoringError, OutputLockedError)

#: Why a lock file could not be created that is the folder's fault (not a file system without ``flock``);
#: ``ELOOP``: ``OUT.lock`` is a symbolic link, which is never followed; ``EISDIR``: it is a folder.
_NO_ACCESS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP, errno.EISDIR})


def _file_keys(path: Path) -> set[tuple[int, int]]:
    """The (device, inode) of ``path`` itself and, for a symbolic link, of the file it leads to; empty when there is
    nothing at ``path``."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return set()
    keys = {(st.st_dev, st.st_ino)}
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return keys
        keys.add((st.st_dev, st.st_ino))
    return keys


def _name_too_long(out: Path, companion: Path | None = None) -> OutputPathError:
    """The error for an output whose name, or the name of a file kept next to it while it is written (its lock
    file, a journal), is longer than the file system allows."""
    suffix = (companion or journal_path(out)).name[len(out.name):]
    return OutputPathError(f"{out}: the name is too long for the file system, or would be with the suffix "
                           f"{suffix!r} of the files kept next to it while the job runs; give a shorter name",
                           output=out, reason="name_too_long")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "no message"
    return text if type(e) in (ValueError, TypeError) else f"{text} ({type(e).__name__})"


class ScoreRunner:
    """Runs a :class:`ScoreJob` from start to final CSV, alone or as one rank of a launch.

    Steps, each checked on every rank before the next (if one rank fails, every rank stops: the failing one
    with its error, the others with :class:`RankFailedError`): build the tasks, refuse an output that is one of
    their images (:class:`OutputPathError`, also when its journal or lock file is one) and check the metric on a
    tiny pair; check that every rank built the same job, with the same output, ``resume``, ``overwrite`` and
    ``retry_errors`` (:class:`InconsistentJournalsError` if not); lock the
    output (rank 0); apply the output rules (an existing output or journal needs
    ``resume`` or ``overwrite``) and read the finished rows when resuming; check that every rank sees the
    same journals; when resuming, drop from the journals (rank 0) the rows with a value whose image files changed
    since they were scored (:func:`~patchmmd.scoring.journal.changed_rows`; notices :class:`ChangedImages`,
    :class:`ChangedErrorRows` for error rows, which are kept as any error row, and :class:`UnstampedRows` for rows
    of an earlier version's journal, which are kept unchecked) and, with ``retry_errors``, the error rows; open
    this rank's journal; score this rank's share of what is left; rank 0 merges all journals into the CSV.

    Ctrl-C at any step (the listing, the metric check, the final CSV, not only the scoring) raises
    :class:`JobInterrupted` with what the journals hold; the CSV is replaced only whole, and the journals
    are removed only once it is written, so no finished row is lost.

    Args:
        job: what to score. device: a string for :func:`patchmmd.runtime.resolve_device` (under a launch,
            ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK``). env: the launch (default: read from the
            environment, :func:`patchmmd.scoring.distributed.detect`).
        batch_size, batch_pixels: as in :func:`run_tasks`.
        progress: called as ``progress(done, total)`` once before scoring and after each batch (rank 0's
            share under a launch; in a single process ``done`` starts at the pairs already in the journal).
        notify: called with each :data:`Notice` (rank 0 only).
        after_batch: called after each durable batch. resize_hint, mode_hint: see :func:`run_tasks`.
        argv: the command line recorded in the lock file (default ``sys.argv``).

    Raises (from :meth:`run`):
        ScoringError: its subclasses say what is wrong (folders, metric, output, journals, another rank).
        OutputLockedError: another run writes the output (:class:`~patchmmd.scoring.journal.JournalBusyError`: a
            writer of an earlier run still writes one of its journals). patchmmd.runtime.DeviceError: a bad device.
        JobInterrupted: Ctrl-C, or SIGTERM under a launch. distributed.PeerLostError: a rank is gone
            (:class:`~patchmmd.scoring.distributed.RendezvousError`: the ranks did not all meet at the start,
            before any step). distributed.LaunchEnvironmentError: ``MASTER_ADDR`` / ``MASTER_PORT`` missing or
            malformed (found before any step).

    Example:
        >>> import tempfile, torch
        >>> from patchmmd.io import save_image
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "photos").mkdir()
        >>> for i in range(3):
        ...     save_image(torch.full((3, 8, 8), i / 4), d / "photos" / f"im{i}.png")
        >>> job = ScoreJob((d / "photos",), all_pairs=True, output=d / "pairs.csv", metric="l2")
        >>> result = ScoreRunner(job, device="cpu").run()
        >>> len(result.rows), result.scored, (d / "pairs.csv").read_text().splitlines()[0]
        (3, 3, 'ref,dist,metric,distance,error')
    """

    def __init__(
        self,
        job: ScoreJob,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 16,
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
        env: distributed.DistEnv | None = None,
        progress: Callable[[int, int], None] | None = None,
        notify: Callable[[Notice], None] | None = None,
        after_batch: Callable[[], None] | None = None,
        resize_hint: str = DEFAULT_RESIZE_HINT,
        mode_hint: str = DEFAULT_MODE_HINT,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.job = job
        self.device = device
        self.batch_size = batch_size
        self.batch_pixels = batch_pixels
        self.env = distributed.detect() if env is None else env
        self.progress = progress
        self.notify = notify
        self.after_batch = after_batch
        self.resize_hint = resize_hint
        self.mode_hint = mode_hint
        self.argv = argv
        self._reached = _Reached()

    # ---------------------------------------------------------------------------------- helpers
    def _notice(self, notice: Notice) -> None:
        if self.env.is_main and self.notify is not None:
            self.notify(notice)

    def _agreed(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every rank; if it failed on any, every rank stops (see the class)."""
        value: Any = None
        error: BaseException | None = None
        try:
            value = step()
        except _AGREED_ERRORS as e:
            error = e
        if not self.env.is_distributed:
            if error is not None:
                raise error
            return value
        failures = distributed.all_gather_object(error)
        if error is not None:
            raise error
        for rank, failure in enumerate(failures):
            if failure is not None:
                raise RankFailedError(rank, failure)
        return value

    # ---------------------------------------------------------------------------------- the steps
    def _list(self, folder: str | os.PathLike[str], role: str) -> list[Path]:
        """The images of ``folder`` (at least one; notices for the other files)."""
        from ..io import IMAGE_SUFFIXES

        try:
            images, others = list_images(folder)
        except OSError as e:  # missing, not a folder, or a folder in it that cannot be listed
            raise FolderError(str(e), role=role) from None
        if not images:
            extra = (f" (it holds {len(others)} other file(s), e.g. {printable_text(others[0])})" if others
                     else " (it is empty)")
            raise FolderError(f"no image files in {folder}{extra}; looked for {', '.join(IMAGE_SUFFIXES)}",
                              role=role)
        if others:
            self._notice(IgnoredFiles(role, others))
        return [Path(folder) / name for name in images]

    def _build(self) -> _Built:
        """The tasks, the job header and the metric, all checked before any work (reads only), and an output that
        is not one of the job's images."""
        from ..metrics.registry import get_spec

        job = self.job
        if job.all_pairs:
            folder = job.folders[0]
            inputs = self._list(folder, "folder")
            tasks = all_pair_tasks(folder)
            if not tasks:
                raise FolderError(f"{folder} holds a single image; an all-pairs job needs at least two",
                                  role="folder")
            where: dict[str, Any] = {"kind": "all-pairs", "folder": str(Path(folder).resolve())}
        else:
            ref_dir, dist_dir = job.folders
            inputs = self._list(ref_dir, "ref") + self._list(dist_dir, "dist")
            pairs = paired_tasks(ref_dir, dist_dir)
            tasks = pairs.tasks
            if not tasks:
                raise NoPairsError(
                    f"no pairs: no file in {ref_dir} has a partner with the same relative path in {dist_dir}",
                    only_ref=pairs.only_ref, only_dist=pairs.only_dist,
                )
            if pairs.only_ref or pairs.only_dist:
                self._notice(UnmatchedImages(pairs.only_ref, pairs.only_dist))
            where = {"kind": "paired", "ref_dir": str(Path(ref_dir).resolve()),
                     "dist_dir": str(Path(dist_dir).resolve())}
        self._output_not_input(inputs)
        if job.max_pixels != DEFAULT_MAX_PIXELS:  # a job with the default limit keeps its header as before
            where["max_pixels"] = "none" if job.max_pixels is None else job.max_pixels
        options = dict(job.options)
        files = file_stamps(options)
        if files:  # weight files: one replaced in place (or a relative path from elsewhere) is another job
            where["files"] = files
        self._reached.tasks = tasks
        header_error: MetricSetupError | None = None
        try:  # as the journal will hold it (JSON), so that the job matches its own journal
            header = job_header(job.metric, options, tasks, mode=job.mode, resize=job.resize, **where)
            self._reached.header = header
        except (TypeError, ValueError) as e:
            header_error = MetricSetupError(str(e), metric=job.metric)
        check_metric(job.metric, options)  # an option the metric refuses is reported first
        if header_error is not None:
            raise header_error
        return _Built(tasks, header, value_column(get_spec(job.metric).higher_is_better))

    def _output_not_input(self, inputs: Sequence[Path]) -> None:
        """Refuse an output that is one of the job's images (the same file, by name, link or hard link), or whose
        journal or lock file is: the job would replace or truncate it. Reads only; costs nothing (no image is
        looked at) unless the output or one of the files kept next to it exists."""
        out, env = self.job.output, self.env
        try:
            journals = find_journals(out)
        except OSError:  # its folder cannot be listed: said when the output is prepared
            journals = []
        own = journal_path(out, env.rank, env.world_size)
        held: dict[tuple[int, int], Path] = {}
        for path in (out, lock_path(out), journal_path(out), own, *journals):
            for key in _file_keys(path):
                held.setdefault(key, path)
        if not held:
            return
        for image in inputs:
            for key in _file_keys(image):
                if key in held:
                    path = held[key]
                    what = f"{out} is" if path == out else f"{out}: {path}, kept next to it while the job runs, is"
                    raise OutputPathError(f"{what} the image {printable_text(str(image))} that the job reads (the "
                                          "same file, or a link to it); the job would replace it: give a path that is "
                                          "not one of the job's images", output=out, reason="is_input")

    def _prepare_folder(self) -> None:
        out = self.job.output
        try:
            is_folder = out.is_dir()
        except OSError as e:  # e.g. a name longer than the file system allows
            if e.errno == errno.ENAMETOOLONG:
                raise _name_too_long(out) from None
            raise OutputPathError(f"{out}: {e.strerror or e}", output=out, reason="cannot_create") from None
        if is_folder:
            raise OutputPathError(f"{out} is a folder; give a file path", output=out, reason="is_folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise _name_too_long(out) from None
            blocker = file_in_the_way(out)
            if blocker is not None:
                raise OutputPathError(f"{out}: {blocker} is a file, not a folder", output=out,
                                      reason="parent_is_file") from None
            raise OutputPathError(f"{out}: cannot create the folder {out.parent}: {e.strerror or e}", output=out,
                                  reason="cannot_create") from None

    def _lock(self) -> OutputLock | None:
        """Rank 0 (or the single process) locks the output for the whole run and removes the temporary files a
        killed run left next to it (:func:`~patchmmd.scoring.output.remove_stale_temporaries`); None elsewhere."""
        self._prepare_folder()
        if not self.env.is_main:
            return None
        out = self.job.output
        try:
            lock = OutputLock.acquire(out, argv=self.argv)
        except OutputLockedError:
            raise
        except OSError as e:
            if e.errno in _NO_ACCESS:  # nor could the journal or the CSV be written there
                raise OutputPathError(f"{out}: cannot create the lock file {lock_path(out)}: {e.strerror or e}",
                                      output=out, reason="cannot_create") from None
            if e.errno == errno.ENAMETOOLONG:  # nor could its journal be created: no run can write this output
                raise _name_too_long(out) from None
            # e.g. a file system without flock: go on, as before locks existed
            self._notice(LockUnavailable(out, e))
            return None
        if lock.held:  # no other run writes this output: a temporary file of its name was left by a killed one
            env = self.env
            try:
                remove_stale_temporaries({out, journal_path(out), journal_path(out, env.rank, env.world_size),
                                          *find_journals(out)})
            except BaseException:
                lock.release()
                raise
        return lock

    def _read_output(self, built: _Built) -> tuple[Path, dict[str, dict[str, Any]]]:
        """The output rules and, when resuming, the finished rows of the journals (reads only; locked)."""
        job, env = self.job, self.env
        out = job.output
        journals = find_journals(out)
        own = journal_path(out, env.rank, env.world_size)
        if env.is_main:  # the lock is ours, but a writer of an earlier run may live on without it
            busy = journals_in_use(journals)
            if busy:
                raise JournalBusyError(busy[0])
        # lexists: a symbolic link in the output's place counts even when it leads nowhere (the CSV would replace it)
        existing = [p for p in (out, own, *journals) if os.path.lexists(p)]
        if existing and not (job.resume or job.overwrite):
            names = ", ".join(dict.fromkeys(map(str, existing)))
            raise OutputExistsError(f"{names} already exist(s); resume the job or overwrite it",
                                    existing=list(dict.fromkeys(existing)))
        if job.resume and out.exists() and not journals:
            raise NothingToResumeError(
                f"nothing to resume: {out} exists and has no journal, so its job finished; overwrite it to "
                "compute it again", output=out)
        done: dict[str, dict[str, Any]] = {}
        if job.resume:
            done = done_rows(journals, built.job, built.tasks)
        return own, done

    def _drop_rows(self, built: _Built, ids: set[str], what: str) -> None:
        """Rank 0 rewrites every journal of the output without the rows of ``ids`` (``what`` they are; locked)."""
        if not self.env.is_main:
            return
        for path in find_journals(self.job.output):
            try:
                drop_rows(path, ids, built.job, built.tasks)
            except OSError as e:
                raise JournalOpenError(f"cannot rewrite the journal {path} without its {what}: {e}",
                                       path=path) from None

    def _changed(self, done: dict[str, dict[str, Any]], tasks: Sequence[PairTask]) -> set[str]:
        """The rows with a value whose image files changed since they were scored, as rank 0 finds them (every rank
        gets rank 0's answer: the files are stat'ed once, and all ranks share out the same pairs). Notices say how
        many and which files, how many error rows are of changed files (kept unless ``retry_errors``, like any
        error row) and how many rows could not be checked (no stamps)."""
        found: tuple[dict[str, list[str]], int] = ({}, 0)
        if self.env.is_main:
            found = changed_rows(done.values(), tasks)
        if self.env.is_distributed:
            found = distributed.all_gather_object(found)[0]
        changed, unstamped = found

        def files(ids: list[str]) -> list[str]:
            return list(dict.fromkeys(f for i in ids for f in changed[i]))

        values = [i for i in changed if done[i]["error"] is None]
        errors = [i for i in changed if done[i]["error"] is not None]
        if values:
            self._notice(ChangedImages(len(values), files(values)))
        if errors and not self.job.retry_errors:
            self._notice(ChangedErrorRows(len(errors), files(errors)))
        if unstamped:
            self._notice(UnstampedRows(unstamped))
        return set(values)

    def _open_journal(self, own: Path, built: _Built) -> Journal:
        try:
            return Journal.open(own, built.job, resume=self.job.resume, tasks=built.tasks)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # a rank's journal has the longest name of them all
                raise _name_too_long(self.job.output, own) from None
            raise JournalOpenError(f"cannot open the journal {own}: {e}", path=own) from None

    # ---------------------------------------------------------------------------------- the run
    def run(self) -> ScoreResult:
        """Run the job (see the class); returns what it did."""
        env = self.env
        self._reached = _Reached()
        try:
            dev = distributed.device_for(self.device, env)
            if not env.is_distributed:
                return self._run(dev)
            with distributed.process_group(dev, env=env):
                return self._run(dev)
        except JobInterrupted:
            raise
        except KeyboardInterrupt:  # outside the scoring: the listing, the metric check, the final CSV, ...
            raise self._interruption() from None

    def _interruption(self) -> JobInterrupted:
        """What Ctrl-C outside :func:`run_tasks` leaves: before the scoring, the rows the journals already held
        (none under a launch: a rank's share is what was left); after it, every pair of the job (of the rank's
        share under a launch), since the journals are removed only once the CSV is written."""
        env, reached = self.env, self._reached
        share = reached.mine if env.is_distributed else reached.tasks
        total = 0 if share is None else len(share)
        if reached.scored:
            saved = total
        elif env.is_distributed or reached.tasks is None or reached.header is None:
            saved = 0
        else:
            try:
                saved = len(done_rows(find_journals(self.job.output), reached.header, reached.tasks))
            except (ScoringError, OSError):  # e.g. another job's journal: resuming will say so
                saved = 0
        return JobInterrupted(signal="SIGINT", saved=saved, total=total,
                              journal=journal_path(self.job.output, env.rank, env.world_size), rank=env.rank,
                              distributed=env.is_distributed)

    def _same_job(self, built: _Built) -> None:
        """Under a launch: every rank must have built the same job (folders, pairs, metric, options, ...).

        Ranks that listed different files (folders not on a file system shared by all nodes, files added while
        the job starts) or were given other arguments would share out different pair lists: pairs lost or
        scored twice, and journals of different jobs that no merge or resume accepts. Every rank compares all
        the ranks' jobs with rank 0's alike, so all stop with the same error, before any journal is touched.

        The output and what to do with it (``resume``, ``overwrite``, ``retry_errors``) are compared too: they
        are no part of the job's journal header, but ranks that differ in them take different steps (only some
        would delete the journals and wait for the others, or drop the error rows), so their meetings would no
        longer match (a hang until the timeout, or one step's answer taken for another's) and their shares
        would be cut from different lists of pairs.
        """
        if not self.env.is_distributed:
            return
        job = self.job
        run = {"output": os.fspath(job.output), "resume": job.resume, "overwrite": job.overwrite,
               "retry_errors": job.retry_errors}
        jobs = distributed.all_gather_object({**built.job, **run})
        for rank, other in enumerate(jobs):
            if other != jobs[0]:
                differ = sorted(k for k in set(other) | set(jobs[0]) if other.get(k) != jobs[0].get(k))
                detail = "; ".join(f"{k}: rank 0 {jobs[0].get(k)!r}, rank {rank} {other.get(k)!r}" for k in differ)
                raise InconsistentJournalsError(
                    f"the ranks built different jobs ({detail}): give every rank the same arguments and the same "
                    "files (input folders on a file system shared by all nodes, not changed while the job starts)")

    def _run(self, dev: torch.device) -> ScoreResult:
        built = self._agreed(self._build)
        self._same_job(built)
        # no other run may write the output meanwhile: lock it before its journals are read
        lock: OutputLock | None = None
        try:
            lock = self._agreed(self._lock)
            return self._run_locked(dev, built)
        finally:
            if lock is not None:
                lock.release()

    def _run_locked(self, dev: torch.device, built: _Built) -> ScoreResult:
        job, env = self.job, self.env
        out, tasks = job.output, built.tasks
        own, done = self._agreed(lambda: self._read_output(built))
        if env.is_distributed:
            # The rest is shared out from what each rank read: all must have read the same journals.
            view = (tuple(p.name for p in find_journals(out)), tasks_digest(t for t in tasks if t.id in done))
            if len(set(distributed.all_gather_object(view))) > 1:
                raise InconsistentJournalsError(
                    f"the ranks see different journals next to {out}: put the output on a file system shared "
                    "by all nodes")
        if job.overwrite:
            if env.is_main:
                for p in find_journals(out):
                    p.unlink(missing_ok=True)
            distributed.barrier()  # no rank writes before the old journals are gone
        retried = changed = 0
        if done:  # resuming: rows with a value of changed image files are scored again, error rows on request
            stale = self._changed(done, tasks)  # rows with a value only: error rows go with retry_errors
            failed = {i for i, r in done.items() if r["error"] is not None} if job.retry_errors else set()
            drop = stale | failed
            if drop:
                # Out of the journals before any rank opens its own (the step is a meeting point): the journals
                # then hold one row per pair, so the new row is the only one whatever journal it lands in.
                what = "error rows" if not stale else "rows whose image files changed" + (
                    " and error rows" if failed else "")
                self._agreed(lambda: self._drop_rows(built, drop, what))
                done = {i: r for i, r in done.items() if i not in drop}
                retried, changed = len(failed), len(stale)
        # Every rank has read the same finished rows: the rest is shared out alike on every rank.
        remaining = [t for t in tasks if t.id not in done]
        skipped = len(tasks) - len(remaining)
        mine = shard(remaining, env.rank, env.world_size)
        self._reached.mine = mine
        journal = self._agreed(lambda: self._open_journal(own, built))

        # progress: rank 0's share under a launch; the whole job, from what is done, in a single process
        total, finished = (len(mine), 0) if env.is_distributed else (len(tasks), skipped)

        def advance(n: int) -> None:
            nonlocal finished
            finished += n
            if self.progress is not None and env.is_main:
                self.progress(finished, total)

        advance(0)
        old_sigterm = None
        if env.is_distributed:
            def on_sigterm(signum: int, frame: object) -> None:
                raise _Terminated()

            old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        t0 = time.perf_counter()
        try:
            with journal:
                summary = run_tasks(
                    mine, job.metric, journal, options=dict(job.options), batch_size=self.batch_size, device=dev,
                    mode=job.mode, resize=job.resize, progress=advance, after_batch=self.after_batch,
                    max_pixels=job.max_pixels, batch_pixels=self.batch_pixels, resize_hint=self.resize_hint,
                    mode_hint=self.mode_hint,
                )
        except (KeyboardInterrupt, _Terminated) as e:
            name = "SIGINT" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
            ids = {r["id"] for r in read_journal(own)}
            if env.is_distributed:
                saved, of = len(ids - set(done)), len(mine)
            else:
                saved, of = len(set(done) | ids), len(tasks)
            raise JobInterrupted(signal=name, saved=saved, total=of, journal=own, rank=env.rank,
                                 distributed=env.is_distributed) from None
        except JournalWriteError as e:  # e.g. a full disk: what is saved (durable rows only), and where
            if env.is_distributed:
                saved, of, its = len(set(journal.done) - set(done)), len(mine), "its "
            else:
                saved, of, its = len(set(done) | set(journal.done)), len(tasks), ""
            raise JournalWriteError(f"{e}; {saved} of {its}{of} pairs are saved", path=own, saved=saved,
                                    total=of) from e.__cause__
        finally:
            if old_sigterm is not None:
                signal.signal(signal.SIGTERM, old_sigterm)
        self._reached.scored = True

        # --- every rank is done: rank 0 merges all journals into the CSV
        counts = distributed.all_gather_object((summary.scored, summary.errors))
        rows: list[dict[str, Any]] = []
        failure: str | None = None
        if env.is_main:
            try:
                rows = finalize(out, tasks, built.job, value_column=built.value_column, journals=find_journals(out))
            except (ValueError, OSError) as e:
                if not env.is_distributed:
                    raise FinalizeError(f"could not write {out}: {e}") from None
                failure = f"rank 0 could not write {out}: {type(e).__name__}: {e}"
                if isinstance(e, ValueError) and not isinstance(e, JournalError):
                    failure += f" (is {out.parent} on a file system shared by all nodes?)"
        try:
            failures = distributed.all_gather_object(failure)
        except distributed.PeerLostError:
            if not (env.is_main and failure is None):
                raise
            failures = [None]  # the CSV is written and the journals are gone: a rank lost now changes nothing
        if failures[0] is not None:
            raise FinalizeError(failures[0])
        return ScoreResult(
            output=out, rows=rows, scored=sum(s for s, _ in counts), errors=sum(e for _, e in counts),
            skipped=skipped, world_size=env.world_size, seconds=time.perf_counter() - t0, retried=retried,
            changed=changed,
        )


_PROBE_SIZES = (64, 256, 255)
"""Sides of the flat test pairs :func:`check_metric` tries, in order; the last two tell a failure that
depends on the image size (its message changes with it) from one of the options."""


def check_metric(name: str, options: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Build the metric and run it on a flat test pair, so that bad options fail before any work; returns it.

    The pair is 64 px, then 256 px if the metric refuses that (MS-SSIM needs more than 160 px). A metric that
    refuses 256 px too is tried at 255 px: if the error is the same, the options are at fault; if it changes
    with the size, the images are (they get error rows or messages of their own), and the metric is accepted.

    Raises:
        MetricSetupError: the metric cannot be built with ``options``, or they fail on every test pair
            (``missing_dependency`` when an optional package is missing).
    """
    from ..metrics.registry import get_metric

    try:
        fn = get_metric(name, **options)
    except ImportError as e:
        raise MetricSetupError(str(e), metric=name, missing_dependency=True) from None
    except (TypeError, ValueError) as e:
        raise MetricSetupError(str(e), metric=name) from None
    except Exception as e:  # any other failure of the metric's factory
        raise MetricSetupError(_one_line(e), metric=name) from e
    failures: list[Exception] = []
    for size in _PROBE_SIZES:
        try:
            with torch.no_grad():
                fn(torch.full((1, 3, size, size), 0.5), torch.full((1, 3, size, size), 0.5))
            return fn
        except ImportError as e:
            raise MetricSetupError(str(e), metric=name, missing_dependency=True) from None
        except Exception as e:
            failures.append(e)
    last, before = failures[-1], failures[-2]
    if _one_line(last) != _one_line(before):
        return fn  # the error names the size: the images' fault, not the options'
    if isinstance(last, (TypeError, ValueError)):
        raise MetricSetupError(str(last), metric=name) from None
    # e.g. a RuntimeError deep inside: the options do not work on images
    raise MetricSetupError(_one_line(last), metric=name) from last
