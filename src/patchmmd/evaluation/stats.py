"""Statistics that check a metric against human judgments (pure numpy/scipy; no CLI dependencies).

* :func:`two_afc_score`: BAPPS two-alternative forced choice agreement (docs/method.md §5, LPIPS's convention).
* :func:`jnd_map`: BAPPS just-noticeable-difference mAP (LPIPS's protocol, VOC-style average precision).
* :func:`logistic5`, :func:`fit_logistic`: the VQEG/LIVE 5-parameter logistic
  ``f(x) = b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5``.
* :func:`correlations`: SROCC, KROCC, PLCC (after the logistic fit), RMSE, with bootstrap confidence intervals.
* :func:`group_indices`, :func:`grouped_correlations`: the same statistics per group (e.g. per distortion).

**Orientation convention.** Correlations are reported so that a *good metric gives positive values*, whatever
the direction of the metric and of the human score. The metric's values are negated when the metric is a
similarity (``higher_is_better=True``: PSNR, SSIM), and the human scores are negated when they are qualities
(``score_higher_is_better=True``: MOS) rather than badnesses (DMOS, the default). A distance against DMOS
(both "higher = worse") is therefore used as is; PSNR against DMOS has its sign flipped.

scipy is needed by :func:`correlations` and :func:`fit_logistic` (the ``eval`` extra); it is imported inside
them, so this module imports without it.

Example:
    >>> import numpy as np
    >>> two_afc_score([0.1, 0.5], [0.2, 0.3], [0.25, 0.0])
    0.375
    >>> jnd_map([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0])
    0.8333333333333333
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..core.validation import check_bool

ArrayLike = Any  # anything numpy.asarray accepts

__all__ = [
    "correlations",
    "fit_logistic",
    "group_indices",
    "grouped_correlations",
    "jnd_map",
    "logistic5",
    "orient",
    "summarize",
    "two_afc_score",
    "two_afc_scores",
    "voc_ap",
]

STATISTICS = ("srocc", "krocc", "plcc", "rmse")
#: Parameters of :func:`logistic5`: PLCC and RMSE after the fit need more distinct values of the metric than this.
LOGISTIC_PARAMETERS = 5


def _require_scipy(what: str) -> ModuleType:
    try:
        import scipy
        import scipy.optimize
        import scipy.special
        import scipy.stats
    except ImportError as e:  # pragma: no cover - scipy is installed in the test environment
        raise ImportError(
            f"{what} needs scipy; install it with `pip install 'patchmmd[eval]'` (or `pip install scipy`)"
        ) from e
    return scipy


def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim > 1 and a.size == max(a.shape):  # (N, 1), (1, N), (N, 1, 1, 1): one value per item
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per item), got shape {tuple(a.shape)}")
    if not np.all(np.isfinite(a)):
        bad = int(np.sum(~np.isfinite(a)))
        raise ValueError(f"{name} must be finite; {bad} value(s) are NaN or infinite")
    return a


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arguments must have the same length, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"arguments must not be empty (got {', '.join(lengths)} of length 0)")
    return n


# --------------------------------------------------------------------------------------------------- 2AFC
def two_afc_scores(d0: ArrayLike, d1: ArrayLike, judge: ArrayLike) -> np.ndarray:
    """Per-triplet 2AFC agreement: ``1[d0<d1]·(1−g) + 1[d1<d0]·g + 0.5·1[d0=d1]``.

    Args:
        d0: distance from the reference to patch ``p0``, one per triplet.
        d1: distance from the reference to patch ``p1``.
        judge: ``g``, the fraction of people who preferred ``p1`` (found it closer to the reference), in [0, 1].

    Example:
        >>> two_afc_scores([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [0.2, 0.2, 0.9]).tolist()
        [0.8, 0.2, 0.5]
    """
    a, b, g = _as_1d("d0", d0), _as_1d("d1", d1), _as_1d("judge", judge)
    _same_length(d0=a, d1=b, judge=g)
    if np.any((g < 0) | (g > 1)):
        raise ValueError("judge must hold fractions in [0, 1] (the share of people preferring p1)")
    return (a < b) * (1.0 - g) + (b < a) * g + (a == b) * 0.5


def two_afc_score(d0: ArrayLike, d1: ArrayLike, judge: ArrayLike) -> float:
    """Mean 2AFC score (docs/method.md §5): how often the distance agrees with the human judges, in [0, 1].

    ``judge`` is LPIPS's ``g`` = fraction of people preferring ``p1``. A distance that always picks the
    majority scores ``mean(max(g, 1−g))`` (the "human" ceiling); ties count half.

    Example:
        >>> two_afc_score([0.1, 0.5], [0.2, 0.3], [0.25, 0.0])  # (0.75 + 0.0) / 2
        0.375
    """
    return float(np.mean(two_afc_scores(d0, d1, judge)))


# ---------------------------------------------------------------------------------------------------- JND
def voc_ap(recall: ArrayLike, precision: ArrayLike) -> float:
    """Area under the precision envelope (PASCAL VOC 2010+ "all points" average precision).

    Sentinels (recall 0 and 1, precision 0) are added, precision is replaced by its running maximum from
    the right, and the area is summed where recall changes. This is the definition LPIPS's ``voc_ap`` uses.

    Example:
        >>> voc_ap([0.5, 0.5, 1.0, 1.0], [1.0, 0.5, 2 / 3, 0.5])
        0.8333333333333333
    """
    r, p = _as_1d("recall", recall), _as_1d("precision", precision)
    if len(r) != len(p):
        raise ValueError(f"recall and precision must have the same length, got {len(r)} and {len(p)}")
    rec = np.concatenate(([0.0], r, [1.0]))
    prec = np.concatenate(([0.0], p, [0.0]))
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    changed = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[changed + 1] - rec[changed]) * prec[changed + 1]))


def jnd_map(d: ArrayLike, same: ArrayLike) -> float:
    """JND mean average precision of a distance for predicting "same" judgments (LPIPS protocol).

    Pairs are sorted by distance, ascending (a small distance predicts "same"); each pair counts as
    ``same`` true positives and ``1 − same`` false positives (``same`` is the fraction of people who judged
    the two patches identical); precision and recall along the ranking give :func:`voc_ap`. Pairs of equal
    distance are one step of the ranking: precision and recall are taken after all of them, so the result does
    not depend on the pairs' order (LPIPS's ``np.argsort`` leaves the order of ties unspecified, and the result
    then depends on it: e.g. PSNR's cap of 100 dB on identical patches).

    Example:
        >>> jnd_map([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0])  # precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1
        0.8333333333333333
        >>> jnd_map([0.4, 0.3, 0.2, 0.1], [1, 1, 0, 0])  # the worst ranking
        0.5
        >>> jnd_map([0.1, 0.1], [1, 0]), jnd_map([0.1, 0.1], [0, 1])  # one tied step: precision 1/2 at recall 1
        (0.5, 0.5)
    """
    dist, s = _as_1d("d", d), _as_1d("same", same)
    _same_length(d=dist, same=s)
    if np.any((s < 0) | (s > 1)):
        raise ValueError("same must hold fractions in [0, 1] (the share of people judging the pair identical)")
    total = float(np.sum(s))
    if total == 0:
        raise ValueError("same is zero everywhere: average precision is undefined without any 'same' judgment")
    order = np.argsort(dist, kind="stable")
    dist, s = dist[order], s[order]
    step_ends = np.append(dist[1:] != dist[:-1], True)  # the last pair of each run of equal distances
    tp = np.cumsum(s)[step_ends]
    fp = np.cumsum(1.0 - s)[step_ends]
    precision = tp / (tp + fp)
    recall = tp / total
    return voc_ap(recall, precision)


# ---------------------------------------------------------------------------------------- logistic fit
def logistic5(x: ArrayLike, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The VQEG/LIVE 5-parameter logistic ``b1·(0.5 − 1/(1+exp(b2·(x−b3)))) + b4·x + b5``.

    Computed without overflow for large ``|b2·(x−b3)|``.

    Example:
        >>> float(logistic5(0.0, 2.0, 1.0, 0.0, 0.0, 3.0))  # 2·(0.5 − 0.5) + 3
        3.0
    """
    t = b2 * (np.asarray(x, dtype=np.float64) - b3)
    # 1 / (1 + exp(t)) = sigmoid(-t), evaluated stably.
    sig = np.where(t >= 0, np.exp(-np.abs(t)) / (1.0 + np.exp(-np.abs(t))), 1.0 / (1.0 + np.exp(-np.abs(t))))
    return b1 * (0.5 - sig) + b4 * np.asarray(x, dtype=np.float64) + b5


def _profile(theta: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """For fixed ``(log b2, b3)`` the logistic is linear in ``(b1, b4, b5)``: solve those by least squares."""
    from scipy.special import expit

    b2, b3 = math.exp(min(max(float(theta[0]), -12.0), 12.0)), float(theta[1])
    a = np.empty((z.size, 3))
    a[:, 0] = expit(b2 * (z - b3)) - 0.5  # = 0.5 − 1/(1+exp(b2(z−b3)))
    a[:, 1] = z
    a[:, 2] = 1.0
    gram = a.T @ a
    rhs = a.T @ y
    try:
        coef = np.linalg.solve(gram + 1e-12 * np.trace(gram) * np.eye(3), rhs)
    except np.linalg.LinAlgError:
        coef = np.linalg.lstsq(a, y, rcond=None)[0]
    r = a @ coef - y
    return float(r @ r), np.array([coef[0], b2, b3, coef[1], coef[2]])


def _best_step(z: np.ndarray, y: np.ndarray, low: float, high: float) -> np.ndarray | None:
    """``(log b2, b3)`` of the steep logistic (a step plus the line) that fits best among the steps between two
    neighbouring values of the standardised ``z`` (mean 0, variance 1) whose midpoint lies in ``[low, high]``; ``None``
    when there is no such step.

    A steep curve's squared error is flat along the centre between two neighbouring values, so a search from a grid
    of centres stays in the gap it starts in; a jump between two close values (a saturated set) needs a start in that
    gap. The error of each step is computed at once, in the limit of an infinite slope: with ``e`` the residuals of
    the least-squares line and ``s`` the step (``±1/2``), adding ``s`` lowers the line's error by
    ``(e·s)² / |s − its projection on (1, z)|²`` (Frisch–Waugh)."""
    order = np.argsort(z, kind="stable")
    zs = z[order]
    n = zs.size
    e = y - y.mean() - (z @ (y - y.mean()) / n) * z  # the line's residuals (z standardised)
    cum_e = np.cumsum(e[order])[:-1]  # e·s = −Σ of the residuals below the step
    cum_z = np.cumsum(zs)[:-1]  # s·z = −Σ of z below (Σ z = 0)
    below = np.arange(1, n)
    norm = n / 4 - (n / 2 - below) ** 2 / n - cum_z**2 / n
    mid = (zs[1:] + zs[:-1]) / 2
    ok = (zs[1:] > zs[:-1]) & (mid >= low - 1e-12) & (mid <= high + 1e-12) & (norm > 1e-12 * n)
    if not ok.any():
        return None
    gain = np.where(ok, cum_e**2 / np.where(ok, norm, 1.0), -np.inf)
    j = int(np.argmax(gain))
    # the slope: from the neighbours a little off their plateaus (the sigmoid e^-2 from them) to on them (e^-15), the
    # best; a start on the plateaus alone leaves the refinement no slope to follow towards a smoother curve
    half = float(zs[j + 1] - zs[j]) / 2
    starts = [np.array([math.log(min(max(t / half, 1.0), math.exp(12.0))), float(mid[j])]) for t in (2, 5, 15)]
    return min(starts, key=lambda t: _profile(t, z, y)[0])


def fit_logistic(
    x: ArrayLike, y: ArrayLike, *, start: Sequence[float] | None = None
) -> tuple[float, float, float, float, float]:
    """Least-squares fit of :func:`logistic5` mapping objective values ``x`` to subjective scores ``y``.

    The model is linear in ``b1, b4, b5`` once ``b2, b3`` are fixed, so those three are solved exactly
    (variable projection) and only ``(log b2, b3)`` is searched: a grid over slopes and centres on the
    standardised ``x``, then Nelder–Mead from the best grid point of each slope and from the best steep step
    between two neighbouring values within the grid's centres (:func:`_best_step`) (or, shorter, from ``start``,
    parameters of an earlier fit on the raw ``x``, from the best grid point and from that step, as the bootstrap
    does), keeping the best: never worse than the least-squares line, nor than that step (up to the steepest slope
    searched, ``e^12`` per standard deviation of ``x``). ``b2 > 0`` without loss of generality (the sign of the
    sigmoid is carried by ``b1``); the least-squares line is the limit ``b1 = 0``. Deterministic and robust where
    plain Levenberg–Marquardt wanders off on nearly linear data. Parameters apply to the raw ``x``.

    Example:
        >>> import numpy as np
        >>> x = np.linspace(-3, 3, 40)
        >>> y = logistic5(x, 4.0, 2.0, 0.5, 0.3, 1.0)
        >>> bool(np.allclose(logistic5(x, *fit_logistic(x, y)), y, atol=1e-3))
        True
    """
    scipy = _require_scipy("fit_logistic")
    xs, ys = _as_1d("x", x), _as_1d("y", y)
    _same_length(x=xs, y=ys)
    mean, std = float(xs.mean()), float(xs.std())
    if std == 0:
        return 0.0, 1.0, mean, 0.0, float(ys.mean())
    z = (xs - mean) / std
    centres = np.quantile(z, np.linspace(0.1, 0.9, 9))
    # The best centre of the grid for each slope: the squared error has several basins along the centre (a
    # saturated set whose jump falls between two grid centres), so one start is not enough.
    per_slope = [min((np.array([math.log(b2), c]) for c in centres), key=lambda t: _profile(t, z, ys)[0])
                 for b2 in (0.3, 1.0, 3.0, 10.0)]
    # a steep curve's error is flat between neighbouring values: a jump between two of them needs its own start
    step = _best_step(z, ys, centres[0], centres[-1])
    steps = [] if step is None else [step]
    if start is not None:
        b2, b3 = float(start[1]) * std, (float(start[2]) - mean) / std
        # the earlier fit's basin, and the grid's best: a resample may sit better in another basin
        candidates = [np.array([math.log(max(abs(b2), 1e-6)), b3]),
                      min(per_slope, key=lambda t: _profile(t, z, ys)[0]), *steps]
        maxiter = 80
    else:
        candidates = per_slope + steps
        maxiter = 400
    best = min((_profile(t, z, ys) for t in candidates), key=lambda r: r[0])
    for t in candidates:
        res = scipy.optimize.minimize(
            lambda th: _profile(th, z, ys)[0], t, method="Nelder-Mead",
            options={"maxiter": maxiter, "xatol": 1e-6, "fatol": 1e-10 * max(1.0, float(ys @ ys))},
        )
        cand = _profile(res.x, z, ys)
        if cand[0] < best[0]:
            best = cand
    b1, b2, b3, b4, b5 = (float(v) for v in best[1])
    # undo the standardisation z = (x − mean) / std
    return b1, b2 / std, mean + std * b3, b4 / std, b5 - b4 * mean / std


# ----------------------------------------------------------------------------------------- correlations
def orient(values: ArrayLike, *, higher_is_better: bool) -> np.ndarray:
    """Values turned into "higher = more different": negated for similarities (PSNR, SSIM, MOS).

    Example:
        >>> orient([1.0, 2.0], higher_is_better=True).tolist()
        [-1.0, -2.0]
    """
    a = np.asarray(values, dtype=np.float64)
    return -a if check_bool("higher_is_better", higher_is_better) else a


def _point_stats(
    x: np.ndarray, y: np.ndarray, scipy: ModuleType, start: Sequence[float] | None = None
) -> dict[str, Any]:
    # A 5-parameter curve passes through (or next to) up to 5 points whatever they are: PLCC near 1 and RMSE near 0
    # would say nothing of the metric (3 points always give PLCC = 1), so there is no fit. What counts is the
    # metric's distinct values: over at most 5 of them the curve reaches the mean score of each, in any order (3
    # values with mean scores low, high, low give PLCC near 1 for an SROCC near 0), and bootstrap resamples repeat
    # items.
    fit = np.unique(x).size > LOGISTIC_PARAMETERS
    plcc = rmse = math.nan
    params: Sequence[float] = ()
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            srocc = float(scipy.stats.spearmanr(x, y).statistic)
            krocc = float(scipy.stats.kendalltau(x, y).statistic)
            plcc_raw = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else math.nan
            if fit:
                params = fit_logistic(x, y, start=start)
                fitted = logistic5(x, *params)
                plcc = float(np.corrcoef(fitted, y)[0, 1]) if np.std(fitted) > 0 and np.std(y) > 0 else math.nan
                rmse = float(np.sqrt(np.mean((fitted - y) ** 2)))
    return {"srocc": srocc, "krocc": krocc, "plcc": plcc, "rmse": rmse, "plcc_linear": plcc_raw,
            "logistic": list(params)}


def _check_bootstrap(bootstrap: Any, seed: Any) -> tuple[int, int]:
    """``bootstrap`` and ``seed`` as Python ints (numpy integers accepted), both non-negative."""
    for name, v in (("bootstrap", bootstrap), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            what = " (number of resamples)" if name == "bootstrap" else ""
            raise ValueError(f"{name} must be a non-negative integer{what}, got {v!r}")
    return int(bootstrap), int(seed)


def correlations(
    distances: ArrayLike,
    scores: ArrayLike,
    *,
    higher_is_better: bool = False,
    score_higher_is_better: bool = False,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of a metric with human scores: SROCC, KROCC, PLCC after the 5-parameter logistic, RMSE.

    Args:
        distances: the metric's value per item.
        scores: the human score per item (DMOS by default: higher = worse).
        higher_is_better: the *metric* is a similarity (PSNR, SSIM): its values are negated first.
        score_higher_is_better: the *human scores* are qualities (MOS): they are negated first.
        bootstrap: number of bootstrap resamples of the items for confidence intervals (0: none).
        confidence: the central coverage of the percentile intervals.
        seed: seed of the bootstrap resampling (a non-negative integer).

    Returns:
        ``{"n", "srocc", "krocc", "plcc", "rmse", "plcc_linear", "logistic", "ci"}``. Correlations are
        oriented so that a good metric gives positive values (see the module docstring). ``plcc`` is Pearson's
        r between the logistic-fitted values and the (oriented) scores, ``rmse`` the fit's residual in score
        units, ``plcc_linear`` Pearson's r without the fit, ``logistic`` the fit's parameters (on the oriented
        values; empty where there is no fit, see below). ``ci`` maps each of srocc/krocc/plcc/rmse to
        ``[low, high]`` (percentile bootstrap: items resampled as oriented (value, score) pairs, each resample's
        statistic computed as the point estimate is, numpy's percentiles of them; the interval need not contain the
        point estimate with few items or few resamples, see docs/evaluation.md) or is empty without bootstrap;
        resamples where a statistic is undefined are left out while they are at most ``1 - confidence`` of all,
        beyond that its interval is NaN. Statistics that are undefined are NaN: correlations of constant input
        (all values or all scores tied), and PLCC and RMSE where at most :data:`LOGISTIC_PARAMETERS` (5) distinct
        values of the metric leave the 5-parameter fit nothing to test (it would pass through every point, or
        through the mean score of each value whatever their order: 3 points always give PLCC 1 and RMSE 0), so
        there is no fit.

    Example:
        >>> import numpy as np
        >>> d = np.array([0.1, 0.4, 0.2, 0.8, 0.6, 0.9])
        >>> dmos = np.array([10.0, 35.0, 22.0, 70.0, 50.0, 80.0])
        >>> r = correlations(d, dmos)
        >>> round(r["srocc"], 3), round(r["krocc"], 3), r["n"]
        (1.0, 1.0, 6)
        >>> round(correlations(-d, dmos, higher_is_better=True)["srocc"], 3)  # a similarity, same ranking
        1.0
        >>> r = correlations(d, dmos, bootstrap=50, seed=1)
        >>> sorted(r["ci"])
        ['krocc', 'plcc', 'rmse', 'srocc']
    """
    scipy = _require_scipy("correlations")
    # a flag given as text ("False") would flip a sign silently
    higher_is_better = check_bool("higher_is_better", higher_is_better)
    score_higher_is_better = check_bool("score_higher_is_better", score_higher_is_better)
    x = orient(_as_1d("distances", distances), higher_is_better=higher_is_better)
    y = orient(_as_1d("scores", scores), higher_is_better=score_higher_is_better)
    n = _same_length(distances=x, scores=y)
    bootstrap, seed = _check_bootstrap(bootstrap, seed)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    out: dict[str, Any] = {"n": n, **_point_stats(x, y, scipy)}
    out["ci"] = {}
    if bootstrap and n >= 3:
        rng = np.random.default_rng(seed)
        samples: dict[str, list[float]] = {k: [] for k in STATISTICS}
        for _ in range(bootstrap):
            idx = rng.integers(0, n, size=n)
            st = _point_stats(x[idx], y[idx], scipy, start=out["logistic"] or None)
            for k in STATISTICS:
                samples[k].append(st[k])
        lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
        for k, v in samples.items():
            arr = np.asarray(v, dtype=np.float64)
            arr = arr[np.isfinite(arr)]
            # Resamples where the statistic is undefined (all values tied) are left out only while they are at
            # most 1 - confidence of all: beyond that, the interval of the rest would say nothing of the whole. The
            # slack absorbs the rounding of confidence * bootstrap (0.68 * 75 is 51.00000000000001, not 51).
            enough = arr.size and arr.size >= confidence * bootstrap - 1e-9 * bootstrap
            out["ci"][k] = [float(np.percentile(arr, lo)), float(np.percentile(arr, hi))] if enough else [
                math.nan, math.nan]
    return out


def group_indices(groups: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    """Indices of the items of each group, groups in order of first appearance.

    Example:
        >>> {k: v.tolist() for k, v in group_indices(["jpeg", "blur", "jpeg"]).items()}
        {'jpeg': [0, 2], 'blur': [1]}
    """
    out: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def grouped_correlations(
    distances: ArrayLike,
    scores: ArrayLike,
    groups: Sequence[Hashable] | None = None,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`correlations` over all items (key ``"all"``) and per group (keys ``str(group)``).

    Options go to :func:`correlations`. Groups with fewer than 3 items get ``n`` and NaN statistics. A group
    named ``"all"``, or two groups with the same ``str``, raise :class:`ValueError` (their results would clash).

    Example:
        >>> r = grouped_correlations([1, 2, 3, 4, 5, 6], [1, 2, 3, 6, 5, 4], ["a"] * 3 + ["b"] * 3)
        >>> list(r), round(r["a"]["srocc"], 2), round(r["b"]["srocc"], 2)
        (['all', 'a', 'b'], 1.0, -1.0)
    """
    d = _as_1d("distances", distances)
    s = _as_1d("scores", scores)
    _same_length(distances=d, scores=s)
    indices = {} if groups is None else group_indices(groups)
    if groups is not None:
        if len(groups) != len(d):
            raise ValueError(f"groups must have one label per item ({len(d)}), got {len(groups)}")
        names = [str(g) for g in indices]
        if "all" in names or len(set(names)) < len(names):
            clash = "all" if "all" in names else next(k for k in names if names.count(k) > 1)
            raise ValueError(f"group {clash!r} cannot be told apart from "
                             + ("the overall statistics ('all')" if clash == "all" else "another group") + " in the "
                             "results; rename it")
    out = {"all": correlations(d, s, **options)}
    for g, idx in indices.items():
        out[str(g)] = correlations(d[idx], s[idx], **options) if len(idx) >= 3 else _empty(len(idx))
    return out


def _empty(n: int) -> dict[str, Any]:
    return {"n": n, **{k: math.nan for k in STATISTICS}, "plcc_linear": math.nan, "logistic": [], "ci": {}}


def summarize(values: Mapping[str, float]) -> float:
    """Mean of per-subset scores (as LPIPS's evaluator reports): ``summarize({"a": 0.6, "b": 0.8})`` → 0.7.

    Example:
        >>> round(summarize({"a": 0.6, "b": 0.8}), 6)
        0.7
    """
    if not values:
        raise ValueError("values must not be empty")
    return float(np.mean(list(values.values())))
