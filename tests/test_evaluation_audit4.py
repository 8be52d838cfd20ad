"""Fourth audit of the human-judgment evaluation (evaluation-audit4): the logistic fit against an independent
multi-start reference, PLCC over few items, BAPPS load sizes, the report's files against the computed numbers."""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")
import scipy.optimize
import scipy.stats

from patchmmd.evaluation import BAPPS2AFC, EvalMetric, MOSDataset, run, write
from patchmmd.evaluation.stats import correlations, fit_logistic, grouped_correlations, logistic5
from patchmmd.io import save_image
from test_evalrun_audit import invoke, make_2afc, mos_set


# ------------------------------------------------------------------------------------------- the logistic fit
def _reference_rss(x: np.ndarray, y: np.ndarray, starts: int = 60, seed: int = 0) -> float:
    """The least squared error of scipy's curve_fit over many starts: random ones, and a steep step in every gap
    between neighbouring values (an independent search of the basins, for the tests only)."""
    rng = np.random.default_rng(seed)
    xs = np.unique(x)
    p0s = [[rng.normal(0, 2) * np.ptp(y), math.exp(rng.uniform(-3, 5)) / x.std(),
            rng.uniform(x.min() - x.std(), x.max() + x.std()), rng.normal(0, 1) * np.ptp(y) / np.ptp(x), y.mean()]
           for _ in range(starts)]
    p0s += [[np.ptp(y) * sign, 30 / (b - a), (a + b) / 2, 0.0, y.mean()]
            for a, b in itertools.pairwise(xs) for sign in (1, -1)]
    best = math.inf
    for p0 in p0s:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                p, _ = scipy.optimize.curve_fit(logistic5, x, y, p0=p0, maxfev=20000)
            except (RuntimeError, ValueError):
                continue
        best = min(best, float(np.sum((logistic5(x, *p) - y) ** 2)))
    return best


def _jump_between_close_values() -> tuple[np.ndarray, np.ndarray]:
    """18 items: 6 scores near 28, 12 near 65, the jump between two metric values 0.0006 apart."""
    x = np.array([0.0615, 0.1176, 0.1426, 0.1428, 0.2274, 0.2692, 0.2698, 0.3707, 0.3862, 0.4081, 0.4314, 0.541,
                  0.6154, 0.6529, 0.7149, 0.7199, 0.8749, 0.973])
    y = np.array([24.6, 23.0, 32.2, 28.9, 31.7, 29.1, 64.6, 64.9, 67.5, 66.9, 62.7, 71.0, 67.7, 66.6, 62.9, 64.5,
                  65.8, 64.7])
    return x, y


def test_logistic_fit_finds_a_jump_between_two_close_values() -> None:
    """A saturated set whose jump falls between two close metric values (0.2692 and 0.2698): a search from a grid of
    centres stayed with the jump between the wrong neighbours (the error of a steep curve is flat between two values),
    RMSE 6.3 and PLCC 0.935, where the two levels' means give RMSE 2.7 and the best fit PLCC 0.989."""
    x, y = _jump_between_close_values()
    steps = np.where(x < 0.2695, y[:6].mean(), y[6:].mean())
    step_rss = float(np.sum((steps - y) ** 2))
    reference = _reference_rss(x, y)
    assert reference <= step_rss
    for xs in (x, 30 + 1e-3 * x, -x):  # invariant to the values' scale, offset and direction
        r = correlations(xs, y)
        assert r["rmse"] ** 2 * len(y) <= step_rss
        assert r["rmse"] ** 2 * len(y) <= reference * (1 + 1e-4)
        assert r["plcc"] >= scipy.stats.pearsonr(steps, y).statistic
        fitted = logistic5(xs, *r["logistic"])
        assert r["plcc"] == pytest.approx(scipy.stats.pearsonr(fitted, y).statistic)
    # the bootstrap's shorter fit (from an earlier fit's parameters) finds it too
    start = fit_logistic(x + 0.05 * np.sign(x - 0.2695), y)  # a fit of other data: its jump elsewhere
    assert np.sum((logistic5(x, *fit_logistic(x, y, start=start)) - y) ** 2) <= step_rss


