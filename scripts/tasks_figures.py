"""Build the docs figures and tables of ``docs/tasks.md`` from the run folders of the task commands.

Usage: python scripts/tasks_figures.py RUNS_DIR OUT_IMG_DIR
(RUNS_DIR holds gim-LOSS/, train-sr-LOSS/, train-ae-LOSS/ as written by the commands in docs/tasks.md.)
Prints the Markdown tables; writes tasks-gim.png, tasks-sr.png, tasks-ae.png for the tasks that have runs. A run
folder that lacks a file or a metrics.json entry the script reads stops it before any output, naming what is
missing; a column a run did not evaluate is "–" and named on stderr.
The MMD++ column is the previous default, ``mmdpp-pixelwise``, which those commands evaluate
(``--eval-distances=mmdpp-pixelwise,random-cnn``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from patchmmd.io import load_image
from patchmmd.tasks._common import image_grid_figure

LOSSES = ("l2", "mmdpp", "random-cnn", "vgg")
COLS = (("psnr", "PSNR dB ↑"), ("ssim", "SSIM ↑"), ("mmdpp-pixelwise", "MMD++ (pixelwise) ↓"),
        ("random-cnn", "random-CNN ↓"),
        ("sharpness", "sharpness (1 = as sharp as reference)"))


def _row(label: str, m: dict) -> str:
    """A table row of the metrics ``m``; a column the run did not evaluate is "–", and said so on stderr (the run
    was not made with the documented ``--eval-distances``)."""
    absent = [k for k, _ in COLS if k not in m]
    if absent:
        print(f"note: row {label!r} has no {', '.join(absent)} (shown as –)", file=sys.stderr)
    return f"| {label} | " + " | ".join(f"{m[k]:.4g}" if k in m else "–" for k, _ in COLS) + " |"


def _header(first: str) -> str:
    return f"| {first} | " + " | ".join(h for _, h in COLS) + " |\n|---|" + "---|" * len(COLS)


def _zoom(img: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = img.shape
    t, left = (h - size) // 2, (w - size) // 2
    return torch.nn.functional.interpolate(img[None, :, t : t + size, left : left + size], scale_factor=h // size,
                                           mode="nearest")[0]


def _runs(runs: Path, task: str) -> dict[str, Path]:
    """The run folders of ``task`` under ``runs`` that hold a metrics.json, by loss."""
    return {loss: runs / f"{task}-{loss}" for loss in LOSSES if (runs / f"{task}-{loss}" / "metrics.json").exists()}


def _has_runs(runs: Path) -> bool:
    return any(_runs(runs, task) for task in ("gim", "train-sr", "train-ae"))


def _picks(n: int) -> list[int]:
    """The held-out tiles shown in a figure: the first, the middle and the last of ``n``."""
    return sorted({0, n // 2, n - 1})


def problems(runs: Path) -> list[str]:
    """What the run folders under ``runs`` lack that :func:`main` reads (a file, a key of a metrics.json), so that
    a run cut short stops the script before any table or figure, not with a traceback half-way."""
    found: list[str] = []

    def metrics(folder: Path, *keys: str) -> dict:
        try:
            m = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError) as e:
            found.append(f"{folder / 'metrics.json'}: not readable ({e})")
            return {}
        found.extend(f"{folder / 'metrics.json'}: no {k!r}" for k in keys if k not in m)
        return m

    def files(folder: Path, *names: str) -> None:
        found.extend(str(folder / name) for name in names if not (folder / name).is_file())

    gim = _runs(runs, "gim")
    for i, d in enumerate(gim.values()):
        metrics(d, "result", *(("pixel_mean",) if i == 0 else ()))
        files(d, "result.png", *(("input_000.png", "pixel_mean.png") if i == 0 else ()))
    for task, prefix in (("train-sr", "sr"), ("train-ae", "recon")):
        runs_t = _runs(runs, task)
        if not runs_t:
            continue
        first = next(iter(runs_t.values()))
        n = metrics(first, "heldout_tiles", *(("bicubic",) if task == "train-sr" else ())).get("heldout_tiles", 1)
        if not isinstance(n, int) or n < 1:
            found.append(f"{first / 'metrics.json'}: heldout_tiles is {n!r}, not a positive count")
            continue
        picks = [f"{j:03d}.png" for j in _picks(n)]
        files(first, *(f"heldout_{j}" for j in picks), *(f"bicubic_{j}" for j in picks if task == "train-sr"))
        for d in runs_t.values():
            metrics(d, "heldout")
            files(d, *(f"{prefix}_{j}" for j in picks))
    return found


def main(runs: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gim = _runs(runs, "gim")
    if gim:
        first = next(iter(gim.values()))
        m0 = json.loads((first / "metrics.json").read_text())
        print("### GIM\n\n" + _header("image (vs every input, averaged)"))
        print(_row("pixel mean (start)", m0["pixel_mean"]["vs_inputs"]))
        for loss, d in gim.items():
            print(_row(f"GIM, {loss}", json.loads((d / "metrics.json").read_text())["result"]["vs_inputs"]))
        imgs = [load_image(first / "input_000.png"), load_image(first / "pixel_mean.png")]
        imgs += [load_image(d / "result.png") for d in gim.values()]
        labels = ["input 0 (unshifted)", "pixel mean"] + [f"GIM, {k}" for k in gim]
        image_grid_figure([imgs, [_zoom(i, 32) for i in imgs]], ["64x64", "centre 32x32, x2"], labels,
                          out / "tasks-gim.png", cell=1.6)
    for task, name in (("train-sr", "tasks-sr.png"), ("train-ae", "tasks-ae.png")):
        runs_t = _runs(runs, task)
        if not runs_t:
            continue
        first = next(iter(runs_t.values()))
        print(f"\n### {task}\n\n" + _header("held-out tiles, mean"))
        if task == "train-sr":
            print(_row("bicubic", json.loads((first / "metrics.json").read_text())["bicubic"]))
        for loss, d in runs_t.items():
            print(_row(loss, json.loads((d / "metrics.json").read_text())["heldout"]))
        n = json.loads((first / "metrics.json").read_text())["heldout_tiles"]
        picks = _picks(n)
        prefix = "sr" if task == "train-sr" else "recon"
        cols = (["bicubic"] if task == "train-sr" else []) + list(runs_t) + ["ground truth"]
        rows = []
        for i in picks:
            row = [load_image(first / f"bicubic_{i:03d}.png")] if task == "train-sr" else []
            row += [load_image(d / f"{prefix}_{i:03d}.png") for d in runs_t.values()]
            row.append(load_image(first / f"heldout_{i:03d}.png"))
            rows.append(row)
        image_grid_figure(rows, [f"tile {i}" for i in picks], cols, out / name, cell=1.4)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, metavar="RUNS_DIR", help="folder of the run folders (gim-LOSS/, ...)")
    ap.add_argument("out", type=Path, metavar="OUT_IMG_DIR", help="folder the figures are written to")
    return ap


if __name__ == "__main__":
    ap = build_parser()
    args = ap.parse_args()
    if not _has_runs(args.runs):
        ap.error(f"{args.runs}: no run folder with a metrics.json (gim-LOSS/, train-sr-LOSS/, train-ae-LOSS/, "
                 f"LOSS one of {', '.join(LOSSES)})")
    lacking = problems(args.runs)
    if lacking:
        ap.error(f"{len(lacking)} input(s) missing from the run folders, e.g. " + "; ".join(lacking[:5]))
    main(args.runs, args.out)
