"""``patchmmd eval``: check metrics against human judgments (BAPPS 2AFC and JND, any MOS/DMOS CSV).

Every subcommand writes to ``--out`` (a folder; an existing non-empty one is refused unless ``--overwrite``
or ``--resume``):

* ``report.md`` and ``report.json``: the statistics per metric, overall and per subset / group;
* ``scores.csv``: one row per item and metric (the distances and the human judgment);
* ``plot-<metric>.png``: the metric against the human score, coloured by subset or distortion;
* ``cache/<metric>.json``: finished metrics, so that ``--resume`` skips them.

Statistics come from :mod:`patchmmd.evaluation.stats`, data from :mod:`patchmmd.evaluation.datasets`.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from . import main
from ._common import batch_size_option, device_option, mode_option, parse_metric_options, resolve_device_or_fail

_OUR_FILES = ("report.md", "report.json", "scores.csv")


# ------------------------------------------------------------------------------------------------ options
def _split_metrics(values: Sequence[str]) -> list[str]:
    names: list[str] = []
    for v in values:
        for n in v.split(","):
            n = n.strip()
            if n and n not in names:
                names.append(n)
    return names or ["mmdpp"]


def _metric_options(items: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` (every metric) or ``METRIC:KEY=VALUE`` (that metric) into per-metric option dicts."""
    out: dict[str, dict[str, Any]] = {m: {} for m in metrics}
    for item in items:
        head, eq, _ = item.partition("=")
        target, colon, _ = head.partition(":")
        if colon and eq:
            if target not in out:
                raise click.BadParameter(f"{item!r} names metric {target!r}, which is not among --metric "
                                         f"{', '.join(metrics)}", param_hint="--metric-option")
            out[target].update(parse_metric_options([item.split(":", 1)[1]]))
        else:
            opts = parse_metric_options([item])
            for m in metrics:
                out[m].update(opts)
    return out


