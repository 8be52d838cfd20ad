"""``patchmmd eval``: check metrics against human judgments (BAPPS 2AFC and JND, any MOS/DMOS CSV).

Every subcommand writes to ``--out`` (a folder; an existing non-empty one is refused unless ``--overwrite``
or ``--resume``):

* ``report.md`` and ``report.json``: the statistics per metric, overall and per subset / group;
* ``scores.csv``: one row per item and metric (the distances and the human judgment);
* ``plot-<metric>.png``: the metric against the human score, coloured by subset or distortion;
* ``errors.csv``: the items left out because their files cannot be read (damaged, missing, a format not read, too
  large, patches of different sizes), with the reason; only when there are any. The run goes on without them
  (exit status 0, a warning on stderr; report.md says so at the top); ``--strict`` stops at the first instead;
* ``cache/<metric>.json``: finished metrics, so that ``--resume`` skips them (a resumed run first removes the
  half-written temporary files a killed run left there).

While a command runs it holds a lock on ``--out`` (``OUT.lock`` beside the folder, as ``patchmmd score`` does
for its output): a second run on the same folder is refused, naming the first, before it deletes or writes
anything there.

The work is done by the library (:func:`patchmmd.evaluation.run`, :func:`patchmmd.evaluation.write`); this
module parses the options, builds the metrics and the dataset, shows progress, prints the summary table, and
turns the library's errors into one clear line naming the options involved.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from . import main
from ._common import (
    SEED,
    InputFile,
    batch_size_option,
    device_option,
    lock_output_folder,
    mode_option,
    parse_metric_options,
    prepare_output_dir,
    resolve_device_or_fail,
)

#: The option of `eval mos` naming each argument of MOSDataset that a dataset error can be about.
_DATASET_FLAGS = {"reference_column": "--reference-column", "distorted_column": "--distorted-column",
                  "score_column": "--score-column", "group_column": "--group-column"}


# ------------------------------------------------------------------------------------------------ options
def _split_metrics(values: Sequence[str]) -> list[str]:
    """The ``--metric`` names, comma-separated or repeated, each once; ``mmdpp`` when the option is not given.
    A value that names no metric (``-m ""``, say from an unset shell variable) is a usage error, not the default.
    """
    names: list[str] = []
    for v in values:
        found = [n.strip() for n in v.split(",") if n.strip()]
        if not found:
            raise click.BadParameter(f"{v!r} names no metric (see `patchmmd metrics`)", param_hint="--metric")
        names.extend(n for n in found if n not in names)
    return names or ["mmdpp"]


def _metric_options(items: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` (every metric) or ``METRIC:KEY=VALUE`` (that metric, over a ``KEY=VALUE`` for all) into
    per-metric option dicts. A key given twice with different values in the same scope is refused."""
    common: list[str] = []
    targeted: dict[str, list[str]] = {m: [] for m in metrics}
    for item in items:
        head, eq, _ = item.partition("=")
        target, colon, _ = head.partition(":")
        if colon and eq:
            if target not in targeted:
                raise click.BadParameter(f"{item!r} names metric {target!r}, which is not among --metric "
                                         f"{', '.join(metrics)}", param_hint="--metric-option")
            targeted[target].append(item.split(":", 1)[1])
        else:
            common.append(item)
    shared = parse_metric_options(common)
    return {m: {**shared, **parse_metric_options(targeted[m])} for m in metrics}


