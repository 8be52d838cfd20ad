"""The dev benchmark: one run that produces the evidence for choosing the default perceptual distance.

:func:`run_suite` evaluates *candidates* (registry metrics with options, e.g. ``mmdpp`` or
``mmdpp:preset=followup``) next to the *baselines* (``l2``, ``ssim``, and with published weights
``lpips-vgg``, ``lpips-alex``, ``dists``) in three parts; :func:`write_suite` writes ``report.md``,
``report.json`` and figures. ``patchmmd eval suite`` (:mod:`patchmmd.cli.evaluate`) is the command.

1. **Human** (:func:`patchmmd.evaluation.run`): per MOS/DMOS set, SROCC/KROCC/PLCC with bootstrap intervals,
   overall and per distortion.
2. **Shift** (:mod:`.shift`): per photo, what a 1 px, 1 px diagonal, 2 px and half-pixel translation counts
   relative to the mildest visible distortion (noise σ 0.03, blur σ 1); median and max over photos.
3. **Tasks** with each metric as a training loss (:mod:`patchmmd.tasks`): SR ×4, the autoencoder and the
   generalized image mean, judged on held-out tiles by DISTS and LPIPS-vgg with the published weights, plus
   PSNR, SSIM, the sharpness ratio and, for SR, the 4x4 lattice ratio (:mod:`.artifacts`).

The checks a candidate must pass (:data:`CHECKS`) are evaluated and marked pass / fail / not judged (a
missing input, e.g. no weights). Everything is seeded: the same call gives the same numbers.

Example (the shape of a run; the real one reads files):
    >>> cfg = SuiteConfig.quick_config()
    >>> cfg.sr_steps, cfg.quick
    (3, True)
    >>> parse_candidate("mmdpp:num_scales=3,scale_weights=[1, 2, 1]")
    ('mmdpp', {'num_scales': 3, 'scale_weights': [1, 2, 1]})
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.validation import check_positive_float, check_positive_int
from ..io import output_file
from ..metrics.weights import WEIGHT_FOLDER, file_stamps, folder_options
from .artifacts import lattice_ratio
from .report import json_text
from .runner import CacheMismatchError
from .runner import versions as _versions
from .shift import MIN_SIZE, SHIFTS, ratios, shift_distances
from .suite_cache import SuiteCache, entry_name, tensor_digest

if TYPE_CHECKING:
    from ..tasks.data import Split
    from ..tasks.losses import Loss
    from .datasets import MOSDataset

__all__ = [
    "CHECKS",
    "DEEP_BASELINES",
    "WEIGHT_FILES",
    "HumanSet",
    "SuiteConfig",
    "SuiteMetric",
    "SuiteResult",
    "candidate_metrics",
    "judge_tiles",
    "open_human_set",
    "parse_candidate",
    "reference_images",
    "remove_suite_outputs",
    "run_suite",
    "sr_task",
    "task_photos",
    "weight_folder_options",
    "write_suite",
]

#: The deep baselines and the files of the ``weights`` folder each needs (``backbone``, ``weights``;
#: :data:`patchmmd.metrics.weights.WEIGHT_FOLDER`).
WEIGHT_FILES: dict[str, tuple[str, str]] = {
    name: (files["backbone"], files["weights"]) for name, files in WEIGHT_FOLDER.items() if "backbone" in files
}
DEEP_BASELINES: tuple[str, ...] = tuple(WEIGHT_FILES)
#: The judges of the tasks (deep metrics with the published weights).
JUDGES: tuple[str, ...] = ("dists", "lpips-vgg")

#: The must-hold checks, by key: what each says (the thresholds are in the text).
CHECKS: dict[str, str] = {
    "human-live": "SROCC ≥ 0.96 on the LIVE scenes (every human set whose name contains 'live')",
    "human-csiq": "SROCC ≥ the best deep metric's on the second database (every set whose name contains 'csiq')",
    "shift": "a 1 px shift (horizontal and diagonal, median over photos) counts ≤ 0.15× the mildest "
             "visible distortion (noise σ 0.03 / blur σ 1)",
    "sr-vs-l2": "SR ×4 trained with it beats the L2-trained network under DISTS",
    "sr-vs-lpips": "SR ×4 trained with it is within 5 % of the LPIPS-vgg-trained network under DISTS",
    "sr-lattice": "no periodic artifact: 4x4 lattice power of its SR outputs ≤ 2× the truth's",
    "ae-vs-l2": "the autoencoder is sharper than L2's and closer under DISTS",
    "gim-vs-l2": "the generalized image mean is sharper than L2's and closer under DISTS",
}


# ------------------------------------------------------------------------------------------------ config
#: The window of the ssim loss (``patchmmd.tasks.losses``), a baseline every task trains with: no training crop
#: may be smaller.
_SSIM_WINDOW = 11


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes and seeds of a suite run. The defaults are the full suite (SR as in docs/evaluation.md);
    :meth:`quick_config` is the smoke version CI runs (every part end to end, tiny sizes, one candidate)."""

    quick: bool = False
    seed: int = 0
    bootstrap: int = 1000
    human_limit: int | None = None  # rows per human set (None: all)
    shift_size: int = 256  # photos centre-cropped to at most this for the shift check
    tile: int = 128  # side of the held-out judge tiles
    # judge tiles per photo where they come from the training photos (no human set) or from a reference too small
    # to halve; a reference's right half gives every tile it holds (report.json's tiles.n counts them)
    tiles_per_image: int = 4
    sr_steps: int = 600
    sr_batch: int = 8
    sr_crop: int = 64
    sr_lr: float = 1e-3
    ae_steps: int = 600
    ae_batch: int = 8
    ae_crop: int = 64
    ae_lr: float = 2e-3
    gim_steps: int = 100
    gim_size: int = 64
    gim_shifts: int = 4
    gim_max_shift: int = 3
    gim_lr: float = 0.02
    dists_loss: bool = False  # train with DISTS too (costly on CPU: off by default)
    task_seeds: int = 1  # SR and autoencoder: train with seeds seed, seed + 1, ...; report the mean and each run

    def __post_init__(self) -> None:
        """Check every size up front: a size the tasks cannot take failed only when its task started, after the
        human part and the shift check had run (without a cache, their work was lost).

        Raises:
            ValueError: a count or size that is not a positive integer, a learning rate that is not a positive
                number, a shift crop under :data:`~.shift.MIN_SIZE`, judge tiles that are not a multiple of 8 (the
                SR x4 network and the autoencoder), an SR crop not a multiple of 4 or an autoencoder crop not a
                multiple of 8, or a training crop (SR, autoencoder, image mean) under the ssim loss's window.
        """
        for name in ("task_seeds", "tile", "tiles_per_image", "sr_steps", "sr_batch", "ae_steps", "ae_batch",
                     "gim_steps"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        for name in ("bootstrap", "gim_shifts", "gim_max_shift"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name), minimum=0))
        if self.human_limit is not None:
            object.__setattr__(self, "human_limit", check_positive_int("human_limit", self.human_limit))
        for name in ("sr_lr", "ae_lr", "gim_lr"):
            object.__setattr__(self, name, check_positive_float(name, getattr(self, name)))
        object.__setattr__(self, "shift_size", check_positive_int("shift_size", self.shift_size, minimum=MIN_SIZE))
        for name, multiple in (("tile", 8), ("sr_crop", 4), ("ae_crop", 8)):
            value = check_positive_int(name, getattr(self, name))
            if value % multiple:
                raise ValueError(f"{name} must be a multiple of {multiple}, got {value}")
        for name in ("sr_crop", "ae_crop", "gim_size"):
            check_positive_int(name, getattr(self, name), minimum=_SSIM_WINDOW)

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The seeds of the SR and autoencoder runs (the first one's outputs are the figures)."""
        return tuple(range(self.seed, self.seed + self.task_seeds))

    @classmethod
    def quick_config(cls, seed: int = 0, **changes: Any) -> SuiteConfig:
        """The smoke-test sizes: a few steps on small crops, 20 bootstrap resamples, 8 rows per human set."""
        base = cls(quick=True, seed=seed, bootstrap=20, human_limit=8, shift_size=48, tile=64, tiles_per_image=1,
                   sr_steps=3, sr_batch=2, sr_crop=32, ae_steps=3, ae_batch=2, ae_crop=32, gim_steps=3,
                   gim_size=32, gim_shifts=2, gim_max_shift=2)
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class HumanSet:
    """A MOS/DMOS label file (:class:`patchmmd.evaluation.MOSDataset`) and the name it is reported under.

    ``higher_is_better``: the scores are qualities (MOS: higher = better) rather than badnesses (DMOS, the
    default); they are then negated before the correlations, so that every set's SROCC reads alike.
    """

    name: str
    labels: Path
    higher_is_better: bool = False


@dataclass
class SuiteMetric:
    """A metric of the suite: its label (``mmdpp:preset=followup``), registry name, options and role."""

    label: str
    name: str
    options: dict[str, Any]
    role: str  # "candidate" or "baseline"
    higher_is_better: bool = False
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def metric(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The built metric (after :func:`run_suite` built it)."""
        if self.fn is None:
            raise RuntimeError(f"metric {self.label!r} is not built")
        return self.fn

    def describe(self) -> dict[str, Any]:
        """What the metric's results depend on (stored with cached results): label, name, options and the files
        they name (:func:`~patchmmd.metrics.weights.file_stamps`)."""
        out = {"label": self.label, "name": self.name, "options": {k: str(v) for k, v in self.options.items()}}
        files = file_stamps(self.options)
        return {**out, "files": files} if files else out

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The metric as a distance (similarities ``s`` become ``1 - s``), no gradients: ``(N,)``."""
        with torch.no_grad():
            v = torch.as_tensor(self.metric(x, y)).detach().double().reshape(-1)
        return 1.0 - v if self.higher_is_better else v


@dataclass
class SuiteResult:
    """What :func:`run_suite` computed: ``data`` is report.json; ``figures`` the images for the figures."""

    data: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets (option values may be lists).

    Raises:
        ValueError: unbalanced brackets (a stray ``]`` used to stop the splitting: the options after it were read
            as part of its value).
    """
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {text!r}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced brackets in {text!r}")
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_candidate(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` into the registry name and its options (values parsed as the CLI does).

    Raises:
        ValueError: an empty name, an option without ``=`` or unbalanced brackets.
    """
    from ..metrics.registry import parse_options

    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"candidate {spec!r} has no metric name")
    try:
        items = _split_top(rest)
    except ValueError as e:
        raise ValueError(f"candidate {spec!r}: {e}") from None
    try:
        options = parse_options(items)
    except ValueError as e:
        raise ValueError(f"candidate {spec!r}: {e}") from None
    return name, options


