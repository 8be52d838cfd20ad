"""``patchmmd score``: distances for many image pairs into a CSV, resumable after any interruption.

A thin layer over :class:`patchmmd.scoring.ScoreRunner`, which holds the job, its rules and the ranks'
agreement: this module parses the options, shows progress, and turns each library error into one line that
names the option or argument at fault (the command line owns every flag name).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

from . import main
from ._common import (
    OutputFile,
    batch_size_option,
    debug_enabled,
    device_option,
    metric_option,
    metric_options_option,
    metric_setup_error,
    mode_option,
    parse_metric_options,
)

if TYPE_CHECKING:
    from ..io import ImageMode

_SHOW_UNMATCHED = 5
_ROLES = {"folder": "FOLDER", "ref": "REF_DIR", "dist": "DIST_DIR"}
_RESUME_HINT = "rerun the same command with --resume to finish"


class _MaxPixels(click.ParamType):
    """A positive pixel count, or ``0`` / ``none`` for no limit (``None``)."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            n = value
        elif str(value).strip().lower() in ("none", "0"):
            return None
        else:
            try:
                n = int(str(value).replace("_", ""))
            except ValueError:
                self.fail(f"expected a number of pixels, 0 or none (no limit), got {value!r}", param, ctx)
        if n is not None and n < 0:
            self.fail(f"expected a positive number of pixels, 0 or none (no limit), got {value!r}", param, ctx)
        return n or None


def max_pixels_option() -> Callable[[Any], Any]:
    """``--max-pixels N``: the largest image read (width x height); ``0`` or ``none``: no limit."""
    from ..io import DEFAULT_MAX_PIXELS

    return click.option(
        "--max-pixels", type=_MaxPixels(), default=DEFAULT_MAX_PIXELS, show_default=True,
        help="Largest image read, in pixels (width x height), checked from the file's header before decoding; "
             "larger files (and decompression bombs) are reported like unreadable ones. 0 or none: no limit.",
    )


def _describe(names: list[str]) -> str:
    """The first few file names, each on one plain line (a line break or an escape character in a name shown as
    ``\\n`` or ``\\x1b``, never written to the terminal as it is)."""
    from ..scoring import printable_text

    more = f" and {len(names) - _SHOW_UNMATCHED} more" if len(names) > _SHOW_UNMATCHED else ""
    return ", ".join(map(printable_text, names[:_SHOW_UNMATCHED])) + more


def _unmatched(only_ref: list[str], only_dist: list[str]) -> str:
    parts = []
    if only_ref:
        parts.append(f"{len(only_ref)} in REF_DIR only ({_describe(only_ref)})")
    if only_dist:
        parts.append(f"{len(only_dist)} in DIST_DIR only ({_describe(only_dist)})")
    return "; ".join(parts)


def _show_notice(notice: Any) -> None:
    """The runner's notices (rank 0 only), as notes and warnings on stderr."""
    from ..scoring import (
        ChangedErrorRows,
        ChangedImages,
        IgnoredFiles,
        LockUnavailable,
        UnmatchedImages,
        UnstampedRows,
    )

    if isinstance(notice, IgnoredFiles):
        click.echo(f"note: {_ROLES[notice.role]}: {len(notice.files)} file(s) without an image suffix ignored "
                   f"({_describe(notice.files)})", err=True)
    elif isinstance(notice, UnmatchedImages):
        click.echo(f"warning: unmatched images are skipped: {_unmatched(notice.only_ref, notice.only_dist)}",
                   err=True)
    elif isinstance(notice, LockUnavailable):
        click.echo(f"warning: cannot lock {notice.output} ({notice.error}); make sure no other run writes it",
                   err=True)
    elif isinstance(notice, ChangedImages):
        click.echo(f"warning: {notice.pairs} finished pair(s) are scored again: {len(notice.files)} image file(s) "
                   f"changed since they were scored ({_describe(notice.files)})", err=True)
    elif isinstance(notice, ChangedErrorRows):
        click.echo(f"note: {notice.rows} error row(s) are of image files changed since they were scored "
                   f"({_describe(notice.files)}); they are kept, --retry-errors scores them again", err=True)
    elif isinstance(notice, UnstampedRows):
        click.echo(f"warning: {notice.rows} finished pair(s) come from a journal of an earlier patchmmd that "
                   "records no file sizes or times: they are kept without checking whether their images changed "
                   "since; if some did, start over with --overwrite", err=True)


