"""The dev benchmark, third audit: what the command refuses before it touches --out, and the report's numbers
recomputed independently from the cached per-item values."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from patchmmd.cli import main
from patchmmd.evaluation.runner import cache_file_name
from patchmmd.evaluation.suite import HumanSet, SuiteConfig, run_suite
from test_baselines import _published_weights
from test_suite import tiny_human_set


def _earlier_run(out: Path) -> dict[str, bytes]:
    """An output folder as an earlier run left it (what --overwrite deletes): report, a figure, a cache entry."""
    (out / "cache").mkdir(parents=True)
    files = {"report.md": b"# an earlier report", "report.json": b"{}", "figure-sr.png": b"png",
             "cache/sr-l2-seed0-0.json": b"{}"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


@pytest.mark.parametrize("args, option, message", [
    (["--candidate", "mmdpp:patch_size=banana"], "--candidate", "patch_size must be an integer"),
    (["--candidate", "mmdpp:no_such_option=1"], "--candidate", "no_such_option"),
    (["--candidate", "psnr"], "--candidate", "cannot be a training loss"),
    (["--candidate", "mmdpp", "--candidate", "mmdpp:patch_size=0"], "--candidate", "patch_size"),  # --quick's 2nd
    (["--weights", "PARTIAL"], "--weights", "lpips/vgg.pth not found"),
])
def test_what_the_run_would_refuse_is_refused_before_overwrite_empties_the_folder(
        tmp_path: Path, args: list[str], option: str, message: str) -> None:
    # the candidates' options and the weights folder were checked by run_suite, after --overwrite had deleted
    # the earlier report, figures and cache: a typo in an option lost a finished run (and was no usage error)
    partial = tmp_path / "weights"
    partial.mkdir()
    (partial / "vgg16.pth").write_bytes(b"")
    out = tmp_path / "out"
    files = _earlier_run(out)
    args = [a.replace("PARTIAL", str(partial)) for a in args]
    res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--no-figures", *args, "--out", str(out),
                                    "--overwrite"])
    assert res.exit_code == 2, res.output
    assert option in res.output and message in res.output
    assert {name: (out / name).read_bytes() for name in files} == files


def test_a_bad_human_labels_file_is_a_usage_error_naming_human_before_any_work(tmp_path: Path) -> None:
    # an image missing under a labels file was reported as "Invalid value for --weights" (every FileNotFoundError
    # of the run was taken for a weight file); a labels file that is not UTF-8 was reported without its name
    labels = tiny_human_set(tmp_path)
    missing = tmp_path / "missing.csv"
    missing.write_text(labels.read_text().replace("astronaut_noise1.png", "gone.png"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    for path, message in ((missing, "gone.png"), (binary, "not UTF-8")):
        out = tmp_path / f"out-{path.stem}"
        res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--no-figures", "--human", f"live={path}",
                                        "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert "--human" in res.output and "--weights" not in res.output
        assert message in res.output and str(path) in res.output
        assert not out.exists()  # refused before the output folder (and its lock) is made


# ------------------------------------------------------------------ the numbers, recomputed from the cache
def _percentile_interval(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> list[float]:
    """The 95 % percentile bootstrap interval of SROCC as docs/evaluation.md states it: items resampled with
    numpy's default_rng(seed), resamples where SROCC is undefined left out (while at most 5 % of all)."""
    rng = np.random.default_rng(seed)
    values = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # a resample of tied values: SROCC undefined
        for _ in range(resamples):
            i = rng.integers(0, len(x), size=len(x))
            values.append(stats.spearmanr(x[i], y[i]).statistic)
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size < 0.95 * resamples - 1e-9 * resamples or not arr.size:
        return [math.nan, math.nan]
    return [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))]


def test_the_report_is_an_independent_recomputation_of_the_cached_values(tmp_path: Path) -> None:
    labels = tiny_human_set(tmp_path)
    cfg = SuiteConfig.quick_config(bootstrap=40, seed=3, shift_size=24, gim_steps=1, sr_steps=2, ae_steps=2,
                                   task_seeds=2, human_limit=None)
    cache = tmp_path / "cache"
    data = run_suite(["mmdpp"], human=[HumanSet("live-tiny", labels)], config=cfg, cache=cache).data

    rows = list(csv.DictReader(open(labels, newline="")))
    dmos = np.array([float(r["dmos"]) for r in rows])
    groups = [r["distortion"] for r in rows]
    h = data["human"]["live-tiny"]
    (folder,) = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("human-live-tiny-")]
    for label, st in h["metrics"].items():
        values = json.loads((folder / cache_file_name(label)).read_text())["values"]
        x_all = np.array([v[0] for v in values]) * (-1 if data["metrics"][label]["higher_is_better"] else 1)
        for g, r in st.items():
            idx = np.arange(len(rows)) if g == "all" else np.array([i for i, k in enumerate(groups) if k == g])
            x, y = x_all[idx], dmos[idx]
            assert r["n"] == len(idx)
            assert r["srocc"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12), (label, g)
            assert r["krocc"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12), (label, g)
            assert r["ci"]["srocc"] == pytest.approx(_percentile_interval(x, y, 40, 3), abs=1e-12, nan_ok=True)

    # the checks, as docs/evaluation.md states them, on the numbers report.json holds
    checks = {r["check"]: r["pass"] for r in data["checks"]["mmdpp"]}
    assert checks["human-live"] == (h["metrics"]["mmdpp"]["all"]["srocc"] >= 0.96)
    med = data["shift"]["metrics"]["mmdpp"]["median"]
    assert checks["shift"] == (med["shift-1px"] <= 0.15 and med["shift-1px-diag"] <= 0.15)
    assert checks["sr-lattice"] == (data["tasks"]["sr"]["mmdpp"]["lattice"] <= 2)
    for key in ("human-csiq", "sr-vs-l2", "sr-vs-lpips"):  # no csiq set, no weights: not judged
        assert checks[key] is None
    per_photo = data["shift"]["metrics"]["mmdpp"]["per_photo"]
    for k, v in med.items():
        assert v == pytest.approx(statistics.median(p[k] for p in per_photo.values()), rel=1e-5)

    # every training number is the mean over the seeds of the runs kept in the cache, each run listed
    for task in ("sr", "ae"):
        for loss, r in data["tasks"][task].items():
            if loss.startswith("bicubic"):
                continue
            runs = []
            for seed in cfg.training_seeds:
                entries = [json.loads(p.read_text()) for p in cache.glob(f"{task}-*-seed{seed}-*.json")]
                (entry,) = [e for e in entries if e["settings"]["loss"]["label"] == loss]
                runs.append(entry["result"])
            assert r["per_seed"]["seeds"] == list(cfg.training_seeds)
            for key in ("psnr", "ssim", "sharpness", *(("lattice",) if task == "sr" else ())):
                assert r["per_seed"][key] == [run[key] for run in runs]
                assert r[key] == pytest.approx(statistics.fmean(run[key] for run in runs), rel=1e-5)


def test_the_command_with_the_published_weights_refuses_a_removed_weight_file_before_work(tmp_path: Path) -> None:
    weights = tmp_path / "w"
    shutil.copytree(_published_weights(), weights)  # (skips without them)
    (weights / "dists.pt").unlink()
    res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--no-figures", "--weights", str(weights),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--weights" in res.output and "dists.pt not found" in res.output
    assert not (tmp_path / "out").exists()
