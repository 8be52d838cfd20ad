"""Statistics of patchmmd.evaluation.stats against hand-computed values and independent scipy computations;
evaluation.run and report.write on a tiny synthetic MOS set, without the CLI."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchmmd import evaluation
from patchmmd.evaluation import CacheMismatchError, EvalMetric, EvaluationError, MOSDataset, Progress, run, write
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
            "sys.modules['scipy'] = None; sys.modules['PIL'] = None; "
            "import patchmmd.evaluation.datasets; from patchmmd.evaluation.stats import two_afc_score; "
            "from patchmmd.evaluation import run, write, MOSDataset, BAPPS2AFC, correlations; "
            "print(two_afc_score([1], [2], [0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.0"


# ------------------------------------------------------------------------------- run + write, no CLI
def tiny_mos(folder: Path, n: int = 5) -> Path:
    """A 32x32 reference, ``n`` copies with growing noise (DMOS growing with it) and one unscored identical row."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 32, 32, generator=g) * 0.5 + 0.25
    from patchmmd.io import save_image

    save_image(ref, folder / "ref.png")
    rows = ["reference,distorted,distortion,dmos"]
    for i in range(n):
        save_image((ref + (i + 1) * 0.03 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1), folder / f"d{i}.png")
        rows.append(f"ref.png,d{i}.png,{'ab'[i % 2]},{10 * (i + 1)}")
    rows.append("ref.png,ref.png,a,")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


class Counting:
    """l2 on batches, counting the pairs it was called on."""

    def __init__(self) -> None:
        self.pairs = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.pairs += x.shape[0]
        return (x - y).pow(2).flatten(1).mean(1)


def test_run_and_write_mos_without_cli(tmp_path: Path) -> None:
    ds = MOSDataset(tiny_mos(tmp_path / "data"), group_column="distortion")
    events: list[Progress] = []
    counting = Counting()
    metrics = [EvalMetric("mse", counting, options={"k": 1}), "psnr"]
    result = run(ds, metrics, cache=tmp_path / "cache", batch_size=2, progress=events.append, bootstrap=20)
    assert result.kind == "mos" and result.metric_names == ["mse", "psnr"] and result.n == 6
    assert counting.pairs == 6 + 1 and result.scored == [0, 1, 2, 3, 4]  # + the unscored row's (ref, ref)
    for name in ("mse", "psnr"):  # a distance and a similarity (negated): both rank the DMOS exactly
        res = result.metrics[name]
        assert res["all"]["srocc"] == pytest.approx(1.0) and res["all"]["krocc"] == pytest.approx(1.0)
        assert list(res) == ["higher_is_better", "group", "all", "a", "b"] and res["a"]["n"] == 3
        assert set(res["all"]["ci"]) == {"srocc", "krocc", "plcc", "rmse"}
        assert result.unscored[name][0]["identical"] and result.unscored[name][0]["ok"]
    assert result.values["mse"][5] == [0.0]
    # progress: start, one event per batch of 2 (equal sizes), per metric
    assert [(e.metric, e.done) for e in events] == [("mse", 0), ("mse", 2), ("mse", 4), ("mse", 6),
                                                    ("psnr", 0), ("psnr", 2), ("psnr", 4), ("psnr", 6)]
    assert all(e.total == 6 and e.cached is None for e in events)
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {"mse.json", "psnr.json"}

    report = write(result, tmp_path / "out", plots=False)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.md", "report.json", "scores.csv"}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["n_rows"] == 6 and data["n_scored"] == 5 and data["group_column"] == "distortion"
    assert data["metrics"]["mse"]["all"]["srocc"] == pytest.approx(1.0) and data["unscored_rows"]["psnr"][0]["ok"]
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "metric,reference,distorted,group,value,dmos" and len(rows) == 1 + 2 * 6
    assert rows[6] == "mse,ref.png,ref.png,a,0,"
    assert report.summary.startswith("## Summary (SROCC / KROCC / PLCC)")
    assert "| mse | 1.000 / 1.000 /" in report.summary
    assert (tmp_path / "out" / "report.md").read_text() == report.markdown

    # the cache: a rerun with the same settings recomputes no item (only the unscored row's check on (ref, ref));
    # other settings are refused
    events.clear()
    again = run(ds, metrics, cache=tmp_path / "cache", progress=events.append, bootstrap=20)
    assert counting.pairs == 7 + 1 and again.values == result.values and again.metrics["mse"] == result.metrics["mse"]
    assert [(e.metric, e.done, e.cached) for e in events] == [("mse", 6, tmp_path / "cache" / "mse.json"),
                                                              ("psnr", 6, tmp_path / "cache" / "psnr.json")]
    with pytest.raises(CacheMismatchError, match="other settings") as info:
        run(ds, metrics, cache=tmp_path / "cache", limit=4)
    assert info.value.path == tmp_path / "cache" / "mse.json" and info.value.cached_settings["n"] == 6
    with pytest.raises(CacheMismatchError):
        run(ds, [EvalMetric("mse", counting, options={"k": 2})], cache=tmp_path / "cache")


