"""SR x4 alone, trained and judged as ``patchmmd eval suite`` does it, for loss variants that the suite cannot
name: the rows of docs/evaluation.md ("Variants around the training preset") that were measured with losses
outside the library.

    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 \\
        'relu-mmd:weight=390' 'relu-mmd:weight=463,depth=2' \\
        'whitened-mmd:weight=210,power=0' 'whitened-mmd:weight=164,power=0.25' 'whitened-mmd:weight=125,power=0.5' \\
        'whitened-mmd:weight=257,power=-0.25' 'whitened-mmd:weight=318,power=-0.5'

A variant is either a suite candidate (``mmdpp:preset=loss,weight_local=228``) or one of two replacements of
the training preset's MMD term, in plain PyTorch operations (the preset with ``weight_mmd=0`` plus ``weight``
times the new term; 128 features of the same contrast-normalised 3x3 patches at the same two octaves and
16-px windows every 8 px; the features drawn once, seed 0):

* ``relu-mmd``: random ReLU features ``ReLU(w . p)`` (``w`` standard Gaussian; the arc-cosine kernel of the
  random-network reading, docs/method.md §4), with ``depth - 1`` more random 1x1 ReLU layers;
* ``whitened-mmd``: cosine features (Gaussian widths 0.5 and 1) of patches multiplied by ``C^-power`` before the
  normalisation, ``C`` the covariance of the shipped photos' centred patches at each octave (its null directions
  left out, scaled to unit root-mean-square gain); ``power=0`` is the preset's term.

The training photos and judge tiles are the suite's with the two dev human sets (``--data``), 600 steps; each
run prints its judges' scores and the lattice ratio, then the mean over the seeds. Weights were set as the docs
say (the term's value on blur σ 1 px of 64² crops of the shipped photos equal to the preset's MMD term's).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from patchmmd.core.mmdpp import mmdpp
from patchmmd.data import sample_image, sample_names
from patchmmd.evaluation import suite as S
from patchmmd.tasks._common import deterministic
from patchmmd.tasks.data import Split
from patchmmd.tasks.superres import degrade

FEATURES, FLOOR, LEVELS, WINDOW = 128, 0.01, 2, 16  # the preset's, on the [0, 1] scale
#: (level, x, y, generator) -> the two images' features at that level
Features = Callable[[int, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _centred_patches(x: torch.Tensor, p: int = 3) -> torch.Tensor:
    n, c, h, w = x.shape
    u = F.unfold(x, p).view(n, c, p * p, -1)
    u = u - u.mean(2, keepdim=True)
    return u.reshape(n, c * p * p, h - p + 1, w - p + 1)


def _normalised(p: torch.Tensor) -> torch.Tensor:
    return p / (p.pow(2).sum(1, keepdim=True) + FLOOR * FLOOR * p.shape[1]).sqrt()


def _window_mmd(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    wd = min(WINDOW, fx.shape[-1])
    mx = F.avg_pool2d(fx, wd, stride=max(wd // 2, 1))
    my = F.avg_pool2d(fy, wd, stride=max(wd // 2, 1))
    return (mx - my).pow(2).sum(1).mean((1, 2)) * (2.0 / fx.shape[1])


def _levels(x: torch.Tensor, y: torch.Tensor, features: Features) -> torch.Tensor:
    """The windowed MMD² of ``features(level, x, y, generator)`` summed over the levels (2x2 box averages between
    them); the features drawn from one generator, seed 0, level after level."""
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(())
    for level in range(LEVELS):
        if level:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total + _window_mmd(*features(level, x, y, g))
    return total


def relu_mmd(x: torch.Tensor, y: torch.Tensor, depth: int = 1) -> torch.Tensor:
    def features(level: int, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        px, py = _normalised(_centred_patches(x)), _normalised(_centred_patches(y))
        w = torch.randn(FEATURES, px.shape[1], generator=g).to(x)
        torch.randn(FEATURES, generator=g)  # a bias the measured runs drew and scaled by 0: kept for their draws
        fx = F.relu(torch.einsum("ndhw,kd->nkhw", px, w))
        fy = F.relu(torch.einsum("ndhw,kd->nkhw", py, w))
        for _ in range(depth - 1):
            v = (torch.randn(FEATURES, FEATURES, generator=g) * (2.0 / FEATURES) ** 0.5).to(x)
            fx = F.relu(torch.einsum("nkhw,jk->njhw", fx, v))
            fy = F.relu(torch.einsum("nkhw,jk->njhw", fy, v))
        return fx, fy

    return _levels(x, y, features)


_WHITENERS: dict[tuple[int, float], torch.Tensor] = {}


def _whitener(level: int, power: float) -> torch.Tensor:
    """``C^-power`` on the centred patches' subspace, ``C`` their covariance in the shipped photos at ``level``."""
    if (level, power) not in _WHITENERS:
        acc, count = torch.zeros(()), 0
        for name in sample_names():
            im = sample_image(name)
            im = im.reshape(1, 3, *im.shape[-2:]).float()
            for _ in range(level):
                im = F.avg_pool2d(im, 2)
            p = _centred_patches(im).flatten(2)[0]
            acc, count = acc + p @ p.T, count + p.shape[1]
        ev, vec = torch.linalg.eigh((acc / count).double())
        keep = ev > ev.max() * 1e-6  # centring leaves one null direction per channel: projected out
        gain = torch.where(keep, ev.clamp_min(ev.max() * 1e-6).pow(-power), torch.zeros_like(ev))
        m = vec @ torch.diag(gain) @ vec.T
        _WHITENERS[level, power] = (m / (m.pow(2).sum() / int(keep.sum())).sqrt()).float()
    return _WHITENERS[level, power]