def _build_metrics(metrics: Sequence[str], metric_options: Sequence[str]) -> list[Any]:
    """Build every metric before any work, so an unknown name or a missing weight file fails at once."""
    from ..evaluation import EvalMetric
    from ..metrics.registry import get_spec

    names = _split_metrics(metrics)
    options = _metric_options(metric_options, names)
    built = []
    for name in names:
        try:
            get_spec(name)
        except ValueError as e:
            raise click.BadParameter(f"{e} (see `patchmmd metrics`)", param_hint="--metric") from None
        try:
            built.append(EvalMetric.from_registry(name, **options[name]))
        except ImportError as e:
            raise click.ClickException(f"metric {name!r} needs an optional dependency: {e}") from None
        except (TypeError, ValueError) as e:  # a missing weights file too (WeightsError): a bad option value
            raise click.BadParameter(f"{name}: {e}", param_hint="--metric-option") from None
        except FileNotFoundError as e:
            raise click.ClickException(f"{name}: {e}") from None
    return built


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option("--metric", "-m", "metrics", multiple=True, metavar="NAME[,NAME...]",
                     help="Metric(s) to evaluate, repeatable or comma-separated (default: mmdpp); "
                          "`patchmmd metrics` lists them."),
        click.option("--metric-option", "--option", "-o", "metric_options", multiple=True,
                     metavar="[METRIC:]KEY=VALUE",
                     help="Option for the metrics' factories, repeatable; prefix METRIC: to target one "
                          "(e.g. -o lpips-alex:weights=alex.pth)."),
        click.option("--out", "out", default="eval-out", show_default=True, type=click.Path(file_okay=False),
                     help="Output folder (report.md, report.json, scores.csv, plots)."),
        click.option("--overwrite", is_flag=True, help="Write into an existing output folder, replacing results."),
        click.option("--resume", is_flag=True, help="Continue in an existing output folder: skip finished metrics."),
        device_option(),
        batch_size_option(8),
        mode_option(),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N items (per subset for BAPPS): quick runs."),
        click.option("--no-plots", is_flag=True, help="Skip the PNG plots."),
        click.option("--strict", is_flag=True,
                     help="Stop at the first item whose files cannot be read or are missing (default: leave it "
                          "out, list it in errors.csv and go on)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _prepare_out(out: str, overwrite: bool, resume: bool,
                 remove: Callable[[Path], None] | None = None) -> Path:
    """The output folder of an eval command: ``--overwrite`` deletes what the command wrote there before
    (``remove``; default :func:`patchmmd.evaluation.remove_outputs`), ``--resume`` keeps it."""
    from ..evaluation import remove_outputs
    from ..scoring import remove_stale_temporaries_in

    if overwrite and resume:
        raise click.UsageError("--resume and --overwrite exclude each other: continue a run, or start it over")
    try:
        path = prepare_output_dir(out, overwrite=overwrite or resume)
    except click.UsageError as e:
        try:
            existing = Path(out).is_dir()
        except OSError:  # a name too long for the file system (Python < 3.13 raises): the error says so already
            existing = False
        if existing:
            raise click.UsageError(f"{e.message} (or --resume to continue)") from None
        raise
    locked = lock_output_folder(path)
    if overwrite:
        (remove or remove_outputs)(path)
    elif locked:  # a killed run's half-written cache files: no other run can be writing them while we hold the lock
        remove_stale_temporaries_in(path / "cache")
    return path


def _dataset_error(e: Exception) -> click.ClickException:
    """A dataset error as one line, naming the option it is about (if any)."""
    flag = _DATASET_FLAGS.get(getattr(e, "parameter", None) or "")
    return click.ClickException(f"{flag}: {e}" if flag else str(e))