def test_write_with_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = run(MOSDataset(tiny_mos(tmp_path / "data")), ["l2"], bootstrap=0)
    report = result.write(tmp_path / "out")
    assert report.plots == {"l2": "plot-l2.png"} and (tmp_path / "out" / "plot-l2.png").stat().st_size > 1000
    assert "![l2](plot-l2.png)" in report.markdown
    evaluation.remove_outputs(tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_run_errors(tmp_path: Path) -> None:
    ds = MOSDataset(tiny_mos(tmp_path / "data"))
    with pytest.raises(EvaluationError, match="returned 1 values for 2 pairs"):
        run(ds, [EvalMetric("one", lambda x, y: torch.zeros(1))], batch_size=2, bootstrap=0)
    with pytest.raises(EvaluationError, match="'nan' returned a non-finite value"):
        run(ds, [EvalMetric("nan", lambda x, y: torch.full((x.shape[0],), math.nan))], bootstrap=0)

    def bad(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ValueError("images too small")

    with pytest.raises(EvaluationError, match=r"^bad: images too small$"):
        run(ds, [EvalMetric("bad", bad)], bootstrap=0)
    with pytest.raises(EvaluationError, match=r"only 2 row\(s\) with a score among the first 2"):
        run(ds, ["l2"], limit=2)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        run(ds, ["nope"])
    with pytest.raises(ValueError, match="batch_size"):
        run(ds, ["l2"], batch_size=0)
    with pytest.raises(TypeError, match="BAPPS2AFC, BAPPSJND or MOSDataset"):
        run([1, 2, 3], ["l2"])  # type: ignore[arg-type]  # the wrong type on purpose


def test_library_errors_name_no_cli_flags() -> None:
    """Messages of the evaluation package never quote a command-line option (the CLI adds them)."""
    folder = Path(evaluation.__file__).parent
    for path in sorted(folder.glob("*.py")):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        flags = re.findall(r"[\"'(`\s]--[a-z][a-z-]+", code)
        assert not flags, f"{path.name} names CLI flags: {flags}"


def _strict_json(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_report_json_is_strict_json_with_null_for_nan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A constant metric has no rank correlation (NaN): report.json says null, never a bare NaN."""
    from patchmmd.evaluation import suite as suite_module

    result = run(MOSDataset(tiny_mos(tmp_path / "data")), [EvalMetric("flat", lambda x, y: torch.zeros(x.shape[0]))],
                 bootstrap=0)
    assert math.isnan(result.metrics["flat"]["all"]["srocc"])
    write(result, tmp_path / "out", plots=False)
    report = _strict_json((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"]["flat"]["all"]["srocc"] is None  # type: ignore[index]
    monkeypatch.setattr(suite_module, "_markdown", lambda data, names: "")  # it needs a whole suite's data
    data = {"candidates": [], "value": math.nan, "nested": [{"x": math.inf}, (1.5, -math.inf)]}
    suite = suite_module.SuiteResult(data)
    suite_module.write_suite(suite, tmp_path / "suite", figures=False)
    assert _strict_json((tmp_path / "suite" / "report.json").read_text()) == {
        "candidates": [], "value": None, "nested": [{"x": None}, [1.5, None]]}


def test_cache_refuses_values_of_other_rows(tmp_path: Path) -> None:
    """Cached values belong to the rows they were computed on: a reordered CSV must not reuse them."""
    labels = tiny_mos(tmp_path / "data")
    first = run(MOSDataset(labels), ["l2"], cache=tmp_path / "cache", bootstrap=0)
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], *reversed(lines[1:6]), lines[6]]) + "\n")  # same n, other order
    with pytest.raises(CacheMismatchError, match="other settings"):
        run(MOSDataset(labels), ["l2"], cache=tmp_path / "cache", bootstrap=0)
    assert run(MOSDataset(labels), ["l2"], bootstrap=0).metrics["l2"]["all"]["srocc"] == pytest.approx(
        first.metrics["l2"]["all"]["srocc"])


def test_group_names_cannot_clash_with_result_keys(tmp_path: Path) -> None:
    """A group called "all" (or "group") would silently replace the overall statistics (or the metadata)."""
    labels = tiny_mos(tmp_path / "data", n=6)
    text = labels.read_text()
    for name in ("all", "group", "higher_is_better"):
        (tmp_path / "data" / "l.csv").write_text(text.replace(",a,", f",{name},"))
        counting = Counting()
        with pytest.raises(evaluation.DatasetError, match=f"group '{name}' in column 'distortion' clashes") as info:
            run(MOSDataset(tmp_path / "data" / "l.csv", group_column="distortion"), [EvalMetric("c", counting)])
        assert info.value.parameter == "group_column" and counting.pairs == 0  # before any metric runs
    with pytest.raises(ValueError, match="group 'all' cannot be told apart from the overall statistics"):
        grouped_correlations([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5], ["all"] * 3 + ["b"] * 3)
    with pytest.raises(ValueError, match="group '1' cannot be told apart from another group"):
        grouped_correlations([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5], [1] * 3 + ["1"] * 3)


def test_bootstrap_and_seed_checked_before_metrics_run(tmp_path: Path) -> None:
    counting = Counting()
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        run(MOSDataset(tiny_mos(tmp_path / "data")), [EvalMetric("c", counting)], seed=-1)
    assert counting.pairs == 0
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        correlations([1, 2, 3, 4], [1, 2, 4, 3], bootstrap=5, seed=-1)
    r = correlations([1, 2, 3, 4], [1, 2, 4, 3], bootstrap=np.int64(5), seed=np.int64(1))
    assert r["ci"] == correlations([1, 2, 3, 4], [1, 2, 4, 3], bootstrap=5, seed=1)["ci"]


def test_damaged_cache_file_is_computed_again(tmp_path: Path) -> None:
    """A cache file that cannot be decoded (cut short by a crash while an earlier version wrote it, or damaged on
    disk) holds nothing usable: it is ignored with a warning naming it, the metric is computed again and the
    file replaced. A readable file with other settings is still refused."""
    ds = MOSDataset(tiny_mos(tmp_path / "data"))
    counting = Counting()
    metric = EvalMetric("mse", counting)
    cache = tmp_path / "cache"
    first = run(ds, [metric], cache=cache, bootstrap=0)
    path = cache / "mse.json"
    good = json.loads(path.read_text())
    assert counting.pairs == 7 and [p.name for p in cache.iterdir()] == ["mse.json"]  # no temporary file left
    wrong_rows = json.dumps({**good, "values": good["values"][:-1]}).encode()
    for damaged in (path.read_bytes()[:40], b"", b"\xff\xfe{", b"[1, 2]", wrong_rows):
        path.write_bytes(damaged)
        pairs = counting.pairs
        with pytest.warns(RuntimeWarning, match=r"the cache file .*mse\.json is damaged \(.*\); ignoring it"):
            again = run(ds, [metric], cache=cache, bootstrap=0)
        assert counting.pairs == pairs + 7  # computed again (6 items and the unscored row's check)
        assert again.values == first.values and again.metrics == first.metrics
        assert {k: v for k, v in json.loads(path.read_text()).items() if k != "seconds"} == {
            k: v for k, v in good.items() if k != "seconds"}
        assert [p.name for p in cache.iterdir()] == ["mse.json"]
    pairs = counting.pairs
    run(ds, [metric], cache=cache, bootstrap=0)  # the replaced file is read back
    assert counting.pairs == pairs + 1
    path.write_text(json.dumps({**good, "values": [], "settings": {**good["settings"], "n": 3}}))
    with pytest.raises(CacheMismatchError, match="other settings"):
        run(ds, [metric], cache=cache, bootstrap=0)


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache file is written to a temporary file in the same folder, then renamed over it: a write that fails
    half-way leaves the previous file (or none) and no temporary file, and an unreadable file is named."""
    ds = MOSDataset(tiny_mos(tmp_path / "data"))
    cache = tmp_path / "cache"
    path = cache / "l2.json"
    cache.mkdir()
    path.write_bytes(b'{"settings": {"kind": "mo')  # a partial file, as an in-place write cut short left it

    def fail(src: str, dst: str) -> None:
        assert Path(src).parent == cache and Path(src).read_bytes().endswith(b"}")  # the whole file, fsynced
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.warns(RuntimeWarning, match="damaged"), pytest.raises(OSError, match="No space left"):
        run(ds, ["l2"], cache=cache, bootstrap=0)
    assert [p.name for p in cache.iterdir()] == ["l2.json"] and path.read_bytes() == b'{"settings": {"kind": "mo'
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match="damaged"):
        run(ds, ["l2"], cache=cache, bootstrap=0)
    assert [p.name for p in cache.iterdir()] == ["l2.json"] and json.loads(path.read_text())["settings"]["n"] == 6

    from patchmmd._trust import read_controlled
    from patchmmd.evaluation import runner as runner_module

    def unreadable(p: Path) -> bytes:
        if Path(p) == path:
            raise PermissionError(13, "Permission denied", str(p))
        return read_controlled(p)

    monkeypatch.setattr(runner_module, "read_controlled", unreadable)
    with pytest.raises(EvaluationError, match=r"cannot read the cache file .*l2\.json: Permission denied; remove it"):
        run(ds, ["l2"], cache=cache, bootstrap=0)


def test_bootstrap_interval_is_nan_when_many_resamples_are_undefined() -> None:
    """With x = [1, 1, 2] a third of the resamples have tied x (SROCC undefined): an interval from the other two
    thirds would not describe the whole, so it is NaN. A few undefined resamples are left out."""
    r = correlations([1, 1, 2], [1, 2, 3], bootstrap=200, seed=0)
    assert math.isnan(r["ci"]["srocc"][0]) and math.isnan(r["ci"]["srocc"][1])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    x[:2] = x[2]  # three tied values among 30: undefined resamples are rare (none here)
    lo, hi = correlations(x, y, bootstrap=200, seed=0)["ci"]["srocc"]
    assert -1 <= lo < hi <= 1


# ------------------------------------------------------------------ audit: independent references, edge cases
def test_logistic_fit_finds_a_saturated_jump() -> None:
    """Scores that jump from about 20 to about 80 between two metric values, the jump falling between two centres of
    the fit's starting grid: a steep logistic is a step, so the fit must do at least as well as the two levels' means
    (it stopped in another basin at RMSE 6.8, PLCC 0.972)."""
    x = np.array([0.05, 1.12, 1.15, 1.22, 1.28, 2.99, 3.55, 5.42, 7.46, 8.79, 8.82, 9.01, 9.31, 9.37, 9.79])
    y = np.array([17.7, 21.6, 22.9, 19.3, 21.5, 19.3, 20.8, 20.9, 77.2, 78.5, 81.9, 76.2, 80.0, 79.3, 78.2])
    steps = np.where(x < 6, y[:8].mean(), y[8:].mean())
    step_rmse = float(np.sqrt(np.mean((steps - y) ** 2)))  # 1.63
    for xs in (x, 30 + 1e-4 * x, -x):  # the fit is invariant to the scale, offset and direction of the values
        r = correlations(xs, y)
        assert r["rmse"] <= step_rmse
        assert r["plcc"] >= scipy.stats.pearsonr(steps, y).statistic - 1e-9
        fitted = logistic5(xs, *r["logistic"])
        assert r["rmse"] == pytest.approx(np.sqrt(np.mean((fitted - y) ** 2)))


def test_plcc_and_rmse_undefined_with_at_most_five_distinct_points() -> None:
    """The 5-parameter logistic passes through any 3 points (and next to any 4 or 5): PLCC 1 and RMSE 0 there say
    nothing of the metric (PLCC was 1.000 for an SROCC of -0.5). Rank correlations stay defined."""
    r = correlations([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    assert r["srocc"] == pytest.approx(-0.5) and r["krocc"] == pytest.approx(scipy.stats.kendalltau(
        [1, 2, 3], [3, 1, 2]).statistic)
    assert math.isnan(r["plcc"]) and math.isnan(r["rmse"]) and r["logistic"] == []  # no fit
    assert r["plcc_linear"] == pytest.approx(-0.5)
    rng = np.random.default_rng(0)
    for n in (4, 5):
        assert math.isnan(correlations(rng.normal(size=n), rng.normal(size=n))["plcc"])
    # repeated items are one point: 6 rows, 5 distinct pairs
    assert math.isnan(correlations([1, 2, 3, 4, 5, 5], [2, 1, 4, 3, 5, 5])["rmse"])
    six = correlations([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert 0 < six["plcc"] < 1 and six["rmse"] > 0
    # a group of 3 in grouped results, and bootstrap resamples of 6 items (most have at most 5 distinct items)
    g = grouped_correlations([1, 2, 3, 4, 5, 6, 7], [3, 1, 2, 4, 6, 5, 7], ["a"] * 3 + ["b"] * 4)
    assert g["a"]["n"] == 3 and math.isnan(g["a"]["plcc"]) and g["a"]["srocc"] == pytest.approx(-0.5)
    ci = correlations([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5], bootstrap=50, seed=0)["ci"]
    assert all(math.isnan(v) for v in ci["plcc"] + ci["rmse"]) and not math.isnan(ci["srocc"][0])


def test_bootstrap_intervals_match_refitting_each_resample() -> None:
    """The bootstrap refits the logistic on each resample: its intervals must be those of fitting every resample as
    the point estimate is fitted (same resamples, numpy percentiles). A fit started only from the point estimate's
    parameters stayed in their basin: on nearly linear data PLCC's interval was 0.06 off, RMSE's 5 %."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 27)
    y = 30 * x + rng.normal(0, 5, 27)
    r = correlations(x, y, bootstrap=100, seed=0)
    g = np.random.default_rng(0)
    plcc, rmse, srocc = [], [], []
    for _ in range(100):
        idx = g.integers(0, 27, size=27)  # pairs resampled with replacement
        xx, yy = x[idx], y[idx]
        fitted = logistic5(xx, *fit_logistic(xx, yy))
        plcc.append(scipy.stats.pearsonr(fitted, yy).statistic)
        rmse.append(np.sqrt(np.mean((fitted - yy) ** 2)))
        srocc.append(scipy.stats.spearmanr(xx, yy).statistic)
    assert r["ci"]["srocc"] == pytest.approx(np.percentile(srocc, [2.5, 97.5]), abs=1e-12)
    assert r["ci"]["plcc"] == pytest.approx(np.percentile(plcc, [2.5, 97.5]), abs=0.005)
    assert r["ci"]["rmse"] == pytest.approx(np.percentile(rmse, [2.5, 97.5]), rel=0.01)


def test_report_says_what_an_undefined_statistic_means(tmp_path: Path) -> None:
    """A group of 3 has no PLCC (nor RMSE): report.md shows – and says why, in the summary front ends print;
    report.json holds null. A JND subset without any 'same' judgment has no AP, and the report says so."""
    ds = MOSDataset(tiny_mos(tmp_path / "data", n=9), group_column="distortion")  # groups of 5 and 4
    result = run(ds, ["l2"], bootstrap=0)
    assert result.metrics["l2"]["all"]["n"] == 9 and not math.isnan(result.metrics["l2"]["all"]["plcc"])
    assert math.isnan(result.metrics["l2"]["b"]["plcc"])
    report = write(result, tmp_path / "out", plots=False)
    assert "| l2 | 1.000 / 1.000 / " in report.summary and "1.000 / 1.000 / – |" in report.summary
    assert "–: undefined (null in report.json)" in report.summary and "at most 5 distinct" in report.summary
    data = _strict_json((tmp_path / "out" / "report.json").read_text())
    assert data["metrics"]["l2"]["b"]["plcc"] is None and data["metrics"]["l2"]["b"]["rmse"] is None  # type: ignore[index]
    # JND: a subset where nobody judged a pair 'same'
    from patchmmd.io import save_image

    for subset, same in (("traditional", [1.0, 0.0]), ("cnn", [0.0, 0.0])):
        base = tmp_path / "bapps" / "jnd" / "val" / subset
        for part in ("p0", "p1", "same"):
            (base / part).mkdir(parents=True)
        for i, s in enumerate(same):
            save_image(torch.full((3, 32, 32), 0.5), base / "p0" / f"{i:06d}.png")
            save_image(torch.full((3, 32, 32), 0.5 + 0.1 * (i + 1)), base / "p1" / f"{i:06d}.png")
            np.save(base / "same" / f"{i:06d}.npy", np.array([s]))
    jnd = run(evaluation.BAPPSJND(tmp_path / "bapps", load_size=None), ["l2"])
    assert jnd.metrics["l2"]["subsets"]["traditional"] == pytest.approx(1.0)
    assert math.isnan(jnd.metrics["l2"]["subsets"]["cnn"]) and math.isnan(jnd.metrics["l2"]["mean"])
    rep = write(jnd, tmp_path / "jnd-out", plots=False)
    assert "| l2 | 1.000 | – | **–** |" in rep.summary and "no pair of the subset was judged 'same'" in rep.summary
    assert _strict_json((tmp_path / "jnd-out" / "report.json").read_text())["metrics"]["l2"]["mean"] is None  # type: ignore[index]


def test_non_finite_metric_value_names_the_item(tmp_path: Path) -> None:
    """A metric that fails on one image (NaN or infinity) stops the run with the row it failed on, not only the
    metric's name."""
    ds = MOSDataset(tiny_mos(tmp_path / "data"))

    def fails_on_identical(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mse = (x - y).pow(2).flatten(1).mean(1)
        return -10 * torch.log10(mse)  # PSNR without a cap: infinite on identical images

    with pytest.raises(EvaluationError, match=r"'psnr-raw' returned a non-finite value \(NaN or infinity\) on 1 "
                                              r"item\(s\): ref\.png -> ref\.png \(line 7\)"):
        run(ds, [EvalMetric("psnr-raw", fails_on_identical, higher_is_better=True)], batch_size=4, bootstrap=0)


def test_jnd_map_counts_tied_distances_as_one_step_whatever_their_order() -> None:
    """Pairs of equal distance are one step of the ranking: the same mAP for every order of the tied pairs, the
    value of precision and recall taken after the whole group (by hand: 2 same of 3 at the tie, then 1 of 1)."""
    d = [0.2, 0.2, 0.2, 0.5]
    s = [1.0, 0.0, 1.0, 1.0]
    # one step at recall 2/3 with precision 2/3, then recall 1 with precision 3/4: envelope 3/4 over both
    expected = (2 / 3) * 0.75 + (1 / 3) * 0.75
    for i in range(3):  # the tied pairs rotated: same=0 first, in the middle, last
        assert jnd_map(d, s[:3][i:] + s[:3][:i] + s[3:]) == pytest.approx(expected)
    assert jnd_map([0.1, 0.1], [1, 0]) == jnd_map([0.1, 0.1], [0, 1]) == pytest.approx(0.5)
    # without ties the steps are the pairs' own (unchanged)
    assert jnd_map([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx(5 / 6)
