"""``patchmmd score``: distances for many image pairs into a CSV, resumable after any interruption.

A thin layer over :mod:`patchmmd.scoring`, which holds the job, the journal and the atomic output.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

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


def _describe(names: list[str]) -> str:
    more = f" and {len(names) - _SHOW_UNMATCHED} more" if len(names) > _SHOW_UNMATCHED else ""
    return ", ".join(names[:_SHOW_UNMATCHED]) + more


def _list_or_fail(folder: str, role: str) -> tuple[list[str], list[str]]:
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
        click.echo(f"note: {role}: {len(others)} file(s) without an image suffix ignored ({_describe(others)})",
                   err=True)
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
    resume: bool,
    overwrite: bool,
    quiet: bool,
    throttle: float,
) -> None:
    """Score image pairs into a CSV: REF_DIR DIST_DIR (pairs matched by relative path), or
    --all-pairs DIR (every unordered pair, in sorted path order).

    Each finished batch is saved in a journal next to the output (OUT.journal); the CSV is written
    atomically when the job ends. After an interruption (Ctrl-C, kill -9, a crash), rerun the same command
    with --resume to score only what is left. A file that cannot be read, or a pair of images of different
    sizes, gets a row with its error and the job goes on.

    \b
    Examples:
      patchmmd score ref/ distorted/ --out scores.csv
      patchmmd score --all-pairs photos/ --out pairs.csv --metric l2 --batch-size 64
      patchmmd score ref/ distorted/ --out scores.csv --resume
    """
    from .. import scoring
    from ..registry import get_spec

    # --- the job
    if all_pairs:
        if len(folders) != 1:
            raise click.UsageError(f"--all-pairs takes exactly one FOLDER, got {len(folders)}: {' '.join(folders)}")
        _list_or_fail(folders[0], "FOLDER")
        tasks = scoring.all_pair_tasks(folders[0])
        if not tasks:
            raise click.UsageError(f"FOLDER: {folders[0]} holds a single image; --all-pairs needs at least two")
        where = {"kind": "all-pairs", "folder": str(Path(folders[0]).resolve())}
    else:
        if len(folders) != 2:
            raise click.UsageError(
                f"expected REF_DIR DIST_DIR (or --all-pairs DIR), got {len(folders)} folder(s): {' '.join(folders)}"
            )
        _list_or_fail(folders[0], "REF_DIR")
        _list_or_fail(folders[1], "DIST_DIR")
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
            click.echo(f"warning: unmatched images are skipped: {'; '.join(unmatched)}", err=True)
        where = {"kind": "paired", "ref_dir": str(Path(folders[0]).resolve()),
                 "dist_dir": str(Path(folders[1]).resolve())}

    # --- the metric, device and output policy (all checked before any work)
    options = parse_metric_options(metric_options)
    check_metric_call(build_metric(metric, options), metric)
    dev = resolve_device_or_fail(device)
    spec = get_spec(metric)
    journal_file = scoring.journal_path(out)
    check_output_path(out, overwrite=overwrite, resume=resume, companions=[journal_file])
    if resume and out.exists() and not journal_file.exists():
        raise click.UsageError(
            f"nothing to resume: {out} exists and has no journal, so its job finished; "
            "pass --overwrite to compute it again"
        )
    if overwrite:
        journal_file.unlink(missing_ok=True)
    job = scoring.job_header(metric, options, tasks, mode=mode, resize=resize, **where)

    # --- the work
    try:
        journal = scoring.Journal.open(journal_file, job, resume=resume)
    except scoring.JobMismatchError as e:
        raise click.UsageError(f"cannot resume: {e}; or pass --overwrite to start over") from None
    show = not quiet and sys.stderr.isatty()
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), initial=len(journal.done), unit="pair", file=sys.stderr,
               disable=not show, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        with journal:
            summary = scoring.run_tasks(
                tasks, metric, journal, options=options, batch_size=batch_size, device=dev, mode=mode,
                resize=resize, progress=bar.update,
                after_batch=(lambda: time.sleep(throttle)) if throttle > 0 else None,
            )
    except KeyboardInterrupt:
        bar.close()
        done = len(scoring.read_journal(journal_file))
        click.echo(
            f"\ninterrupted: {done} of {len(tasks)} pairs are saved in {journal_file}; "
            "rerun the same command with --resume to finish",
            err=True,
        )
        sys.exit(130)
    bar.close()
    rows = scoring.finalize(out, tasks, job, value_column=scoring.value_column(spec.higher_is_better))
    errors = sum(1 for r in rows if r.get("error"))
    if not quiet:
        resumed = f", {summary.skipped} from the journal" if summary.skipped else ""
        click.echo(
            f"wrote {len(rows)} rows to {out} ({summary.scored + summary.errors} scored now{resumed}; "
            f"{errors} with errors) in {time.perf_counter() - t0:.1f}s",
            err=True,
        )