# --------------------------------------------------------------------------------------------- building
def candidate_metrics(candidates: Sequence[str]) -> list[SuiteMetric]:
    """The candidates ``NAME[:KEY=VALUE,...]``, parsed and built, each checked to be a training loss (a
    differentiable distance): what :func:`run_suite` refuses of them before any work, and what a front end can
    check before it touches an output folder.

    Raises:
        ValueError: a bad spec, an unknown metric, an option its factory refuses, or a metric that cannot be a
            training loss (the message starts with the candidate's spec).
    """
    out = []
    for spec in candidates:
        name, options = parse_candidate(spec)
        m = SuiteMetric(spec, name, options, "candidate")
        try:
            _build(m)
            _check_trainable(m.name)  # each candidate is trained with: refused now, not after the human part
        except (TypeError, ValueError) as e:
            raise ValueError(f"{m.label}: {e}") from e
        out.append(m)
    return out


def weight_folder_options(weights: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """The options of each deep baseline (:data:`DEEP_BASELINES`) from a ``weights`` folder.

    Raises:
        WeightsFileNotFoundError: a file of the layout is missing (a ``FileNotFoundError`` naming it).
    """
    return {name: folder_options(name, weights) for name in DEEP_BASELINES}


def _build(m: SuiteMetric) -> SuiteMetric:
    from ..metrics.registry import get_spec

    spec = get_spec(m.name)
    m.higher_is_better = spec.higher_is_better
    m.fn = spec.factory(**m.options)
    return m


def _make_loss(name: str, options: Mapping[str, Any]) -> Loss:
    """:func:`patchmmd.tasks.losses.make_loss`; a registry distance it does not list yet (the deep baselines)
    becomes the distance averaged over the batch, as make_loss does for the others."""
    from ..metrics.registry import get_spec
    from ..tasks.losses import LOSS_NAMES, make_loss

    if name in LOSS_NAMES:
        return make_loss(name, **options)
    _check_trainable(name)
    metric = get_spec(name).factory(**options)
    return lambda x, y: metric(x, y).mean()


def _check_trainable(name: str) -> None:
    """``ValueError`` unless the metric ``name`` can be a training loss (a differentiable distance)."""
    from ..metrics.registry import get_spec

    spec = get_spec(name)
    if not spec.differentiable or spec.higher_is_better:
        raise ValueError(f"metric {name!r} cannot be a training loss (not a differentiable distance)")


def judge_tiles(images: Sequence[torch.Tensor], tile: int, per_image: int) -> torch.Tensor:
    """``per_image`` tiles of ``tile x tile`` per image, evenly spaced along its diagonal: ``(M, C, t, t)``.

    Example:
        >>> judge_tiles([torch.rand(3, 40, 60)], 20, 3).shape
        torch.Size([3, 3, 20, 20])
    """
    out = []
    for img in images:
        h, w = img.shape[-2:]
        if min(h, w) < tile:
            continue
        for k in range(per_image):
            f = k / (per_image - 1) if per_image > 1 else 0.5
            top, left = round(f * (h - tile)), round(f * (w - tile))
            out.append(img[:, top : top + tile, left : left + tile])
    if not out:
        raise ValueError(f"no image is large enough for {tile} px judge tiles")
    return torch.stack(out)


def _center(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    s_h, s_w = min(h, size), min(w, size)
    top, left = (h - s_h) // 2, (w - s_w) // 2
    return img[:, top : top + s_h, left : left + s_w]


def _r(v: float, digits: int = 6) -> float:
    return v if not math.isfinite(v) else float(f"{v:.{digits}g}")


# ----------------------------------------------------------------------------------------------- parts
def task_photos(samples: Sequence[torch.Tensor], train_photos: Sequence[torch.Tensor],
                refs: Sequence[torch.Tensor], cfg: SuiteConfig) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The training tasks' photos and judge tiles: the package's samples and ``train_photos`` train; with human
    sets' reference images ``refs``, their left halves train too and the judge tiles come from their right halves
    (references too small to halve give judge tiles only); without, the tiles are held-out strips of the training
    photos."""
    from ..tasks.data import split_photos

    train = [*samples, *train_photos]
    if not refs:
        split = split_photos(train, cfg.tile, max_tiles=len(train) * cfg.tiles_per_image)
        return split.train, split.heldout
    parts = []
    for ref in refs:
        if min(ref.shape[-2], ref.shape[-1] // 2) >= cfg.tile:
            half = split_photos([ref], cfg.tile, holdout=0.5)
            train += half.train
            parts.append(half.heldout)
        elif min(ref.shape[-2:]) >= cfg.tile:
            parts.append(judge_tiles([ref], cfg.tile, cfg.tiles_per_image))
    if not parts:
        raise ValueError(f"no reference image is large enough for {cfg.tile} px judge tiles")
    return train, torch.cat(parts)


def open_human_set(hs: HumanSet) -> MOSDataset:
    """The set's labels as a :class:`MOSDataset`, grouped by its ``distortion`` column where it has one (found as
    ``patchmmd eval mos`` finds it: :func:`~.datasets.distortion_column`)."""
    from .datasets import MOSDataset, distortion_column

    return MOSDataset(hs.labels, group_column=distortion_column(hs.labels))


def reference_images(ds: MOSDataset, set_name: str) -> tuple[list[torch.Tensor], list[str]]:
    """The set's reference images, each once, in the order of its rows, and their names ``set/stem``."""
    from ..io import load_image

    names = list(dict.fromkeys(ds.references))
    return [load_image(ds.root / ref, mode=ds.mode) for ref in names], [f"{set_name}/{Path(r).stem}" for r in names]


def _human(sets: Sequence[HumanSet], metrics: Sequence[SuiteMetric], cfg: SuiteConfig,
           log: Callable[[str], None], cache: SuiteCache | None
           ) -> tuple[dict[str, Any], list[torch.Tensor], list[str]]:
    """Part 1; also returns the sets' reference images (for the shift check and the judge tiles). With
    ``cache``, each metric's values on a set are kept in (and read back from) the runner's cache; the runner's
    settings do not hold the versions of patchmmd and PyTorch, so a stamp entry per set does (values computed by
    other versions are refused, as the other parts' are)."""
    from .runner import EvalMetric, Progress, run

    def progress(p: Progress) -> None:
        if p.cached is not None and cache is not None:
            cache.reused += 1
            log(f"human: {p.metric} reused from {p.cached}")

    out: dict[str, Any] = {}
    refs: list[torch.Tensor] = []
    ref_names: list[str] = []
    for hs in sets:
        folder = None
        if cache is not None:
            folder = cache.folder / entry_name("human", hs.name)
            _human_stamp(cache, hs.name, folder)
        ds = open_human_set(hs)
        images, names = reference_images(ds, hs.name)
        refs += images
        ref_names += names
        t0 = time.perf_counter()
        ems = [EvalMetric(m.label, m.metric, m.higher_is_better, m.role, dict(m.options)) for m in metrics]
        log(f"human {hs.name}: {len(ems)} metrics on {cfg.human_limit or len(ds)} rows")
        res = run(ds, ems, bootstrap=cfg.bootstrap, seed=cfg.seed, limit=cfg.human_limit, batch_size=4,
                  score_higher_is_better=hs.higher_is_better,
                  cache=folder, progress=progress)
        out[hs.name] = {
            "labels": str(hs.labels), "n_rows": res.n, "n_scored": len(res.scored),
            "group_column": ds.group_column, "score_column": ds.score_column,
            "score_higher_is_better": hs.higher_is_better,
            "metrics": {k: {g: v for g, v in st.items() if g not in ("higher_is_better", "group")}
                        for k, st in res.metrics.items()},
            # every checked row right (a row that is not an identical pair has nothing to check: ok None)
            "unscored_ok": {k: all(c["ok"] is not False for c in v) for k, v in res.unscored.items()},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out, refs, ref_names


def _human_stamp(cache: SuiteCache, set_name: str, folder: Path) -> None:
    """Check (or, the first time, write) the versions the human set's cached values (the runner's, in
    ``folder``) were computed with.

    Raises:
        CacheMismatchError: they were computed with other versions of patchmmd or PyTorch, or ``folder`` holds
            values but no readable stamp says with which (a stamp removed or damaged, a cache of a version that
            wrote none): the stamp written now would vouch for them.
    """
    name, settings = entry_name("human", set_name, "versions"), {"part": "human", "set": set_name, **_versions()}
    if cache.get(name, settings, count=False) is not None:  # a stamp is no piece of work: it is not counted as reused
        return
    if folder.is_dir() and any(folder.glob("*.json")):
        raise CacheMismatchError(f"{folder} holds values of the human set {set_name!r} but no readable record of the "
                                 f"versions of patchmmd and PyTorch they were computed with ({name}.json)", folder,
                                 {})
    cache.put(name, settings, {})


def _shift(photos: Sequence[torch.Tensor], names: Sequence[str], metrics: Sequence[SuiteMetric], cfg: SuiteConfig,
           log: Callable[[str], None], cache: SuiteCache | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    names = _unique_names(names)  # per_photo is keyed by name: a repeated one would drop a photo from the median
    crops = [_center(p, cfg.shift_size) for p in photos]
    out: dict[str, Any] = {"photos": names, "size": cfg.shift_size, "metrics": {}}
    inputs = {"part": "shift", "photos": list(names), "photos_sha256": tensor_digest(crops), "seed": cfg.seed,
              **_versions()}
    for m in metrics:
        entry, settings = entry_name("shift", m.label), {**inputs, "metric": m.describe()}
        hit = None if cache is None else cache.get(entry, settings)
        if hit is not None:
            log(f"shift: {m.label} reused from the cache ({entry})")
            out["metrics"][m.label] = hit[0]
            continue
        log(f"shift: {m.label} on {len(crops)} photos")
        per_photo: dict[str, dict[str, float]] = {}
        for i, (name, img) in enumerate(zip(names, crops, strict=True)):
            d = shift_distances(m.distance, img, seed=cfg.seed + i)
            per_photo[name] = {**{k: _r(v) for k, v in ratios(d).items()},
                               "d_noise": _r(d["noise"]), "d_blur": _r(d["blur"])}
        out["metrics"][m.label] = {
            "median": {k: _r(_over_photos(statistics.median, [p[k] for p in per_photo.values()])) for k in SHIFTS},
            "max": {k: _r(_over_photos(max, [p[k] for p in per_photo.values()])) for k in SHIFTS},
            "per_photo": per_photo,
        }
        if cache is not None:
            cache.put(entry, settings, out["metrics"][m.label])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with a repeated one (two references of a set with the same stem in different folders) made
    unique by `` (2)``, `` (3)``, ...; the others unchanged.

    Example:
        >>> _unique_names(["live/a", "live/b", "live/a"])
        ['live/a', 'live/b', 'live/a (2)']
    """
    out: list[str] = []
    for name in names:
        new, k = name, 2
        while new in out:
            new, k = f"{name} ({k})", k + 1
        out.append(new)
    return out


def _judge(judges: Mapping[str, SuiteMetric], x: torch.Tensor, y: torch.Tensor, chunk: int = 8) -> dict[str, float]:
    from ..tasks.report import psnr, sharpness_ratio, ssim

    x, y = x.detach().clamp(0, 1).float(), y.detach().clamp(0, 1).float()
    out = {}
    for name, j in judges.items():
        vals = torch.cat([j.distance(x[i : i + chunk], y[i : i + chunk]) for i in range(0, len(x), chunk)])
        out[name] = _r(float(vals.mean()))
    out["psnr"] = _r(float(psnr(x, y).mean()))
    out["ssim"] = _r(float(ssim(x, y).mean()))
    out["sharpness"] = _r(sharpness_ratio(x, y))
    return out


#: The held-out tiles each task keeps for its figure (and its cache entry), of every loss.
FIGURE_TILES = 3


def _task_fields(cfg: SuiteConfig, task: str) -> dict[str, Any]:
    """The :class:`SuiteConfig` fields a training task's results depend on (stored with its cache entries, so
    that a change of another task's sizes leaves its entries usable): its own (``sr_*``, ``ae_*``, ``gim_*``)
    and, for SR and the autoencoder, the judge tiles' (the seed is stored per entry).

    Example:
        >>> sorted(_task_fields(SuiteConfig(), "gim"))
        ['gim_lr', 'gim_max_shift', 'gim_shifts', 'gim_size', 'gim_steps']
    """
    tiles = ("tile", "tiles_per_image") if task != "gim" else ()
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith(f"{task}_") or k in tiles}


def _tasks(losses: Sequence[SuiteMetric], judges: Mapping[str, SuiteMetric], train: list[torch.Tensor],
           tiles: torch.Tensor, gim_photos: Sequence[torch.Tensor], cfg: SuiteConfig,
           log: Callable[[str], None], cache: SuiteCache | None) -> tuple[dict[str, Any], dict[str, Any]]:
    from ..tasks._common import TrainingDiverged, deterministic
    from ..tasks.autoencoder import reconstruct, train_autoencoder
    from ..tasks.data import Split
    from ..tasks.gim import generalized_mean, shifted_set
    from ..tasks.superres import bicubic, degrade

    sr_split = Split(train, tiles, cfg.sr_crop)
    ae_split = Split(train, tiles, cfg.ae_crop)
    lr_tiles = degrade(tiles, 4)
    gim_sets = [shifted_set(p, cfg.gim_shifts, size=cfg.gim_size, max_shift=cfg.gim_max_shift)[0] for p in gim_photos]
    results: dict[str, Any] = {"sr": {}, "ae": {}, "gim": {}}
    figures: dict[str, Any] = {"tiles": tiles, "sr": {}, "ae": {}, "gim": {}, "gim_sets": gim_sets}

    up = bicubic(lr_tiles, 4)
    results["sr"]["bicubic (no training)"] = {**_judge(judges, up, tiles), "lattice": _r(lattice_ratio(up, tiles))}
    figures["sr"]["bicubic"] = up
    means = [ys.mean(0, keepdim=True) for ys in gim_sets]
    results["gim"]["pixel mean (no optimisation)"] = _gim_scores(judges, means, gim_sets)
    figures["gim"]["pixel mean"] = torch.cat(means)

    def sr_run(loss: Loss, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        return sr_task(loss, seed, sr_split, lr_tiles, tiles, judges, cfg)

    def ae_run(loss: Loss, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        model = train_autoencoder(ae_split, loss, steps=cfg.ae_steps, batch=cfg.ae_batch, lr=cfg.ae_lr,
                                  seed=seed).model
        out = reconstruct(model, tiles)
        return out, _judge(judges, out, tiles)

    # what each task's results depend on besides the loss and the seed: stored with each cache entry. The thread
    # count too: another one rounds the training's sums otherwise, and training amplifies that into other numbers.
    common = {"judges": {k: j.describe() for k, j in judges.items()}, "threads": torch.get_num_threads(),
              **_versions()}
    fed = {"train_sha256": tensor_digest(train), "tiles_sha256": tensor_digest([tiles])}
    inputs = {"sr": {"config": _task_fields(cfg, "sr"), **fed, **common},
              "ae": {"config": _task_fields(cfg, "ae"), **fed, **common},
              "gim": {"config": _task_fields(cfg, "gim"), "sets_sha256": tensor_digest(gim_sets), **common}}

    def kept(task: str, m: SuiteMetric, run: _Run, what: str) -> _Run:
        """``run`` with its result (or its divergence) kept in the cache, and its outputs cut to the figure's."""
        def go(loss: Loss, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
            name = entry_name(task, m.label, f"seed{seed}")
            settings = {**inputs[task], "task": task, "loss": m.describe(), "seed": seed}
            hit = None if cache is None else cache.get(name, settings)
            if hit is None:
                log(f"tasks: {what}, seed {seed}")
            else:
                log(f"tasks: {what}, seed {seed}: reused from the cache ({name})")
                numbers, out = hit
                if "diverged" in numbers:
                    raise TrainingDiverged(**numbers["diverged"])
                assert out is not None  # put() below always stores the outputs of a finished run
                return out, numbers
            t0 = time.perf_counter()
            try:
                out, numbers = run(loss, seed)
            except TrainingDiverged as e:
                if cache is not None:
                    cache.put(name, settings, {"diverged": {"step": e.step, "steps": e.steps, "what": e.what}})
                raise
            numbers = {**numbers, "seconds": round(time.perf_counter() - t0, 1)}
            out = out[:FIGURE_TILES].detach().float()
            if cache is not None:
                cache.put(name, settings, numbers, out)
            return out, numbers
        return go

    for m in losses:
        loss = _make_loss(m.name, m.options)
        for task, what, run in (("sr", f"SR x4 with {m.label} ({cfg.sr_steps} steps)", sr_run),
                                ("ae", f"autoencoder with {m.label} ({cfg.ae_steps} steps)", ae_run)):
            results[task][m.label], first = _seeded_runs(kept(task, m, run, what), loss, cfg.training_seeds, what,
                                                         log)
            if first is not None:
                figures[task][m.label] = first

        name = entry_name("gim", m.label)
        settings = {**inputs["gim"], "task": "gim", "loss": m.describe(), "seed": cfg.seed}
        hit = None if cache is None else cache.get(name, settings)
        if hit is not None:
            log(f"tasks: generalized image mean with {m.label}: reused from the cache ({name})")
            results["gim"][m.label] = hit[0]
            if hit[1] is not None:
                figures["gim"][m.label] = hit[1]
            continue
        t0 = time.perf_counter()
        log(f"tasks: generalized image mean with {m.label} ({len(gim_sets)} sets, {cfg.gim_steps} steps)")
        images = []
        try:
            for ys in gim_sets:
                with deterministic(cfg.seed):
                    images.append(generalized_mean(ys, loss, steps=cfg.gim_steps, lr=cfg.gim_lr, init="mean",
                                                   seed=cfg.seed).image)
        except TrainingDiverged as e:
            message = f"set {len(images)}: {e}"
            log(f"tasks: generalized image mean with {m.label} diverged ({message}); the suite goes on")
            results["gim"][m.label] = {"diverged": message, "seconds": round(time.perf_counter() - t0, 1)}
        else:
            results["gim"][m.label] = {**_gim_scores(judges, images, gim_sets),
                                       "seconds": round(time.perf_counter() - t0, 1)}
            figures["gim"][m.label] = torch.cat(images).detach().float()
        if cache is not None:
            cache.put(name, settings, results["gim"][m.label], figures["gim"].get(m.label))
    return results, figures


_Run = Callable[["Loss", int], tuple[torch.Tensor, dict[str, float]]]


def sr_task(loss: Loss, seed: int, split: Split, lr_tiles: torch.Tensor, tiles: torch.Tensor,
            judges: Mapping[str, SuiteMetric], cfg: SuiteConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One SR x4 run of the suite: the network trained with ``loss`` on ``split``, its outputs on ``lr_tiles``
    (the tiles degraded by 4) and their judges' scores against ``tiles`` with the lattice ratio."""
    from ..tasks.superres import train_superres, upscale

    model = train_superres(split, loss, scale=4, steps=cfg.sr_steps, batch=cfg.sr_batch, lr=cfg.sr_lr,
                           seed=seed).model
    out = upscale(model, lr_tiles)
    return out, {**_judge(judges, out, tiles), "lattice": _r(lattice_ratio(out, tiles))}


def _seeded_runs(run: Callable[[Loss, int], tuple[torch.Tensor, dict[str, float]]], loss: Loss,
                 seeds: Sequence[int], what: str,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], torch.Tensor | None]:
    """A training task once per seed: the mean of each number over the runs (with more than one run also each
    run's, under ``per_seed``) and the total seconds (a ``seconds`` in a run's numbers, as a run read from the
    cache has, is the time it took when it was computed); and the first run's outputs (for the figures).

    A run that diverges (:class:`~patchmmd.tasks._common.TrainingDiverged`) ends this loss's runs of the task:
    the result is then ``{"diverged": message, "seconds": ...}`` without numbers (a mean over the runs that did
    not diverge would hide it), the outputs ``None``, and the suite goes on with the next task."""
    from ..tasks._common import TrainingDiverged, deterministic

    first: torch.Tensor | None = None
    runs: list[dict[str, float]] = []
    spent = 0.0
    for seed in seeds:
        t0 = time.perf_counter()
        try:
            with deterministic(seed):
                out, numbers = run(loss, seed)
        except TrainingDiverged as e:
            message = f"seed {seed}: {e}"
            log(f"tasks: {what} diverged ({message}); the suite goes on")
            return {"diverged": message, "seconds": round(spent + time.perf_counter() - t0, 1)}, None
        numbers = dict(numbers)
        spent += numbers.pop("seconds", time.perf_counter() - t0)  # a run read from the cache: its own time
        first = out if first is None else first
        runs.append(numbers)
    result: dict[str, Any] = {k: _r(statistics.fmean(r[k] for r in runs)) for k in runs[0]}
    if len(runs) > 1:
        result["per_seed"] = {"seeds": list(seeds), **{k: [r[k] for r in runs] for k in runs[0]}}
    result["seconds"] = round(spent, 1)
    return result, first


def _gim_scores(judges: Mapping[str, SuiteMetric], images: Sequence[torch.Tensor],
                sets: Sequence[torch.Tensor]) -> dict[str, float]:
    """Per set, the image against every member of the set; averaged over sets (sharpness: against the set)."""
    per = [_judge(judges, x.expand_as(ys), ys) for x, ys in zip(images, sets, strict=True)]
    return {k: _r(statistics.fmean(p[k] for p in per)) for k in per[0]}


# ---------------------------------------------------------------------------------------------- checks
def _check(key: str, ok: bool | None, value: str, why: str = "") -> dict[str, Any]:
    return {"check": key, "pass": ok, "value": value, "note": why}


def _over_photos(summary: Callable[[list[float]], float], values: list[float]) -> float:
    """``summary(values)``, or NaN when a photo's value is NaN (sorting and ``max`` would drop it silently)."""
    return math.nan if any(math.isnan(v) for v in values) else summary(values)


def _checks(data: dict[str, Any], candidates: Sequence[str], deep: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    human, shift, tasks = data["human"], data["shift"], data["tasks"]
    for c in candidates:
        rows = []
        live = [n for n in human if "live" in n.lower()]
        csiq = [n for n in human if "csiq" in n.lower()]
        if not live:
            rows.append(_check("human-live", None, "–", "no human set named *live*"))
        for n in live:
            s = human[n]["metrics"][c]["all"]["srocc"]
            k = _digits(3, s, 0.96)
            rows.append(_check("human-live", bool(s >= 0.96), f"{n}: SROCC {s:.{k}f} (≥ {0.96:.{k}f})"))
        for n in csiq:
            s = human[n]["metrics"][c]["all"]["srocc"]
            got = {d: human[n]["metrics"][d]["all"]["srocc"] for d in deep if d in human[n]["metrics"]}
            if not got:
                rows.append(_check("human-csiq", None, f"{n}: SROCC {s:.3f}", "no deep metrics (no weights folder)"))
                continue
            # an undefined (NaN) SROCC is no mark to beat; max() kept a NaN in first place and dropped one later
            got = {d: v for d, v in got.items() if not math.isnan(v)}
            if not got:
                rows.append(_check("human-csiq", None, f"{n}: SROCC {s:.3f}", "no deep metric has an SROCC (NaN)"))
                continue
            best = max(got, key=lambda d: got[d])
            k = _digits(3, s, got[best])
            rows.append(_check("human-csiq", bool(s >= got[best]),
                               f"{n}: SROCC {s:.{k}f} vs {best} {got[best]:.{k}f}"))
        if not csiq:
            rows.append(_check("human-csiq", None, "–", "no human set named *csiq*"))
        med = shift["metrics"][c]["median"]
        pair = (med["shift-1px"], med["shift-1px-diag"])
        worst = math.nan if any(math.isnan(v) for v in pair) else max(pair)  # max() drops a NaN in second place
        k = max(_digits(3, v, 0.15) for v in pair)
        rows.append(_check("shift", bool(worst <= 0.15), f"1 px {pair[0]:.{k}f}, diagonal {pair[1]:.{k}f} "
                           f"(≤ {0.15:.{k}f})"))
        sr = tasks.get("sr", {})
        if c in sr and "diverged" in sr[c]:  # a loss whose training diverges fails every check of the task
            rows += [_check(k, False, "diverged", f"training diverged ({sr[c]['diverged']})")
                     for k in ("sr-vs-l2", "sr-vs-lpips", "sr-lattice")]
        elif c in sr and "dists" in sr[c]:
            d, d_l2 = sr[c]["dists"], sr.get("l2", {}).get("dists")
            k = 4 if d_l2 is None else _digits(4, d, d_l2)
            rows.append(_check("sr-vs-l2", None if d_l2 is None else bool(d < d_l2),
                               f"DISTS {d:.{k}f} vs L2 {_fmtn(d_l2, k)}{_runs(sr[c], 'dists')}", _diverged(sr, "l2")))
            d_lp = sr.get("lpips-vgg", {}).get("dists")
            bound, k = None, 4
            if d_lp is not None:  # the digits tell the value from the LPIPS-vgg loss's and from the bound
                bound = _bound(d_lp, "1.05")
                k = max(_digits(4, d, d_lp), _digits(4, d, bound))
            rows.append(_check("sr-vs-lpips", None if bound is None else bool(d <= bound),
                               f"DISTS {d:.{k}f} vs LPIPS-vgg loss {_fmtn(d_lp, k)} (≤ +5 %){_runs(sr[c], 'dists')}",
                               _diverged(sr, "lpips-vgg")))
        else:
            rows.append(_check("sr-vs-l2", None, "–", "no DISTS judge (no weights folder)"))
            rows.append(_check("sr-vs-lpips", None, "–", "no DISTS judge (no weights folder)"))
        if c in sr and "diverged" not in sr[c]:
            lat = sr[c]["lattice"]
            rows.append(_check("sr-lattice", bool(lat <= 2.0),
                               f"lattice ratio {lat:.{_digits(3, lat, 2.0)}f} (≤ 2){_runs(sr[c], 'lattice', 3)}"))
        for task in ("ae", "gim"):
            res = tasks.get(task, {})
            if c not in res or "l2" not in res:
                continue
            if "diverged" in res[c]:
                rows.append(_check(f"{task}-vs-l2", False, "diverged", f"training diverged ({res[c]['diverged']})"))
                continue
            if "diverged" in res["l2"]:
                rows.append(_check(f"{task}-vs-l2", None, "–", _diverged(res, "l2")))
                continue
            sharp, sharp_l2 = res[c]["sharpness"], res["l2"]["sharpness"]
            k = _digits(3, sharp, sharp_l2)
            text = f"sharpness {sharp:.{k}f} vs L2 {sharp_l2:.{k}f}"
            if "dists" in res[c]:
                d, d_l2 = res[c]["dists"], res["l2"]["dists"]
                k = _digits(4, d, d_l2)
                rows.append(_check(f"{task}-vs-l2", bool(sharp > sharp_l2 and d < d_l2),
                                   f"{text}; DISTS {d:.{k}f} vs L2 {d_l2:.{k}f}{_runs(res[c], 'dists')}"))
            else:
                rows.append(_check(f"{task}-vs-l2", None, text, "no DISTS judge (no weights folder)"))
        out[c] = rows
    return out


def _digits(digits: int, a: float, b: float) -> int:
    """``digits``, or more (at most 6) where ``digits`` decimals would print two different values alike: a check
    compares the values, not their rounding (an SROCC of 0.9596 read "SROCC 0.960 (≥ 0.960)" beside a fail).

    Example:
        >>> _digits(3, 0.9596, 0.96), _digits(3, 0.95, 0.96), _digits(3, 0.96, 0.96)
        (4, 3, 3)
    """
    while digits < 6 and a != b and math.isfinite(a) and math.isfinite(b) and f"{a:.{digits}f}" == f"{b:.{digits}f}":
        digits += 1
    return digits


def _bound(base: float, factor: str) -> float:
    """``factor × base`` (``factor`` a decimal literal), multiplied in decimal on ``base`` as report.json holds
    it and rounded once: in binary floating point ``1.05 * 0.3011`` is ``0.31615499999999996``, and a DISTS
    exactly 5 % behind (0.316155) failed "within 5 %".

    Example:
        >>> 0.316155 <= _bound(0.3011, "1.05"), 0.316155 <= 1.05 * 0.3011, 0.316156 <= _bound(0.3011, "1.05")
        (True, False, False)
    """
    return float(Decimal(factor) * Decimal(repr(base))) if math.isfinite(base) else float(factor) * base


def _diverged(results: Mapping[str, Any], label: str) -> str:
    """The note of a check whose reference loss ``label`` diverged (it is then not judged), else ``""``."""
    r = results.get(label, {})
    return f"the {label} loss's training diverged ({r['diverged']})" if "diverged" in r else ""


def _runs(result: Mapping[str, Any], key: str, digits: int = 4) -> str:
    """`` (mean of N runs: a, b, ...)`` when the task was trained with several seeds, else nothing."""
    per = result.get("per_seed")
    if not per:
        return ""
    return f" (mean of {len(per[key])} runs: " + ", ".join(_fmtn(v, digits) for v in per[key]) + ")"


def _fmtn(v: float | None, digits: int = 4) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


# ------------------------------------------------------------------------------------------------- run
def run_suite(
    candidates: Sequence[str],
    *,
    human: Sequence[HumanSet] = (),
    weights: str | os.PathLike[str] | None = None,
    train_photos: Sequence[torch.Tensor] = (),
    config: SuiteConfig | None = None,
    log: Callable[[str], None] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> SuiteResult:
    """Run the three parts for ``candidates`` (``NAME[:KEY=VALUE,...]``) and the baselines.

    Args:
        candidates: the metrics under test (:func:`parse_candidate`); the quick config keeps the first only.
        human: the MOS/DMOS sets of part 1 (their reference images also feed the shift check and the judge
            tiles, never the training).
        weights: a folder laid out as ``shared/tools/published_weights.py`` writes (:data:`WEIGHT_FILES`);
            ``None`` skips the deep baselines and the judges (noted in the report).
        train_photos: extra training photos (``(3, H, W)`` in ``[0, 1]``) besides the package's samples.
        config: sizes and seed (:class:`SuiteConfig`; default the full suite).
        log: called with one line per step (progress).
        cache: a folder for the finished pieces of work (:mod:`.suite_cache`): each is stored as it ends and
            read back by a later run with the same folder and settings, so an interrupted run resumes where it
            stopped and reports what an uninterrupted one would. ``None``: nothing is kept.

    Raises:
        ValueError: no candidate, a bad candidate spec or option, two human sets with one name;
        FileNotFoundError: a missing weight file;
        CacheMismatchError: the cache holds a piece of work computed with other settings (another folder, or
        remove it, to start over).
    """
    from ..data import sample_image, sample_names

    cfg = config or SuiteConfig()
    say = log or (lambda s: None)
    t_start = time.perf_counter()
    if not candidates:
        raise ValueError("give at least one candidate")
    repeated = sorted({hs.name for hs in human if [h.name for h in human].count(hs.name) > 1})
    if repeated:  # their results, keyed by name, would overwrite each other
        raise ValueError(f"two human sets are named {repeated[0]!r}: give each set its own name")
    specs = list(dict.fromkeys(candidates))[: 1 if cfg.quick else None]
    notes: list[str] = []
    if cfg.quick:
        notes.append("quick run: tiny sizes, one candidate; the numbers only show that every part runs")
    metrics = candidate_metrics(specs)
    wdir = Path(weights) if weights is not None else None
    baselines = ["l2", "ssim"]
    deep_options: dict[str, dict[str, str]] = {}
    if wdir is not None:
        deep_options = weight_folder_options(wdir)
        baselines += list(DEEP_BASELINES)
    else:
        notes.append("no weights folder: the deep baselines (lpips-vgg, lpips-alex, dists), the LPIPS-vgg loss and "
                     "the DISTS / LPIPS judges are skipped, and the checks that need them are not judged")
    labels = {m.label for m in metrics}
    for b in baselines:
        if b not in labels:
            m = SuiteMetric(b, b, deep_options.get(b, {}), "baseline")
            try:
                metrics.append(_build(m))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{m.label}: {e}") from e
    by_label = {m.label: m for m in metrics}
    judges = {j: by_label[j] for j in JUDGES if j in by_label}
    loss_labels = [m.label for m in metrics if m.role == "candidate"] + ["l2", "ssim"]
    if wdir is not None:
        loss_labels.append("lpips-vgg")
        if cfg.dists_loss:
            loss_labels.append("dists")
        else:
            notes.append("DISTS is not trained with (costly on CPU, and it is the judge); set dists_loss=True")
    losses = [by_label[lb] for lb in dict.fromkeys(loss_labels)]

    data: dict[str, Any] = {
        "command": "eval suite",
        "config": {**dataclasses.asdict(cfg), "training_seeds": list(cfg.training_seeds)},
        "threads": torch.get_num_threads(),  # the numbers depend on it (docs/evaluation.md)
        "weights": None if wdir is None else str(wdir),
        "candidates": [m.label for m in metrics if m.role == "candidate"],
        "metrics": {m.label: {"name": m.name, "options": {k: str(v) for k, v in m.options.items()},
                              "role": m.role, "higher_is_better": m.higher_is_better} for m in metrics},
        "losses": [m.label for m in losses], "judges": list(judges), "notes": notes, "seconds": {},
    }
    kept = None if cache is None else SuiteCache(cache)
    t0 = time.perf_counter()
    data["human"], refs, ref_names = _human(human, metrics, cfg, say, kept)
    data["seconds"]["human"] = round(time.perf_counter() - t0, 1)

    samples = [sample_image(n) for n in sample_names()]
    t0 = time.perf_counter()
    data["shift"] = _shift([*samples, *refs], [f"sample/{n}" for n in sample_names()] + ref_names, metrics, cfg, say,
                           kept)
    data["seconds"]["shift"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    train, tiles = task_photos(samples, train_photos, refs, cfg)
    if refs:
        data["tiles"] = {"source": "the right halves of the human sets' reference images (their left halves are "
                                   "training photos, with the package's samples)", "n": len(tiles), "size": cfg.tile}
    else:
        data["tiles"] = {"source": "held-out strips of the training photos (no human sets given)", "n": len(tiles),
                         "size": cfg.tile}
        notes.append("no human sets: the judge tiles are the held-out right-hand strips of the training photos")
    data["tasks"], figures = _tasks(losses, judges, train, tiles, samples, cfg, say, kept)
    data["seconds"]["tasks"] = round(time.perf_counter() - t0, 1)
    if kept is not None and kept.reused:
        notes.append(f"resumed: {kept.reused} finished pieces of work were read back from {kept.folder}; the "
                     "seconds of a task's row are those of the runs that computed it, the wall times of the parts "
                     "are this run's")
    data["checks"] = _checks(data, data["candidates"], [d for d in DEEP_BASELINES if d in by_label])
    data["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    return SuiteResult(data, figures)


# ---------------------------------------------------------------------------------------------- report
#: The files :func:`write_suite` creates (besides figures).
OUTPUT_FILES = ("report.md", "report.json")
FIGURES = ("figure-sr.png", "figure-ae.png", "figure-gim.png")


def _mark(ok: bool | None) -> str:
    return {True: "**pass**", False: "**FAIL**", None: "not judged"}[ok]


def _markdown(d: dict[str, Any], figures: Sequence[str]) -> str:
    cfg = d["config"]
    md = ["# Dev benchmark (`patchmmd eval suite`)", "",
          f"Candidates: {', '.join(f'`{c}`' for c in d['candidates'])}. Baselines: "
          + ", ".join(f"`{k}`" for k, v in d["metrics"].items() if v["role"] == "baseline")
          + f". Seed {cfg['seed']}" + (f"; {d['threads']} CPU threads" if "threads" in d else "")
          + f"; wall time {d['seconds']['total']:.0f} s "
          f"(human {d['seconds']['human']:.0f} s, shift {d['seconds']['shift']:.0f} s, "
          f"tasks {d['seconds']['tasks']:.0f} s). See docs/evaluation.md for the protocol.", "",
          "Rounding: correlations and shift ratios to 3 decimals, their intervals to 2, the tasks' numbers to 4, "
          "a check's numbers to as many as tell them from its mark; report.json holds every number (the tasks' "
          "and the shift ratios to 6 significant digits, the figures the checks compare).", ""]
    md += [f"> {n}" for n in d["notes"]] + ([""] if d["notes"] else [])
    md += ["## Checks", "", "| candidate | check | result | numbers | note |", "|---|---|---|---|---|"]
    for c, rows in d["checks"].items():
        for r in rows:
            md.append(f"| {c} | {r['check']} | {_mark(r['pass'])} | {r['value']} | {r['note']} |")
    md += ["", "Checks: " + "; ".join(f"**{k}**: {v}" for k, v in CHECKS.items()) + ".", ""]

    md += ["## 1. Human scores (SROCC / KROCC / PLCC)", ""]
    if not d["human"]:
        md += ["No human sets given.", ""]
    for name, h in d["human"].items():
        groups = [g for g in next(iter(h["metrics"].values())) if g != "all"]
        mos = "; MOS, higher = better: negated" if h.get("score_higher_is_better") else ""  # (absent before MOS sets)
        md += [f"### {name}: {h['n_scored']} scored pairs (`{h['labels']}`{mos})", "",
               "| metric | all | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        for m, st in h["metrics"].items():
            md.append(f"| {m} | " + " | ".join(
                f"{_fmtn(st[g]['srocc'], 3)} / {_fmtn(st[g]['krocc'], 3)} / {_fmtn(st[g]['plcc'], 3)}"
                for g in ["all", *groups]) + " |")
        md += ["", f"SROCC with its 95 % bootstrap interval ({cfg['bootstrap']} resamples):", "",
               "| metric | all | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        for m, st in h["metrics"].items():
            cells = []
            for g in ["all", *groups]:
                ci = st[g].get("ci", {}).get("srocc")
                cells.append(_fmtn(st[g]["srocc"], 3) + (f" [{_fmtn(ci[0], 2)}, {_fmtn(ci[1], 2)}]" if ci else ""))
            md.append(f"| {m} | " + " | ".join(cells) + " |")
        md.append("")

    s = d["shift"]
    md += ["## 2. Shift check", "",
           f"d(shift) / min(d(noise σ 0.03), d(blur σ 1)) over {len(s['photos'])} photos (centre crops of at most "
           f"{s['size']} px): median (max).", "",
           "| metric | " + " | ".join(SHIFTS) + " |", "|---|" + "---|" * len(SHIFTS)]
    for m, st in s["metrics"].items():
        md.append(f"| {m} | " + " | ".join(f"{_fmtn(st['median'][k], 3)} ({_fmtn(st['max'][k], 3)})"
                                            for k in SHIFTS) + " |")
    md.append("")

    t = d["tasks"]
    judges = d["judges"]
    cols = [*judges, "psnr", "ssim", "sharpness"]
    titles = {"sr": f"SR ×4 ({cfg['sr_steps']} steps of {cfg['sr_batch']} crops of {cfg['sr_crop']}², Adam "
                    f"{cfg['sr_lr']:g})",
              "ae": f"Autoencoder ({cfg['ae_steps']} steps of {cfg['ae_batch']} crops of {cfg['ae_crop']}², "
                    f"Adam {cfg['ae_lr']:g})",
              "gim": f"Generalized image mean ({cfg['gim_steps']} steps, {cfg['gim_size']}² crop and "
                     f"{cfg['gim_shifts']} copies shifted {cfg['gim_max_shift']} px; judged against every member)"}
    md += ["## 3. Tasks", "",
           f"Judged on {d['tiles']['n']} held-out tiles of {d['tiles']['size']}² ({d['tiles']['source']}); "
           "DISTS / LPIPS lower is better; sharpness = high-frequency energy relative to the truth (1 = as sharp); "
           "lattice = power at the 4x4 pixel-shuffle frequencies relative to the truth's.", ""]
    for task in ("sr", "ae", "gim"):
        c = cols + (["lattice"] if task == "sr" else []) + ["seconds"]
        md += [f"### {titles[task]}", "", "| loss | " + " | ".join(c) + " |", "|---|" + "---|" * len(c)]
        for loss, r in t[task].items():
            md.append(f"| {loss} | " + " | ".join(_cell(r, k) for k in c) + " |")
        md += [f"\n{loss}: training diverged, no numbers ({r['diverged']})." for loss, r in t[task].items()
               if "diverged" in r]
        if task != "gim" and len(cfg["training_seeds"]) > 1:
            md.append("")
            md.append(f"Trained with seeds {', '.join(map(str, cfg['training_seeds']))}: each cell is the mean of the "
                      "runs, with (min–max) over them for the judges and the lattice ratio; seconds are for all "
                      "runs. The figure shows the first seed's outputs.")
        md.append("")
    md += [f"![{f}]({f})" for f in figures]
    return "\n".join(md) + "\n"


def _cell(r: Mapping[str, Any], key: str) -> str:
    """A task table cell: the value; for the judges and the lattice ratio also the range over training seeds."""
    if key == "seconds":
        return _fmtn(r.get(key), 1)
    per = r.get("per_seed", {}).get(key) if key in (*JUDGES, "lattice") else None
    text = _fmtn(r.get(key), 4)
    return text if not per else f"{text} ({_fmtn(min(per), 4)}–{_fmtn(max(per), 4)})"


def _figures(r: SuiteResult, out: Path) -> list[str]:
    from ..tasks._common import image_grid_figure

    f = r.figures
    written: list[str] = []
    if not f:
        return written
    n = min(3, len(f["tiles"]))
    for task, name in (("sr", "figure-sr.png"), ("ae", "figure-ae.png")):
        labels = ["truth", *f[task]]
        rows = [[f["tiles"][i], *(v[i] for v in f[task].values())] for i in range(n)]
        image_grid_figure(rows, [f"tile {i}" for i in range(n)], labels, out / name,
                          title=f"{task.upper()}: held-out tiles, one column per loss")
        written.append(name)
    sets = f["gim_sets"]
    labels = ["unshifted crop", *f["gim"]]
    rows = [[ys[0], *(v[i] for v in f["gim"].values())] for i, ys in enumerate(sets)]
    image_grid_figure(rows, [f"set {i}" for i in range(len(sets))], labels, out / "figure-gim.png",
                      title="Generalized image mean of shifted copies, one column per loss")
    written.append("figure-gim.png")
    return written


def remove_suite_outputs(out_dir: str | os.PathLike[str]) -> None:
    """Delete what :func:`write_suite` and a run's cache (``cache/``) left in ``out_dir``; nothing else."""
    import shutil

    path = Path(out_dir)
    for name in (*OUTPUT_FILES, *FIGURES):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "cache", ignore_errors=True)


def write_suite(result: SuiteResult, out_dir: str | os.PathLike[str], *, figures: bool = True) -> list[Path]:
    """Write report.md, report.json and (with ``figures``, needs matplotlib) the figures; returns the files.

    A figure this call does not write (``figures=False``) is removed if an earlier call left one there (a
    folder of that name is left as it is).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _figures(result, out) if figures else []
    # UTF-8 whatever the locale (the report has σ, ×, ≥: a cp1252 or ASCII locale could not write them)
    output_file(out / "report.json").write_text(json_text(result.data), encoding="utf-8")  # NaN as null
    output_file(out / "report.md").write_text(_markdown(result.data, names), encoding="utf-8")
    for name in sorted(set(FIGURES) - set(names)):  # an earlier run's figure beside a report that is not its own
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    return [out / "report.md", out / "report.json", *(out / n for n in names)]
