"""Compute metrics over a human-judgment dataset and their agreement with the judgments.

:func:`run` takes a dataset of :mod:`.datasets` (:class:`~.datasets.BAPPS2AFC`, :class:`~.datasets.BAPPSJND`
or :class:`~.datasets.MOSDataset`) and metrics (registry names or :class:`EvalMetric`), computes every
metric's values over the items in batches of equal image size, and returns an :class:`EvaluationResult`
holding the values and the statistics of :mod:`.stats`:

* 2AFC: the agreement per subset and the mean over subsets (docs/method.md §5), plus the human ceiling;
* JND: the mAP of "same" judgments per subset and the mean;
* MOS/DMOS: SROCC, KROCC, PLCC (after the logistic fit) and RMSE, overall and per group, with bootstrap
  intervals; rows without a score are checked instead (identical pairs must give the metric's value on
  ``(ref, ref)``).

With ``cache`` (a folder), each finished metric's values are stored as ``<cache>/<metric>.json`` (a name with
characters some file systems refuse, such as ``mmdpp:preset=loss``, is written as :func:`cache_file_name` gives
it) together with the settings they were computed with (the items, and their image files' sizes and modification
times, among them); a later run with the same settings reads them back instead of recomputing, and one with other
settings raises :class:`CacheMismatchError`, naming what changed. The files are written atomically;
one that cannot be decoded is recomputed with a warning (see :func:`_cached`); one someone else could have written
is refused (:mod:`patchmmd._trust`). Progress is reported through
a callback receiving :class:`Progress` events (no progress bar here). :mod:`.report` writes the result.

An item whose files cannot be read (a damaged or missing image, a format :func:`patchmmd.io.load_image` does not
open, one too large, patches of different sizes, a judge file that does not hold one fraction) stops the run with
its error (``on_error="raise"``, the default), or is left out for every metric, so that all are compared on the
same items, and recorded in :attr:`EvaluationResult.errors` (``on_error="skip"``). A metric that fails is never
left out: it raises :class:`EvaluationError` either way. With a cache, a metric's file records the items it could
not read; a later run reads those again, and computes the metric again when one of them can be read now (the
cached values lack it). The items left out are part of the cache's settings like the others (their names, and
their files' sizes and modification times): a file mended by writing it again changes them, and the cached values
are refused (:class:`CacheMismatchError`).

Example:
    >>> import tempfile, pathlib, torch
    >>> from patchmmd.io import save_image
    >>> from patchmmd.evaluation.datasets import MOSDataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> ref = torch.full((3, 32, 32), 0.5)
    >>> save_image(ref, root / "ref.png")
    >>> rows = ["reference,distorted,dmos"]
    >>> for i in range(4):
    ...     save_image((ref + 0.05 * (i + 1)).clamp(0, 1), root / f"d{i}.png")
    ...     rows.append(f"ref.png,d{i}.png,{10 * (i + 1)}")
    >>> _ = (root / "labels.csv").write_text("\\n".join(rows) + "\\n")
    >>> result = run(MOSDataset(root / "labels.csv"), ["l2", "psnr"], bootstrap=0)
    >>> result.kind, result.metric_names
    ('mos', ['l2', 'psnr'])
    >>> round(result.metrics["l2"]["all"]["srocc"], 3), round(result.metrics["psnr"]["all"]["srocc"], 3)
    (1.0, 1.0)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .._trust import UntrustedFileError, read_controlled
from ..core.validation import check_bool, check_positive_int
from ..io import ImageReadError
from ..metrics.weights import file_stamps
from ..scoring.errors import error_text
from .datasets import _BAPPS, BAPPS2AFC, BAPPSJND, DatasetError, MOSDataset, _load_fraction

__all__ = [
    "CacheMismatchError",
    "EvalMetric",
    "EvaluationError",
    "EvaluationResult",
    "Progress",
    "run",
    "select_items",
]

Kind = Literal["2afc", "jnd", "mos"]
Dataset = BAPPS2AFC | BAPPSJND | MOSDataset
#: What :func:`run` does with an item whose files cannot be read: stop (``"raise"``) or leave it out (``"skip"``).
OnError = Literal["raise", "skip"]

#: What reading an item raises when its files cannot be read or do not fit (``on_error="skip"`` leaves it out):
#: an image that cannot be read (:class:`~patchmmd.io.ImageReadError`, an :class:`OSError`), patches of different
#: sizes or a judge file that does not hold one fraction (:class:`DatasetError`).
_UNREADABLE: tuple[type[Exception], ...] = (ImageReadError, DatasetError, OSError)


class EvaluationError(ValueError):
    """An evaluation cannot proceed: a metric returned unusable values, or too few items have a score."""


class CacheMismatchError(EvaluationError):
    """A cached metric was computed with other settings than the current run's.

    Attributes:
        path: the cache file.
        cached_settings: the settings stored in it.
    """

    def __init__(self, message: str, path: Path, cached_settings: Any) -> None:
        super().__init__(message)
        self.path = path
        self.cached_settings = cached_settings


@dataclass(frozen=True)
class EvalMetric:
    """A metric to evaluate: a callable on batches ``(N, C, H, W)`` returning ``N`` values, and how to read them.

    Attributes:
        name: the name used in results, caches and file names.
        fn: ``fn(x, y) -> (N,)`` values.
        higher_is_better: the metric is a similarity (PSNR, SSIM): its values are negated for the statistics.
        group: the registry's group (reported as is).
        options: the options it was built with, recorded with cached values (a change means recomputing).

    Example:
        >>> m = EvalMetric.from_registry("psnr")
        >>> m.name, m.higher_is_better, m.group
        ('psnr', True, 'baselines')
    """

    name: str
    fn: Callable[..., Any]
    higher_is_better: bool = False
    group: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a direction given as text ("False") would negate the values, and every statistic, silently
        check_bool("higher_is_better", self.higher_is_better)

    @classmethod
    def from_registry(cls, name: str, **options: Any) -> EvalMetric:
        """The registry's metric ``name`` built with ``options`` (errors of the factory propagate).

        Raises:
            ValueError: an unknown name (the message lists the valid ones).
        """
        from ..metrics.registry import get_spec

        spec = get_spec(name)
        return cls(name, spec.factory(**options), spec.higher_is_better, spec.group, dict(options))


@dataclass(frozen=True)
class Progress:
    """A progress event of :func:`run`: ``done`` of ``total`` items of ``metric`` computed.

    A metric's events go ``done=0`` (start), then one per batch, ending with ``done == total``. ``cached``
    is the cache file when the values were read from it (a single event with ``done == total``).
    """

    metric: str
    done: int
    total: int
    cached: Path | None = None


@dataclass
class EvaluationResult:
    """What :func:`run` computed: the metrics' values over the items and their statistics.

    Attributes:
        kind: ``"2afc"``, ``"jnd"`` or ``"mos"``.
        dataset: the dataset evaluated.
        indices: indices into ``dataset`` of the items used (all, or the first ``limit``, less those in
            :attr:`errors`).
        values: per metric, per item of ``indices``, the metric's values (``[d0, d1]`` for 2AFC, ``[d]``
            otherwise), as the metric returned them (not oriented).
        metrics: per metric, the statistics: 2AFC/JND ``{"subsets", "mean", "higher_is_better", "group"}``;
            MOS ``{"higher_is_better", "group", "all", <group>...}`` (see :func:`.stats.grouped_correlations`).
        specs: the metrics evaluated.
        truth: the human judgment per item (2AFC: fraction preferring ``p1``; JND: fraction judging "same";
            MOS: the score or ``None``).
        subsets: per item, the BAPPS subset or the MOS group (``None`` without a group column).
        names: per item, the file stem (BAPPS) or the distorted path (MOS).
        human: 2AFC only: the human majority ceiling ``mean(max(g, 1 - g))`` per subset (empty otherwise).
        unscored: MOS only: per metric, the checks of the rows without a score: ``distorted``, ``identical``,
            ``value``, ``value_on_itself`` (the metric on ``(ref, ref)``, for an identical pair) and ``ok`` (whether
            ``value`` is that value; ``None`` for a pair that is not identical, which has nothing to check).
        settings: the settings the values depend on (stored with cached values; with a cache, the image files'
            stamps too).
        errors: the items left out because their files cannot be read (``on_error="skip"``), in dataset order,
            one dict per item: ``index`` (into ``dataset``), ``item`` (its name in messages), ``error`` (the
            reason, ``"ErrorType: message"`` as in ``patchmmd score``'s error rows), and ``subset``, ``name``
            (BAPPS) or ``reference``, ``distorted``, ``line`` (MOS, the CSV's line). Every statistic is over the
            other items.
        limit, score_higher_is_better, bootstrap, seed: the options of the run.
    """

    kind: Kind
    dataset: Dataset
    indices: list[int]
    values: dict[str, list[list[float]]]
    metrics: dict[str, dict[str, Any]]
    specs: dict[str, EvalMetric]
    truth: list[Any]
    subsets: list[Any]
    names: list[str]
    human: dict[str, float] = field(default_factory=dict)
    unscored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    limit: int | None = None
    score_higher_is_better: bool = False
    bootstrap: int = 0
    seed: int = 0

    @property
    def metric_names(self) -> list[str]:
        """The metrics, in the order evaluated."""
        return list(self.specs)

    @property
    def n(self) -> int:
        """Number of items used."""
        return len(self.indices)

    @property
    def scored(self) -> list[int]:
        """Positions (into :attr:`indices`) of the items with a human judgment (MOS rows may lack one)."""
        return [i for i, t in enumerate(self.truth) if t is not None]

    def write(self, out_dir: str | os.PathLike[str], *, plots: bool = True) -> Any:
        """:func:`.report.write` of this result (report.md, report.json, scores.csv, plots, errors.csv)."""
        from .report import write

        return write(self, out_dir, plots=plots)


def _kind(dataset: Any) -> Kind:
    if isinstance(dataset, BAPPS2AFC):
        return "2afc"
    if isinstance(dataset, BAPPSJND):
        return "jnd"
    if isinstance(dataset, MOSDataset):
        return "mos"
    raise TypeError(f"dataset must be a BAPPS2AFC, BAPPSJND or MOSDataset, got {type(dataset).__name__}")


def _check_limit(limit: int | None) -> int | None:
    """``limit`` as an ``int >= 1``, or ``None`` (every item)."""
    return None if limit is None else check_positive_int("limit", limit)


def select_items(dataset: Dataset, limit: int | None = None) -> list[int]:
    """Indices of the items :func:`run` reads: all, or the first ``limit`` (per subset for BAPPS).

    Example:
        >>> class Fake(BAPPSJND):
        ...     def __init__(self): self.items = [("a", "0", {}), ("a", "1", {}), ("b", "0", {})]
        >>> select_items(Fake(), 1)
        [0, 2]
    """
    limit = _check_limit(limit)
    if isinstance(dataset, _BAPPS):
        seen: dict[str, int] = {}
        keep = []
        for i, it in enumerate(dataset.items):
            seen[it[0]] = seen.get(it[0], 0) + 1
            if limit is None or seen[it[0]] <= limit:
                keep.append(i)
        return keep
    n = len(dataset)
    return list(range(n if limit is None else min(limit, n)))


def _batches(indices: Sequence[int], load: Callable[[int], Any], size_of: Callable[[Any], tuple[int, ...]],
             batch_size: int, failed: dict[int, str] | None = None) -> Iterable[list[tuple[int, Any]]]:
    """Consecutive items of equal image size, at most ``batch_size`` at a time (positions into ``indices``).

    With ``failed``, an item whose files cannot be read (:data:`_UNREADABLE`) is left out, its position and
    reason recorded there; without, its error propagates."""
    batch: list[tuple[int, Any]] = []
    for pos, i in enumerate(indices):
        try:
            item = load(i)
        except _UNREADABLE as e:
            if failed is None:
                raise
            failed[pos] = error_text(e)
            continue
        if batch and (len(batch) == batch_size or size_of(batch[0][1]) != size_of(item)):
            yield batch
            batch = []
        batch.append((pos, item))
    if batch:
        yield batch


def _pairs_2afc(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    ref = torch.stack([it.ref for it in items])
    distorted = torch.cat([torch.stack([it.p0 for it in items]), torch.stack([it.p1 for it in items])])
    return torch.cat([ref, ref]), distorted


def _size_2afc(it: Any) -> tuple[int, ...]:
    return (*it.ref.shape, *it.p0.shape, *it.p1.shape)


def _pairs_jnd(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it.p0 for it in items]), torch.stack([it.p1 for it in items])


def _size_jnd(it: Any) -> tuple[int, ...]:
    return (*it.p0.shape, *it.p1.shape)


def _pairs_mos(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it.reference for it in items]), torch.stack([it.distorted for it in items])


def _size_mos(it: Any) -> tuple[int, ...]:
    return tuple(it.reference.shape)


def _item_name(dataset: Dataset, i: int) -> str:
    """Item ``i`` as a user finds it: ``subset/name`` (BAPPS) or ``reference -> distorted`` (MOS)."""
    if isinstance(dataset, MOSDataset):
        return f"{dataset.references[i]} -> {dataset.distorted[i]} (line {dataset.lines[i]})"
    return f"{dataset.items[i][0]}/{dataset.items[i][1]}"


def _compute(metric: EvalMetric, dataset: Dataset, indices: Sequence[int], kind: Kind, batch_size: int,
             device: torch.device, progress: Callable[[Progress], None] | None,
             skip: bool = False) -> tuple[list[list[float]], dict[int, str]]:
    """Values of ``metric`` over ``dataset[indices]``: 2 per item for 2AFC (d0, d1), 1 otherwise; and, with
    ``skip``, the items whose files cannot be read (position into ``indices``: reason), whose values are ``[]``."""
    pairs, size_of = {"2afc": (_pairs_2afc, _size_2afc), "jnd": (_pairs_jnd, _size_jnd),
                      "mos": (_pairs_mos, _size_mos)}[kind]
    per_item = 2 if kind == "2afc" else 1
    n = len(indices)
    values: list[list[float]] = [[] for _ in range(n)]
    failed: dict[int, str] = {}
    done = 0
    if progress is not None:
        progress(Progress(metric.name, 0, n))
    for batch in _batches(indices, dataset.__getitem__, size_of, batch_size, failed if skip else None):
        x, y = pairs([item for _, item in batch])
        try:
            with torch.no_grad():
                d = metric.fn(x.to(device), y.to(device))
        except (ValueError, TypeError) as e:
            raise EvaluationError(f"{metric.name}: {e}") from e
        except ImportError as e:
            raise ImportError(f"metric {metric.name!r} needs an optional dependency: {e}") from e
        d = torch.as_tensor(d).detach().double().cpu().reshape(-1)
        if d.numel() != x.shape[0]:
            raise EvaluationError(f"metric {metric.name!r} returned {d.numel()} values for {x.shape[0]} pairs")
        k = len(batch)
        if not torch.isfinite(d).all():
            bad = sorted({batch[j % k][0] for j in torch.nonzero(~torch.isfinite(d)).flatten().tolist()})
            items = [_item_name(dataset, indices[pos]) for pos in bad]
            raise EvaluationError(f"metric {metric.name!r} returned a non-finite value (NaN or infinity) on "
                                  f"{len(items)} item(s): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        for j, (pos, _) in enumerate(batch):
            values[pos] = [float(d[j + r * k]) for r in range(per_item)]
        done = batch[-1][0] + 1  # the items before it were computed or left out
        if progress is not None:
            progress(Progress(metric.name, done, n))
    if progress is not None and done < n:  # the last items were left out
        progress(Progress(metric.name, n, n))
    return values, failed


def _read_again(dataset: Dataset, indices: Sequence[int], failed: Mapping[int, str],
                skip: bool) -> dict[int, str] | None:
    """The items a cache file records as unreadable (positions into ``indices``), read again: their reasons now,
    or ``None`` when one of them can be read now (the cached values lack it). Without ``skip`` the error of the
    first one propagates, as when computing."""
    now: dict[int, str] = {}
    for pos in sorted(failed):
        try:
            dataset[indices[pos]]
        except _UNREADABLE as e:
            if not skip:
                raise
            now[pos] = error_text(e)
        else:
            return None
    return now


def _cached(cache: Path | None, metric: EvalMetric, settings: dict[str, Any],
            compute: Callable[[], tuple[list[list[float]], dict[int, str]]],
            progress: Callable[[Progress], None] | None, n: int,
            read_again: Callable[[dict[int, str]], dict[int, str] | None] | None = None,
            ) -> tuple[list[list[float]], dict[int, str]]:
    """``metric``'s values (and the items it could not read, by position) from ``cache/<metric>.json`` when it
    holds them for ``settings``, else computed and stored there.

    The items the file records as unreadable are read again (``read_again``): when one can be read now, the file
    is not used (its values lack that item) and the metric is computed again.

    The file is written atomically (a temporary file in the same folder, fsynced, then renamed over it): it is
    either absent, the previous file or the complete new one. A file that cannot be decoded anyway (one cut
    short by a crash under an older version, or damaged on disk) holds nothing usable: it is treated as absent,
    with a warning naming it, and the metric is recomputed and the file replaced. That is safe because the
    cache only memoises values that the same settings recompute exactly; a readable file with other settings
    is still refused (:class:`CacheMismatchError`). A file that cannot be read at all (permissions, ...) raises
    :class:`EvaluationError` naming it.
    """
    if cache is None:
        return compute()
    path = cache / cache_file_name(metric.name)
    cached = _read_cache(path, settings, n) if path.is_file() else None
    if cached is not None:
        values, failed = cached
        now = read_again(failed) if failed and read_again is not None else failed
        if now is not None:
            if progress is not None:
                progress(Progress(metric.name, n, n, cached=path))
            return values, now
    from ..scoring.output import atomic_write_text

    t0 = time.perf_counter()
    values, failed = compute()
    cache.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"settings": settings, "values": values}
    if failed:  # (a file without them reads as before)
        data["unreadable"] = [[pos, failed[pos]] for pos in sorted(failed)]
    atomic_write_text(path, json.dumps({**data, "seconds": time.perf_counter() - t0}))
    return values, failed


def cache_file_name(name: str) -> str:
    """The cache file of the metric called ``name``: ``NAME.json`` when the name holds only letters, digits and
    ``._=+-`` (and does not start with a dot); else those characters kept, the others replaced by ``_``, and a
    short hash of the name added, so that names that read alike after the replacement still differ (``:`` would
    be an alternate data stream on Windows, ``/`` a folder).

    Example:
        >>> cache_file_name("lpips-vgg"), cache_file_name("mmdpp:preset=loss")
        ('lpips-vgg.json', 'mmdpp_preset=loss-5e167c14.json')
    """
    return f"{name}.json" if re.fullmatch(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*", name) else f"{safe_file_stem(name)}.json"


def safe_file_stem(text: str, *, key: str | None = None, limit: int = 64) -> str:
    """``text`` as a file name stem every file system takes: the characters other than letters, digits and
    ``._=+-`` replaced by ``_``, no leading dot, at most ``limit`` of them, then ``-`` and the first 8 hex digits
    of the SHA-256 of ``key`` (default ``text``), so that texts that read alike after the replacement still differ.

    Example:
        >>> safe_file_stem("a/b:c")
        'a_b_c-3b07f80c'
    """
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).lstrip(".")[:limit]
    digest = hashlib.sha256((text if key is None else key).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{slug}-{digest[:8]}"


def _read_cache(path: Path, settings: dict[str, Any], n: int) -> tuple[list[list[float]], dict[int, str]] | None:
    """The values held by a cache file and the items it records as unreadable (position: reason), or ``None``
    (with a warning) when it is damaged: not UTF-8 JSON, or not an object with ``settings`` and ``n`` rows of
    finite ``values``, two per item for 2AFC (``d0``, ``d1``) and one otherwise (empty for the items recorded as
    unreadable, as a list of ``[position, reason]``).

    Raises:
        CacheMismatchError: the file was computed with other settings.
        EvaluationError: the file cannot be read (permissions, an I/O error), or someone else could have
            written it (see :mod:`patchmmd._trust`).
    """
    try:
        raw = read_controlled(path)
    except UntrustedFileError as e:
        raise EvaluationError(f"the cache file {path} is refused: {e.problem}; whoever can write it decides the "
                              f"values read back. {e.fix} Or remove it, or use another cache folder.") from None
    except OSError as e:
        raise EvaluationError(f"cannot read the cache file {path}: {e.strerror or e}; remove it, or use another "
                              "cache folder") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError
        problem = f"not valid JSON: {e}"
    else:
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            problem = "no settings"
        elif describe_changes(data["settings"], settings):
            raise CacheMismatchError(f"{path} was computed with other settings "
                                     f"({describe_changes(data['settings'], settings)})", path, data["settings"])
        elif (failed := _cached_failures(data.get("unreadable", []), n)) is None:
            problem = "not a list of [position, reason] of unreadable items"
        elif not _cached_values_ok(data.get("values"), n, failed, per_item := _per_item(settings)):
            problem = f"not {n} rows of {per_item} finite value(s)"
        else:
            values: list[list[float]] = data["values"]
            return values, failed
    warnings.warn(f"the cache file {path} is damaged ({problem}); ignoring it: the metric is computed again and "
                  "the file replaced", RuntimeWarning, stacklevel=4)
    return None


def settings_as_json(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from a cache file: tuples as lists, paths (and any other value JSON does
    not hold) as their text, so that the stored and the current settings compare, and a path can be stored.
    Shared by this runner's cache and the suite's (:mod:`.suite_cache`)."""
    out: dict[str, Any] = json.loads(json.dumps(settings, sort_keys=True, default=lambda v: os.fspath(v) if isinstance(
        v, os.PathLike) else str(v)))
    return out


def versions() -> dict[str, str]:
    """The versions a cached value depends on (stored with it): patchmmd's and PyTorch's. A distance's numbers
    may change with either, so values cached under others are recomputed only after the user agrees (a
    :class:`CacheMismatchError` naming the version).

    Example:
        >>> sorted(versions())
        ['patchmmd', 'torch']
    """
    from .. import __version__

    return {"patchmmd": __version__, "torch": torch.__version__}


#: What a change of these settings means (their values are fingerprints that say nothing to a reader).
_CHANGE_HINTS = {"items": "items: other ones, or in another order",
                 "images": "images: files changed since, in size or modification time"}
_MISSING = object()


def describe_changes(stored: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What differs between a cache file's settings and the current ones, setting by setting (nested ones as
    ``a.b``; at most four named); ``""`` when nothing does. NaN equals NaN. A setting the file does not record
    differs: a file written before it was recorded (the image files' stamps) cannot tell whether it changed.

    Example:
        >>> describe_changes({"mode": "RGB", "options": {"k": 3}}, {"mode": "L", "options": {"k": 3}})
        'mode: "RGB", now "L"'
    """
    old, new = _flat(stored), _flat(now)

    def differs(a: Any, b: Any) -> bool:
        return a is _MISSING or b is _MISSING or (a != b and _text(a) != _text(b))

    def say(k: str) -> str:
        if k not in old:
            return f"{k}: not recorded (a cache file of an earlier version)"
        return _CHANGE_HINTS.get(k) or f"{k}: {_short(old[k])}, now {_short(new.get(k, _MISSING))}"

    changed = sorted(k for k in {*old, *new} if differs(old.get(k, _MISSING), new.get(k, _MISSING)))
    return "; ".join(map(say, changed[:4])) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"a.b": value}``, so that a mismatch names the setting that changed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _text(v: Any) -> str:
    return json.dumps(v, sort_keys=True)  # NaN as text: an option NaN equals itself


def _short(v: Any) -> str:
    if v is _MISSING:
        return "(none)"
    text = _text(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _per_item(settings: Mapping[str, Any]) -> int:
    """Values per item of a run with ``settings``: 2 for 2AFC (``d0``, ``d1``), else 1."""
    return 2 if settings.get("kind") == "2afc" else 1


def _cached_values_ok(values: Any, n: int, failed: Mapping[int, str], per_item: int = 1) -> bool:
    """``n`` rows: empty for the items in ``failed``, else of ``per_item`` finite numbers (2 for 2AFC: d0, d1)."""
    return isinstance(values, list) and len(values) == n and all(
        row == [] if pos in failed else isinstance(row, list) and len(row) == per_item and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
        for pos, row in enumerate(values))


def _cached_failures(rows: Any, n: int) -> dict[int, str] | None:
    """A cache file's ``unreadable`` list (``[position, reason]`` pairs) as a dict, or ``None`` when malformed."""
    if not isinstance(rows, list):
        return None
    out: dict[int, str] = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and type(row[0]) is int and 0 <= row[0] < n
                and isinstance(row[1], str) and row[0] not in out):
            return None
        out[row[0]] = row[1]
    return out


def _plain(v: Any) -> Any:
    return str(v) if isinstance(v, Path) else v


def _digest(items: Any) -> str:
    """A short fingerprint of the items' identities (names or paths, in order), stored with cached values."""
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _image_stamps(paths: Sequence[Path]) -> str:
    """A short fingerprint of the image files' sizes and modification times, in order (their names are in the
    ``items`` fingerprint): an image replaced in place under the same name is not the one cached values came
    from. A file that cannot be stat'ed counts as missing (reading it fails later, naming it)."""
    stamps: dict[Path, str] = {}
    for p in paths:
        if p not in stamps:
            try:
                st = p.stat()
            except (OSError, ValueError):
                stamps[p] = "missing"
            else:
                stamps[p] = f"{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    for p in paths:
        h.update(stamps[p].encode() + b"\n")
    return h.hexdigest()[:16]


#: Keys of a MOS result next to its groups (see :func:`run`): a group cannot have these names.
_MOS_KEYS = ("higher_is_better", "group", "all")


def _metrics(metrics: Iterable[str | EvalMetric] | Mapping[str, EvalMetric]) -> dict[str, EvalMetric]:
    items = metrics.values() if isinstance(metrics, Mapping) else metrics
    out: dict[str, EvalMetric] = {}
    for m in items:
        m = EvalMetric.from_registry(m) if isinstance(m, str) else m
        if not isinstance(m, EvalMetric):
            raise TypeError(f"metrics must be registry names or EvalMetric, got {type(m).__name__}")
        if m.name in out:
            raise ValueError(f"metric {m.name!r} is given twice")
        out[m.name] = m
    if not out:
        raise ValueError("no metric to evaluate")
    return out


def _values_on_itself(metric: EvalMetric, item: Any, device: torch.device) -> float:
    with torch.no_grad():
        r = item.reference[None].to(device)
        return float(torch.as_tensor(metric.fn(r, r)).reshape(-1)[0])


def run(
    dataset: Dataset,
    metrics: Iterable[str | EvalMetric] | Mapping[str, EvalMetric],
    *,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: Callable[[Progress], None] | None = None,
    limit: int | None = None,
    score_higher_is_better: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    on_error: OnError = "raise",
) -> EvaluationResult:
    """Evaluate ``metrics`` on ``dataset``: their values over the items and the agreement statistics.

    Args:
        dataset: a :class:`~.datasets.BAPPS2AFC`, :class:`~.datasets.BAPPSJND` or :class:`~.datasets.MOSDataset`.
        metrics: registry names (built with their default options) and/or :class:`EvalMetric`.
        cache: a folder for per-metric values (``<metric>.json``): values computed with the same settings
            are read back instead of recomputed; ``None``: no cache.
        batch_size: pairs of equal image size passed to a metric at once.
        device: where the metrics run (``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a :class:`torch.device`).
        progress: called with a :class:`Progress` at the start of each metric and after each batch.
        limit: use only the first ``limit`` items (per subset for BAPPS).
        score_higher_is_better: MOS only: the scores are qualities (MOS) rather than badnesses (DMOS).
        bootstrap: MOS only: bootstrap resamples for the confidence intervals (0: none).
        seed: MOS only: seed of the bootstrap.
        on_error: what to do with an item whose files cannot be read (a damaged, missing or too large image, a
            format not read, patches of different sizes, a judge file that does not hold one fraction):
            ``"raise"`` its error (the default), or ``"skip"`` it: it is left out for every metric and recorded
            in :attr:`EvaluationResult.errors`, and the statistics are over the other items. A metric's failure
            raises either way.

    Returns:
        An :class:`EvaluationResult`; :func:`.report.write` (or its ``write`` method) writes it.

    Raises:
        CacheMismatchError: a cached metric was computed with other settings.
        EvaluationError: a metric failed on the data, returned the wrong number of values or a non-finite
            value; fewer than 3 MOS rows have a score (or, with ``on_error="skip"``, can be read); no item of a
            BAPPS subset can be read (``on_error="skip"``); or a cache file cannot be read (one that reads but
            cannot be decoded is recomputed, with a :class:`RuntimeWarning`).
        DatasetError, ImageReadError, OSError: an item cannot be read (``on_error="raise"``).
        ValueError, TypeError: bad arguments (unknown metric name, ``batch_size`` < 1, ...).
    """
    from ..scoring import resolve_device
    from .stats import _check_bootstrap, grouped_correlations, jnd_map, summarize, two_afc_score

    kind = _kind(dataset)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    skip = on_error == "skip"
    score_higher_is_better = check_bool("score_higher_is_better", score_higher_is_better)
    specs = _metrics(metrics)
    batch_size = check_positive_int("batch_size", batch_size)
    dev = resolve_device(device) if isinstance(device, str) else device
    indices = select_items(dataset, limit)
    n = len(indices)
    cache_dir = None if cache is None else Path(cache)
    left_out: dict[int, str] = {}  # position into indices: why the item is left out (on_error="skip")

    result = EvaluationResult(kind=kind, dataset=dataset, indices=indices, values={}, metrics={}, specs=specs,
                              truth=[], subsets=[], names=[], limit=limit,
                              score_higher_is_better=score_higher_is_better, bootstrap=bootstrap, seed=seed)
    if isinstance(dataset, _BAPPS):
        what = "judge" if kind == "2afc" else "same"
        result.subsets = [dataset.items[i][0] for i in indices]
        result.names = [dataset.items[i][1] for i in indices]
        for pos, i in enumerate(indices):
            try:
                result.truth.append(_load_fraction(dataset.items[i][2][what], what))
            except DatasetError as e:
                if not skip:
                    raise
                result.truth.append(None)
                left_out[pos] = error_text(e)
        result.settings = {"kind": kind, "root": str(Path(dataset.root).resolve()), "subsets": dataset.subsets,
                           "split": dataset.split, "load_size": dataset.load_size or 0, "mode": dataset.mode,
                           "limit": limit, "n": n,
                           "items": _digest([[dataset.items[i][0], dataset.items[i][1]] for i in indices])}
        images = [f for i in indices for f in dataset.image_files(i)]
    else:
        bootstrap, seed = _check_bootstrap(bootstrap, seed)  # before any metric runs
        result.bootstrap, result.seed = bootstrap, seed
        result.subsets = [dataset.groups[i] for i in indices]
        result.names = [dataset.distorted[i] for i in indices]
        result.truth = [dataset.scores[i] for i in indices]
        scored = result.scored
        if len(scored) < 3:
            raise EvaluationError(f"{dataset.labels_csv}: only {len(scored)} row(s) with a score among the first "
                                  f"{n}; correlations need at least 3")
        if dataset.group_column:
            clash = sorted({str(result.subsets[i]) for i in scored} & set(_MOS_KEYS))
            if clash:
                raise DatasetError(f"{dataset.labels_csv}: group {clash[0]!r} in column {dataset.group_column!r} "
                                   f"clashes with a key of the results ({', '.join(_MOS_KEYS)}); rename it",
                                   parameter="group_column")
        # the rows' identities, in order: editing the CSV (other rows, another order) invalidates cached values
        result.settings = {"kind": kind, "labels": str(dataset.labels_csv.resolve()),
                           "root": str(dataset.root.resolve()), "mode": dataset.mode, "n": n,
                           "columns": [dataset.reference_column, dataset.distorted_column, dataset.score_column],
                           "items": _digest([[dataset.references[i], dataset.distorted[i]] for i in indices])}
        images = [dataset.root / p for i in indices for p in (dataset.references[i], dataset.distorted[i])]
    if cache_dir is not None:  # (a stat per file: only where values are kept or read back)
        result.settings["images"] = _image_stamps(images)
    result.settings = {k: _plain(v) for k, v in result.settings.items()}

    # every metric's values first: an item one of them cannot read is left out for all
    for name, metric in specs.items():
        settings = {**result.settings, "metric": name, "options": dict(metric.options), "versions": versions()}
        files = file_stamps(metric.options)
        if files:  # weight files: a file replaced in place is not the one the cached values came from
            settings["files"] = files
        settings = settings_as_json(settings)
        vals, failed = _cached(cache_dir, metric, settings,
                               functools.partial(_compute, metric, dataset, indices, kind, batch_size, dev, progress,
                                                 skip),
                               progress, n, functools.partial(_read_again, dataset, indices, skip=skip))
        result.values[name] = vals
        for pos, reason in failed.items():
            left_out.setdefault(pos, reason)
    if left_out:
        keep = [pos for pos in range(n) if pos not in left_out]
        result.errors = [_left_out(dataset, indices[pos], left_out[pos]) for pos in sorted(left_out)]
        result.indices = [indices[pos] for pos in keep]
        result.subsets = [result.subsets[pos] for pos in keep]
        result.names = [result.names[pos] for pos in keep]
        result.truth = [result.truth[pos] for pos in keep]
        result.values = {name: [vals[pos] for pos in keep] for name, vals in result.values.items()}
        n = len(keep)
        _check_enough(result)

    for name, metric in specs.items():
        vals = result.values[name]
        sign = -1.0 if metric.higher_is_better else 1.0  # statistics need "higher = more different"
        if kind in ("2afc", "jnd"):
            per_subset: dict[str, float] = {}
            for s in dataset.subsets:  # type: ignore[union-attr]  # BAPPS here
                idx = [i for i in range(n) if result.subsets[i] == s]
                if kind == "2afc":
                    per_subset[s] = two_afc_score([sign * vals[i][0] for i in idx], [sign * vals[i][1] for i in idx],
                                                  [result.truth[i] for i in idx])
                else:
                    same = [result.truth[i] for i in idx]
                    per_subset[s] = jnd_map([sign * vals[i][0] for i in idx], same) if sum(same) > 0 else math.nan
            result.metrics[name] = {"subsets": per_subset, "mean": summarize(per_subset),
                                    "higher_is_better": metric.higher_is_better, "group": metric.group}
        else:
            assert isinstance(dataset, MOSDataset)
            scored = result.scored
            x = [vals[i][0] for i in scored]
            y = [float(result.truth[i]) for i in scored]
            groups = [str(result.subsets[i]) for i in scored] if dataset.group_column else None
            result.metrics[name] = {"higher_is_better": metric.higher_is_better, "group": metric.group,
                                    **grouped_correlations(x, y, groups, higher_is_better=metric.higher_is_better,
                                                           score_higher_is_better=score_higher_is_better,
                                                           bootstrap=bootstrap, seed=seed)}
            unscored = [i for i in range(n) if result.truth[i] is None]
            if unscored:
                checks = []
                for i in unscored:
                    item = dataset[result.indices[i]]
                    identical = bool(torch.equal(item.reference, item.distorted))
                    expected = _values_on_itself(metric, item, dev) if identical else None
                    v = vals[i][0]
                    # only an identical pair has a value to check; another unscored row is not checked (None)
                    checks.append({"distorted": result.names[i], "identical": identical, "value": v,
                                   "value_on_itself": expected,
                                   "ok": None if expected is None
                                   else abs(v - expected) <= 1e-6 * max(1.0, abs(expected))})
                result.unscored[name] = checks
    if kind == "2afc":
        result.human = {s: float(sum(max(result.truth[i], 1 - result.truth[i]) for i in range(n)
                                     if result.subsets[i] == s) / max(1, result.subsets.count(s)))
                        for s in dataset.subsets}  # type: ignore[union-attr]  # BAPPS here
    return result


def _left_out(dataset: Dataset, i: int, reason: str) -> dict[str, Any]:
    """The row of :attr:`EvaluationResult.errors` of item ``i``, left out for ``reason``."""
    if isinstance(dataset, MOSDataset):
        where = {"reference": dataset.references[i], "distorted": dataset.distorted[i], "line": dataset.lines[i]}
    else:
        where = {"subset": dataset.items[i][0], "name": dataset.items[i][1]}
    return {"index": i, "item": _item_name(dataset, i), **where, "error": reason}


def _check_enough(result: EvaluationResult) -> None:
    """With items left out, enough remain: 3 scored MOS rows, one item per BAPPS subset (else
    :class:`EvaluationError`, naming the first item left out and why)."""
    errors = result.errors
    first = f"{errors[0]['item']}: {errors[0]['error']}"
    if isinstance(result.dataset, MOSDataset):
        scored = len(result.scored)
        if scored < 3:
            raise EvaluationError(f"{result.dataset.labels_csv}: only {scored} row(s) with a score among the first "
                                  f"{result.n + len(errors)} can be read ({len(errors)} left out, the first "
                                  f"{first}); correlations need at least 3")
        return
    for s in result.dataset.subsets:
        if s not in result.subsets:
            lost = [e for e in errors if e["subset"] == s]
            raise EvaluationError(f"no item of subset {s!r} can be read ({len(lost)} left out, the first "
                                  f"{lost[0]['item']}: {lost[0]['error']})")