def _build_metrics(names: Sequence[str], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Build every metric before any work, so an unknown name or a missing weight file fails at once."""
    from ..metrics.registry import get_spec

    built = {}
    for name in names:
        try:
            spec = get_spec(name)
        except ValueError as e:
            raise click.BadParameter(f"{e} (see `patchmmd metrics`)", param_hint="--metric") from None
        try:
            fn = spec.factory(**options[name])
        except ImportError as e:
            raise click.ClickException(f"metric {name!r} needs an optional dependency: {e}") from None
        except FileNotFoundError as e:
            raise click.ClickException(f"{name}: {e}") from None
        except (TypeError, ValueError) as e:
            raise click.BadParameter(f"{name}: {e}", param_hint="--metric-option") from None
        built[name] = (spec, fn)
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
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _prepare_out(out: str, overwrite: bool, resume: bool) -> Path:
    path = Path(out)
    if overwrite and resume:
        raise click.UsageError("--resume and --overwrite exclude each other: continue a run, or start it over")
    if path.exists() and not path.is_dir():
        raise click.UsageError(f"--out {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise click.UsageError(f"--out {path} already exists and is not empty; pass --overwrite to replace its "
                               "results or --resume to continue")
    if overwrite and path.is_dir():
        for name in _OUR_FILES:
            (path / name).unlink(missing_ok=True)
        for p in path.glob("plot-*.png"):
            p.unlink()
        shutil.rmtree(path / "cache", ignore_errors=True)
    (path / "cache").mkdir(parents=True, exist_ok=True)
    return path


def _dataset_error(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


# -------------------------------------------------------------------------------------------- computing
def _batches(n: int, load: Callable[[int], Any], size_of: Callable[[Any], tuple[int, ...]],
             batch_size: int) -> Iterable[list[tuple[int, Any]]]:
    """Consecutive items of equal image size, at most ``batch_size`` at a time."""
    batch: list[tuple[int, Any]] = []
    for i in range(n):
        item = load(i)
        if batch and (len(batch) == batch_size or size_of(batch[0][1]) != size_of(item)):
            yield batch
            batch = []
        batch.append((i, item))
    if batch:
        yield batch


def _run_metric(name: str, fn: Any, pairs: Callable[[list[Any]], tuple[Any, Any]], n: int,
                load: Callable[[int], Any], size_of: Callable[[Any], tuple[int, ...]], batch_size: int,
                device: Any, per_item: int) -> list[list[float]]:
    """Values of ``fn`` over the dataset: ``per_item`` values per item (2 for 2AFC: d0, d1)."""
    import torch
    from tqdm import tqdm

    values: list[list[float]] = [[] for _ in range(n)]
    bar = tqdm(total=n, desc=name, unit="item", file=sys.stderr, disable=None, leave=False)
    try:
        for batch in _batches(n, load, size_of, batch_size):
            x, y = pairs([item for _, item in batch])
            with torch.no_grad():
                d = fn(x.to(device), y.to(device))
            d = torch.as_tensor(d).detach().double().cpu().reshape(-1)
            if d.numel() != x.shape[0]:
                raise click.ClickException(f"metric {name!r} returned {d.numel()} values for {x.shape[0]} pairs")
            if not torch.isfinite(d).all():
                raise click.ClickException(f"metric {name!r} returned a non-finite value")
            k = len(batch)
            for j, (i, _) in enumerate(batch):
                values[i] = [float(d[j + r * k]) for r in range(per_item)]
            bar.update(k)
    except (ValueError, TypeError) as e:
        raise click.ClickException(f"{name}: {e}") from None
    except ImportError as e:
        raise click.ClickException(f"metric {name!r} needs an optional dependency: {e}") from None
    finally:
        bar.close()
    return values


def _cached(out: Path, name: str, settings: dict[str, Any], compute: Callable[[], list[list[float]]],
            resume: bool) -> list[list[float]]:
    path = out / "cache" / f"{name}.json"
    if resume and path.is_file():
        data = json.loads(path.read_text())
        if data.get("settings") != settings:
            raise click.UsageError(f"--resume: {path} was computed with other settings "
                                   f"({data.get('settings')}); pass --overwrite to start over")
        click.echo(f"{name}: reusing {path}", err=True)
        return data["values"]
    t0 = time.perf_counter()
    values = compute()
    path.write_text(json.dumps({"settings": settings, "values": values, "seconds": time.perf_counter() - t0}))
    return values


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([f"{v:.8g}" if isinstance(v, float) else v for v in r])


def _write_reports(out: Path, report: dict[str, Any], markdown: str) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "report.md").write_text(markdown)


def _plt():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError as e:
        raise click.ClickException("plots need matplotlib: `pip install 'patchmmd[eval]'` (or pass --no-plots)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scatter(out: Path, metric: str, xs: Sequence[float], ys: Sequence[float], groups: Sequence[str],
             xlabel: str, ylabel: str, title: str, curve: Callable[[Any], Any] | None = None) -> str:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=110)
    names = list(dict.fromkeys(groups))
    cmap = plt.get_cmap("tab10")
    for k, g in enumerate(names):
        idx = [i for i, gg in enumerate(groups) if gg == g]
        ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], s=14, alpha=0.75, color=cmap(k % 10), label=str(g))
    if curve is not None and len(xs) > 1:
        grid = np.linspace(min(xs), max(xs), 200)
        ax.plot(grid, curve(grid), color="black", lw=1, label="logistic fit")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    name = f"plot-{metric}.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _settings_common(**kw: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}


# ----------------------------------------------------------------------------------------------- group
@main.group("eval")
def eval_group() -> None:
    """Check metrics against human judgments: BAPPS 2AFC and JND, or any MOS/DMOS CSV.

    Each run writes report.md, report.json, scores.csv and plots to --out. Several metrics can be
    evaluated in one run (--metric a,b,c). Baselines: psnr, ssim, ms-ssim, and lpips-alex/lpips-vgg/dists
    from local weight files only (see docs/evaluation.md).
    """


def _bapps_command(kind: str) -> Callable[..., Any]:
    def command(root: str, subsets: str | None, split: str, load_size: int, metrics: Sequence[str],
                metric_options: Sequence[str], out: str, overwrite: bool, resume: bool, device: str,
                batch_size: int, mode: str, limit: int | None, no_plots: bool) -> None:
        from ..evaluation import datasets
        from ..evaluation.stats import jnd_map, summarize, two_afc_score, two_afc_scores

        names = _split_metrics(metrics)
        built = _build_metrics(names, _metric_options(metric_options, names))
        dev = resolve_device_or_fail(device)
        cls = datasets.BAPPS2AFC if kind == "2afc" else datasets.BAPPSJND
        try:
            ds = cls(root, subsets, split=split, load_size=load_size or None, mode=mode)  # type: ignore[arg-type]
        except (OSError, ValueError) as e:
            raise _dataset_error(e) from None
        if limit is not None:
            seen: dict[str, int] = {}
            keep = []
            for it in ds.items:
                seen[it[0]] = seen.get(it[0], 0) + 1
                if seen[it[0]] <= limit:
                    keep.append(it)
            ds.items = keep
        outdir = _prepare_out(out, overwrite, resume)
        n = len(ds)
        click.echo(f"{kind}: {n} items in {', '.join(ds.subsets)} ({ds.root})", err=True)
        subsets_of = [it[0] for it in ds.items]
        stems = [it[1] for it in ds.items]
        # Human judgments (cheap to read, needed for every metric).
        try:
            truth = [datasets._load_fraction(it[2]["judge" if kind == "2afc" else "same"], "judge" if kind == "2afc"
                                             else "same") for it in ds.items]
        except ValueError as e:
            raise _dataset_error(e) from None
        import torch

        if kind == "2afc":
            def pairs(items: list[Any]) -> tuple[Any, Any]:
                ref = torch.stack([it.ref for it in items])
                return torch.cat([ref, ref]), torch.cat([torch.stack([it.p0 for it in items]),
                                                         torch.stack([it.p1 for it in items])])

            def size_of(it: Any) -> tuple[int, ...]:
                return (*it.ref.shape, *it.p0.shape, *it.p1.shape)
        else:
            def pairs(items: list[Any]) -> tuple[Any, Any]:
                return torch.stack([it.p0 for it in items]), torch.stack([it.p1 for it in items])

            def size_of(it: Any) -> tuple[int, ...]:
                return (*it.p0.shape, *it.p1.shape)

        def load(i: int) -> Any:
            try:
                return ds[i]
            except (OSError, ValueError) as e:
                raise _dataset_error(e) from None

        settings = _settings_common(kind=kind, root=Path(root).resolve(), subsets=ds.subsets, split=split,
                                    load_size=load_size, mode=mode, limit=limit, n=n)
        results: dict[str, Any] = {}
        rows: list[list[Any]] = []
        plots: dict[str, str] = {}
        for name, (spec, fn) in built.items():
            per = 2 if kind == "2afc" else 1
            vals = _cached(outdir, name, {**settings, "metric": name, "options": _metric_options(metric_options,
                           names)[name]},
                           lambda fn=fn, name=name, per=per: _run_metric(name, fn, pairs, n, load, size_of,
                                                                         batch_size, dev, per), resume)
            sign = -1.0 if spec.higher_is_better else 1.0  # statistics need "higher = more different"
            per_subset: dict[str, float] = {}
            for s in ds.subsets:
                idx = [i for i in range(n) if subsets_of[i] == s]
                if kind == "2afc":
                    per_subset[s] = two_afc_score([sign * vals[i][0] for i in idx], [sign * vals[i][1] for i in idx],
                                                  [truth[i] for i in idx])
                else:
                    same = [truth[i] for i in idx]
                    per_subset[s] = (jnd_map([sign * vals[i][0] for i in idx], same) if sum(same) > 0
                                     else math.nan)
            results[name] = {"subsets": per_subset, "mean": summarize(per_subset),
                             "higher_is_better": spec.higher_is_better, "group": spec.group}
            if kind == "2afc":
                sc = two_afc_scores([sign * v[0] for v in vals], [sign * v[1] for v in vals], truth)
                rows += [[name, subsets_of[i], stems[i], vals[i][0], vals[i][1], truth[i], float(sc[i])]
                         for i in range(n)]
                if not no_plots:
                    rel = [sign * (v[0] - v[1]) / (abs(v[0]) + abs(v[1]) + 1e-12) for v in vals]
                    plots[name] = _scatter(outdir, name, truth, rel, subsets_of,
                                           "human judge g (fraction preferring p1)",
                                           "(d0 − d1) / (|d0| + |d1|)" + (" (negated similarity)" if sign < 0 else ""),
                                           f"{name}: 2AFC {results[name]['mean']:.3f} (mean over subsets)")
            else:
                rows += [[name, subsets_of[i], stems[i], vals[i][0], truth[i]] for i in range(n)]
                if not no_plots:
                    plots[name] = _scatter(outdir, name, [v[0] for v in vals], truth, subsets_of,
                                           f"{name} ({'similarity' if sign < 0 else 'distance'})",
                                           "fraction judging the pair 'same'",
                                           f"{name}: JND mAP {results[name]['mean']:.3f} (mean over subsets)")
        if kind == "2afc":
            _write_csv(outdir / "scores.csv", ["metric", "subset", "name", "d0", "d1", "judge", "score"], rows)
            human = {s: float(sum(max(truth[i], 1 - truth[i]) for i in range(n) if subsets_of[i] == s)
                              / max(1, subsets_of.count(s))) for s in ds.subsets}
        else:
            _write_csv(outdir / "scores.csv", ["metric", "subset", "name", "distance", "same"], rows)
            human = {}
        title = "2AFC agreement" if kind == "2afc" else "JND mAP"
        report = {"command": f"eval {kind}", "dataset": str(ds.root), "split": split, "subsets": ds.subsets,
                  "n": {s: subsets_of.count(s) for s in ds.subsets}, "load_size": load_size, "limit": limit,
                  "statistic": title, "metrics": results, "plots": plots}
        if human:
            report["human_majority"] = {"subsets": human, "mean": summarize(human)}
        md = [f"# {title} on BAPPS {kind} ({split})", "",
              f"Dataset: `{ds.root}`; subsets: {', '.join(ds.subsets)}; images resized to "
              f"{load_size or 'native size'}{'; first ' + str(limit) + ' per subset' if limit else ''}.", ""]
        if kind == "2afc":
            md += ["Score per triplet: 1[d0<d1]·(1−g) + 1[d1<d0]·g + 0.5·1[d0=d1], g = fraction of people "
                   "preferring p1; mean per subset, then the mean over subsets (as LPIPS reports).", ""]
        else:
            md += ["Average precision of the distance (ascending) for predicting 'same' judgments "
                   "(LPIPS protocol, VOC-style AP), per subset, then the mean over subsets.", ""]
        md += ["| metric | " + " | ".join(ds.subsets) + " | mean |",
               "|---|" + "---|" * (len(ds.subsets) + 1)]
        for name, r in results.items():
            md.append(f"| {name} | " + " | ".join(_fmt(r["subsets"][s], 3) for s in ds.subsets)
                      + f" | **{_fmt(r['mean'], 3)}** |")
        if human:
            md.append("| *human (majority)* | " + " | ".join(_fmt(human[s], 3) for s in ds.subsets)
                      + f" | {_fmt(summarize(human), 3)} |")
        md += ["", "n per subset: " + ", ".join(f"{s} {subsets_of.count(s)}" for s in ds.subsets), ""]
        md += [f"![{m}]({p})" for m, p in plots.items()]
        _write_reports(outdir, report, "\n".join(md) + "\n")
        click.echo("\n".join(md[md.index(next(m for m in md if m.startswith("| metric"))):]).split("\n\n![")[0])
        click.echo(f"wrote {outdir}/report.md, report.json, scores.csv" + (", plots" if plots else ""), err=True)

    return command


def _bapps_options(kind: str, f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--load-size", type=click.IntRange(min=0), default=64, show_default=True,
                     help="Resize the shorter side to this (LPIPS evaluates at 64); 0 keeps the files' size.")(f)
    f = click.option("--split", default="val", show_default=True, help="BAPPS split folder: val or train.")(f)
    f = click.option("--subset", "subsets", default=None, metavar="NAME[,NAME...]",
                     help="Subsets to evaluate (default: every one present), e.g. traditional,cnn.")(f)
    f = click.argument("root", type=click.Path())(f)
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
@click.argument("labels", type=click.Path())
@click.option("--root", type=click.Path(), default=None,
              help="Folder the CSV's paths are relative to (default: the CSV's folder).")
@click.option("--higher-is-better", "score_higher_is_better", is_flag=True,
              help="The scores are qualities (MOS: higher = better). Default: DMOS-like, higher = worse.")
@click.option("--group-column", default=None, metavar="COLUMN",
              help="Column to break results down by (default: 'distortion' if present; '' for none).")
@click.option("--reference-column", default=None, metavar="COLUMN", help="Default: reference/ref/...")
@click.option("--distorted-column", default=None, metavar="COLUMN", help="Default: distorted/dist/...")
@click.option("--score-column", default=None, metavar="COLUMN", help="Default: dmos/mos/score/...")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for 95% confidence intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@_common_options
def mos_command(labels: str, root: str | None, score_higher_is_better: bool, group_column: str | None,
                reference_column: str | None, distorted_column: str | None, score_column: str | None,
                bootstrap: int, seed: int, metrics: Sequence[str], metric_options: Sequence[str], out: str,
                overwrite: bool, resume: bool, device: str, batch_size: int, mode: str, limit: int | None,
                no_plots: bool) -> None:
    """Correlation of each metric with the MOS/DMOS scores of a full-reference dataset.

    LABELS is a CSV with a reference path, a distorted path and a score per row (paths relative to --root).
    Reports SROCC, KROCC, PLCC after the 5-parameter logistic fit, and RMSE, overall and per group, with
    bootstrap confidence intervals. Correlations are oriented so that a good metric is positive: similarities
    (psnr, ssim) are negated, and so are the scores with --higher-is-better. Rows without a score are left
    out of the statistics; where such a pair is identical, the metric's value on it is checked.
    """
    import torch

    from ..evaluation import datasets
    from ..evaluation.stats import grouped_correlations, logistic5

    names = _split_metrics(metrics)
    built = _build_metrics(names, _metric_options(metric_options, names))
    dev = resolve_device_or_fail(device)
    csv_path = Path(labels)
    if group_column is None:
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
        except OSError:
            header = []
        group_column = "distortion" if "distortion" in header else None
    elif group_column == "":
        group_column = None
    try:
        ds = datasets.MOSDataset(csv_path, root, reference_column=reference_column, distorted_column=distorted_column,
                                 score_column=score_column, group_column=group_column, mode=mode)  # type: ignore[arg-type]
    except (OSError, ValueError) as e:
        raise _dataset_error(e) from None
    n = len(ds) if limit is None else min(limit, len(ds))
    outdir = _prepare_out(out, overwrite, resume)
    scored = [i for i in range(n) if ds.scores[i] is not None]
    if len(scored) < 3:
        raise click.ClickException(f"{csv_path}: only {len(scored)} row(s) with a score among the first {n}; "
                                   "correlations need at least 3")
    click.echo(f"mos: {n} rows ({len(scored)} scored) from {csv_path}", err=True)

    def load(i: int) -> Any:
        try:
            return ds[i]
        except (OSError, ValueError) as e:
            raise _dataset_error(e) from None

    def pairs(items: list[Any]) -> tuple[Any, Any]:
        return torch.stack([it.reference for it in items]), torch.stack([it.distorted for it in items])

    def size_of(it: Any) -> tuple[int, ...]:
        return tuple(it.reference.shape)

    settings = _settings_common(kind="mos", labels=csv_path.resolve(), root=ds.root.resolve(), mode=mode, n=n,
                                columns=[ds.reference_column, ds.distorted_column, ds.score_column])
    y = [float(ds.scores[i]) for i in scored]  # type: ignore[arg-type]
    groups = [str(ds.groups[i]) for i in scored] if group_column else None
    results: dict[str, Any] = {}
    sanity: dict[str, Any] = {}
    rows: list[list[Any]] = []
    plots: dict[str, str] = {}
    unscored = [i for i in range(n) if ds.scores[i] is None]
    for name, (spec, fn) in built.items():
        opts = _metric_options(metric_options, names)[name]
        vals = _cached(outdir, name, {**settings, "metric": name, "options": opts},
                       lambda fn=fn, name=name: _run_metric(name, fn, pairs, n, load, size_of, batch_size, dev, 1),
                       resume)
        v = [vals[i][0] for i in range(n)]
        x = [v[i] for i in scored]
        results[name] = {"higher_is_better": spec.higher_is_better, "group": spec.group,
                         **grouped_correlations(x, y, groups, higher_is_better=spec.higher_is_better,
                                                score_higher_is_better=score_higher_is_better,
                                                bootstrap=bootstrap, seed=seed)}
        rows += [[name, ds.references[i], ds.distorted[i], ds.groups[i] or "", v[i],
                  "" if ds.scores[i] is None else ds.scores[i]] for i in range(n)]
        if unscored:
            checks = []
            for i in unscored:
                item = load(i)
                identical = bool(torch.equal(item.reference, item.distorted))
                expected = None
                if identical:
                    with torch.no_grad():
                        r = item.reference[None].to(dev)
                        expected = float(torch.as_tensor(fn(r, r)).reshape(-1)[0])
                checks.append({"distorted": ds.distorted[i], "identical": identical, "value": v[i],
                               "value_on_itself": expected,
                               "ok": identical and expected is not None and abs(v[i] - expected) <= 1e-6
                               * max(1.0, abs(expected))})
            sanity[name] = checks
        if not no_plots:
            sign = -1.0 if spec.higher_is_better else 1.0
            ys = [(-1.0 if score_higher_is_better else 1.0) * s for s in y]
            p = results[name]["all"]["logistic"]
            plots[name] = _scatter(
                outdir, name, [sign * xx for xx in x], ys, groups or ["all"] * len(x),
                f"{name}" + (" (negated: higher = more different)" if sign < 0 else " (distance)"),
                ds.score_column + (" (negated)" if score_higher_is_better else ""),
                f"{name}: SROCC {results[name]['all']['srocc']:.3f}, PLCC {results[name]['all']['plcc']:.3f}",
                curve=(lambda g, p=p: logistic5(g, *p)) if p else None,
            )
    _write_csv(outdir / "scores.csv", ["metric", "reference", "distorted", "group", "value", ds.score_column], rows)
    group_names = [k for k in next(iter(results.values())) if k not in ("higher_is_better", "group", "all")]
    report = {
        "command": "eval mos", "labels": str(csv_path), "root": str(ds.root), "score_column": ds.score_column,
        "score_higher_is_better": score_higher_is_better, "group_column": group_column, "n_rows": n,
        "n_scored": len(scored), "bootstrap": bootstrap, "seed": seed, "metrics": results,
        "unscored_rows": sanity, "plots": plots,
        "convention": "correlations oriented so a good metric is positive: similarities negated"
                      + ("; scores negated (higher = better)" if score_higher_is_better else
                         "; scores used as is (higher = worse)"),
    }
    kind = "MOS (higher = better)" if score_higher_is_better else f"{ds.score_column} (higher = worse)"
    md = [f"# Correlation with human scores: `{csv_path}`", "",
          f"{len(scored)} scored pairs (of {n} rows); human score: {kind}. SROCC = Spearman, KROCC = Kendall "
          "(tau-b), PLCC = Pearson after the 5-parameter logistic fit "
          "f(x) = b1(0.5 − 1/(1+exp(b2(x−b3)))) + b4·x + b5, RMSE of that fit in score units. "
          "Oriented so that a good metric gives positive correlations (similarities such as PSNR and SSIM are "
          "negated" + ("; so are the MOS scores" if score_higher_is_better else "") + ")."
          + (f" 95% bootstrap intervals from {bootstrap} resamples (seed {seed})." if bootstrap else ""), "",
          "## Summary (SROCC / KROCC / PLCC)", "",
          "| metric | " + " | ".join(["all", *group_names]) + " |", "|---|" + "---|" * (1 + len(group_names))]
    for name, r in results.items():
        md.append(f"| {name} | " + " | ".join(
            f"{_fmt(r[g]['srocc'], 3)} / {_fmt(r[g]['krocc'], 3)} / {_fmt(r[g]['plcc'], 3)}"
            for g in ["all", *group_names]) + " |")
    md += ["", "## Details", "", "| metric | subset | n | SROCC | KROCC | PLCC | RMSE |",
           "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for g in ["all", *group_names]:
            st, ci = r[g], r[g].get("ci", {})

            def cell(k: str, st: Any = st, ci: Any = ci) -> str:
                c = ci.get(k)
                return _fmt(st[k], 3) + (f" [{_fmt(c[0], 3)}, {_fmt(c[1], 3)}]" if c else "")

            md.append(f"| {name} | {g} | {st['n']} | {cell('srocc')} | {cell('krocc')} | {cell('plcc')} | "
                      f"{cell('rmse')} |")
    if sanity:
        md += ["", "## Rows without a score", "",
               "| metric | distorted | identical to reference | value | value on (ref, ref) | ok |",
               "|---|---|---|---|---|---|"]
        for name, checks in sanity.items():
            for c in checks:
                md.append(f"| {name} | {c['distorted']} | {c['identical']} | {_fmt(c['value'], 6)} | "
                          f"{_fmt(c['value_on_itself'], 6)} | {'yes' if c['ok'] else 'NO'} |")
    md += [""] + [f"![{m}]({p})" for m, p in plots.items()]
    _write_reports(outdir, report, "\n".join(md) + "\n")
    summary_end = md.index("## Details")
    click.echo("\n".join(md[md.index("## Summary (SROCC / KROCC / PLCC)"):summary_end]).rstrip())
    click.echo(f"wrote {outdir}/report.md, report.json, scores.csv" + (", plots" if plots else ""), err=True)
