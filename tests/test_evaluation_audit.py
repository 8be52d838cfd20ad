"""Regression tests of an audit of patchmmd.evaluation: statistics at their edges, dataset readers given malformed
label files, and reports with names and locales that broke them."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from patchmmd import evaluation
from patchmmd.evaluation import EvalMetric, MOSDataset, run, write
from patchmmd.evaluation import stats as stats_module
from patchmmd.evaluation.datasets import BAPPS2AFC, DatasetError
from patchmmd.evaluation.stats import correlations, voc_ap
from patchmmd.io import save_image


# ------------------------------------------------------------------------------------------------ statistics
def test_bootstrap_interval_kept_when_exactly_one_minus_confidence_of_resamples_are_undefined(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Undefined resamples are left out while they are at most ``1 - confidence`` of all: 24 of 75 at confidence
    0.68 is exactly that many (0.32 * 75 = 24), even though 0.68 * 75 is 51.00000000000001 in floating point."""
    original = stats_module._point_stats
    calls = {"n": 0, "undefined": 24}

    def some_undefined(*args: Any, **kwargs: Any) -> dict[str, Any]:
        out = original(*args, **kwargs)
        calls["n"] += 1
        if 2 <= calls["n"] <= 1 + calls["undefined"]:  # the first call is the point estimate, then the resamples
            out = {**out, "srocc": math.nan}
        return out

    monkeypatch.setattr(stats_module, "_point_stats", some_undefined)
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    r = correlations(x, x + rng.normal(size=12), bootstrap=75, confidence=0.68, seed=0)
    assert calls["n"] == 76
    lo, hi = r["ci"]["srocc"]
    assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
    calls.update(n=0, undefined=25)  # one more undefined resample: more than 1 - confidence, so no interval
    r = correlations(x, x + rng.normal(size=12), bootstrap=75, confidence=0.68, seed=0)
    assert all(math.isnan(v) for v in r["ci"]["srocc"])


def test_voc_ap_refuses_recall_and_precision_of_different_lengths() -> None:
    """Mismatched curves used to be integrated silently with the precision read off the wrong recall."""
    with pytest.raises(ValueError, match="recall and precision must have the same length, got 2 and 1"):
        voc_ap([0.5, 1.0], [1.0])
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------- MOS label CSV
def _images(folder: Path) -> None:
    save_image(torch.zeros(3, 8, 8), folder / "ref.png")
    for i in range(3):
        save_image(torch.full((3, 8, 8), 0.1 * (i + 1)), folder / f"d{i}.png")


