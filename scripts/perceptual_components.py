"""Development study: which pieces of MMD++ agree with people, and which of them tolerate a small shift.

For every scored pair of the human development sets and for a shift check built from photos, this computes the
terms MMD++ is made of, one pyramid level at a time (downsampling factor f = 1, 2, 4, 8; box or anti-aliased
downsampling), and prints for each term:

* SROCC against DMOS on each human set;
* the shift ratio: d(x, x shifted) / min(d(x, x + noise σ=0.03), d(x, blur σ=1)) per photo (median and max),
  for a 1-px horizontal shift, a 1-px diagonal shift, a 2-px shift and a half-pixel translation.

With ``--weights DIR`` (as ``shared/tools/published_weights.py DIR`` writes it) the deep metrics are added as
reference rows. Nothing here changes the library: it is the evidence that a redesign of the default is judged
on, written down as a command anyone can rerun.

Usage:
    python scripts/perceptual_components.py --human ../shared/data/live-dev/labels.csv \\
        --human ../shared/data/csiq-dev/labels.csv [--weights DIR] [--out components.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from patchmmd import l2_distance, local_distance, mmdpp, patch_mmd
from patchmmd._files import atomic_write_text
from patchmmd.data import sample_image, sample_names
from patchmmd.data.distortions import gaussian_blur
from patchmmd.io import load_image
from patchmmd.metrics.weights import WeightsError, folder_options

FACTORS = (1, 2, 4, 8)
WINDOWS = (8, 16, 32)
SIGMAS = (0.015, 0.03, 0.06)
SHIFT_CASES = ("shift1", "shift1diag", "shift2", "shift0.5")


def box_down(x: torch.Tensor, f: int) -> torch.Tensor:
    return x if f == 1 else F.avg_pool2d(x, f)


def aa_down(x: torch.Tensor, f: int) -> torch.Tensor:
    """Gaussian low-pass (σ = f/2) before the box: aliasing suppressed."""
    return x if f == 1 else F.avg_pool2d(gaussian_blur(x, 0.5 * f), f)


def components(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a[None], b[None]
    out: dict[str, float] = {"mmdpp": float(mmdpp(a, b, preset="pixelwise"))}  # the model the study examined
    for dname, down in (("box", box_down), ("aa", aa_down)):
        for f in FACTORS:
            xa, xb = down(a, f), down(b, f)
            for w in WINDOWS:
                for s in SIGMAS:
                    if dname == "aa" and w != 16 and f > 1:
                        continue  # at f = 1 both downsamplings are the identity
                    out[f"mmd_{dname}_w{w}_s{s}_f{f}"] = float(
                        patch_mmd(xa, xb, sigma=s, estimator="rff", num_features=256, window=w, stride=w // 2))
            out[f"mmdnc_{dname}_w8_s0.06_f{f}"] = float(
                patch_mmd(xa, xb, sigma=0.06, estimator="rff", num_features=256, window=8, stride=4, center=False))
            out[f"l2_{dname}_f{f}"] = float(l2_distance(xa, xb))
            out[f"local_{dname}_f{f}"] = float(local_distance(xa, xb))
    return out


def shift_cases(x: torch.Tensor, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Same-size pairs cropped from ``x`` (C, H, W): the reference is ``x[2:-2, 2:-2]``."""
    a = x[:, 2:-2, 2:-2]
    g = torch.Generator().manual_seed(seed)
    return {
        "shift1": (a, x[:, 2:-2, 3:-1]),
        "shift1diag": (a, x[:, 3:-1, 3:-1]),
        "shift2": (a, x[:, 2:-2, 4:]),
        "shift0.5": (a, 0.5 * (a + x[:, 2:-2, 3:-1])),
        "noise0.03": (a, (a + 0.03 * torch.randn(a.shape, generator=g)).clamp(0, 1)),
        "blur1": (a, gaussian_blur(a[None], 1.0)[0].clamp(0, 1)),
    }


