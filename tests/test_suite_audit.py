"""The dev benchmark's checks, report and cache against hand computations on small synthetic inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import patchmmd.evaluation.suite as suite
from patchmmd.evaluation import CacheMismatchError
from patchmmd.evaluation.shift import SHIFTS, shift_distances
from patchmmd.evaluation.suite import HumanSet, SuiteConfig, SuiteMetric, parse_candidate, run_suite
from test_suite import tiny_human_set

DEEP = ["lpips-vgg", "lpips-alex", "dists"]


def stats(srocc: float) -> dict[str, Any]:
    return {"n": 10, "srocc": srocc, "krocc": srocc, "plcc": srocc, "ci": {"srocc": [srocc - 0.1, srocc]}}


def synthetic(*, live: float = 0.97, csiq: dict[str, float] | None = None, shift: tuple[float, float] = (0.1, 0.1),
              sr: dict[str, dict[str, Any]] | None = None, ae: dict[str, dict[str, Any]] | None = None,
              gim: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``data`` dict shaped as :func:`run_suite` returns it, for the candidate ``mmdpp``."""
    csiq = {"mmdpp": 0.9, "lpips-vgg": 0.85, "lpips-alex": 0.8, "dists": 0.88} if csiq is None else csiq
    med = {"shift-1px": shift[0], "shift-1px-diag": shift[1], "shift-2px": 1.0, "shift-0.5px": 0.2}
    row = {"dists": 0.2, "lpips-vgg": 0.3, "psnr": 25.0, "ssim": 0.8, "sharpness": 0.5, "seconds": 1.0}
    sr = {"mmdpp": {**row, "lattice": 1.0}, "l2": {**row, "dists": 0.25, "lattice": 1.0},
          "lpips-vgg": {**row, "dists": 0.195, "lattice": 1.0}} if sr is None else sr
    ae = {"mmdpp": {**row, "sharpness": 0.6}, "l2": {**row, "dists": 0.3, "sharpness": 0.1}} if ae is None else ae
    gim = {"mmdpp": {**row, "sharpness": 0.6}, "l2": {**row, "dists": 0.3, "sharpness": 0.1}} if gim is None else gim
    cfg = {**{k: v for k, v in vars(SuiteConfig()).items()}, "training_seeds": [0]}
    return {
        "command": "eval suite", "config": cfg, "weights": "w", "candidates": ["mmdpp"],
        "metrics": {m: {"name": m, "options": {}, "role": "candidate" if m == "mmdpp" else "baseline",
                        "higher_is_better": m == "ssim"} for m in ["mmdpp", "l2", "ssim", *DEEP]},
        "losses": ["mmdpp", "l2", "ssim", "lpips-vgg"], "judges": ["dists", "lpips-vgg"], "notes": [],
        "seconds": {"human": 1.0, "shift": 1.0, "tasks": 1.0, "total": 3.0},
        "human": {"live-dev": {"labels": "l.csv", "n_scored": 10, "metrics": {"mmdpp": {"all": stats(live)},
                                                                             **{d: {"all": stats(0.9)} for d in DEEP}}},
                  "csiq-dev": {"labels": "c.csv", "n_scored": 10,
                               "metrics": {m: {"all": stats(v)} for m, v in csiq.items()}}},
        "shift": {"photos": ["sample/a"], "size": 48, "metrics": {"mmdpp": {"median": med, "max": med}}},
        "tiles": {"n": 3, "size": 128, "source": "test"},
        "tasks": {"sr": sr, "ae": ae, "gim": gim},
    }


def checks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = suite._checks(data, ["mmdpp"], DEEP)["mmdpp"]
    out = {r["check"]: r for r in rows}
    assert len(out) == len(rows)  # one row per check with one set of each kind
    return out


