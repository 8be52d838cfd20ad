"""Write an :class:`~.runner.EvaluationResult` to a folder: report.md, report.json, scores.csv and plots.

* ``report.md`` and ``report.json``: the statistics per metric, overall and per subset / group;
* ``scores.csv``: one row per item and metric (the metric's values and the human judgment);
* ``plot-<metric>.png``: the metric against the human score, coloured by subset or group (matplotlib, the
  ``eval`` extra, imported only when plots are written); a metric name that is no plain file name (``/``, ``:``)
  is made one as for cache files (:func:`~.runner.cache_file_name`);
* ``errors.csv``, only when items were left out (their files cannot be read: ``errors`` of
  :class:`~.runner.EvaluationResult`): one row per item, its identity and the reason (the ``error`` column, as in
  ``patchmmd score``'s error rows, with the same cells: :func:`patchmmd.scoring.csv_text`); report.md says how
  many were left out and why, at the top.

:func:`write` returns a :class:`Report` holding the Markdown and its summary table (what a front end prints).
:func:`remove_outputs` deletes these files (and a ``cache/`` folder) from a folder, to start a run over.

Example:
    >>> import tempfile, pathlib, torch
    >>> from patchmmd.io import save_image
    >>> from patchmmd.evaluation import MOSDataset, run
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> ref = torch.full((3, 32, 32), 0.5)
    >>> save_image(ref, root / "ref.png")
    >>> rows = ["reference,distorted,dmos"]
    >>> for i in range(6):
    ...     save_image((ref + 0.05 * (i + 1)).clamp(0, 1), root / f"d{i}.png")
    ...     rows.append(f"ref.png,d{i}.png,{10 * (i + 1)}")
    >>> _ = (root / "labels.csv").write_text("\\n".join(rows) + "\\n")
    >>> rep = write(run(MOSDataset(root / "labels.csv"), ["l2"], bootstrap=0), root / "out", plots=False)
    >>> sorted(p.name for p in rep.files)
    ['report.json', 'report.md', 'scores.csv']
    >>> print(rep.summary.splitlines()[4])
    | l2 | 1.000 / 1.000 / 1.000 |
    >>> rep.summary.splitlines()[-1].startswith("PLCC over fewer than 20 items is optimistic")  # 6 items
    True
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import output_file
from .datasets import _MAX_LISTED  # as many items left out as report.md names (all are in errors.csv)
from .runner import EvaluationResult, cache_file_name

__all__ = ["ERRORS_FILE", "OUTPUT_FILES", "Report", "json_text", "remove_outputs", "write"]

#: The files :func:`write` creates (besides ``plot-<metric>.png`` and :data:`ERRORS_FILE`).
OUTPUT_FILES = ("report.md", "report.json", "scores.csv")
#: The file :func:`write` lists the items left out in, when there are any (else it removes an earlier one).
ERRORS_FILE = "errors.csv"


@dataclass
class Report:
    """What :func:`write` wrote: the folder, the files, the Markdown, and its summary table."""

    out_dir: Path
    markdown: str
    summary: str
    json: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)


def remove_outputs(out_dir: str | os.PathLike[str]) -> None:
    """Delete what :func:`write` and a :func:`~.runner.run` cache (``cache/``) left in ``out_dir``; nothing else."""
    path = Path(out_dir)
    if not path.is_dir():
        return
    for name in (*OUTPUT_FILES, ERRORS_FILE):
        (path / name).unlink(missing_ok=True)
    for p in path.glob("plot-*.png"):
        p.unlink()
    shutil.rmtree(path / "cache", ignore_errors=True)


#: How report.md shows a statistic that is undefined (NaN; null in report.json), and what it means.
_UNDEFINED = "–"
_UNDEFINED_MOS = (
    f"{_UNDEFINED}: undefined (null in report.json): SROCC, KROCC and PLCC where the values or the scores are all "
    "tied; PLCC and RMSE with at most 5 distinct values of the metric, where the 5-parameter logistic passes "
    "through the mean score of each whatever their order; every statistic of a group of fewer than 3 items; an "
    "interval where more than 5% of the resamples leave the statistic undefined."
)
#: Below this many items a PLCC after the 5-parameter fit gets the note :data:`_FEW_ITEMS_MOS` in report.md.
FEW_ITEMS_PLCC = 20
_FEW_ITEMS_MOS = (
    f"PLCC over fewer than {FEW_ITEMS_PLCC} items is optimistic: the 5-parameter logistic follows the noise of a few "
    "points (on scores unrelated to the metric, its median PLCC is about 0.9 over 6 items, 0.7 over 10 and 0.5 over "
    "20), so compare such groups by SROCC."
)
_UNDEFINED_JND = (
    f"{_UNDEFINED}: undefined (null in report.json): no pair of the subset was judged 'same', so it has no "
    "average precision, and the mean over subsets has none either."
)


#: The ``ok`` column of report.md's rows without a score: a pair that is not identical has nothing to check.
_OK = {True: "yes", False: "NO", None: "not checked"}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return _UNDEFINED
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cell(name: Any) -> str:
    """A name (metric, subset, group, path) as one cell of a Markdown table: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(name).replace("|", "\\|").splitlines())