def test_mos_csv_parse_error_names_the_file_and_line(tmp_path: Path) -> None:
    """A field over the csv module's limit (typically an unclosed quote) raised a bare ``_csv.Error``."""
    _images(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_text("reference,distorted,dmos\nref.png,d0.png,1\nref.png,\"" + "x" * 200_000 + "\",2\n")
    with pytest.raises(DatasetError, match=r"labels\.csv, line 3: not readable as CSV \(field larger"):
        MOSDataset(path)


def test_mos_columns_that_read_alike_are_refused(tmp_path: Path) -> None:
    """``dmos`` and ``DMOS`` both match the usual score column: which one was read depended on their order."""
    _images(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_text("reference,distorted,dmos,DMOS\nref.png,d0.png,1,9\nref.png,d1.png,2,8\n")
    with pytest.raises(DatasetError, match=r"2 columns that read as the score column 'dmos' \('dmos', 'DMOS'\)") as e:
        MOSDataset(path)
    assert e.value.parameter == "score_column" and "--" not in str(e.value)
    assert MOSDataset(path, score_column="DMOS").scores == [9.0, 8.0]  # named explicitly: no doubt
    assert MOSDataset(path, score_column="dmos").scores == [1.0, 2.0]


# ----------------------------------------------------------------------------------------------------- BAPPS
def _bapps(root: Path) -> Path:
    sub = root / "2afc" / "val" / "traditional"
    for part in ("ref", "p0", "p1", "judge"):
        (sub / part).mkdir(parents=True)
    for part in ("ref", "p0", "p1"):
        save_image(torch.full((3, 16, 16), 0.5), sub / part / "000000.png")
    np.save(sub / "judge" / "000000.npy", np.array([0.25]))
    return sub


@pytest.mark.parametrize("kind", ["empty", "npz", "text-number", "complex", "structured"])
def test_bapps_judge_file_that_is_not_one_real_number(tmp_path: Path, kind: str) -> None:
    """An empty file raised a bare EOFError, an .npz archive or strings a ValueError naming no file; numbers stored
    as text, complex or structured values were converted silently."""
    judge = _bapps(tmp_path) / "judge" / "000000.npy"
    if kind == "empty":
        judge.write_bytes(b"")
    elif kind == "npz":
        with open(judge, "wb") as f:
            np.savez(f, g=np.array([0.25]))
    elif kind == "text-number":
        np.save(judge, np.array(["0.25"]))
    elif kind == "complex":
        np.save(judge, np.array([0.25 + 0.5j]))
    else:
        np.save(judge, np.zeros(1, dtype=[("g", "f8")]))
    with pytest.raises(DatasetError, match=re.escape(str(judge))):
        BAPPS2AFC(tmp_path)[0]


def test_bapps_judge_file_of_other_real_dtypes_is_read(tmp_path: Path) -> None:
    judge = _bapps(tmp_path) / "judge" / "000000.npy"
    np.save(judge, np.array([[0.75]], dtype=np.float16))
    assert BAPPS2AFC(tmp_path)[0].judge == 0.75


def test_bapps_subset_folder_given_as_dot_keeps_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from inside a subset folder, ``BAPPS2AFC(".")`` named the subset ``""`` (and ``".."`` from below it)."""
    sub = _bapps(tmp_path)
    monkeypatch.chdir(sub)
    ds = BAPPS2AFC(".")
    assert ds.subsets == ["traditional"] and ds[0].subset == "traditional"
    monkeypatch.chdir(sub / "ref")
    assert BAPPS2AFC("..").subsets == ["traditional"]


# ---------------------------------------------------------------------------------------------------- report
def _mos_set(folder: Path, groups: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ref = torch.full((3, 16, 16), 0.5)
    save_image(ref, folder / "ref.png")
    rows = ["reference,distorted,distortion,dmos"]
    for i, g in enumerate(groups):
        save_image((ref + 0.05 * (i + 1)).clamp(0, 1), folder / f"d{i}.png")
        quoted = '"' + g.replace('"', '""') + '"'
        rows.append(f"ref.png,d{i}.png,{quoted},{10 * (i + 1)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "labels.csv"


def test_report_is_written_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """report.md (its "−" signs) and scores.csv (non-ASCII names) were written in the locale's encoding: under an
    ASCII locale (or Windows' cp1252) writing failed with UnicodeEncodeError."""
    labels = _mos_set(tmp_path / "data", ["flou-é"] * 3 + ["bruit"] * 3)
    code = ("import sys; from patchmmd.evaluation import MOSDataset, run, write; "
            "write(run(MOSDataset(sys.argv[1], group_column='distortion'), ['l2'], bootstrap=0), sys.argv[2], "
            "plots=False)")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run([sys.executable, "-c", code, str(labels), str(tmp_path / "out")], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "out" / "report.md").read_bytes().decode("utf-8")
    assert "0.5 − 1/(1+exp" in md and "| flou-é |" in md
    assert ",flou-é," in (tmp_path / "out" / "scores.csv").read_bytes().decode("utf-8")


def test_plot_file_of_a_metric_whose_name_is_no_file_name(tmp_path: Path) -> None:
    """``plot-<metric>.png`` for a metric named ``a/b:c`` was a path into a missing folder (FileNotFoundError);
    the name is made safe as for cache files, stays in the output folder, and is removed with the rest."""
    pytest.importorskip("matplotlib")
    labels = _mos_set(tmp_path / "data", ["x"] * 6)
    metric = EvalMetric("l2/sub:opt=1", lambda a, b: (a - b).pow(2).flatten(1).mean(1))
    report = write(run(MOSDataset(labels), [metric], bootstrap=0), tmp_path / "out")
    name = report.plots["l2/sub:opt=1"]
    assert re.fullmatch(r"plot-[A-Za-z0-9._=+-]+\.png", name), name
    assert (tmp_path / "out" / name).is_file() and f"![l2/sub:opt=1]({name})" in report.markdown
    evaluation.remove_outputs(tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_tables_keep_their_columns_with_pipes_and_line_breaks_in_names(tmp_path: Path) -> None:
    """Group names come from the CSV: a ``|`` in one added a column to every table row it was in, and a quoted
    line break split a row in two."""
    labels = _mos_set(tmp_path / "data", ["a|b"] * 3 + ["c\nd"] * 3)
    ds = MOSDataset(labels, group_column="distortion")
    assert sorted(set(ds.groups)) == ["a|b", "c\nd"]  # the names are read as they are
    report = write(run(ds, [EvalMetric("m|1", lambda a, b: (a - b).abs().flatten(1).mean(1))], bootstrap=0),
                   tmp_path / "out", plots=False)
    lines = report.markdown.splitlines()
    tables: list[list[str]] = []
    for i, line in enumerate(lines):
        if line.startswith("|"):
            if i == 0 or not lines[i - 1].startswith("|"):
                tables.append([])
            tables[-1].append(line)
    assert len(tables) == 2  # summary and details
    for table in tables:
        assert {_unescaped_pipes(line) for line in table} == {_unescaped_pipes(table[1])}, table
    assert not any(line.startswith("d |") for line in lines)  # no row split by the line break
    assert "| m\\|1 | a\\|b | 3 |" in report.markdown and "| m\\|1 | c d | 3 |" in report.markdown
    assert set(report.json["metrics"]["m|1"]) >= {"a|b", "c\nd"}  # report.json keeps the names as they are