@pytest.mark.parametrize("case", ["logistic", "linear", "jump", "saturated"])
def test_logistic_fit_is_the_best_of_many_starts_on_structured_small_sets(case: str) -> None:
    """On small sets (8 to 20 items) with a curve in them, the fit's squared error is curve_fit's best over many
    starts (random ones and a steep step in every gap); PLCC is never below the straight line's |r|."""
    for n in (8, 12, 20):
        rng = np.random.default_rng(n)
        x = np.sort(rng.uniform(0, 1, n))
        y = {"logistic": 80 / (1 + np.exp(-12 * (x - 0.5))) + rng.normal(0, 3, n),
             "linear": 50 * x + rng.normal(0, 2, n),
             "jump": np.where(np.arange(n) < n // 2, 20.0, 70.0) + rng.normal(0, 2, n),
             "saturated": 60 * (1 - np.exp(-6 * x)) + rng.normal(0, 1, n)}[case]
        r = correlations(x, y)
        rss = r["rmse"] ** 2 * n
        assert rss <= _reference_rss(x, y, seed=n) * (1 + 1e-3) + 1e-9
        assert r["plcc"] >= abs(r["plcc_linear"]) - 1e-12


def test_plcc_is_never_below_the_line_on_noise() -> None:
    """On scores unrelated to the metric the fit may stop in a basin that is not the deepest (it does not chase a
    step isolating the extreme values), but it is a least-squares fit: never worse than the line."""
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(6, 21))
        x, y = rng.uniform(0, 1, n), rng.normal(0, 10, n)
        r = correlations(x, y)
        assert r["plcc"] >= abs(scipy.stats.pearsonr(x, y).statistic) - 1e-12
        line = np.polyval(np.polyfit(x, y, 1), x)
        assert r["rmse"] ** 2 * n <= np.sum((line - y) ** 2) + 1e-9


def test_plcc_over_few_items_is_optimistic_as_the_report_says() -> None:
    """The figures report.md quotes: on scores unrelated to the metric, the median PLCC after the fit is about 0.9
    over 6 items, 0.7 over 10 and 0.5 over 20."""
    for n, quoted in ((6, 0.9), (10, 0.7), (20, 0.5)):
        rng = np.random.default_rng(100 + n)
        median = np.median([correlations(rng.uniform(size=n), rng.normal(size=n))["plcc"] for _ in range(200)])
        assert abs(median - quoted) < 0.06


def _mos_rows(folder: Path, groups: list[tuple[str, int]]) -> Path:
    """A MOS set: per group its number of rows; scores rise with the distortion, with a kink."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = torch.full((3, 8, 8), 0.5)
    save_image(ref, folder / "ref.png")
    rows, k = ["reference,distorted,dmos,distortion"], 0
    for g, n in groups:
        for _ in range(n):
            save_image((ref + 0.004 * (k + 1)).clamp(0, 1), folder / f"d{k}.png")
            rows.append(f"ref.png,d{k}.png,{(k + 1) + 3 * (k % 3)},{g}")
            k += 1
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_report_notes_that_plcc_over_few_items_is_optimistic(tmp_path: Path) -> None:
    """A group of 8 items got a PLCC in report.md (and the summary the CLI prints) with nothing saying that a
    5-parameter fit over so few items reads high whatever the metric; over 20 or more items there is no note."""
    small = run(MOSDataset(_mos_rows(tmp_path / "a", [("blur", 8), ("jpeg", 24)]), group_column="distortion"),
                ["l2"], bootstrap=0)
    assert small.metrics["l2"]["blur"]["n"] == 8 and not math.isnan(small.metrics["l2"]["blur"]["plcc"])
    report = write(small, tmp_path / "out-a", plots=False)
    assert "PLCC over fewer than 20 items is optimistic" in report.summary
    assert "compare such groups by SROCC" in report.markdown
    large = run(MOSDataset(_mos_rows(tmp_path / "b", [("blur", 20), ("jpeg", 24)]), group_column="distortion"),
                ["l2"], bootstrap=0)
    assert "optimistic" not in write(large, tmp_path / "out-b", plots=False).markdown


# --------------------------------------------------------------------------------------------- BAPPS load size
def test_load_size_has_an_upper_bound(tmp_path: Path) -> None:
    """``--load-size 100000`` upsampled every 256-pixel patch to 10^10 pixels (120 GB a patch): the size is bounded
    in the library (a ValueError naming the argument, not the option) and the CLI (a usage error, nothing read)."""
    root = make_2afc(tmp_path / "bapps")
    res = invoke("eval", "2afc", str(root), "-m", "l2", "--load-size", "1025", "--out", str(tmp_path / "out"),
                 "--no-plots")
    assert res.exit_code == 2 and "--load-size" in res.output and "1025 is above 1024" in res.output
    assert not (tmp_path / "out").exists()
    from patchmmd.evaluation.datasets import MAX_LOAD_SIZE

    assert BAPPS2AFC(root, load_size=MAX_LOAD_SIZE).load_size == MAX_LOAD_SIZE == 1024
    with pytest.raises(ValueError, match="load_size must be at most 1024") as e:
        BAPPS2AFC(root, load_size=MAX_LOAD_SIZE + 1)
    assert "--" not in str(e.value)
    res = invoke("eval", "2afc", str(root), "-m", "l2", "--load-size", "0", "--out", str(tmp_path / "out0"),
                 "--no-plots")
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------ the report's files
def test_unscored_row_that_is_not_identical_is_not_a_failed_check(tmp_path: Path) -> None:
    """A row without a score whose images differ has no value to check, yet report.md read "NO" in its `ok` column
    (report.json false), as if the metric had failed the identical-images check."""
    labels = mos_set(tmp_path / "data")
    save_image(torch.full((3, 16, 16), 0.9), tmp_path / "data" / "x.png")
    labels.write_text(labels.read_text() + "ref.png,ref.png,\nref.png,x.png,\n")
    result = run(MOSDataset(labels), ["l2"], bootstrap=0)
    checks = {c["distorted"]: c for c in result.unscored["l2"]}
    assert checks["ref.png"]["identical"] and checks["ref.png"]["ok"] is True
    assert not checks["x.png"]["identical"] and checks["x.png"]["ok"] is None
    report = write(result, tmp_path / "out", plots=False)
    assert "| l2 | x.png | False | " in report.markdown and "| not checked |" in report.markdown
    assert "| NO |" not in report.markdown
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["ok"] for c in data["unscored_rows"]["l2"]] == [True, None]


def test_scores_csv_holds_the_values_the_statistics_were_computed_from(tmp_path: Path) -> None:
    """scores.csv wrote 8 significant digits: values that differ further down read back as ties, and the SROCC of
    the file was 0.5 for a reported 1.0."""
    labels = mos_set(tmp_path / "data", n=4)

    def close(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        offset = (y - x).flatten(1).mean(1)  # 0.05, 0.10, ... per distorted image
        return 1.0 + 1e-10 * torch.round(offset / 0.05).double()

    result = run(MOSDataset(labels), [EvalMetric("close", close)], bootstrap=0)
    assert result.metrics["close"]["all"]["srocc"] == pytest.approx(1.0)
    write(result, tmp_path / "out", plots=False)
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values = [float(r["value"]) for r in rows]
    assert values == [v[0] for v in result.values["close"]]
    assert scipy.stats.spearmanr(values, [float(r["dmos"]) for r in rows]).statistic == pytest.approx(1.0)


def test_plots_of_an_earlier_run_are_removed(tmp_path: Path) -> None:
    """A report written into a folder with an earlier run's plots left them there: plot-psnr.png, its title giving
    the earlier run's SROCC and PLCC, beside a report that no longer evaluates psnr (or draws no plots at all)."""
    pytest.importorskip("matplotlib")
    ds = MOSDataset(mos_set(tmp_path / "data"))
    out = tmp_path / "out"
    write(run(ds, ["l2", "psnr"], bootstrap=0), out)
    assert {p.name for p in out.glob("plot-*.png")} == {"plot-l2.png", "plot-psnr.png"}
    (out / "plot-keep").mkdir()  # not a plot file: left alone
    rep = write(run(ds, ["l2"], bootstrap=0), out)
    assert {p.name for p in out.glob("plot-*.png")} == {"plot-l2.png"} and rep.plots == {"l2": "plot-l2.png"}
    write(run(ds, ["l2"], bootstrap=0), out, plots=False)
    assert not list(out.glob("plot-*.png")) and (out / "plot-keep").is_dir()


