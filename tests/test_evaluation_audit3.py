"""Third audit of the human-judgment evaluation (evaluation-audit3): statistics against independent references,
the logistic fit on a metric with few distinct values, direction flags, the bootstrap at tiny n."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")
import scipy.optimize
import scipy.stats

from patchmmd.evaluation import MOSDataset, run
from patchmmd.evaluation.runner import EvalMetric
from patchmmd.evaluation.stats import correlations, grouped_correlations, logistic5
from test_evalrun_audit import mos_set


def test_no_logistic_fit_over_at_most_five_distinct_metric_values() -> None:
    """A metric with 3 distinct values whose mean scores go low, high, low has an SROCC near 0, yet the logistic
    (linear term plus a step) reaches the three means: PLCC was 0.983 and said nothing of the metric. What counts
    is the metric's distinct values, not the distinct (value, score) pairs."""
    rng = np.random.default_rng(0)
    x = np.repeat([0.0, 1.0, 2.0], 20)
    y = np.repeat([0.0, 10.0, 0.0], 20) + rng.normal(0, 1, 60)
    r = correlations(x, y)
    assert abs(r["srocc"]) < 0.3
    assert math.isnan(r["plcc"]) and math.isnan(r["rmse"]) and r["logistic"] == []
    assert r["plcc_linear"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic)
    # five distinct values, many rows: still no fit; six: a fit
    x5 = np.repeat(np.arange(5.0), 6)
    assert math.isnan(correlations(x5, x5 + rng.normal(0, 1, 30))["plcc"])
    x6 = np.repeat(np.arange(6.0), 5)
    six = correlations(x6, x6 + rng.normal(0, 1, 30))
    assert 0 < six["plcc"] < 1 and six["rmse"] > 0 and len(six["logistic"]) == 5


def test_direction_flags_given_as_text_are_refused(tmp_path: Path) -> None:
    """``higher_is_better="False"`` is truthy: the values (or the scores) were negated and every correlation came out
    with the wrong sign (SROCC -1.0 for a perfect distance)."""
    d, s = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]
    for kw in ({"higher_is_better": "False"}, {"score_higher_is_better": "False"}, {"higher_is_better": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be True or False"):
            correlations(d, s, **kw)
    assert correlations(d, s, higher_is_better=np.bool_(False))["srocc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="higher_is_better must be True or False"):
        EvalMetric("m", lambda a, b: (a - b).pow(2).flatten(1).mean(1), higher_is_better="False")  # type: ignore[arg-type]
    calls = []

    def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a.shape[0])
        return (a - b).pow(2).flatten(1).mean(1)

    ds = MOSDataset(mos_set(tmp_path / "data"))  # the evaluation audit's tiny MOS set
    with pytest.raises(ValueError, match="score_higher_is_better must be True or False"):
        run(ds, [EvalMetric("l2", l2)], bootstrap=0, score_higher_is_better="no")  # type: ignore[arg-type]
    assert calls == []  # refused before any metric ran
    assert run(ds, [EvalMetric("l2", l2)], bootstrap=0).metrics["l2"]["all"]["srocc"] == pytest.approx(1.0)


@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)])
def test_statistics_per_group_match_scipy_on_tied_data(flags: tuple[bool, bool]) -> None:
    """SROCC (average ranks), Kendall's tau-b and PLCC after the fit against scipy, overall and per group, on data
    with ties in both the values and the scores, for every orientation: a similarity and/or a MOS give the values
    of the distance against DMOS."""
    higher, score_higher = flags
    rng = np.random.default_rng(5)
    d = np.round(rng.uniform(0, 1, 45) * 12) / 12  # 13 levels: ties
    dmos = np.round(40 * d + rng.normal(0, 6, 45))  # integer scores: ties
    groups = [("jpeg", "blur", "noise")[i % 3] for i in range(45)]
    vals = -d if higher else d
    scores = -dmos if score_higher else dmos
    r = grouped_correlations(vals, scores, groups, higher_is_better=higher, score_higher_is_better=score_higher)
    assert list(r) == ["all", "jpeg", "blur", "noise"]
    for g, res in r.items():
        idx = np.arange(45) if g == "all" else np.array([i for i in range(45) if groups[i] == g])
        x, y = d[idx], dmos[idx]
        assert res["n"] == len(idx)
        assert res["srocc"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert res["krocc"] == pytest.approx(scipy.stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
        assert res["plcc_linear"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
        fitted = logistic5(x, *res["logistic"])  # parameters apply to the oriented values: here d and dmos
        assert res["plcc"] == pytest.approx(scipy.stats.pearsonr(fitted, y).statistic, abs=1e-9)
        assert res["rmse"] == pytest.approx(np.sqrt(np.mean((fitted - y) ** 2)), abs=1e-9)
        # the fit is at least as good as scipy's curve_fit from the usual VQEG start
        p0 = [float(np.ptp(y)), 1.0 / float(np.std(x)), float(np.mean(x)), 0.0, float(np.mean(y))]
        p, _ = scipy.optimize.curve_fit(logistic5, x, y, p0=p0, maxfev=20000)
        assert np.sum((fitted - y) ** 2) <= np.sum((logistic5(x, *p) - y) ** 2) * (1 + 1e-6)


def test_bootstrap_is_the_percentile_method_over_jointly_resampled_oriented_pairs() -> None:
    """The open question (4 items, 5 resamples: SROCC 0.600 with an interval that does not contain it): the
    resampling is right (pairs resampled jointly, oriented as the point estimate, numpy's 2.5/97.5 percentiles of
    the resampled statistic); the interval misses the estimate because resamples of 4 items repeat items, which
    pulls a rank correlation towards 1, and 5 resamples put the percentiles between the extreme values."""
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 3.0])
    for seed in range(12):
        # a similarity against MOS: both negated, the same statistics as the distance against DMOS
        r = correlations(-x, -y, higher_is_better=True, score_higher_is_better=True, bootstrap=5, seed=seed)
        assert r["srocc"] == pytest.approx(0.6)
        g = np.random.default_rng(seed)
        srocc, krocc = [], []
        for _ in range(5):
            idx = g.integers(0, 4, size=4)
            srocc.append(scipy.stats.spearmanr(x[idx], y[idx]).statistic)
            krocc.append(scipy.stats.kendalltau(x[idx], y[idx], variant="b").statistic)
        if np.all(np.isfinite(srocc)):
            assert r["ci"]["srocc"] == pytest.approx(np.percentile(srocc, [2.5, 97.5]), abs=1e-12)
            assert r["ci"]["krocc"] == pytest.approx(np.percentile(krocc, [2.5, 97.5]), abs=1e-12)
        else:  # a resample of one item repeated: more than 5 % undefined, no interval
            assert all(math.isnan(v) for v in r["ci"]["srocc"])
    lo, _ = correlations(x, y, bootstrap=5, seed=6)["ci"]["srocc"]
    assert lo > 0.6  # the documented case: the percentile interval does not contain the estimate