# ------------------------------------------------------------------------------------- the check rules
def test_every_rule_at_its_threshold_as_docs_evaluation_md_states_it() -> None:
    c = checks(synthetic())
    assert {k: r["pass"] for k, r in c.items()} == dict.fromkeys(suite.CHECKS, True)
    assert not checks(synthetic(live=0.9599))["human-live"]["pass"] and checks(synthetic(live=0.96))[
        "human-live"]["pass"]
    tie = {"mmdpp": 0.88, "lpips-vgg": 0.85, "lpips-alex": 0.8, "dists": 0.88}  # ≥ the best: a tie passes
    assert checks(synthetic(csiq=tie))["human-csiq"]["pass"] is True
    assert checks(synthetic(csiq={**tie, "mmdpp": 0.8799}))["human-csiq"]["pass"] is False
    assert "dists 0.880" in checks(synthetic(csiq=tie))["human-csiq"]["value"]  # the best deep metric is named
    assert checks(synthetic(shift=(0.15, 0.15)))["shift"]["pass"] is True
    assert checks(synthetic(shift=(0.01, 0.1501)))["shift"]["pass"] is False  # the diagonal counts too
    assert checks(synthetic(shift=(0.1501, 0.01)))["shift"]["pass"] is False

    def sr(d: float, lattice: float = 1.0, d_l2: float = 0.25, d_lp: float = 0.2) -> dict[str, dict[str, Any]]:
        return {"mmdpp": {"dists": d, "lattice": lattice, "sharpness": 1.0}, "l2": {"dists": d_l2, "lattice": 1.0},
                "lpips-vgg": {"dists": d_lp, "lattice": 1.0}}

    # beats L2: strictly lower DISTS; within 5 %: d ≤ 1.05 × the LPIPS-vgg loss's DISTS (its DISTS the base)
    assert checks(synthetic(sr=sr(0.25)))["sr-vs-l2"]["pass"] is False
    assert checks(synthetic(sr=sr(0.2499)))["sr-vs-l2"]["pass"] is True
    assert checks(synthetic(sr=sr(0.21, d_lp=0.2)))["sr-vs-lpips"]["pass"] is True  # 5.0 % behind
    assert checks(synthetic(sr=sr(0.2102, d_lp=0.2)))["sr-vs-lpips"]["pass"] is False  # 5.1 % behind
    # 0.2 vs 0.19: 5.26 % behind the LPIPS-vgg loss's value (the base), only 5.0 % of the candidate's: a fail
    assert checks(synthetic(sr=sr(0.2, d_lp=0.19)))["sr-vs-lpips"]["pass"] is False
    assert checks(synthetic(sr=sr(0.1, d_lp=0.2)))["sr-vs-lpips"]["pass"] is True  # ahead of it
    assert checks(synthetic(sr=sr(0.2, lattice=2.0)))["sr-lattice"]["pass"] is True
    assert checks(synthetic(sr=sr(0.2, lattice=2.001)))["sr-lattice"]["pass"] is False
    assert checks(synthetic(sr=sr(0.2, lattice=math.nan)))["sr-lattice"]["pass"] is False

    def pair(sharp: float, d: float) -> dict[str, dict[str, Any]]:
        return {"mmdpp": {"dists": d, "sharpness": sharp}, "l2": {"dists": 0.3, "sharpness": 0.1}}

    for task in ("ae", "gim"):
        key = f"{task}-vs-l2"
        assert checks(synthetic(**{task: pair(0.2, 0.29)}))[key]["pass"] is True
        assert checks(synthetic(**{task: pair(0.1, 0.29)}))[key]["pass"] is False  # as sharp is not sharper
        assert checks(synthetic(**{task: pair(0.2, 0.3)}))[key]["pass"] is False  # as close is not closer
        assert checks(synthetic(**{task: pair(0.05, 0.2)}))[key]["pass"] is False  # closer but blurrier


def test_a_deep_metric_without_an_srocc_is_no_mark_whatever_its_place() -> None:
    # max() over the deep metrics kept a NaN SROCC when it came first (every candidate then failed) and dropped
    # it when it came later: the outcome depended on the order of the weights folder's metrics
    for nan_at in DEEP:
        csiq = {"mmdpp": 0.9, "lpips-vgg": 0.85, "lpips-alex": 0.8, "dists": 0.88, nan_at: math.nan}
        row = checks(synthetic(csiq=csiq))["human-csiq"]
        assert row["pass"] is True, (nan_at, row)
        assert "nan" not in row["value"]
    row = checks(synthetic(csiq={"mmdpp": 0.9, **dict.fromkeys(DEEP, math.nan)}))["human-csiq"]
    assert row["pass"] is None and "NaN" in row["note"]
    assert checks(synthetic(csiq={"mmdpp": math.nan, "lpips-vgg": 0.5}))["human-csiq"]["pass"] is False