# -------------------------------------------------------------------------------------------- running
class _Bars:
    """A :class:`patchmmd.evaluation.Progress` callback drawing one tqdm bar per metric on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, p: Any) -> None:
        from tqdm import tqdm

        if p.cached is not None:
            click.echo(f"{p.metric}: reusing {p.cached}", err=True)
            return
        if p.done == 0:
            self.close()
            self.bar = tqdm(total=p.total, desc=p.metric, unit="item", file=sys.stderr, disable=None, leave=False)
            return
        if self.bar is not None:
            self.bar.update(p.done - self.bar.n)
            if p.done >= p.total:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _evaluate(ds: Any, built: list[Any], outdir: Path, *, device: Any, batch_size: int, limit: int | None,
              no_plots: bool, strict: bool, **stats: Any) -> None:
    """Run, write and print; every library error becomes one line. Items whose files cannot be read are left
    out (listed in errors.csv, with one warning), unless ``strict``."""
    from .. import evaluation
    from ..evaluation.report import ERRORS_FILE

    bars = _Bars()
    try:
        result = evaluation.run(ds, built, cache=outdir / "cache", batch_size=batch_size, device=device,
                                progress=bars, limit=limit, on_error="raise" if strict else "skip", **stats)
    except evaluation.CacheMismatchError as e:
        raise click.UsageError(f"--resume: {e}; pass --overwrite to start over") from None
    except evaluation.DatasetError as e:
        raise _dataset_error(e) from None
    except (ValueError, OSError) as e:  # EvaluationError, an image that cannot be read (ImageReadError), ...
        raise click.ClickException(str(e)) from None
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    finally:
        bars.close()
    try:
        report = evaluation.write(result, outdir, plots=not no_plots)
    except ImportError:
        raise click.ClickException("plots need matplotlib: `pip install 'patchmmd[eval]'` (or pass --no-plots)"
                                   ) from None
    click.echo(report.summary)
    click.echo(f"wrote {outdir}/report.md, report.json, scores.csv" + (", plots" if report.plots else "")
               + (f", {ERRORS_FILE}" if result.errors else ""), err=True)
    if result.errors:
        k = len(result.errors)
        click.echo(f"warning: {k} of {result.n + k} items left out (their files cannot be read); the statistics are "
                   f"over the other {result.n}: see {outdir / ERRORS_FILE}", err=True)


# ----------------------------------------------------------------------------------------------- group
@main.group("eval")
def eval_group() -> None:
    """Check metrics against human judgments: BAPPS 2AFC and JND, or any MOS/DMOS CSV.

    Each run writes report.md, report.json, scores.csv and plots to --out. An item whose files cannot be
    read is left out and listed in errors.csv (--strict stops instead). Several metrics can be
    evaluated in one run (--metric a,b,c). Baselines: psnr, ssim, ms-ssim, and lpips-alex/lpips-vgg/dists
    from local weight files only (see docs/evaluation.md).
    """


def _bapps_command(kind: str) -> Callable[..., Any]:
    def command(root: str, subsets: str | None, split: str, load_size: int, metrics: Sequence[str],
                metric_options: Sequence[str], out: str, overwrite: bool, resume: bool, device: str,
                batch_size: int, mode: str, limit: int | None, no_plots: bool, strict: bool) -> None:
        from ..evaluation import BAPPS2AFC, BAPPSJND, select_items

        built = _build_metrics(metrics, metric_options)
        dev = resolve_device_or_fail(device)
        cls = BAPPS2AFC if kind == "2afc" else BAPPSJND
        try:
            ds = cls(root, subsets, split=split, load_size=load_size or None, mode=mode,  # type: ignore[arg-type]
                     on_missing="raise" if strict else "keep")
        except (OSError, ValueError) as e:
            raise _dataset_error(e) from None
        outdir = _prepare_out(out, overwrite, resume)
        click.echo(f"{kind}: {len(select_items(ds, limit))} items in {', '.join(ds.subsets)} ({ds.root})", err=True)
        _evaluate(ds, built, outdir, device=dev, batch_size=batch_size, limit=limit, no_plots=no_plots,
                  strict=strict)

    return command


def _check_load_size(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """``--load-size`` above the readers' bound is a usage error, before any folder is read."""
    from ..evaluation.datasets import MAX_LOAD_SIZE

    if value > MAX_LOAD_SIZE:
        raise click.BadParameter(f"{value} is above {MAX_LOAD_SIZE}: BAPPS patches are stored at 256x256 (LPIPS "
                                 "evaluates them at 64), so a larger size only upsamples them, at a memory cost that "
                                 "grows with its square; 0 keeps the files' size")
    return value


def _bapps_options(kind: str, f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--load-size", type=click.IntRange(min=0), default=64, show_default=True,
                     callback=_check_load_size,
                     help="Resize the shorter side to this (LPIPS evaluates at 64; at most 1024, 4x the stored "
                          "patches); 0 keeps the files' size.")(f)
    f = click.option("--split", default="val", show_default=True, help="BAPPS split folder: val or train.")(f)
    f = click.option("--subset", "subsets", default=None, metavar="NAME[,NAME...]",
                     help="Subsets to evaluate (default: every one present), e.g. traditional,cnn.")(f)
    f = click.argument("root", type=click.Path(file_okay=False))(f)  # a file is a usage error
    return _common_options(f)