def whitened_mmd(x: torch.Tensor, y: torch.Tensor, power: float = 0.0) -> torch.Tensor:
    def features(level: int, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        m = _whitener(level, power).to(x)
        px = _normalised(torch.einsum("ed,ndhw->nehw", m, _centred_patches(x)))
        py = _normalised(torch.einsum("ed,ndhw->nehw", m, _centred_patches(y)))
        w = torch.cat([torch.randn(FEATURES // 2, px.shape[1], generator=g) / s for s in (0.5, 1.0)]).to(x)
        b = (torch.rand(w.shape[0], generator=g) * 2 * torch.pi).to(x)
        return (torch.cos(torch.einsum("ndhw,kd->nkhw", px, w) + b[:, None, None]),
                torch.cos(torch.einsum("ndhw,kd->nkhw", py, w) + b[:, None, None]))

    return _levels(x, y, features)


TERMS = {"relu-mmd": relu_mmd, "whitened-mmd": whitened_mmd}


def make_loss(spec: str) -> Any:
    name, options = S.parse_candidate(spec)
    if name not in TERMS:
        return S._make_loss(name, options)
    weight = float(options.pop("weight"))
    term = TERMS[name]

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        base = mmdpp(x, y, preset="loss", weight_mmd=0.0, out_of_range="ignore", num_scales=LEVELS)
        return (base + weight * term(x, y, **options)).mean()

    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--weights", type=Path, required=True, help="folder of shared/tools/published_weights.py")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of live-dev and csiq-dev")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = S.SuiteConfig(seed=0, task_seeds=1)
    refs: list[torch.Tensor] = []
    for name in ("live-dev", "csiq-dev"):
        hs = S.HumanSet(name, args.data / name / "labels.csv")
        refs += S.reference_images(S.open_human_set(hs), name)[0]
    train, tiles = S.task_photos([sample_image(n) for n in sample_names()], [], refs, cfg)
    judges = {j: S._build(S.SuiteMetric(j, j, S._deep_options(j, args.weights), "baseline")) for j in S.JUDGES}
    split, lr_tiles = Split(train, tiles, cfg.sr_crop), degrade(tiles, 4)
    for spec in args.variants:
        t0, runs = time.perf_counter(), []
        for seed in (int(s) for s in args.seeds.split(",")):
            loss = make_loss(spec)
            with deterministic(seed):
                _, numbers = S.sr_task(loss, seed, split, lr_tiles, tiles, judges, cfg)
            runs.append(numbers)
            print(spec, seed, json.dumps(numbers), f"{time.perf_counter() - t0:.0f}s", flush=True)
        mean = {k: round(sum(r[k] for r in runs) / len(runs), 4) for k in runs[0]}
        print("MEAN", spec, json.dumps(mean), flush=True)


if __name__ == "__main__":
    main()