def _plot_name(metric: str) -> str:
    """The plot file of ``metric``: ``plot-NAME.png``, the name made safe as for cache files (no ``/`` or ``:``)."""
    return "plot-" + cache_file_name(metric)[: -len(".json")] + ".png"


def _number(v: float) -> str:
    """``v`` with every digit it needs to read back as itself (the shortest such text, ``repr``'s), an integral value
    without its ``.0``: ``0.1`` → ``0.1``, ``1.0000000001`` → ``1.0000000001``, ``100.0`` → ``100``."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``scores.csv``: numbers with every digit they need (:func:`_number`: read back, they are the values the
    statistics were computed from; rounded, distinct values could read as ties), text cells (file names, subsets,
    groups) as ``patchmmd score`` writes them: readable, and never a spreadsheet formula
    (:func:`patchmmd.scoring.output.csv_text`)."""
    from ..scoring.output import csv_text

    with open(output_file(path), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([_number(v) if isinstance(v, float) else csv_text(v) if isinstance(v, str) else v
                        for v in r])


def _write_errors(r: EvaluationResult, out: Path) -> list[Path]:
    """``errors.csv``: the items left out, one row each (MOS: reference, distorted, the CSV's line; BAPPS: subset,
    name; then the error), its cells as ``patchmmd score`` writes them; an earlier one is removed when there are
    none (it would describe another run)."""
    from ..scoring.output import csv_line, csv_text

    path = output_file(out / ERRORS_FILE)
    if not r.errors:
        path.unlink(missing_ok=True)
        return []
    columns = ["reference", "distorted", "line"] if r.kind == "mos" else ["subset", "name"]
    lines = [csv_line([*columns, "error"])]
    lines += [csv_line([csv_text(str(e[c])) for c in (*columns, "error")]) for e in r.errors]
    path.write_text("".join(lines), encoding="utf-8")
    return [path]


def _left_out_md(r: EvaluationResult) -> list[str]:
    """Lines of report.md saying how many items were left out and why (none when no item was)."""
    if not r.errors:
        return []
    k = len(r.errors)
    items = "row" if r.kind == "mos" else "item"
    md = [f"**{k} of {r.n + k} {items}s left out**: {'its' if k == 1 else 'their'} files cannot be read, so every "
          f"figure below is over the other {r.n} ({ERRORS_FILE} lists each with the reason):", ""]
    md += [f"- {_cell(e['item'])}: {_cell(e['error'])}" for e in r.errors[:_MAX_LISTED]]
    if k > _MAX_LISTED:
        md.append(f"- and {k - _MAX_LISTED} more ({ERRORS_FILE})")
    return [*md, ""]


def _matplotlib() -> Any:
    """matplotlib, or an ImportError saying how to install it. Figures are drawn with :class:`matplotlib.figure.Figure`
    and saved without pyplot: the backend of the caller's session (a notebook's) is left as it is, and no figure
    is registered with pyplot."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: `pip install 'patchmmd[eval]'` (or write without plots)") from e
    return matplotlib


def _scatter(out: Path, metric: str, xs: Sequence[float], ys: Sequence[float], groups: Sequence[str],
             xlabel: str, ylabel: str, title: str, curve: Callable[[Any], Any] | None = None) -> str:
    import numpy as np

    mpl = _matplotlib()
    fig = mpl.figure.Figure(figsize=(5.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    names = list(dict.fromkeys(groups))
    cmap = mpl.colormaps["tab10"]
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
    name = _plot_name(metric)
    fig.savefig(output_file(out / name))
    return name


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, infinity) replaced by ``None``, in nested dicts, lists, tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text ending in a newline, indented by ``indent`` (``None``: on one line): a
    statistic that is not finite (NaN, e.g. a correlation of constant values) is written as ``null``, since JSON
    has no NaN.

    Example:
        >>> json_text({"srocc": float("nan"), "n": [1, float("inf")]}).split()
        ['{', '"srocc":', 'null,', '"n":', '[', '1,', 'null', ']', '}']
        >>> json_text({"srocc": float("nan")}, indent=None)
        '{"srocc": null}\\n'
    """
    return json.dumps(_finite(obj), indent=indent, allow_nan=False) + "\n"


def _finish(r: EvaluationResult, out: Path, report: dict[str, Any], md: list[str], summary: str,
            plots: dict[str, str], files: list[Path]) -> Report:
    report["left_out"] = r.errors
    md[2:2] = _left_out_md(r)  # under the title: never missed
    markdown = "\n".join(md) + "\n"
    files += _write_errors(r, out)
    for stale in set(out.glob("plot-*.png")) - {out / p for p in plots.values()}:  # of another run: other figures
        if not stale.is_dir():
            stale.unlink()
    output_file(out / "report.json").write_text(json_text(report), encoding="utf-8")
    output_file(out / "report.md").write_text(markdown, encoding="utf-8")
    files = [out / "report.md", out / "report.json", *files, *(out / p for p in plots.values())]
    return Report(out, markdown, summary, report, files, plots)


def _write_bapps(r: EvaluationResult, out: Path, plots_on: bool) -> Report:
    from .stats import summarize, two_afc_scores

    ds: Any = r.dataset
    kind, n, truth, subsets_of, stems = r.kind, r.n, r.truth, r.subsets, r.names
    rows: list[list[Any]] = []
    plots: dict[str, str] = {}
    for name, spec in r.specs.items():
        vals = r.values[name]
        sign = -1.0 if spec.higher_is_better else 1.0
        res = r.metrics[name]
        if kind == "2afc":
            sc = two_afc_scores([sign * v[0] for v in vals], [sign * v[1] for v in vals], truth)
            rows += [[name, subsets_of[i], stems[i], vals[i][0], vals[i][1], truth[i], float(sc[i])]
                     for i in range(n)]
            if plots_on:
                rel = [sign * (v[0] - v[1]) / (abs(v[0]) + abs(v[1]) + 1e-12) for v in vals]
                plots[name] = _scatter(out, name, truth, rel, subsets_of, "human judge g (fraction preferring p1)",
                                       "(d0 − d1) / (|d0| + |d1|)" + (" (negated similarity)" if sign < 0 else ""),
                                       f"{name}: 2AFC {_fmt(res['mean'], 3)} (mean over subsets)")
        else:
            rows += [[name, subsets_of[i], stems[i], vals[i][0], truth[i]] for i in range(n)]
            if plots_on:
                plots[name] = _scatter(out, name, [v[0] for v in vals], truth, subsets_of,
                                       f"{name} ({'similarity' if sign < 0 else 'distance'})",
                                       "fraction judging the pair 'same'",
                                       f"{name}: JND mAP {_fmt(res['mean'], 3)} (mean over subsets)")
    if kind == "2afc":
        _write_csv(out / "scores.csv", ["metric", "subset", "name", "d0", "d1", "judge", "score"], rows)
    else:
        _write_csv(out / "scores.csv", ["metric", "subset", "name", "distance", "same"], rows)
    human = r.human
    split, load_size, limit = ds.split, ds.load_size or 0, r.limit
    title = "2AFC agreement" if kind == "2afc" else "JND mAP"
    report: dict[str, Any] = {
        "command": f"eval {kind}", "dataset": str(ds.root), "split": split, "subsets": ds.subsets,
        "n": {s: subsets_of.count(s) for s in ds.subsets}, "load_size": load_size, "limit": limit,
        "statistic": title, "metrics": r.metrics, "plots": plots,
    }
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
    table_start = len(md)
    md += ["| metric | " + " | ".join(map(_cell, ds.subsets)) + " | mean |",
           "|---|" + "---|" * (len(ds.subsets) + 1)]
    for name, res in r.metrics.items():
        md.append(f"| {_cell(name)} | " + " | ".join(_fmt(res["subsets"][s], 3) for s in ds.subsets)
                  + f" | **{_fmt(res['mean'], 3)}** |")
    if human:
        md.append("| *human (majority)* | " + " | ".join(_fmt(human[s], 3) for s in ds.subsets)
                  + f" | {_fmt(summarize(human), 3)} |")
    if any(_UNDEFINED in line for line in md[table_start:]):
        md += ["", _UNDEFINED_JND]
    md += ["", "n per subset: " + ", ".join(f"{s} {subsets_of.count(s)}" for s in ds.subsets), ""]
    md += [f"![{m}]({p})" for m, p in plots.items()]
    summary = "\n".join(md[table_start:]).split("\n\n![")[0]
    return _finish(r, out, report, md, summary, plots, [out / "scores.csv"])


def _curve(x: Any, params: Sequence[float]) -> Any:
    from .stats import logistic5

    return logistic5(x, *params)


def _write_mos(r: EvaluationResult, out: Path, plots_on: bool) -> Report:
    ds: Any = r.dataset
    n, scored = r.n, r.scored
    score_higher_is_better, bootstrap, seed = r.score_higher_is_better, r.bootstrap, r.seed
    group_column = ds.group_column
    y = [float(r.truth[i]) for i in scored]
    groups = [str(r.subsets[i]) for i in scored] if group_column else None
    rows: list[list[Any]] = []
    plots: dict[str, str] = {}
    for name, spec in r.specs.items():
        v = [r.values[name][i][0] for i in range(n)]
        x = [v[i] for i in scored]
        rows += [[name, ds.references[r.indices[i]], r.names[i], r.subsets[i] or "", v[i],
                  "" if r.truth[i] is None else r.truth[i]] for i in range(n)]
        if plots_on:
            res = r.metrics[name]
            sign = -1.0 if spec.higher_is_better else 1.0
            ys = [(-1.0 if score_higher_is_better else 1.0) * s for s in y]
            p = res["all"]["logistic"]
            plots[name] = _scatter(
                out, name, [sign * xx for xx in x], ys, groups or ["all"] * len(x),
                f"{name}" + (" (negated: higher = more different)" if sign < 0 else " (distance)"),
                ds.score_column + (" (negated)" if score_higher_is_better else ""),
                f"{name}: SROCC {_fmt(res['all']['srocc'], 3)}, PLCC {_fmt(res['all']['plcc'], 3)}",
                curve=functools.partial(_curve, params=p) if p else None,
            )
    _write_csv(out / "scores.csv", ["metric", "reference", "distorted", "group", "value", ds.score_column], rows)
    results = r.metrics
    group_names = [k for k in next(iter(results.values())) if k not in ("higher_is_better", "group", "all")]
    csv_path = ds.labels_csv
    report = {
        "command": "eval mos", "labels": str(csv_path), "root": str(ds.root), "score_column": ds.score_column,
        "score_higher_is_better": score_higher_is_better, "group_column": group_column, "n_rows": n,
        "n_scored": len(scored), "bootstrap": bootstrap, "seed": seed, "metrics": results,
        "unscored_rows": r.unscored, "plots": plots,
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
          "| metric | " + " | ".join(map(_cell, ["all", *group_names])) + " |",
          "|---|" + "---|" * (1 + len(group_names))]
    for name, res in results.items():
        md.append(f"| {_cell(name)} | " + " | ".join(
            f"{_fmt(res[g]['srocc'], 3)} / {_fmt(res[g]['krocc'], 3)} / {_fmt(res[g]['plcc'], 3)}"
            for g in ["all", *group_names]) + " |")
    md += ["", "## Details", "", "| metric | subset | n | SROCC | KROCC | PLCC | RMSE |",
           "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for g in ["all", *group_names]:
            st, ci = res[g], res[g].get("ci", {})

            def cell(k: str, st: Any = st, ci: Any = ci) -> str:
                c = ci.get(k)
                return _fmt(st[k], 3) + (f" [{_fmt(c[0], 3)}, {_fmt(c[1], 3)}]" if c else "")

            md.append(f"| {_cell(name)} | {_cell(g)} | {st['n']} | {cell('srocc')} | {cell('krocc')} | "
                      f"{cell('plcc')} | {cell('rmse')} |")
    if any(_UNDEFINED in line for line in md[md.index("## Summary (SROCC / KROCC / PLCC)"):]):
        # said under the summary table, which front ends print on their own
        md.insert(md.index("## Details") - 1, "")
        md.insert(md.index("## Details") - 1, _UNDEFINED_MOS)
    if any(not math.isnan(res[g]["plcc"]) and res[g]["n"] < FEW_ITEMS_PLCC
           for res in results.values() for g in ["all", *group_names]):
        md.insert(md.index("## Details") - 1, "")
        md.insert(md.index("## Details") - 1, _FEW_ITEMS_MOS)
    if r.unscored:
        md += ["", "## Rows without a score", "",
               "| metric | distorted | identical to reference | value | value on (ref, ref) | ok |",
               "|---|---|---|---|---|---|"]
        for name, checks in r.unscored.items():
            for c in checks:
                md.append(f"| {_cell(name)} | {_cell(c['distorted'])} | {c['identical']} | {_fmt(c['value'], 6)} | "
                          f"{_fmt(c['value_on_itself'], 6)} | {_OK[c['ok']]} |")
    md += [""] + [f"![{m}]({p})" for m, p in plots.items()]
    summary = "\n".join(md[md.index("## Summary (SROCC / KROCC / PLCC)"):md.index("## Details")]).rstrip()
    return _finish(r, out, report, md, summary, plots, [out / "scores.csv"])


def write(result: EvaluationResult, out_dir: str | os.PathLike[str], *, plots: bool = True) -> Report:
    """Write ``result`` into ``out_dir`` (created if missing): report.md, report.json, scores.csv, plots, and
    errors.csv when items were left out (``errors`` of :class:`~.runner.EvaluationResult`).

    Files of an earlier report there are replaced (an earlier errors.csv is removed when no item was left out, and
    so are earlier ``plot-*.png`` files this report does not write: without ``plots``, all of them); nothing else is
    touched.

    Args:
        result: what :func:`~.runner.run` returned.
        out_dir: the folder.
        plots: also write ``plot-<metric>.png`` (needs matplotlib).

    Raises:
        ImportError: ``plots`` without matplotlib installed (nothing is written then).
    """
    out = Path(out_dir)
    if plots:
        _matplotlib()  # fail before writing anything
    out.mkdir(parents=True, exist_ok=True)
    if result.kind == "mos":
        return _write_mos(result, out, plots)
    return _write_bapps(result, out, plots)