eval_group.command(
    "2afc",
    help="BAPPS 2AFC agreement of each metric, per subset and mean.\n\nROOT is the BAPPS folder holding "
         "2afc/val/<subset>/{ref,p0,p1,judge}/ (or the 2afc folder, a split folder, or one subset folder).",
)(_bapps_options("2afc", _bapps_command("2afc")))
eval_group.command(
    "jnd",
    help="BAPPS JND mean average precision of each metric, per subset and mean.\n\nROOT is the BAPPS folder "
         "holding jnd/val/<subset>/{p0,p1,same}/ (or the jnd folder, a split folder, or one subset folder).",
)(_bapps_options("jnd", _bapps_command("jnd")))


# -------------------------------------------------------------------------------------------------- MOS
@eval_group.command("mos")
@click.argument("labels", type=InputFile())
@click.option("--root", type=click.Path(file_okay=False), default=None,  # a file is a usage error
              help="Folder the CSV's paths are relative to (default: the CSV's folder).")
@click.option("--higher-is-better", "score_higher_is_better", is_flag=True,
              help="The scores are qualities (MOS: higher = better). Default: DMOS-like, higher = worse.")
@click.option("--group-column", default=None, metavar="COLUMN",
              help="Column to break results down by (default: a 'distortion' column if present, in any case; "
                   "'' for none).")
@click.option("--reference-column", default=None, metavar="COLUMN", help="Default: reference/ref/...")
@click.option("--distorted-column", default=None, metavar="COLUMN", help="Default: distorted/dist/...")
@click.option("--score-column", default=None, metavar="COLUMN", help="Default: dmos/mos/score/...")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for 95% confidence intervals (0: none).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the bootstrap.")
@_common_options
def mos_command(labels: str, root: str | None, score_higher_is_better: bool, group_column: str | None,
                reference_column: str | None, distorted_column: str | None, score_column: str | None,
                bootstrap: int, seed: int, metrics: Sequence[str], metric_options: Sequence[str], out: str,
                overwrite: bool, resume: bool, device: str, batch_size: int, mode: str, limit: int | None,
                no_plots: bool, strict: bool) -> None:
    """Correlation of each metric with the MOS/DMOS scores of a full-reference dataset.

    LABELS is a CSV with a reference path, a distorted path and a score per row (paths relative to --root).
    Reports SROCC, KROCC, PLCC after the 5-parameter logistic fit, and RMSE, overall and per group, with
    bootstrap confidence intervals. Correlations are oriented so that a good metric is positive: similarities
    (psnr, ssim) are negated, and so are the scores with --higher-is-better. Rows without a score are left
    out of the statistics; where such a pair is identical, the metric's value on it is checked.
    """
    from ..evaluation import MOSDataset, select_items
    from ..evaluation.datasets import distortion_column

    built = _build_metrics(metrics, metric_options)
    dev = resolve_device_or_fail(device)
    csv_path = Path(labels)
    if group_column is None:  # LABELS is a regular file or missing (InputFile): reading it cannot block on a FIFO
        group_column = distortion_column(csv_path)
    elif group_column == "":
        group_column = None
    try:
        ds = MOSDataset(csv_path, root, reference_column=reference_column, distorted_column=distorted_column,
                        score_column=score_column, group_column=group_column, mode=mode,  # type: ignore[arg-type]
                        on_missing="raise" if strict else "keep")
    except (OSError, ValueError) as e:
        raise _dataset_error(e) from None
    outdir = _prepare_out(out, overwrite, resume)
    rows = select_items(ds, limit)
    click.echo(f"mos: {len(rows)} rows ({sum(ds.scores[i] is not None for i in rows)} scored) from {csv_path}",
               err=True)
    _evaluate(ds, built, outdir, device=dev, batch_size=batch_size, limit=limit, no_plots=no_plots, strict=strict,
              score_higher_is_better=score_higher_is_better, bootstrap=bootstrap, seed=seed)


