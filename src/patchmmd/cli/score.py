"""``patchmmd score``: distances for many image pairs into a CSV, resumable after any interruption.

A thin layer over :mod:`patchmmd.scoring`, which holds the job, the journal and the atomic output.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from . import main
from ._common import (
    batch_size_option,
    build_metric,
    check_metric_call,
    check_output_path,
    device_option,
    metric_option,
    metric_options_option,
    mode_option,
    parse_metric_options,
    resolve_device_or_fail,
)

_SHOW_UNMATCHED = 5


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
    more = f" and {len(names) - _SHOW_UNMATCHED} more" if len(names) > _SHOW_UNMATCHED else ""
    return ", ".join(names[:_SHOW_UNMATCHED]) + more


def _list_or_fail(folder: str, role: str, echo: Callable[..., None] = click.echo) -> tuple[list[str], list[str]]:
    from ..io import IMAGE_SUFFIXES
    from ..scoring import list_images

    try:
        images, others = list_images(folder)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise click.UsageError(f"{role}: {e}") from None
    if not images:
        extra = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else " (it is empty)"
        raise click.UsageError(
            f"{role}: no image files in {folder}{extra}; looked for {', '.join(IMAGE_SUFFIXES)}"
        )
    if others:
        echo(f"note: {role}: {len(others)} file(s) without an image suffix ignored ({_describe(others)})", err=True)
    return images, others


@main.command("score")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--all-pairs", is_flag=True, help="Score every unordered pair of images in one FOLDER.")
@click.option("--out", "-O", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV file to write (ref,dist,metric,distance|score,error).")
@metric_option()
@metric_options_option()
@mode_option()
@click.option("--resize", is_flag=True, help="Resize the second image of a pair to the first's size "
              "(antialiased bilinear) instead of reporting an error.")
@device_option()
@batch_size_option()
@max_pixels_option()
@click.option("--resume", is_flag=True, help="Continue an interrupted job from its journal (same arguments).")
@click.option("--overwrite", is_flag=True, help="Start over, replacing an existing output and journal.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--throttle", type=float, default=0.0, hidden=True, help="Sleep this long after each batch (tests).")
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
    overwrite: bool,
    quiet: bool,
    throttle: float,
) -> None:
    """Score image pairs into a CSV: REF_DIR DIST_DIR (pairs matched by relative path), or
    --all-pairs DIR (every unordered pair, in sorted path order).

    Each finished batch is saved in a journal next to the output (OUT.journal); the CSV is written
    atomically when the job ends. After an interruption (Ctrl-C, kill -9, a crash), rerun the same command
    with --resume to score only what is left. A file that cannot be read or is larger than --max-pixels,
    or a pair of images of different sizes, gets a row with its error and the job goes on. One run at a time
    may write OUT: a second one is refused while the first holds OUT.lock.

    Under torchrun (or any launcher setting WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) each
    process scores its share into its own journal (OUT.rank{r}-of-{w}.journal) and rank 0 writes the
    CSV, identical to a single process's; --resume works with any number of processes.

    \b
    Examples:
      patchmmd score ref/ distorted/ --out scores.csv
      patchmmd score --all-pairs photos/ --out pairs.csv --metric l2 --batch-size 64
      patchmmd score ref/ distorted/ --out scores.csv --resume
      torchrun --nproc_per_node=4 -m patchmmd score ref/ distorted/ --out scores.csv
    """
    from ..scoring import distributed

    try:
        env = distributed.detect()
    except ValueError as e:
        raise click.UsageError(f"bad launch environment: {e}") from None
    args = _Args(folders, all_pairs, out, metric, metric_options, mode, resize, device, batch_size, resume,
                 overwrite, quiet, throttle, max_pixels)
    if not env.is_distributed:
        _score(args, env, resolve_device_or_fail(device))
        return
    # Several processes: every rank checks the same things; only rank 0 prints a usage error.
    try:
        dev = distributed.device_for(device, env)
    except ValueError as e:
        _raise_on_main(env, click.BadParameter(str(e), param_hint="--device"))
    try:
        with distributed.process_group(dev, env=env):
            _score(args, env, dev)
    except click.ClickException as e:
        _raise_on_main(env, e)
    except distributed.PeerLostError as e:
        _lost_contact(e, args.out)


@dataclass(frozen=True)
class _Args:
    folders: tuple[str, ...]
    all_pairs: bool
    out: Path
    metric: str
    metric_options: tuple[str, ...]
    mode: str
    resize: bool
    device: str
    batch_size: int
    resume: bool
    overwrite: bool
    quiet: bool
    throttle: float
    max_pixels: int | None


class _Terminated(BaseException):
    """SIGTERM (a launcher stopping the survivors after a rank failed), raised in the main thread."""


class _OtherRankFailed(click.ClickException):
    exit_code = 1


def _raise_on_main(env: Any, e: click.ClickException) -> NoReturn:
    if env.is_main:
        raise e
    sys.exit(e.exit_code)


def _lost_contact(e: Exception, out: Path) -> NoReturn:
    click.echo(f"{e}\nfinished rows are kept in the journals next to {out}; "
               "rerun the same command with --resume to finish", err=True)
    sys.exit(1)


def _agree(env: Any, error: click.ClickException | None) -> None:
    """Stop every rank if a step failed on any: rank 0 reports the error, the others exit quietly."""
    from ..scoring import distributed

    if not env.is_distributed:
        if error is not None:
            raise error
        return
    failures = distributed.all_gather_object(None if error is None else (error.exit_code, error.format_message()))
    if error is not None:
        raise error
    for rank, failure in enumerate(failures):
        if failure is not None:
            code, message = failure
            e = click.UsageError(f"rank {rank}: {message}") if code == 2 else _OtherRankFailed(
                f"rank {rank}: {message}")
            raise e


def _attempt(step: Callable[[], Any]) -> tuple[Any, click.ClickException | None]:
    try:
        return step(), None
    except click.ClickException as e:
        return None, e


def _build_job(args: _Args, env: Any) -> dict[str, Any]:
    """The job, the metric and the output policy, all checked before any work (reads only)."""
    from .. import scoring
    from ..metrics.registry import get_spec

    folders = args.folders
    echo = click.echo if env.is_main else (lambda *a, **k: None)
    if args.all_pairs:
        if len(folders) != 1:
            raise click.UsageError(f"--all-pairs takes exactly one FOLDER, got {len(folders)}: {' '.join(folders)}")
        _list_or_fail(folders[0], "FOLDER", echo)
        tasks = scoring.all_pair_tasks(folders[0])
        if not tasks:
            raise click.UsageError(f"FOLDER: {folders[0]} holds a single image; --all-pairs needs at least two")
        where: dict[str, Any] = {"kind": "all-pairs", "folder": str(Path(folders[0]).resolve())}
    else:
        if len(folders) != 2:
            raise click.UsageError(
                f"expected REF_DIR DIST_DIR (or --all-pairs DIR), got {len(folders)} folder(s): {' '.join(folders)}"
            )
        _list_or_fail(folders[0], "REF_DIR", echo)
        _list_or_fail(folders[1], "DIST_DIR", echo)
        job_pairs = scoring.paired_tasks(folders[0], folders[1])
        tasks = job_pairs.tasks
        unmatched = []
        if job_pairs.only_ref:
            unmatched.append(f"{len(job_pairs.only_ref)} in REF_DIR only ({_describe(job_pairs.only_ref)})")
        if job_pairs.only_dist:
            unmatched.append(f"{len(job_pairs.only_dist)} in DIST_DIR only ({_describe(job_pairs.only_dist)})")
        if not tasks:
            raise click.UsageError(
                f"no pairs: no file in {folders[0]} has a partner with the same relative path in {folders[1]}; "
                + "; ".join(unmatched)
            )
        if unmatched:
            echo(f"warning: unmatched images are skipped: {'; '.join(unmatched)}", err=True)
        where = {"kind": "paired", "ref_dir": str(Path(folders[0]).resolve()),
                 "dist_dir": str(Path(folders[1]).resolve())}

    from ..io import DEFAULT_MAX_PIXELS

    if args.max_pixels != DEFAULT_MAX_PIXELS:  # a job with the default limit keeps its header as before
        where["max_pixels"] = "none" if args.max_pixels is None else args.max_pixels
    options = parse_metric_options(args.metric_options)
    check_metric_call(build_metric(args.metric, options), args.metric)
    spec = get_spec(args.metric)
    job = scoring.job_header(args.metric, options, tasks, mode=args.mode, resize=args.resize, **where)
    return {"tasks": tasks, "job": job, "options": options, "spec": spec}


def _prepare_folder(out: Path) -> None:
    """Create ``--out``'s folder, or say in one line why it cannot be."""
    if out.is_dir():
        raise click.UsageError(f"--out {out} is a folder; give a file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in out.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise click.UsageError(f"--out {out}: {blocker} is a file, not a folder") from None
        raise click.ClickException(f"--out {out}: cannot create the folder {out.parent}: {e.strerror or e}") from None


def _lock_output(args: _Args, env: Any) -> Any:
    """Rank 0 (or the single process) locks the output for the whole run; None elsewhere."""
    from .. import scoring

    _prepare_folder(args.out)
    if not env.is_main:
        return None
    try:
        return scoring.OutputLock.acquire(args.out)
    except scoring.OutputLockedError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # e.g. a file system without flock: go on, as before locks existed
        click.echo(f"warning: cannot lock {args.out} ({e}); make sure no other run writes it", err=True)
        return None


def _read_output(args: _Args, env: Any, built: dict[str, Any]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The output policy and, with --resume, the finished rows of the journals (reads only; under the lock)."""
    from .. import scoring

    out = args.out
    journals = scoring.find_journals(out)
    own = scoring.journal_path(out, env.rank, env.world_size)
    check_output_path(out, overwrite=args.overwrite, resume=args.resume, companions=[own, *journals])
    if args.resume and out.exists() and not journals:
        raise click.UsageError(
            f"nothing to resume: {out} exists and has no journal, so its job finished; "
            "pass --overwrite to compute it again"
        )
    done: dict[str, dict[str, Any]] = {}
    if args.resume:
        try:
            done = scoring.done_rows(journals, built["job"], built["tasks"])
        except scoring.JobMismatchError as e:
            raise click.UsageError(f"cannot resume: {e}; or pass --overwrite to start over") from None
        except scoring.JournalError as e:
            raise click.UsageError(
                f"cannot resume: {e}; fix or delete that line, or pass --overwrite to start over") from None
    return own, done


def _score(args: _Args, env: Any, dev: Any) -> None:
    # --- the job and the metric (checked before any work, on every rank)
    built, error = _attempt(lambda: _build_job(args, env))
    _agree(env, error)
    # --- no other run may write the output meanwhile: lock it before its journals are read
    lock, error = _attempt(lambda: _lock_output(args, env))
    try:
        _agree(env, error)
        _score_locked(args, env, dev, built)
    finally:
        if lock is not None:
            lock.release()


def _score_locked(args: _Args, env: Any, dev: Any, built: dict[str, Any]) -> None:
    from .. import scoring
    from ..scoring import distributed

    out = args.out
    tasks, job = built["tasks"], built["job"]
    read, error = _attempt(lambda: _read_output(args, env, built))
    _agree(env, error)
    own, done = read
    if env.is_distributed:
        # The rest is shared out from what each rank read: all must have read the same journals.
        view = (tuple(p.name for p in scoring.find_journals(out)), scoring.tasks_digest(
            t for t in tasks if t.id in done))
        if len(set(distributed.all_gather_object(view))) > 1:
            raise click.UsageError(
                f"the ranks see different journals next to {out}: put --out on a file system shared by all nodes"
            )
    if args.overwrite:
        if env.is_main:
            for p in scoring.find_journals(out):
                p.unlink(missing_ok=True)
        distributed.barrier()  # no rank writes before the old journals are gone
    # Every rank has read the same finished rows: the rest is shared out alike on every rank.
    remaining = [t for t in tasks if t.id not in done]
    skipped = len(tasks) - len(remaining)
    mine = scoring.shard(remaining, env.rank, env.world_size)

    # --- the work
    def open_journal() -> scoring.Journal:
        try:
            return scoring.Journal.open(own, job, resume=args.resume, tasks=tasks)
        except scoring.JobMismatchError as e:
            raise click.UsageError(f"cannot resume: {e}; or pass --overwrite to start over") from None
        except scoring.JournalError as e:
            raise click.UsageError(
                f"cannot resume: {e}; fix or delete that line, or pass --overwrite to start over") from None
        except OSError as e:
            raise click.ClickException(f"cannot open the journal {own}: {e}") from None

    journal, error = _attempt(open_journal)
    _agree(env, error)
    show = env.is_main and not args.quiet and sys.stderr.isatty()
    from tqdm import tqdm

    if env.is_distributed:
        bar = tqdm(total=len(mine), unit="pair", file=sys.stderr, disable=not show, dynamic_ncols=True,
                   desc=f"rank 0 of {env.world_size}")
    else:
        bar = tqdm(total=len(tasks), initial=skipped, unit="pair", file=sys.stderr,
                   disable=not show, dynamic_ncols=True)
    old_sigterm = None
    if env.is_distributed:
        def on_sigterm(signum: int, frame: object) -> None:
            raise _Terminated()

        old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
    t0 = time.perf_counter()
    try:
        with journal:
            summary = scoring.run_tasks(
                mine, args.metric, journal, options=built["options"], batch_size=args.batch_size, device=dev,
                mode=args.mode, resize=args.resize, progress=bar.update, max_pixels=args.max_pixels,
                after_batch=(lambda: time.sleep(args.throttle)) if args.throttle > 0 else None,
            )
    except (KeyboardInterrupt, _Terminated) as e:
        bar.close()
        code, what = (130, "interrupted") if isinstance(e, KeyboardInterrupt) else (143, "stopped (SIGTERM)")
        if env.is_distributed:
            saved = sum(1 for r in scoring.read_journal(own) if r["id"] not in done)
            click.echo(
                f"\nrank {env.rank}: {what}: {saved} of its {len(mine)} pairs are saved in {own}; "
                "rerun the same command with --resume to finish",
                err=True,
            )
        else:
            saved = len(set(done) | {r["id"] for r in scoring.read_journal(own)})
            click.echo(
                f"\n{what}: {saved} of {len(tasks)} pairs are saved in {own}; "
                "rerun the same command with --resume to finish",
                err=True,
            )
        sys.exit(code)
    finally:
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
    bar.close()

    # --- every rank is done: rank 0 merges all journals into the CSV
    counts = distributed.all_gather_object((summary.scored, summary.errors))
    rows: list[dict[str, Any]] = []
    failure = None
    if env.is_main:
        try:
            rows = scoring.finalize(out, tasks, job, value_column=scoring.value_column(built["spec"].higher_is_better),
                                    journals=scoring.find_journals(out))
        except (ValueError, OSError) as e:
            if not env.is_distributed:
                raise click.ClickException(
                    f"could not write {out}: {e}; the journals are kept, rerun with --resume") from None
            failure = f"rank 0 could not write {out}: {type(e).__name__}: {e}"
            if isinstance(e, ValueError) and not isinstance(e, scoring.JournalError):
                failure += f" (is {out.parent} on a file system shared by all nodes?)"
    failures = distributed.all_gather_object(failure)
    if failures[0] is not None:
        raise _OtherRankFailed(f"{failures[0]}; the journals are kept, rerun with --resume")
    if env.is_main and not args.quiet:
        errors = sum(1 for r in rows if r.get("error"))
        now = sum(s + e for s, e in counts)
        by = f" by {env.world_size} processes" if env.is_distributed else ""
        resumed = f", {skipped} from the journal" if skipped else ""
        click.echo(
            f"wrote {len(rows)} rows to {out} ({now} scored now{by}{resumed}; "
            f"{errors} with errors) in {time.perf_counter() - t0:.1f}s",
            err=True,
        )