def test_a_cache_row_with_the_wrong_number_of_values_is_recomputed(tmp_path: Path) -> None:
    """A 2AFC cache file whose rows hold one value (not d0 and d1) was read back, and the statistics then failed
    with an IndexError; it is damaged like a file of non-finite values: a warning, and the metric computed again."""
    root = make_2afc(tmp_path / "bapps")
    ds = BAPPS2AFC(root, load_size=None)
    first = run(ds, ["l2"], cache=tmp_path / "cache")
    path = tmp_path / "cache" / "l2.json"
    data = json.loads(path.read_text())
    data["values"] = [row[:1] for row in data["values"]]
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="not 7 rows of 2 finite value"):
        again = run(ds, ["l2"], cache=tmp_path / "cache")
    assert again.values == first.values and again.metrics == first.metrics


# ------------------------------------------------------------------ ties, constants, NaN, tiny groups (checks)
def test_groups_with_ties_constants_and_one_item_against_scipy() -> None:
    """Per group: tied values and scores (scipy's SROCC and tau-b), a group of constant scores (every correlation
    undefined), a group of one item (all undefined, n kept); a NaN value is refused, never ranked."""
    d = [0.1, 0.2, 0.2, 0.4, 0.5, 0.3, 0.3, 0.3, 0.3, 0.9]
    s = [1.0, 2.0, 3.0, 3.0, 5.0, 7.0, 7.0, 7.0, 7.0, 4.0]
    g = ["t"] * 5 + ["c"] * 4 + ["one"]
    r = grouped_correlations(d, s, g, bootstrap=100, seed=0)
    assert r["t"]["srocc"] == pytest.approx(scipy.stats.spearmanr(d[:5], s[:5]).statistic)
    assert r["t"]["krocc"] == pytest.approx(scipy.stats.kendalltau(d[:5], s[:5]).statistic)
    assert r["all"]["srocc"] == pytest.approx(scipy.stats.spearmanr(d, s).statistic)
    assert all(math.isnan(r["c"][k]) for k in ("srocc", "krocc", "plcc", "rmse", "plcc_linear"))
    assert r["one"]["n"] == 1 and math.isnan(r["one"]["srocc"]) and r["one"]["ci"] == {}
    with pytest.raises(ValueError, match="distances must be finite"):
        correlations([0.1, float("nan"), 0.3], [1.0, 2.0, 3.0])