# ------------------------------------------------------------------------------------------------ suite
def _human_sets(items: Sequence[str], higher_is_better: Sequence[str] = ()) -> list[Any]:
    """The ``--human`` sets, each label file read (its rows, columns and image files checked).

    Raises:
        click.BadParameter: a malformed entry, a name given twice, a labels file that is missing or cannot be
            read as a set, or a ``--higher-is-better`` name that is no set.
    """
    from ..evaluation.suite import HumanSet, open_human_set

    sets, names = [], set()
    for item in items:
        name, eq, path = item.partition("=")
        name = name.strip()
        if not eq or not name or not path.strip():
            raise click.BadParameter(f"{item!r} is not NAME=PATH/labels.csv", param_hint="--human")
        if name in names:
            raise click.BadParameter(f"the name {name!r} is given twice", param_hint="--human")
        if not Path(path).is_file():
            what = "is not a regular file (a folder, a FIFO, ...)" if Path(path).exists() else "not found"
            raise click.BadParameter(f"{name}: labels file {what}: {path}", param_hint="--human")
        names.add(name)
        sets.append(HumanSet(name, Path(path), higher_is_better=name in higher_is_better))
    for hs in sets:  # read now: a bad file is a usage error before --out is touched (--overwrite empties it)
        try:
            open_human_set(hs)
        except (OSError, ValueError) as e:  # not UTF-8, no score column, an image it names is missing, ...
            raise click.BadParameter(f"{hs.name}: {e}", param_hint="--human") from None
    unknown = sorted(set(higher_is_better) - names)
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r} is not the name of a --human set", param_hint="--higher-is-better")
    return sets


@eval_group.command("suite")
@click.option("--candidate", "candidates", multiple=True, metavar="NAME[:KEY=VALUE,...]",
              help="A metric under test with its options, repeatable (default: mmdpp), e.g. mmdpp:preset=followup.")
@click.option("--human", "human", multiple=True, metavar="NAME=PATH",
              help="A MOS/DMOS labels CSV and its name, repeatable (e.g. live-dev=.../live-dev/labels.csv). Sets "
                   "named *live* and *csiq* get the human checks.")
@click.option("--higher-is-better", "mos_sets", multiple=True, metavar="NAME",
              help="The --human set NAME holds qualities (MOS: higher = better), repeatable. Default: DMOS-like, "
                   "higher = worse.")
@click.option("--weights", type=click.Path(file_okay=False), default=None,
              help="Folder of the published weights (alexnet.pth, vgg16.pth, lpips/{alex,vgg}.pth, dists.pt); "
                   "without it the deep baselines and judges are skipped.")
@click.option("--train-photos", type=click.Path(file_okay=False), default=None,
              help="More training photos for the tasks, besides the package's samples.")
@click.option("--out", "out", default="suite-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (report.md, report.json, figures, and cache/: the finished pieces of work).")
@click.option("--overwrite", is_flag=True, help="Start over in an existing output folder (its cache is deleted).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in its output folder: reuse the finished pieces of work.")
@click.option("--quick", is_flag=True, help="The short version CI runs: tiny sizes, the first candidate only.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of everything random.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=None,
              help="Bootstrap resamples of the human part [default: 1000; 20 with --quick].")
@click.option("--dists-loss", is_flag=True, help="Also train the tasks with the DISTS loss (slow on CPU).")
@click.option("--task-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train SR and the autoencoder with this many seeds (--seed, --seed + 1, ...) and report the "
                   "mean and each run; the training numbers vary between seeds as much as between losses.")
@click.option("--train-steps", type=click.IntRange(min=1), default=None,
              help="Adam steps of the SR and autoencoder training [default: 600; 3 with --quick]. Longer "
                   "training changes how far apart the losses end up (docs/development-log.md).")
