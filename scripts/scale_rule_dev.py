"""How the scale rule was chosen: a sweep on development data only.

The sweep was made for the pixelwise model (``preset="pixelwise"``, the default before the shift-tolerant
redesign of docs/method.md §3.2), which the rule was chosen for; the rule's constants are unchanged since.

1. live-dev (27 human-scored LIVE pairs, ../shared/data/live-dev): SROCC of MMD++ against DMOS, overall and
   per distortion, for native resolution (the follow-up study's setting) and for working resolutions
   ``base_size`` in {64, 96, 128, 192, 256} with 1 or 2 pyramid levels.
2. Distortion ladders built from the shipped photos (no human scores): within each ladder (blur, noise,
   JPEG, each at 4 increasing strengths) a distance should grow with the strength; reported as the mean
   Kendall tau between strength and distance (1.0 = always monotone).

Usage:
    python scripts/scale_rule_dev.py [--live-dev ../shared/data/live-dev] [--out table.md]

It prints a Markdown table. Takes several minutes on 2 CPU cores (the
native-resolution row dominates).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import kendalltau

import patchmmd
from patchmmd._files import atomic_write_text
from patchmmd.data import sample_image, sample_names
from patchmmd.data.distortions import jpeg
from patchmmd.evaluation.datasets import MOSDataset
from patchmmd.evaluation.stats import correlations

CONFIGS: list[tuple[str, dict]] = [("native (followup preset)", {"preset": "followup"})]
for base in (64, 96, 128, 192, 256):
    for scales in (1, 2):
        CONFIGS.append((f"base_size={base}, num_scales={scales}",
                        {"preset": "pixelwise", "base_size": base, "num_scales": scales}))


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    from PIL import ImageFilter

    a = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    b = Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma))
    return torch.from_numpy(np.asarray(b, dtype=np.float32) / 255).permute(2, 0, 1)


def ladders() -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(reference, [distorted at 4 strengths]) for blur, noise and JPEG on every shipped photo."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for name in sample_names():
        ref = sample_image(name)
        out.append((ref, [_blur(ref, s) for s in (0.5, 1.0, 2.0, 4.0)]))
        noise = torch.randn(ref.shape, generator=gen)
        out.append((ref, [(ref + s * noise).clamp(0, 1) for s in (0.01, 0.02, 0.05, 0.1)]))
        out.append((ref, [jpeg(ref, q) for q in (90, 50, 20, 5)]))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_live = Path(__file__).resolve().parents[2] / "shared" / "data" / "live-dev"
    parser.add_argument("--live-dev", type=Path, default=default_live, help="folder of live-dev's labels.csv")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.live_dev / "labels.csv").is_file():
        parser.error(f"--live-dev: {args.live_dev / 'labels.csv'} not found")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):  # before minutes of work
        parser.error(f"--out: {args.out} is a folder or its folder does not exist")
    if args.out is not None and args.out.resolve() == (args.live_dev / "labels.csv").resolve():
        parser.error(f"--out: {args.out} is the human scores this run reads (--live-dev's labels.csv)")

    ds = MOSDataset(args.live_dev / "labels.csv", group_column="distortion")
    items = [ds[i] for i in ds.scored]
    groups = np.array([it.group for it in items])
    dmos = np.array([it.score for it in items])
    lads = ladders()

    header = "| configuration | live-dev SROCC | gblur | jpeg | wn | ladders: mean Kendall tau |"
    lines = [header, "|---|---|---|---|---|---|"]
    for label, opts in CONFIGS:
        with torch.no_grad():
            d = np.array([float(patchmmd.mmdpp(it.reference, it.distorted, **opts)) for it in items])
            taus = []
            for ref, dists in lads:
                v = [float(patchmmd.mmdpp(ref, x, **opts)) for x in dists]
                taus.append(kendalltau(np.arange(len(v)), v)[0])
        row = [correlations(d, dmos)["srocc"]]
        row += [correlations(d[groups == g], dmos[groups == g])["srocc"] for g in ("gblur", "jpeg", "wn")]
        cells = " | ".join(f"{v:.3f}" for v in row)
        lines.append(f"| {label} | {cells} | {np.mean(taus):.3f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
