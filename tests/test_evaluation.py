"""Statistics of patchmmd.evaluation.stats against hand-computed values and independent scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from patchmmd.evaluation.stats import (
    correlations,
    fit_logistic,
    group_indices,
    grouped_correlations,
    jnd_map,
    logistic5,
    summarize,
    two_afc_score,
    two_afc_scores,
    voc_ap,
)


def test_two_afc_hand_computed() -> None:
    # d0<d1 -> 1-g ; d1<d0 -> g ; tie -> 0.5
    d0, d1, g = [1, 2, 3, 4], [2, 1, 3, 5], [0.3, 0.6, 0.9, 1.0]
    assert two_afc_scores(d0, d1, g).tolist() == pytest.approx([0.7, 0.6, 0.5, 0.0])
    assert two_afc_score(d0, d1, g) == pytest.approx(0.45)


def test_two_afc_column_vectors_and_errors() -> None:
    assert two_afc_score(np.ones((3, 1)), np.zeros((3, 1)), np.full((3, 1), 0.25)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same length"):
        two_afc_score([1, 2], [1], [0.5, 0.5])
    with pytest.raises(ValueError, match="judge must hold fractions"):
        two_afc_score([1], [2], [1.5])
    with pytest.raises(ValueError, match="finite"):
        two_afc_score([math.nan], [2], [0.5])
    with pytest.raises(ValueError, match="empty"):
        two_afc_score([], [], [])


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10), st.floats(0, 1)), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_two_afc_symmetry(rows: list[tuple[float, float, float]]) -> None:
    d0, d1, g = (np.array(c) for c in zip(*rows, strict=True))
    s = two_afc_score(d0, d1, g)
    assert 0.0 <= s <= 1.0
    assert two_afc_score(d1, d0, 1 - g) == pytest.approx(s)  # swapping p0/p1
    # the majority-vote ceiling bounds every distance
    assert s <= np.mean(np.maximum(g, 1 - g)) + 1e-12


def test_jnd_map_hand_computed() -> None:
    assert jnd_map([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert jnd_map([0.4, 0.3, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(0.5)
    assert jnd_map([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]) == pytest.approx(1.0)
    # fractional judgments: precision 1/2, 3/4, 1/2 at recall 1/3, 1, 1 -> 1/3*3/4 + 2/3*3/4
    assert jnd_map([0.1, 0.2, 0.3], [0.5, 1.0, 0.0]) == pytest.approx(0.75)


def test_voc_ap_matches_envelope_definition() -> None:
    assert voc_ap([0.5, 0.5, 1.0, 1.0], [1.0, 0.5, 2 / 3, 0.5]) == pytest.approx(5 / 6)
    assert voc_ap([1.0], [1.0]) == pytest.approx(1.0)


def test_jnd_map_errors() -> None:
    with pytest.raises(ValueError, match="undefined"):
        jnd_map([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="same must hold fractions"):
        jnd_map([0.1], [2.0])


@given(st.lists(st.tuples(st.floats(0, 1), st.sampled_from([0.0, 0.25, 1.0])), min_size=2, max_size=25))
@settings(max_examples=50, deadline=None)
def test_jnd_map_monotone_invariance(rows: list[tuple[float, float]]) -> None:
    d, s = (np.array(c) for c in zip(*rows, strict=True))
    if s.sum() == 0:
        return
    m = jnd_map(d, s)
    assert 0.0 <= m <= 1.0 + 1e-12
    assert jnd_map(2 * d, s) == pytest.approx(m)  # only the ranking matters (exact scaling keeps ties)


def test_logistic_fit_recovers_and_beats_line() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 60)
    y = logistic5(x, 50.0, 1.2, 5.0, 0.5, 20.0) + rng.normal(0, 1, x.size)
    p = fit_logistic(x, y)
    assert np.sqrt(np.mean((logistic5(x, *p) - y) ** 2)) < 1.3
    line = np.polyval(np.polyfit(x, y, 1), x)
    assert np.sum((logistic5(x, *p) - y) ** 2) <= np.sum((line - y) ** 2) + 1e-9
    assert fit_logistic([1, 1, 1], [1, 2, 3])[0] == 0.0  # constant x: a flat line, no crash


def test_correlations_against_scipy_and_orientation() -> None:
    rng = np.random.default_rng(1)
    d = rng.uniform(0, 1, 40)
    dmos = 80 * d + rng.normal(0, 10, 40)
    r = correlations(d, dmos)
    assert r["n"] == 40
    assert r["srocc"] == pytest.approx(scipy.stats.spearmanr(d, dmos).statistic)
    assert r["krocc"] == pytest.approx(scipy.stats.kendalltau(d, dmos).statistic)
    assert r["plcc_linear"] == pytest.approx(scipy.stats.pearsonr(d, dmos).statistic)
    fitted = logistic5(d, *r["logistic"])
    assert r["plcc"] == pytest.approx(scipy.stats.pearsonr(fitted, dmos).statistic)
    assert r["rmse"] == pytest.approx(np.sqrt(np.mean((fitted - dmos) ** 2)))
    assert r["srocc"] > 0.8 and r["plcc"] >= r["plcc_linear"] - 1e-9
    # a similarity against DMOS, a distance against MOS, a similarity against MOS: all positive, same value
    for kw, dd, ss in [({"higher_is_better": True}, -d, dmos), ({"score_higher_is_better": True}, d, -dmos),
                       ({"higher_is_better": True, "score_higher_is_better": True}, -d, -dmos)]:
        r2 = correlations(dd, ss, **kw)
        assert r2["srocc"] == pytest.approx(r["srocc"])
        assert r2["krocc"] == pytest.approx(r["krocc"])
        assert r2["plcc"] == pytest.approx(r["plcc"], abs=1e-6)
    # ...while forgetting the orientation gives negative values
    assert correlations(-d, dmos)["srocc"] == pytest.approx(-r["srocc"])


def test_correlations_bootstrap() -> None:
    rng = np.random.default_rng(2)
    d = rng.uniform(0, 1, 30)
    y = d + rng.normal(0, 0.2, 30)
    r = correlations(d, y, bootstrap=100, seed=3)
    for k in ("srocc", "krocc", "plcc", "rmse"):
        lo, hi = r["ci"][k]
        assert lo <= hi
        assert lo - 0.05 <= r[k] <= hi + 0.05
    assert correlations(d, y, bootstrap=100, seed=3)["ci"] == r["ci"]  # seeded
    assert correlations(d, y)["ci"] == {}
    with pytest.raises(ValueError, match="bootstrap"):
        correlations(d, y, bootstrap=-1)


def test_correlations_constant_input_is_nan() -> None:
    r = correlations([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(r["srocc"]) and math.isnan(r["plcc_linear"])


def test_grouping() -> None:
    assert {k: v.tolist() for k, v in group_indices(["b", "a", "b"]).items()} == {"b": [0, 2], "a": [1]}
    r = grouped_correlations([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 6, 5, 4, 9], ["a"] * 3 + ["b"] * 3 + ["c"])
    assert list(r) == ["all", "a", "b", "c"]
    assert r["a"]["srocc"] == pytest.approx(1.0) and r["b"]["srocc"] == pytest.approx(-1.0)
    assert r["c"]["n"] == 1 and math.isnan(r["c"]["srocc"])
    with pytest.raises(ValueError, match="one label per item"):
        grouped_correlations([1, 2, 3], [1, 2, 3], ["a"])
    assert summarize({"x": 0.5, "y": 1.0}) == pytest.approx(0.75)


def test_importable_without_cli_dependencies() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['click'] = None; sys.modules['matplotlib'] = None; "
            "import patchmmd.evaluation.datasets; from patchmmd.evaluation.stats import two_afc_score; "
            "print(two_afc_score([1], [2], [0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.0"