@click.option("--no-figures", is_flag=True, help="Skip the figures (matplotlib).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of torch (default: torch's choice; 1 is fastest on a busy machine).")
def suite_command(candidates: Sequence[str], human: Sequence[str], mos_sets: Sequence[str], weights: str | None,
                  train_photos: str | None, out: str, overwrite: bool, resume: bool, quick: bool, seed: int,
                  bootstrap: int | None, dists_loss: bool, task_seeds: int, train_steps: int | None, no_figures: bool,
                  threads: int | None) -> None:
    """The dev benchmark: candidates and baselines on human scores, the shift check and three training tasks.

    Writes report.md (one table per part and the must-hold checks, pass/fail with the numbers), report.json
    (everything) and figures to --out. The full suite takes about half an hour on 2 CPU cores; --quick
    checks in well under a minute that every part runs. Each finished piece of work is kept in --out/cache as
    it ends: --resume continues an interrupted run there. See docs/evaluation.md.
    """
    import dataclasses
    import time

    from ..evaluation import CacheMismatchError
    from ..evaluation.suite import (
        SuiteConfig,
        candidate_metrics,
        parse_candidate,
        remove_suite_outputs,
        run_suite,
        weight_folder_options,
        write_suite,
    )
    from ..metrics.registry import get_spec
    from ..metrics.weights import WeightsFileNotFoundError

    specs = list(candidates) or ["mmdpp"]
    for spec in specs:
        try:
            name = parse_candidate(spec)[0]
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--candidate") from None
        try:  # an unknown name is a usage error, as for --metric, not a failure once the suite runs
            get_spec(name)
        except ValueError as e:
            raise click.BadParameter(f"{e} (see `patchmmd metrics`)", param_hint="--candidate") from None
    # everything refused before any work is refused before --out is touched: --overwrite empties it
    try:  # every candidate given, even those --quick leaves out
        candidate_metrics(specs)
    except ValueError as e:  # an option its factory refuses, a metric that cannot be a training loss
        raise click.BadParameter(str(e), param_hint="--candidate") from None
    except ImportError as e:
        raise click.ClickException(f"a candidate needs an optional dependency: {e}") from None
    sets = _human_sets(human, mos_sets)
    if weights is not None and not Path(weights).is_dir():
        raise click.BadParameter(f"folder not found: {weights}", param_hint="--weights")
    if weights is not None:
        try:
            weight_folder_options(weights)
        except WeightsFileNotFoundError as e:
            raise click.BadParameter(str(e), param_hint="--weights") from None
    photos: list[Any] = []
    if train_photos is not None:
        from ..io import ImageReadError
        from ..tasks.data import load_photos

        try:
            photos = load_photos(train_photos)[0]
        except ImageReadError as e:  # a photo that cannot be read: a failure, as in `compare` (exit status 1)
            raise click.ClickException(str(e)) from None
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="--train-photos") from None
    cfg = SuiteConfig.quick_config(seed) if quick else SuiteConfig(seed=seed)
    changes: dict[str, Any] = {"dists_loss": dists_loss, "task_seeds": task_seeds}
    if bootstrap is not None:
        changes["bootstrap"] = bootstrap
    if train_steps is not None:
        changes["sr_steps"] = changes["ae_steps"] = train_steps
    cfg = dataclasses.replace(cfg, **changes)
    if not no_figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("figures need matplotlib: `pip install 'patchmmd[eval]'` (or --no-figures)"
                                       ) from None
    outdir = _prepare_out(out, overwrite, resume, remove=remove_suite_outputs)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()

    def log(line: str) -> None:
        click.echo(f"[{time.perf_counter() - t0:6.0f} s] {line}", err=True)

    try:
        result = run_suite(specs, human=sets, weights=weights, train_photos=photos, config=cfg, log=log,
                           cache=outdir / "cache")
    except WeightsFileNotFoundError as e:  # a file gone from the weights folder since it was checked above
        raise click.BadParameter(str(e), param_hint="--weights") from None
    except CacheMismatchError as e:
        raise click.UsageError(f"--resume: {e}; pass --overwrite to start over") from None
    files = write_suite(result, outdir, figures=not no_figures)
    for c, rows in result.data["checks"].items():
        marks = {True: "pass", False: "FAIL", None: "–"}
        click.echo(f"{c}: " + ", ".join(f"{r['check']} {marks[r['pass']]}" for r in rows))
    click.echo(f"wrote {', '.join(str(f) for f in files)} ({result.data['seconds']['total']:.0f} s)", err=True)
