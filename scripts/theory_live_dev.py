"""How random CNNs, the infinite CNN and MMD++ rank human scores on the LIVE development subset.

Usage (from the repository root; writes a Markdown table to stdout and, with --out, a CSV of distances)::

    python scripts/theory_live_dev.py [--data ../shared/data/live-dev] [--out theory_live_dev.csv] [--vgg]

Reads ``labels.csv`` (columns reference, distorted, distortion, dmos, identical_to_reference; rows without
a DMOS are skipped; higher DMOS = worse), computes every metric with its registry defaults on the
full-size images, and reports Spearman SROCC, Kendall KROCC and Pearson PLCC after the VQEG 5-parameter
logistic ``b1 (0.5 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``, overall and per distortion. Correlations are
oriented so that a good metric is positive (PSNR, a similarity, is negated). Nothing is tuned here.

The statistics are :func:`patchmmd.evaluation.stats.grouped_correlations`'s.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from patchmmd._files import atomic_write_text
from patchmmd.evaluation.stats import grouped_correlations
from patchmmd.io import load_image
from patchmmd.metrics.registry import get_metric

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "live-dev"

#: (column label, registry name, options, higher_is_better)
METRICS: list[tuple[str, str, dict[str, object], bool]] = [
    ("random-cnn (he)", "random-cnn", {}, False),
    ("random-cnn (zero_mean)", "random-cnn-zero-mean", {}, False),
    ("infinite-cnn (he)", "infinite-cnn", {}, False),
    ("infinite-cnn (zero_mean)", "infinite-cnn", {"first_layer": "zero_mean"}, False),
    ("mmdpp", "mmdpp", {}, False),
    ("mmdpp-pixelwise", "mmdpp-pixelwise", {}, False),
    ("l2", "l2", {}, False),
]
#: Added with --vgg (slow on 2 CPU cores: VGG16 at 768x512).
VGG_METRICS: list[tuple[str, str, dict[str, object], bool]] = [
    ("random-vgg (he)", "random-vgg", {}, False),
    ("random-vgg (zero_mean)", "random-vgg", {"first_layer": "zero_mean"}, False),
]


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None, help="CSV of per-image distances")
    ap.add_argument("--metrics", default=None,
                    help="comma-separated subset: registry names or column labels (psnr is always reported)")
    ap.add_argument("--vgg", action="store_true", help="also the random VGG16 trunk (he and zero_mean)")
    ap.add_argument("--from-csv", type=Path, default=None,
                    help="recompute the statistics from a CSV written by --out (no distances computed; its columns, "
                         "or those of --metrics, are reported)")
    return ap


def select_metrics(ap: argparse.ArgumentParser, args: argparse.Namespace
                   ) -> list[tuple[str, str, dict[str, object], bool]]:
    """The metrics to compute (or, with ``--from-csv``, to report), after ``--vgg`` and ``--metrics``; a name of
    ``--metrics`` that matches none of them is a usage error (it would otherwise leave only PSNR, silently)."""
    if args.from_csv is not None and (args.out is not None or args.vgg):
        ap.error("--from-csv computes no distances: --out and --vgg have nothing to do there (--metrics selects "
                 "the CSV's columns)")
    metrics = METRICS + (VGG_METRICS if args.vgg or args.from_csv is not None else [])
    if args.metrics:
        keep = {name.strip() for name in args.metrics.split(",") if name.strip()}
        known = {m[0] for m in metrics} | {m[1] for m in metrics} | {"psnr"}
        unknown = sorted(keep - known)
        if unknown:
            hint = "" if args.vgg or args.from_csv is not None else " (random-vgg needs --vgg)"
            ap.error(f"--metrics: unknown {', '.join(map(repr, unknown))}; choose among "
                     f"{', '.join(sorted(known))}{hint}")
        metrics = [m for m in metrics if m[1] in keep or m[0] in keep]
    return metrics


def main() -> int:
    ap = build_parser()
    args = ap.parse_args()
    metrics = select_metrics(ap, args)
    if not (args.data / "labels.csv").is_file():
        ap.error(f"--data: {args.data / 'labels.csv'} not found (the folder of the LIVE development subset)")
    torch.manual_seed(0)
    rows = []
    with open(args.data / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            if (r.get("dmos") or "").strip():
                rows.append(r)
    # the whole list is checked before the first distance: a bad row would otherwise end the run there
    missing = [] if args.from_csv is not None else sorted(
        {name or "(empty name)" for r in rows for name in (r.get("reference"), r.get("distorted"))
         if not name or not (args.data / name).is_file()})
    if not rows or missing:
        ap.error(f"--data: {args.data / 'labels.csv'} has no row with a DMOS" if not rows else
                 f"--data: {len(missing)} image(s) of {args.data / 'labels.csv'} not found, e.g. {missing[0]}")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        ap.error(f"--out: {args.out} is a folder or its folder does not exist")
    if args.out is not None and args.out.resolve() == (args.data / "labels.csv").resolve():
        ap.error(f"--out: {args.out} is the human scores this run reads (--data's labels.csv)")
    try:
        dmos = np.array([float(r["dmos"]) for r in rows])
    except ValueError as e:
        ap.error(f"--data: a DMOS of {args.data / 'labels.csv'} is not a number ({e})")
    groups = [r["distortion"] for r in rows]
    values: dict[str, list[float]] = {label: [] for label, *_ in metrics}
    values["psnr"] = []
    timings = dict.fromkeys(values, 0.0)
    if args.from_csv:
        with open(args.from_csv, newline="") as f:
            saved = list(csv.DictReader(f))
        if [r["distorted"] for r in saved] != [r["distorted"] for r in rows]:
            raise SystemExit(f"{args.from_csv} does not list the rows of {args.data / 'labels.csv'} in order")
        columns = [k for k in saved[0] if k not in ("distorted", "distortion", "dmos")]
        if args.metrics:
            wanted = [label for label, *_ in metrics] + ["psnr"]
            missing = [label for label in wanted if label not in columns]
            if missing:
                raise SystemExit(f"{args.from_csv} has no column {', '.join(map(repr, missing))}")
            columns = wanted
        values = {k: [float(r[k]) for r in saved] for k in columns}
        timings = dict.fromkeys(values, math.nan)
        rows_to_compute: list[dict[str, str]] = []
    else:
        rows_to_compute = rows
    built = {label: get_metric(name, **opts) for label, name, opts, _ in metrics} if rows_to_compute else {}
    for i, r in enumerate(rows_to_compute):
        x = load_image(args.data / r["reference"]).unsqueeze(0)
        y = load_image(args.data / r["distorted"]).unsqueeze(0)
        with torch.no_grad():
            for label, metric in built.items():
                t = time.perf_counter()
                values[label].append(float(metric(x, y)[0]))
                timings[label] += time.perf_counter() - t
        mse = float((x - y).pow(2).mean())
        values["psnr"].append(10 * math.log10(1.0 / mse) if mse > 0 else math.inf)
        print(f"[{i + 1}/{len(rows)}] {r['distorted']}", file=sys.stderr)
    higher = {label: hib for label, _, _, hib in [*METRICS, *VGG_METRICS]}
    higher["psnr"] = True
    if args.out and rows_to_compute:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["distorted", "distortion", "dmos", *values])
        for i, r in enumerate(rows):
            w.writerow([r["distorted"], r["distortion"], r["dmos"], *(values[k][i] for k in values)])
        atomic_write_text(args.out, text.getvalue())
    cols = ["all", *sorted(set(groups))]
    print(f"LIVE dev subset: {len(rows)} distorted images with DMOS, {len(set(r['reference'] for r in rows))} "
          f"references; distortions: {', '.join(f'{g} ({groups.count(g)})' for g in cols[1:])}\n")
    print("| metric | " + " | ".join(f"{c} SROCC / KROCC / PLCC" for c in cols) + " | s per pair |")
    print("|---|" + "---|" * (len(cols) + 1))
    for label, v in values.items():
        d = np.asarray(v, dtype=np.float64)
        if higher.get(label, False):
            d = -d
        stats = grouped_correlations(d, dmos, groups)
        cells = [f"{stats[c]['srocc']:.3f} / {stats[c]['krocc']:.3f} / {stats[c]['plcc']:.3f}" for c in cols]
        print(f"| {label} | " + " | ".join(cells) + f" | {timings[label] / len(rows):.2f} |")
    print("\nStatistics: patchmmd.evaluation.stats.grouped_correlations. PLCC after the 5-parameter logistic fit.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