def read_human(path: Path) -> list[dict[str, Any]]:
    """The scored rows of a human set's ``labels.csv`` (the set named after its folder).

    Raises:
        ValueError: a column is missing, a DMOS is not a number or an image is not there.
    """
    rows = []
    with open(path, newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            if r.get("dmos", "") == "":
                continue
            missing = [k for k in ("reference", "distorted", "distortion") if not r.get(k)]
            if missing:
                raise ValueError(f"{path}, line {line}: no {', '.join(missing)}")
            try:
                dmos = float(r["dmos"])
            except ValueError:
                raise ValueError(f"{path}, line {line}: DMOS {r['dmos']!r} is not a number") from None
            rows.append({"set": path.parent.name, "ref": str(path.parent / r["reference"]),
                         "dist": str(path.parent / r["distorted"]), "distortion": r["distortion"], "dmos": dmos})
    absent = sorted({p for r in rows for p in (r["ref"], r["dist"]) if not Path(p).is_file()})
    if absent:
        raise ValueError(f"{path}: {len(absent)} image(s) not found, e.g. {absent[0]}")
    return rows


def deep_metrics(weights: Path) -> dict[str, Any]:
    """DISTS, LPIPS-vgg and LPIPS-alex with their published weights from the folder ``weights``.

    Raises:
        WeightsError: a file of the folder's layout is missing or does not load.
    """
    from patchmmd.metrics.registry import get_metric

    return {name: get_metric(name, **folder_options(name, weights)) for name in ("dists", "lpips-vgg", "lpips-alex")}


def compute(human_files: list[Path], deep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every term of :func:`components` (and each metric of ``deep``) on the human sets' scored pairs and on the
    shift cases of the shipped photos and the sets' references (the sets as :func:`read_human` reads them)."""

    def all_terms(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {**components(a, b), **{k: float(m(a[None], b[None])[0]) for k, m in deep.items()}}

    rows: list[dict[str, Any]] = []
    refs: list[str] = []
    for path in human_files:
        for r in read_human(path):
            rows.append({**r, **all_terms(load_image(r["ref"]), load_image(r["dist"]))})
            refs.append(r["ref"])
    photos = [sample_image(n) for n in sample_names()] + [load_image(p) for p in sorted(set(refs))]
    for i, x in enumerate(photos):
        for case, (a, b) in shift_cases(x, seed=i).items():
            rows.append({"set": "shift", "photo": i, "case": case, **all_terms(a, b)})
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from scipy.stats import spearmanr

    human = [r for r in rows if r["set"] != "shift"]
    shift = [r for r in rows if r["set"] == "shift"]
    sets = sorted({r["set"] for r in human})
    keys = [k for k in rows[0] if k not in ("set", "ref", "dist", "distortion", "dmos", "photo", "case")]
    table = []
    for k in keys:
        entry: dict[str, Any] = {"term": k}
        for s in sets:
            rr = [r for r in human if r["set"] == s]
            entry[s] = float(spearmanr([r[k] for r in rr], [r["dmos"] for r in rr])[0])
        for case in SHIFT_CASES:
            ratios = []
            for p in sorted({r["photo"] for r in shift}):
                c = {r["case"]: r[k] for r in shift if r["photo"] == p}
                ratios.append(c[case] / max(min(c["noise0.03"], c["blur1"]), 1e-30))
            entry[f"{case} median"], entry[f"{case} max"] = float(np.median(ratios)), float(np.max(ratios))
        table.append(entry)
    return table


#: Native-resolution MMD terms (shift-tolerant) and coarse terms (good human rankers) for the pairwise study.
FINE_TERMS = ("mmd_box_w32_s0.015_f1", "mmd_box_w32_s0.03_f1", "mmd_box_w16_s0.015_f1", "mmd_box_w8_s0.015_f1",
              "mmdnc_box_w8_s0.06_f1")
COARSE_TERMS = ("l2_box_f4", "local_box_f4", "l2_box_f8", "mmd_aa_w16_s0.03_f8", "mmd_aa_w16_s0.015_f4",
                "mmdnc_aa_w8_s0.06_f2", "mmd_box_w32_s0.06_f8", "local_aa_f2")
COARSE_WEIGHTS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``fine / median + w * coarse / median`` (medians over the human pairs) for every fine and coarse term
    and weight: how far a reweighting of today's terms gets on both goals at once."""
    human = [r for r in rows if r["set"] != "shift"]
    med = {k: float(np.median([r[k] for r in human])) for k in FINE_TERMS + COARSE_TERMS}
    mixed = []
    for r in rows:
        m = {}
        for fk in FINE_TERMS:
            for ck in COARSE_TERMS:
                for w in COARSE_WEIGHTS:
                    m[f"{fk} + {w} {ck}"] = r[fk] / med[fk] + w * r[ck] / med[ck]
        mixed.append({k: r[k] for k in ("set", "ref", "dist", "distortion", "dmos", "photo", "case") if k in r} | m)
    return summarize(mixed)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--human", type=Path, action="append", required=True, help="labels.csv of a human set")
    ap.add_argument("--weights", type=Path, default=None, help="published weights folder (deep reference rows)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file of every row and the summary (default: none)")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    missing = [str(p) for p in args.human if not p.is_file()]
    if missing:
        ap.error(f"--human: no such file: {', '.join(missing)}")
    try:  # before any work: a folder without the files stops here, not after the human sets are computed
        deep = deep_metrics(args.weights) if args.weights else {}
    except WeightsError as e:
        ap.error(f"--weights: {e}")
    # every set is read before any work: a bad second file would otherwise stop the run after the first set
    names = [p.parent.name for p in args.human]
    if len(set(names)) < len(names):
        ap.error(f"--human: two sets named alike (a set is named after its folder): {', '.join(names)}")
    for path in args.human:
        try:
            read_human(path)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            ap.error(f"--human: {e}")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        ap.error(f"--out: {args.out} is a folder or its folder does not exist")
    if args.out is not None and args.out.resolve() in {p.resolve() for p in args.human}:
        ap.error(f"--out: {args.out} is a human set's labels.csv that this run reads (--human)")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = compute(args.human, deep)
    table = summarize(rows)
    if args.out:
        atomic_write_text(args.out, json.dumps({"rows": rows, "summary": table}, indent=1))
    sets = sorted({r["set"] for r in rows if r["set"] != "shift"})
    cols = sets + [f"{c} {s}" for c in SHIFT_CASES for s in ("median", "max")]
    print("| term | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for e in sorted(table, key=lambda e: e["shift1 median"]):
        print(f"| {e['term']} | " + " | ".join(f"{e[c]:.3f}" for c in cols) + " |")
    mixed = pairs(rows)
    best = sorted(mixed, key=lambda e: -min(e[s] for s in sets))[:8]
    tolerant = sorted((e for e in mixed if e["shift1 median"] <= 0.15), key=lambda e: -min(e[s] for s in sets))[:8]
    for title, chosen in (("best on both human sets", best), ("best with a 1-px shift ratio <= 0.15", tolerant)):
        print(f"\nfine + w * coarse, {title}:")
        print("| mix | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for e in chosen:
            print(f"| {e['term']} | " + " | ".join(f"{e[c]:.3f}" for c in cols) + " |")
    print(f"\n{len(rows)} rows in {time.time() - t0:.0f} s on {args.threads} threads"
          + (f"; written to {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