def test_a_value_beside_its_mark_is_printed_with_the_digits_that_tell_them_apart() -> None:
    # 0.9596 was printed "SROCC 0.960 (≥ 0.960)" beside a FAIL: the report read as a wrong verdict
    assert checks(synthetic(live=0.958))["human-live"]["value"] == "live-dev: SROCC 0.958 (≥ 0.960)"
    row = checks(synthetic(live=0.9596))["human-live"]
    assert row["pass"] is False and row["value"] == "live-dev: SROCC 0.9596 (≥ 0.9600)"
    row = checks(synthetic(csiq={"mmdpp": 0.8996, "dists": 0.9}))["human-csiq"]
    assert row["pass"] is False and row["value"] == "csiq-dev: SROCC 0.8996 vs dists 0.9000"
    row = checks(synthetic(shift=(0.1504, 0.01)))["shift"]
    assert row["pass"] is False and row["value"] == "1 px 0.1504, diagonal 0.0100 (≤ 0.1500)"
    assert checks(synthetic(shift=(0.007, 0.009)))["shift"]["value"] == "1 px 0.007, diagonal 0.009 (≤ 0.150)"
    sr = synthetic()["tasks"]["sr"]
    sr["mmdpp"] = {**sr["mmdpp"], "dists": 0.24094, "lattice": 2.0004}
    sr["l2"] = {**sr["l2"], "dists": 0.2409}
    c = checks(synthetic(sr=sr))
    assert c["sr-vs-l2"]["pass"] is False and c["sr-vs-l2"]["value"] == "DISTS 0.24094 vs L2 0.24090"
    assert c["sr-lattice"]["pass"] is False and c["sr-lattice"]["value"] == "lattice ratio 2.0004 (≤ 2)"
    ae = {"mmdpp": {"dists": 0.29996, "sharpness": 0.1004}, "l2": {"dists": 0.3, "sharpness": 0.1}}
    row = checks(synthetic(ae=ae))["ae-vs-l2"]
    assert row["pass"] is True and row["value"] == "sharpness 0.1004 vs L2 0.1000; DISTS 0.29996 vs L2 0.30000"


def test_missing_judges_and_diverged_references_are_not_judged() -> None:
    row = {"psnr": 25.0, "ssim": 0.8, "sharpness": 0.5}
    data = synthetic(sr={"mmdpp": {**row, "lattice": 1.0}, "l2": {**row, "lattice": 1.0}},
                     ae={"mmdpp": row, "l2": row}, gim={"mmdpp": row, "l2": row})
    c = checks(data)
    for key in ("sr-vs-l2", "sr-vs-lpips", "ae-vs-l2", "gim-vs-l2"):
        assert c[key]["pass"] is None and "no DISTS judge" in c[key]["note"]
    assert c["sr-lattice"]["pass"] is True
    sr = synthetic()["tasks"]["sr"]
    sr["lpips-vgg"] = {"diverged": "seed 0: at step 3", "seconds": 1.0}
    c = checks(synthetic(sr=sr))
    assert c["sr-vs-lpips"]["pass"] is None and "lpips-vgg loss's training diverged" in c["sr-vs-lpips"]["note"]
    assert c["sr-vs-l2"]["pass"] is True


# ------------------------------------------------------------------------------------------ the shift
def test_the_shift_summary_is_over_every_photo_even_two_with_the_same_name() -> None:
    # two references with the same stem (a/x.png and b/x.png of one set) had one name: the per-photo results
    # were a dict keyed by it, so the median and max were taken over one photo fewer than the report said
    l2 = suite._build(SuiteMetric("l2", "l2", {}, "baseline"))
    g = torch.Generator().manual_seed(0)
    photos = [torch.rand(3, 24, 24, generator=g), torch.rand(3, 24, 24, generator=g).mul(0.2),
              torch.rand(3, 24, 24, generator=g).mul(0.5)]
    names = ["set/x", "set/y", "set/x"]
    cfg = SuiteConfig.quick_config(shift_size=24)
    out = suite._shift(photos, names, [l2], cfg, lambda s: None, None)
    per = out["metrics"]["l2"]["per_photo"]
    assert len(per) == len(out["photos"]) == 3 and out["photos"][0] == "set/x"
    by_hand = []
    for i, img in enumerate(photos):  # d(shift) / min(d(noise), d(blur)), the noise seeded with seed + i
        d = shift_distances(l2.distance, img, seed=cfg.seed + i)
        by_hand.append({k: d[k] / min(d["noise"], d["blur"]) for k in SHIFTS})
    for k in SHIFTS:
        values = sorted(r[k] for r in by_hand)
        assert out["metrics"]["l2"]["median"][k] == pytest.approx(values[1], rel=1e-5)
        assert out["metrics"]["l2"]["max"][k] == pytest.approx(values[2], rel=1e-5)
    assert suite._unique_names(["a", "b", "a", "a"]) == ["a", "b", "a (2)", "a (3)"]


# ---------------------------------------------------------------------------------------- parsing
def test_a_stray_bracket_in_a_candidate_is_refused_not_swallowed() -> None:
    # "num_scales=3),seed=1": the depth went below zero and no later comma split, so seed=1 became part of
    # num_scales's value (a string option silently took in the options after it)
    for spec in ("mmdpp:preset=loss),seed=1", "mmdpp:scale_weights=[1,2,1,seed=1", "mmdpp:a=1]"):
        with pytest.raises(ValueError, match="unbalanced brackets"):
            parse_candidate(spec)
    assert parse_candidate("mmdpp:scale_weights=[1, [2], 1],seed=1") == ("mmdpp", {"scale_weights": [1, [2], 1],
                                                                                   "seed": 1})