def _click_error(e: BaseException, *, retry_errors: bool = False) -> click.ClickException:
    """A library error as the command line says it: one line, naming the option or argument at fault."""
    from .. import scoring
    from ..runtime import DeviceError

    if isinstance(e, scoring.RankFailedError):
        inner = _click_error(e.cause, retry_errors=retry_errors)
        message = f"rank {e.rank}: {inner.format_message()}"
        if isinstance(inner, click.UsageError):
            return click.UsageError(message)
        return click.ClickException(message)
    if isinstance(e, DeviceError):
        return click.BadParameter(str(e), param_hint="--device")
    if isinstance(e, scoring.FolderError):
        return click.UsageError(f"{_ROLES.get(e.role, e.role)}: {e}")
    if isinstance(e, scoring.NoPairsError):
        return click.UsageError(f"{e}; {_unmatched(e.only_ref, e.only_dist)}")
    if isinstance(e, scoring.MetricSetupError):
        return metric_setup_error(e)
    if isinstance(e, scoring.OutputPathError):
        if e.reason == "cannot_create":
            return click.ClickException(f"--out {e}")
        return click.UsageError(f"--out {e}")
    if isinstance(e, scoring.OutputExistsError):
        names = ", ".join(map(str, e.existing))
        return click.UsageError(f"--out: {names} already exist(s); pass --resume to continue the job or "
                                "--overwrite to start over")
    if isinstance(e, scoring.NothingToResumeError):
        if retry_errors:
            return click.UsageError(f"nothing to resume: {e.output} exists and has no journal, so its job finished "
                                    "and its error rows can no longer be retried (the journal is removed once the "
                                    "CSV is written); pass --overwrite to compute it again")
        return click.UsageError(f"nothing to resume: {e.output} exists and has no journal, so its job finished; "
                                "pass --overwrite to compute it again")
    if isinstance(e, scoring.JobMismatchError):
        return click.UsageError(f"cannot resume: {e}; or pass --overwrite to start over")
    if isinstance(e, scoring.JournalError):
        return click.UsageError(f"cannot resume: {e}; fix or delete that line, or pass --overwrite to start over")
    if isinstance(e, scoring.UntrustedJournalError):
        return click.ClickException(f"cannot resume: the journal {e} Or pass --overwrite to start over.")
    if isinstance(e, scoring.InconsistentJournalsError):
        return click.UsageError(str(e).replace("put the output on", "put --out on"))
    if isinstance(e, scoring.JournalWriteError):
        return click.ClickException(f"{e}; fix that (e.g. free some space), then {_RESUME_HINT}")
    if isinstance(e, scoring.FinalizeError):
        return click.ClickException(f"{e}; the journals are kept, rerun with --resume")
    if isinstance(e, scoring.ScoringError):  # JournalOpenError and any other: a plain failure
        return click.ClickException(str(e))
    return click.ClickException(str(e))  # OutputLockedError


