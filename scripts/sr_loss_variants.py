"""SR x4 alone, trained and judged as ``patchmmd eval suite`` does it, for loss variants that the suite cannot
name: the rows of docs/development-log.md ("Variants around the training preset", "Contrast-normalised patches
in the training preset", "A third judge, and two more aligned terms", "The energy distance in place of the
Gaussian kernel", "Several patch sizes at once", "The sliced Wasserstein distance in place of the MMD") that were
measured with losses outside the library.

    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 \\
        'relu-mmd:weight=390' 'relu-mmd:weight=463,depth=2' \\
        'whitened-mmd:weight=210,power=0' 'whitened-mmd:weight=164,power=0.25' 'whitened-mmd:weight=125,power=0.5' \\
        'whitened-mmd:weight=257,power=-0.25' 'whitened-mmd:weight=318,power=-0.5' \\
        'joint-mmd:weight=320' 'vgg-mmd:weight=1730'
    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0 'normalised-mmd:features=256,weight=200' \\
        'normalised-mmd:features=256,weight=200,sigma=[0.5,1,2],levels=3'
    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 --judges dists,lpips-vgg,lpips-alex \\
        'mmdpp:preset=loss' lpips-vgg lpips-alex 'laplacian-l1:weight=151,base_weight_mmd=400,base_weight_local=0' \\
        'aligned-normalised:weight=18,levels=4,base_weight_mmd=400,base_weight_local=0'
    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 'normalised-mmd:root=0.01,weight=27' \\
        'charbonnier:weight=336,base_weight_mmd=400,base_weight_local=0' \\
        'aligned-normalised:weight=17,base_weight_mmd=400' \\
        'aligned-normalised:weight=21,base_weight_mmd=400,base_weight_local=0'
    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 'energy-mmd:weight=118'
    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 'normalised-mmd:sizes=[3,5],weight=224' \\
        'normalised-mmd:sizes=[3,5,7],weight=234'
    python scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2 'sliced-wasserstein:weight=2636' \\
        'sliced-wasserstein:weight=2636,seed=1'

A variant is either a suite candidate (``mmdpp:preset=loss,weight_local=228``) or the training preset with its
MMD term replaced (``weight_mmd=0``) by ``weight`` times one of these, in plain PyTorch operations (by default
128 features of contrast-normalised 3x3 patches at two octaves, 16-px windows every 8 px, the features drawn
once, seed 0):

* ``normalised-mmd``: the preset's term itself, with random Fourier features of i.i.d. directions and random
  phases (``features``, Gaussian widths ``sigma`` in the unit ball, ``floor`` per pixel on [0, 1], ``levels``
  octaves, ``window``; ``root=EPS``: each window's MMD instead of its square, ``sqrt(MMD² + EPS²) − EPS``;
  ``sizes=[3,5,7]``: several patch sizes, the mean of their terms, each with its own ``features``);
* ``aligned-normalised``: the contrast-normalised 3x3 patches of the two images compared place by place (the
  squared distance of the unit-ball vectors, averaged over positions, summed over ``levels`` octaves), as
  LPIPS compares its unit-normalised features; with ``base_weight_mmd=400`` the preset keeps its MMD, and with
  ``base_weight_local=0`` the term replaces the raw-patch Local term;
* ``energy-mmd``: the energy distance ``2 E‖p − q‖ − E‖p − p'‖ − E‖q − q'‖`` (the MMD under the distance
  kernel, no width, exact over all pairs of patches in each window, no random features) between the same
  contrast-normalised patches;
* ``sliced-wasserstein``: the sliced Wasserstein distance of GPDM (Elnekave & Weiss 2022) and Heitz et al.
  (2021) between the same contrast-normalised patches of each window: their projections on ``projections``
  random unit directions (default 128, drawn once from ``seed``, default 0), sorted, the mean squared
  difference of the sorted values (the squared 1-D W2 distance averaged over the directions), averaged over the
  windows, summed over the octaves;
* ``charbonnier``: ``sqrt((x − y)² + eps²) − eps`` averaged over pixels (an L1 smooth at 0);
* ``laplacian-l1``: the Laplacian-pyramid L1 of Bojanowski et al. (2018): the mean absolute difference of each
  band-pass level of a pyramid of 2x2 box averages (``levels``, default 4, the coarsest level included);
* ``whitened-mmd``: cosine features (widths 0.5 and 1) of patches multiplied by ``C^-power`` before the
  normalisation, ``C`` the covariance of the shipped photos' centred patches at each octave (its null directions
  left out, scaled to unit root-mean-square gain); ``power=0`` is the preset's term;
* ``joint-mmd``: each native patch joined with the patch one octave down at the same place (both normalised,
  54 values; widths scaled by sqrt 2), so the kernel sees how structure at two scales goes together;
* ``relu-mmd``: random ReLU features ``ReLU(w . p)`` (``w`` standard Gaussian; the arc-cosine kernel of the
  random-network reading, docs/method.md §4), with ``depth - 1`` more random 1x1 ReLU layers;
* ``vgg-mmd``: a random VGG16's unit-normalised features at ``relu1_2``, ``relu2_2``, ``relu3_3`` (He filters,
  seed 0), windowed means compared (the MMD under the linear kernel of the network's features).

``fresh-features[:KEY=VALUE,...]`` is the preset (with those options) drawing new random features at every
training step. Options ``base_KEY=VALUE`` go to the preset's other terms, e.g. ``base_weight_mmd=199`` keeps an
MMD term of its own. The training photos and judge tiles are the suite's with the two dev human sets
(``--data``), 600 steps; each run prints its judges' scores (``--judges``, default the suite's DISTS and
LPIPS-vgg; ``lpips-alex`` is a judge with another trunk) and the lattice ratio, then the mean over the seeds. A
deep baseline as the loss (``lpips-vgg``, ``lpips-alex``, ``dists``) reads its published weights from
``--weights``.
Weights were set as the docs say (the term's value on blur σ 1 px of 64² crops of the shipped photos equal to
the preset's MMD term's, or to its Local term's for a term that replaces Local; ``--calibrate [--against
local]`` prints them), except where a row says otherwise.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from patchmmd.core.mmdpp import mmdpp
from patchmmd.data import sample_image, sample_names
from patchmmd.data.distortions import gaussian_blur
from patchmmd.evaluation import suite as S
from patchmmd.metrics.trunks import IMAGENET_MEAN, IMAGENET_STD, vgg16_taps
from patchmmd.metrics.weights import folder_options
from patchmmd.tasks._common import TrainingDiverged, deterministic
from patchmmd.tasks.data import Split
from patchmmd.tasks.superres import degrade
from patchmmd.theory.cnn import vgg16_random_weights

FEATURES, FLOOR, LEVELS, WINDOW = 128, 0.01, 2, 16  # the preset's, on the [0, 1] scale
#: (level, x, y, generator) -> the two images' features at that level
Features = Callable[[int, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _centred_patches(x: torch.Tensor, p: int = 3) -> torch.Tensor:
    n, c, h, w = x.shape
    u = F.unfold(x, p).view(n, c, p * p, -1)
    u = u - u.mean(2, keepdim=True)
    return u.reshape(n, c * p * p, h - p + 1, w - p + 1)


def _normalised(p: torch.Tensor, floor: float = FLOOR) -> torch.Tensor:
    return p / (p.pow(2).sum(1, keepdim=True) + floor * floor * p.shape[1]).sqrt()


def _cosine(px: torch.Tensor, py: torch.Tensor, features: int, sigma: list[float],
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Fourier features ``cos(w . p + b)`` of two patch images, ``features // len(sigma)`` for each
    Gaussian width (``w`` Gaussian with standard deviation ``1 / width``, ``b`` uniform phases)."""
    w = torch.cat([torch.randn(features // len(sigma), px.shape[1], generator=g) / s for s in sigma]).to(px)
    b = (torch.rand(w.shape[0], generator=g) * 2 * torch.pi).to(px)
    return (torch.cos(torch.einsum("ndhw,kd->nkhw", px, w) + b[:, None, None]),
            torch.cos(torch.einsum("ndhw,kd->nkhw", py, w) + b[:, None, None]))


def _per_window(fx: torch.Tensor, fy: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """``‖mean_w fx − mean_w fy‖²`` of each window ``w`` of ``window`` px every ``window / 2``: ``(N, h, w)``."""
    wd = min(window, fx.shape[-1])
    mx = F.avg_pool2d(fx, wd, stride=max(wd // 2, 1))
    my = F.avg_pool2d(fy, wd, stride=max(wd // 2, 1))
    return (mx - my).pow(2).sum(1)


def _window_distance(fx: torch.Tensor, fy: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """``‖mean_w fx − mean_w fy‖²`` over windows ``w`` of ``window`` px every ``window / 2``, averaged."""
    return _per_window(fx, fy, window).mean((1, 2))


def _window_mmd(fx: torch.Tensor, fy: torch.Tensor, window: int = WINDOW, root: float | None = None) -> torch.Tensor:
    """The windowed MMD² of ``D`` random features ``fx``, ``fy``: the window distance times ``2 / D``; with
    ``root`` the windows' MMD itself, ``sqrt(MMD² + root²) − root``, averaged (an L1 over the windows)."""
    if root is None:
        return _window_distance(fx, fy, window) * (2.0 / fx.shape[1])
    mmd2 = _per_window(fx, fy, window) * (2.0 / fx.shape[1])
    return ((mmd2 + root * root).sqrt() - root).mean((1, 2))


def _octaves(x: torch.Tensor, y: torch.Tensor, levels: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(level, x, y)`` for ``levels`` octaves, 2x2 box averages between them."""
    for level in range(levels):
        if level:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        yield level, x, y


def _levels(x: torch.Tensor, y: torch.Tensor, features: Features, levels: int = LEVELS,
            window: int = WINDOW, root: float | None = None) -> torch.Tensor:
    """The windowed MMD² of ``features(level, x, y, generator)`` summed over the levels (:func:`_octaves`); the
    features drawn from one generator, seed 0, level after level."""
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(())
    for level, xl, yl in _octaves(x, y, levels):
        total = total + _window_mmd(*features(level, xl, yl, g), window, root)
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


@functools.cache
def _whitener(level: int, power: float) -> torch.Tensor:
    """``C^-power`` on the centred patches' subspace, ``C`` their covariance in the shipped photos at ``level``."""
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
    return (m / (m.pow(2).sum() / int(keep.sum())).sqrt()).float()


def whitened_mmd(x: torch.Tensor, y: torch.Tensor, power: float = 0.0) -> torch.Tensor:
    def features(level: int, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        m = _whitener(level, power).to(x)
        px = _normalised(torch.einsum("ed,ndhw->nehw", m, _centred_patches(x)))
        py = _normalised(torch.einsum("ed,ndhw->nehw", m, _centred_patches(y)))
        return _cosine(px, py, FEATURES, [0.5, 1.0], g)

    return _levels(x, y, features)


def normalised_mmd(x: torch.Tensor, y: torch.Tensor, features: int = FEATURES, sigma: list[float] | None = None,
                   floor: float = FLOOR, levels: int = LEVELS, window: int = WINDOW,
                   root: float | None = None, sizes: list[int] | None = None) -> torch.Tensor:
    def term(size: int) -> torch.Tensor:
        def draw(level: int, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            px, py = _normalised(_centred_patches(x, size), floor), _normalised(_centred_patches(y, size), floor)
            return _cosine(px, py, features, sigma or [0.5, 1.0], g)

        return _levels(x, y, draw, levels, window, root)

    # several patch sizes: the mean of their terms (the MMD² under the mean of the sizes' kernels, each with
    # its own ``features`` features)
    return torch.stack([term(size) for size in sizes or [3]]).mean(0)


def _upsampled_patches(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The centred 3x3 patches of ``c`` (one octave below an ``h`` x ``w`` image of patches) at the native patch
    positions: each coarse patch repeated 2x2 and cropped so that the centres agree within half a native pixel."""
    u = F.interpolate(_centred_patches(c), scale_factor=2, mode="nearest")
    return F.pad(u, (1, w - u.shape[-1] - 1, 1, h - u.shape[-2] - 1), mode="replicate")


def joint_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    def features(level: int, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        def joint(im: torch.Tensor) -> torch.Tensor:
            fine = _centred_patches(im)
            coarse = _upsampled_patches(F.avg_pool2d(im, 2), *fine.shape[-2:])
            return torch.cat([_normalised(fine), _normalised(coarse)], 1)

        return _cosine(joint(x), joint(y), FEATURES, [0.5 * 2**0.5, 2**0.5], g)

    return _levels(x, y, features)


@functools.lru_cache(maxsize=1)
def _vgg_layers() -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """conv1_1 ... conv3_3 of a random VGG16 (He filters, seed 0), float32."""
    return [(w.float(), None if b is None else b.float()) for w, b in vgg16_random_weights(seed=0)[:7]]


def vgg_mmd(x: torch.Tensor, y: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """Windowed MMD² under the linear kernel of a random VGG16's unit-normalised features at ``relu1_2``,
    ``relu2_2`` and ``relu3_3`` (He filters of seed 0, ImageNet input normalisation as LPIPS's untrained
    baseline, ``random-vgg``, uses): the difference of the windows' mean feature vectors, summed over the taps."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(x)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(x)
    layers = [(w.to(x), None if b is None else b.to(x)) for w, b in _vgg_layers()]
    total = torch.zeros(())
    for f in vgg16_taps((torch.cat([x, y]) - mean) / std, layers):
        f = f / (f.pow(2).sum(1, keepdim=True) + 1e-10).sqrt()
        total = total + _window_distance(*f.chunk(2), window)
    return total


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 0.001) -> torch.Tensor:
    """``mean sqrt((x − y)² + eps²) − eps`` over pixels and channels (an L1 that is smooth at 0)."""
    return (((x - y).pow(2) + eps * eps).sqrt() - eps).mean((1, 2, 3))


def aligned_normalised(x: torch.Tensor, y: torch.Tensor, floor: float = FLOOR, levels: int = LEVELS) -> torch.Tensor:
    """``mean_u ‖p̂_u(x) − p̂_u(y)‖²`` of the contrast-normalised 3x3 patches at the same place ``u`` (LPIPS's
    position-by-position comparison of unit-normalised features, on patches), summed over ``levels`` octaves."""
    total = torch.zeros(())
    for _, xl, yl in _octaves(x, y, levels):
        px, py = _normalised(_centred_patches(xl), floor), _normalised(_centred_patches(yl), floor)
        total = total + (px - py).pow(2).sum(1).mean((1, 2))
    return total


def _windows(p: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """The values of ``p`` ``(N, D, h, w)`` in each window of ``window`` px every ``window / 2`` (the windows of
    :func:`_per_window`): ``(N, windows, window², D)``."""
    wd = min(window, p.shape[-1])
    u = p.unfold(2, wd, max(wd // 2, 1)).unfold(3, wd, max(wd // 2, 1))  # (N, D, nh, nw, wd, wd)
    n, d, nh, nw = u.shape[:4]
    return u.permute(0, 2, 3, 4, 5, 1).reshape(n, nh * nw, wd * wd, d)


def energy_mmd(x: torch.Tensor, y: torch.Tensor, floor: float = FLOOR, levels: int = LEVELS, window: int = WINDOW,
               eps: float = 1e-3) -> torch.Tensor:
    """The energy distance ``2 E‖p − q‖ − E‖p − p'‖ − E‖q − q'‖`` between the contrast-normalised 3x3 patches
    ``p`` of ``x`` and ``q`` of ``y`` in each window of ``window`` px every ``window / 2`` (all pairs, exact),
    averaged over the windows and summed over ``levels`` octaves: the MMD under the distance kernel
    ``−‖p − q‖``, whose gradient does not fade with the distance between patches as a Gaussian's does
    (``sqrt(d² + eps²)`` for a finite gradient at ``d = 0``)."""
    def mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2) - 2 * a @ b.transpose(-1, -2))
        return (d2.clamp_min(0) + eps * eps).sqrt().mean((-1, -2)) - eps

    total = torch.zeros(())
    for _, xl, yl in _octaves(x, y, levels):
        px = _windows(_normalised(_centred_patches(xl), floor), window)
        py = _windows(_normalised(_centred_patches(yl), floor), window)
        e = 2 * mean_distance(px, py) - mean_distance(px, px) - mean_distance(py, py)
        total = total + e.mean(1)
    return total


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = FEATURES, seed: int = 0,
                       floor: float = FLOOR, levels: int = LEVELS, window: int = WINDOW) -> torch.Tensor:
    """The sliced Wasserstein distance (squared W2) between the contrast-normalised 3x3 patches of ``x`` and of
    ``y`` in each window of ``window`` px every ``window / 2``: the patches projected on ``projections`` random
    unit directions, each direction's projections sorted in each image, the mean squared difference of the
    sorted values (the squared 1-D W2 distance, averaged over the directions), averaged over the windows and
    summed over ``levels`` octaves. The directions are drawn once from a generator seeded ``seed``, level after
    level (as :func:`_levels` draws the features); the gradient goes through the sort."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(())
    for _, xl, yl in _octaves(x, y, levels):
        px, py = _normalised(_centred_patches(xl), floor), _normalised(_centred_patches(yl), floor)
        u = torch.randn(projections, px.shape[1], generator=g).to(px)
        u = u / u.norm(dim=1, keepdim=True)
        # (N, windows, K, patches): each window's projections, sorted along the last, contiguous dimension
        sx = (u @ _windows(px, window).transpose(-1, -2)).sort(-1).values
        sy = (u @ _windows(py, window).transpose(-1, -2)).sort(-1).values
        total = total + (sx - sy).pow(2).mean((1, 2, 3))
    return total


def laplacian_l1(x: torch.Tensor, y: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """The Laplacian-pyramid L1 (Bojanowski et al. 2018, "Lap1"): ``Σ_j mean |L_j(x) − L_j(y)|`` over the
    band-pass levels ``L_j = G_j − up(G_{j+1})`` of a pyramid of 2x2 box averages ``G_j`` (bilinear ``up``) and
    its coarsest level, each level's mean over its own pixels (so every octave counts alike)."""
    total = torch.zeros(())
    d = x - y  # the pyramid is linear: the pyramid of the difference is the difference of the pyramids
    for _ in range(levels - 1):
        low = F.avg_pool2d(d, 2)
        band = d - F.interpolate(low, size=d.shape[-2:], mode="bilinear", align_corners=False)
        total = total + band.abs().mean((1, 2, 3))
        d = low
    return total + d.abs().mean((1, 2, 3))


TERMS = {"aligned-normalised": aligned_normalised, "charbonnier": charbonnier, "laplacian-l1": laplacian_l1,
         "energy-mmd": energy_mmd, "sliced-wasserstein": sliced_wasserstein,
         "normalised-mmd": normalised_mmd,
         "whitened-mmd": whitened_mmd, "joint-mmd": joint_mmd, "relu-mmd": relu_mmd, "vgg-mmd": vgg_mmd}


def _fresh_features(options: dict[str, Any]) -> Any:
    """The training preset (with ``options``) whose random features are drawn anew at every call (``seed`` 1, 2,
    3, ...): over the training the MMD term is then an unbiased estimate of the exact kernel's at every step."""
    seeds = itertools.count(1)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmdpp(x, y, preset="loss", out_of_range="ignore", seed=next(seeds), **options).mean()

    return loss


def make_loss(spec: str, weights: Path | None = None) -> Any:
    """A suite candidate (a deep baseline, ``lpips-vgg`` etc., with the published weights in ``weights``), or the
    preset with ``weight_mmd=0`` (and any ``base_KEY=VALUE`` options of that preset) plus ``weight`` times one of
    ``TERMS`` with the spec's other options."""
    name, options = S.parse_candidate(spec)
    if name == "fresh-features":
        return _fresh_features(options)
    if name in S.WEIGHT_FILES and weights is not None:
        options = {**folder_options(name, weights), **options}
    if name not in TERMS:
        return S._make_loss(name, options)
    if "weight" not in options:
        raise ValueError(f"{name} needs weight=W, the term's weight (--calibrate prints the rule's)")
    weight = float(options.pop("weight"))
    base_options = {"weight_mmd": 0.0, "num_scales": LEVELS}
    base_options.update({k[len("base_"):]: options.pop(k) for k in list(options) if k.startswith("base_")})
    if isinstance(base_options.get("sigma"), list):
        base_options["sigma"] = tuple(base_options["sigma"])
    term = TERMS[name]

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        base = mmdpp(x, y, preset="loss", out_of_range="ignore", **base_options)
        return (base + weight * term(x, y, **options)).mean()

    return loss


def _term(spec: str) -> tuple[str, dict[str, Any]]:
    """The term of ``TERMS`` that ``spec`` names and its own options (``weight`` and ``base_*`` left out)."""
    name, options = S.parse_candidate(spec)
    if name not in TERMS:
        raise ValueError(f"not one of the script's terms ({', '.join(TERMS)})")
    return name, {k: v for k, v in options.items() if k != "weight" and not k.startswith("base_")}


def check_variant(spec: str, weights: Path | None, calibrating: bool = False) -> None:
    """Build ``spec``'s loss (with ``calibrating``, its term) and evaluate it once on two small random images, so
    that a bad name or option is refused before any training, not after the variants before it have trained.

    Raises:
        ValueError, TypeError: a bad spec, name or option; OSError: a missing weight file.
    """
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 2, 3, 64, 64, generator=g)
    with torch.no_grad():
        if calibrating:
            name, options = _term(spec)
            TERMS[name](x, y, **options)
        else:
            make_loss(spec, weights)(x, y)


def calibrate(variants: list[str], against: str = "mmd") -> None:
    """Print each variant's weight by the docs' rule: 8 random 64² crops of each shipped photo (seed 0) against
    their blur (σ 1 px); the value there of the preset's MMD term (``against="mmd"``) or Local term
    (``"local"``): the median of the preset minus the median of the preset without it, divided by the median
    of the variant's term."""
    g = torch.Generator().manual_seed(0)
    crops = []
    for name in sample_names():
        im = sample_image(name)
        for _ in range(8):
            h, w = im.shape[-2:]
            i = int(torch.randint(0, h - 64, (1,), generator=g))
            j = int(torch.randint(0, w - 64, (1,), generator=g))
            crops.append(im[..., i:i + 64, j:j + 64].reshape(3, 64, 64))
    x = torch.stack(crops)
    blur = gaussian_blur(x, 1.0)

    def median(**options: Any) -> float:
        return float(mmdpp(x, blur, preset="loss", out_of_range="ignore", **options).median())

    ref = median() - median(**{f"weight_{against}": 0.0})
    print(f"the preset's {against} term on blur σ 1 px: {ref:.4f}")
    for spec in variants:
        name, options = _term(spec)
        value = float(TERMS[name](x, blur, **options).median())
        print(f"{spec}: term {value:.6g}, weight {ref / value:.0f}")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return seeds


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--weights", type=Path, help="folder of shared/tools/published_weights.py (for the judges)")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                    help="folder of live-dev and csiq-dev (default: shared/data next to the repository)")
    ap.add_argument("--seeds", type=_seeds, default="0,1,2", help="training seeds, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--judges", default=",".join(S.JUDGES),
                    help=f"judges of the outputs, comma-separated among {', '.join(S.WEIGHT_FILES)} "
                         f"(default: the suite's, {','.join(S.JUDGES)})")
    ap.add_argument("--calibrate", action="store_true", help="print each variant's weight by the rule; no training")
    ap.add_argument("--against", choices=("mmd", "local"), default="mmd",
                    help="the preset's term whose value --calibrate matches (default: the MMD term)")
    return ap


def main() -> None:
    ap = build_parser()
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    if not args.calibrate and args.weights is None:
        ap.error("--weights is needed to judge the outputs")
    names = [j for j in args.judges.split(",") if j]
    if not names or any(j not in S.WEIGHT_FILES for j in names):
        ap.error(f"--judges: choose among {', '.join(S.WEIGHT_FILES)}")
    # every variant is checked before the first one trains: a typo in the last would otherwise end the run there
    for spec in args.variants:
        try:
            check_variant(spec, args.weights, args.calibrate)
        except OSError as e:
            raise SystemExit(f"variant {spec!r}: {e}") from None
        except (TypeError, ValueError) as e:
            ap.error(f"variant {spec!r}: {e}")
    if args.calibrate:
        calibrate(args.variants, args.against)
        return
    labels = [args.data / name / "labels.csv" for name in ("live-dev", "csiq-dev")]
    missing = [str(p) for p in labels if not p.is_file()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)} (--data: the folder of live-dev and csiq-dev)")
    try:
        judges = {j: S._build(S.SuiteMetric(j, j, folder_options(j, args.weights), "baseline")) for j in names}
    except OSError as e:
        raise SystemExit(str(e)) from None
    cfg = S.SuiteConfig(seed=0, task_seeds=1)
    refs: list[torch.Tensor] = []
    for name, path in zip(("live-dev", "csiq-dev"), labels, strict=True):
        refs += S.reference_images(S.open_human_set(S.HumanSet(name, path)), name)[0]
    train, tiles = S.task_photos([sample_image(n) for n in sample_names()], [], refs, cfg)
    split, lr_tiles = Split(train, tiles, cfg.sr_crop), degrade(tiles, 4)
    for spec in args.variants:
        t0, runs = time.perf_counter(), []
        for seed in args.seeds:
            loss = make_loss(spec, args.weights)
            try:
                with deterministic(seed):
                    _, numbers = S.sr_task(loss, seed, split, lr_tiles, tiles, judges, cfg)
            except TrainingDiverged as e:  # as the suite: no mean over the other runs, and the next variant goes on
                print(spec, seed, f"DIVERGED: {e}", flush=True)
                print("MEAN", spec, "none: a run diverged", flush=True)
                break
            runs.append(numbers)
            print(spec, seed, json.dumps(numbers), f"{time.perf_counter() - t0:.0f}s", flush=True)
        else:
            mean = {k: round(sum(r[k] for r in runs) / len(runs), 4) for k in runs[0]}
            print("MEAN", spec, json.dumps(mean), flush=True)


if __name__ == "__main__":
    main()