# ----------------------------------------------------------------------------------------- the report
def test_the_report_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # write_text without an encoding used the locale's: under an ASCII (or Windows cp1252) locale the report's
    # σ, ×, ≥ could not be written, and the run ended after all its work without a report
    data = synthetic()
    data["checks"] = suite._checks(data, ["mmdpp"], DEEP)
    (tmp_path / "data.json").write_text(json.dumps(data))
    code = ("import json, sys; from patchmmd.evaluation.suite import SuiteResult, write_suite; "
            "d = json.loads(open(sys.argv[1], encoding='utf-8').read()); "
            "write_suite(SuiteResult(d), sys.argv[2], figures=False)")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data.json"), str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, encoding="utf-8")
    assert res.returncode == 0, res.stderr[-2000:]
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "σ 0.03" in md and "SR ×4" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["candidates"] == ["mmdpp"]


def test_the_report_prints_the_checks_and_numbers_of_the_data(tmp_path: Path) -> None:
    data = synthetic(sr={"mmdpp": {"dists": 0.2262, "lattice": 1.4219, "sharpness": 0.5},
                         "l2": {"dists": 0.2409, "lattice": 0.94}, "lpips-vgg": {"dists": 0.2096, "lattice": 2.78}})
    data["shift"]["metrics"]["mmdpp"]["median"]["shift-1px"] = math.nan
    data["checks"] = suite._checks(data, ["mmdpp"], DEEP)
    suite.write_suite(suite.SuiteResult(data), tmp_path, figures=False)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| mmdpp | sr-vs-lpips | **FAIL** | DISTS 0.2262 vs LPIPS-vgg loss 0.2096 (≤ +5 %) |" in md
    assert "| mmdpp | sr-vs-l2 | **pass** | DISTS 0.2262 vs L2 0.2409 |" in md
    assert "| mmdpp | sr-lattice | **pass** | lattice ratio 1.422 (≤ 2) |" in md
    assert "| mmdpp | shift | **FAIL** |" in md
    assert "| mmdpp | – (" in md  # the NaN median reads as a dash in the shift table
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert "NaN" not in text and json.loads(text)["shift"]["metrics"]["mmdpp"]["median"]["shift-1px"] is None


# ------------------------------------------------------------------------------------------ the run
def test_two_human_sets_with_one_name_are_refused(tmp_path: Path) -> None:
    # their results are keyed by name: the second overwrote the first in report.json and the checks
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    human = [HumanSet("live", tiny_human_set(tmp_path / "a")), HumanSet("live", tiny_human_set(tmp_path / "b"))]
    cfg = SuiteConfig.quick_config(bootstrap=0, human_limit=4, shift_size=24, gim_steps=1, sr_steps=1, ae_steps=1)
    with pytest.raises(ValueError, match="two human sets are named 'live'"):
        run_suite(["l2"], human=human, config=cfg)


class Stop(Exception):
    """Stands for a crash or a kill."""


def test_human_values_of_another_version_are_refused_on_resume(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # the human part's values are kept by the runner's cache, whose settings held no version: a run interrupted
    # before its first shift entry, resumed under another patchmmd, reused the old version's values silently
    human = [HumanSet("live-tiny", tiny_human_set(tmp_path))]
    cfg = SuiteConfig.quick_config(bootstrap=0, human_limit=4, shift_size=24, gim_steps=1, sr_steps=1, ae_steps=1)

    def stop_at_shift(line: str) -> None:
        if line.startswith("shift:"):
            raise Stop(line)

    cache = tmp_path / "cache"
    with pytest.raises(Stop):
        run_suite(["l2"], human=human, config=cfg, cache=cache, log=stop_at_shift)
    with pytest.raises(Stop):  # the same versions: reused, nothing refused
        run_suite(["l2"], human=human, config=cfg, cache=cache, log=stop_at_shift)
    versions = suite._versions()
    monkeypatch.setattr(suite, "_versions", lambda: {**versions, "patchmmd": "0.0.0+other"})
    with pytest.raises(CacheMismatchError, match="patchmmd"):
        run_suite(["l2"], human=human, config=cfg, cache=cache, log=stop_at_shift)


def test_a_candidate_that_cannot_be_a_training_loss_is_refused_before_any_work() -> None:
    """It was refused only when the tasks started, after the human sets and the shift check had run."""
    from patchmmd.evaluation.suite import SuiteConfig, run_suite

    lines: list[str] = []
    with pytest.raises(ValueError, match="psnr: metric 'psnr' cannot be a training loss"):
        run_suite(["psnr"], config=SuiteConfig.quick_config(), log=lines.append)
    assert not any(line.startswith(("shift", "human")) for line in lines), lines