def _interrupts_exit_130(command: Callable[..., None]) -> Callable[..., None]:
    """Ctrl-C anywhere in the command (not only while scoring: the listing, the metric check, the final CSV)
    ends it with one message and exit status 130 (143 for SIGTERM under a launcher), never click's "Aborted!"."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt as e:
            from ..scoring import JobInterrupted

            if isinstance(e, JobInterrupted):  # from the job runner, with what is saved
                _interrupted(e)
            # outside the job runner (e.g. while reading the arguments)
            click.echo(f"\ninterrupted; finished rows are kept in the journal(s) next to {kwargs.get('out')}; "
                       f"{_RESUME_HINT}", err=True)
            sys.exit(130)

    return run


@main.command("score")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--all-pairs", is_flag=True, help="Score every unordered pair of images in one FOLDER.")
@click.option("--out", "-O", "out", required=True, type=OutputFile(),
              help="File to write: CSV (ref,dist,metric,distance|score,error), or, for a name ending in .json (any "
                   "case), a JSON array of objects with the same fields.")
@metric_option()
@metric_options_option()
@mode_option()
@click.option("--resize", is_flag=True, help="Resize the second image of a pair to the first's size "
              "(antialiased bilinear) instead of reporting an error.")
@device_option()
@batch_size_option()
@max_pixels_option()
@click.option("--resume", is_flag=True, help="Continue an interrupted job from its journal (same arguments).")
@click.option("--retry-errors", is_flag=True,
              help="With --resume: score again the pairs whose journal rows hold an error (e.g. out of memory, a "
                   "file briefly missing); rows with a value are kept.")
@click.option("--overwrite", is_flag=True, help="Start over, replacing an existing output and journal.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--throttle", type=float, default=0.0, hidden=True, help="Sleep this long after each batch (tests).")
@_interrupts_exit_130
def score(
    folders: tuple[str, ...],
    all_pairs: bool,
    out: Path,
    metric: str,
    metric_options: tuple[str, ...],
    mode: str,
    resize: bool,
    device: str,
    batch_size: int,
    max_pixels: int | None,
    resume: bool,
    retry_errors: bool,
    overwrite: bool,
    quiet: bool,
    throttle: float,
) -> None:
    """Score image pairs into a CSV: REF_DIR DIST_DIR (pairs matched by relative path), or
    --all-pairs DIR (every unordered pair, in sorted path order).

    Each finished batch is saved in a journal next to the output (OUT.journal); the CSV is written
    atomically when the job ends. After an interruption (Ctrl-C, kill -9, a crash), rerun the same command
    with --resume to score only what is left (exit status 130 after Ctrl-C). A file that cannot be read or
    is larger than --max-pixels, or a pair of images of different sizes, gets a row with its error and the job
    goes on; --resume keeps such rows, --resume --retry-errors scores them again. --resume scores again the
    pairs with a value whose image files changed since they were scored (size or modification time; a warning
    says how many).
    A folder that cannot be listed is an error before the job starts. One run at a time may write OUT: a second
    one is refused while the first holds OUT.lock.

    Under torchrun (or any launcher setting WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) each
    process scores its share into its own journal (OUT.rank{r}-of-{w}.journal) and rank 0 writes the
    CSV, identical to a single process's; --resume works with any number of processes.

    \b
    Examples:
      patchmmd score ref/ distorted/ --out scores.csv
      patchmmd score --all-pairs photos/ --out pairs.csv --metric l2 --batch-size 64
      patchmmd score ref/ distorted/ --out scores.csv --resume
      patchmmd score ref/ distorted/ --out scores.csv --resume --retry-errors
      torchrun --nproc_per_node=4 -m patchmmd score ref/ distorted/ --out scores.csv
    """
    import time

    from .. import scoring
    from ..runtime import DeviceError
    from ..scoring import distributed

    # --- the arguments alone
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other: continue a job, or start it over")
    if retry_errors and not resume:
        raise click.UsageError("--retry-errors goes with --resume: it scores again the error rows of an "
                               "unfinished job's journal (--overwrite scores every pair again)")
    if all_pairs and len(folders) != 1:
        raise click.UsageError(f"--all-pairs takes exactly one FOLDER, got {len(folders)}: {' '.join(folders)}")
    if not all_pairs and len(folders) != 2:
        raise click.UsageError(
            f"expected REF_DIR DIST_DIR (or --all-pairs DIR), got {len(folders)} folder(s): {' '.join(folders)}"
        )
    options = parse_metric_options(metric_options)
    job = scoring.ScoreJob(folders, output=out, all_pairs=all_pairs, metric=metric, options=options,
                           mode=cast("ImageMode", mode), resize=resize, max_pixels=max_pixels,
                           resume=resume, overwrite=overwrite, retry_errors=retry_errors)
    try:
        env = distributed.detect()
        if env.is_distributed:  # the rest of the launch's settings, as a usage error too (not once the ranks meet)
            distributed.default_timeout()
            distributed.rendezvous_address(env)
    except ValueError as e:
        raise click.UsageError(f"bad launch environment: {e}") from None

    # --- the run
    bar = _ProgressBar(env, show=env.is_main and not quiet and sys.stderr.isatty())
    runner = scoring.ScoreRunner(
        job, device=device, batch_size=batch_size, env=env, progress=bar.update, notify=_show_notice,
        after_batch=(lambda: time.sleep(throttle)) if throttle > 0 else None,
        resize_hint="use --resize to resize the second to the first",
        mode_hint="use --mode RGB (alpha composited over white, gray replicated) or --mode L",
    )
    try:
        result = runner.run()
    except scoring.JobInterrupted:
        bar.close()
        raise  # see _interrupts_exit_130
    except distributed.LaunchEnvironmentError as e:  # found as the ranks set up their group (e.g. no MASTER_PORT)
        bar.close()
        raise click.UsageError(f"bad launch environment: {e}") from None
    except distributed.RendezvousError as e:  # before any step: nothing was read, locked or written
        bar.close()
        raise click.ClickException(f"{e}; nothing was scored or written (the journals of an earlier run next to "
                                   f"{out}, if any, are kept)") from None
    except distributed.PeerLostError as e:
        bar.close()
        _lost_contact(e, out)
    except (scoring.ScoringError, scoring.OutputLockedError, DeviceError) as e:
        bar.close()
        if debug_enabled() and isinstance(e, scoring.MetricSetupError) and e.__cause__ is not None:
            raise e.__cause__ from e  # PATCHMMD_DEBUG=1: the metric's own traceback
        error = _click_error(e, retry_errors=retry_errors)
        if not env.is_main:  # every rank stops; rank 0 alone says why, unless the failure was this rank's own
            if isinstance(e, scoring.JournalWriteError) or (isinstance(e, DeviceError) and _own_device_error(device)):
                click.echo(f"rank {env.rank}: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        raise error from None
    bar.close()
    if env.is_main and not quiet:
        by = f" by {result.world_size} processes" if result.world_size > 1 else ""
        resumed = f", {result.skipped} from the journal" if result.skipped else ""
        resumed += f", {result.retried} error row(s) retried" if result.retried else ""
        resumed += f", {result.changed} rescored (image files changed)" if result.changed else ""
        click.echo(
            f"wrote {len(result.rows)} rows to {out} ({result.scored + result.errors} scored now{by}{resumed}; "
            f"{result.error_rows} with errors) in {result.seconds:.1f}s",
            err=True,
        )


def _own_device_error(device: str) -> bool:
    """Whether a rank's device error is its own: rank 0 (LOCAL_RANK 0) would have the device, so it cannot say why
    this rank stopped (e.g. more processes on this node than GPUs). The device is resolved before the ranks meet,
    so this rank must say it; an error every rank meets alike (no CUDA at all) is said by rank 0 alone."""
    from ..runtime import DeviceError, resolve_device

    try:
        resolve_device(device, local_rank=0)
    except DeviceError:
        return False
    return True


class _ProgressBar:
    """A tqdm bar on stderr fed by the runner's ``progress(done, total)``; created on the first call."""

    def __init__(self, env: Any, *, show: bool) -> None:
        self.env = env
        self.show = show
        self.bar: Any = None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            desc = f"rank 0 of {self.env.world_size}" if self.env.is_distributed else None
            self.bar = tqdm(total=total, initial=done, unit="pair", file=sys.stderr, disable=not self.show,
                            dynamic_ncols=True, desc=desc)
        else:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _interrupted(e: Any) -> NoReturn:
    code, what = (130, "interrupted") if e.signal == "SIGINT" else (143, "stopped (SIGTERM)")
    if not e.total:  # before the pairs were listed (or, under a launch, shared out)
        rank = f"rank {e.rank}: " if e.distributed else ""
        click.echo(f"\n{rank}{what} before any pair was scored; {_RESUME_HINT}", err=True)
    elif e.distributed:
        click.echo(f"\nrank {e.rank}: {what}: {e.saved} of its {e.total} pairs are saved in {e.journal}; "
                   f"{_RESUME_HINT}", err=True)
    else:
        click.echo(f"\n{what}: {e.saved} of {e.total} pairs are saved in {e.journal}; {_RESUME_HINT}", err=True)
    sys.exit(code)


def _lost_contact(e: Exception, out: Path) -> NoReturn:
    click.echo(f"{e}\nfinished rows are kept in the journals next to {out}; {_RESUME_HINT}", err=True)
    sys.exit(1)
