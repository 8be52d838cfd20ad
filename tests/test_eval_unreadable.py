"""`patchmmd eval` and `evaluation.run` with items whose files cannot be read (a damaged image, a missing one).

One unreadable image used to abort the whole evaluation with exit status 1 (a missing file even before anything
ran). Now the library leaves such an item out for every metric with ``on_error="skip"`` (``"raise"`` stays its
default), records it in ``EvaluationResult.errors``, and ``write`` lists it in errors.csv and at the top of
report.md; the CLI does that, warns once on stderr and ends with status 0 (``--strict``: the old behaviour). The
statistics must be exactly those of the same set without these items, and the per-metric cache must never hand
back values computed without an item that can be read now.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_runner import invoke
from patchmmd.evaluation import (
    BAPPS2AFC,
    BAPPSJND,
    CacheMismatchError,
    EvalMetric,
    EvaluationError,
    MOSDataset,
    Progress,
    remove_outputs,
    run,
    write,
)
from patchmmd.io import ImageReadError, save_image
from test_evalrun_audit import TRIPLETS, make_2afc, make_jnd, mos_set  # the audit's tiny MOS and BAPPS sets

METRICS = "l2,psnr"


def damage(path: Path) -> None:
    """Spoil the image's signature, keeping its size: no reader can open it."""
    data = path.read_bytes()
    path.write_bytes(b"\0" * 8 + data[8:])


def errors_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "errors.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def damaged_mos(folder: Path) -> Path:
    """The audit's MOS set (8 rows) with d2.png damaged (CSV line 4) and d5.png missing (line 7)."""
    labels = mos_set(folder, n=8)
    damage(folder / "d2.png")
    (folder / "d5.png").unlink()
    return labels


def without_rows(labels: Path, names: set[str], new_name: str) -> Path:
    """The labels CSV without the rows of the distorted images ``names`` (the same image files)."""
    lines = labels.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.split(",")[1] not in names]
    assert len(kept) == len(lines) - len(names)
    path = labels.parent / new_name
    path.write_text("\n".join(kept) + "\n")
    return path


def mos_cli(labels: Path, out: Path, *extra: str) -> Any:
    return invoke("eval", "mos", labels, "-m", METRICS, "--bootstrap", "20", "--seed", "3", "--no-plots",
                  "--out", out, *extra)


def report_json(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "report.json").read_text())
    return data


# ------------------------------------------------------------------------------------------------------ MOS
def test_eval_mos_leaves_out_a_damaged_and_a_missing_image(tmp_path: Path) -> None:
    labels = damaged_mos(tmp_path / "mos")
    out = tmp_path / "out"
    r = mos_cli(labels, out)
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 2 of 8 items left out (their files cannot be read); the statistics are over the "
                        f"other 6: see {out / 'errors.csv'}"]
    rows = errors_csv(out)
    assert [(e["reference"], e["distorted"], e["line"]) for e in rows] == [("ref.png", "d2.png", "4"),
                                                                          ("ref.png", "d5.png", "7")]
    assert rows[0]["error"].startswith(f"ImageReadError: cannot read {tmp_path / 'mos' / 'd2.png'} as an image")
    assert rows[1]["error"] == f"ImageReadError: image file not found: {tmp_path / 'mos' / 'd5.png'}"
    md = (out / "report.md").read_text()
    line = md.splitlines()[2]
    assert line.startswith("**2 of 8 rows left out**: their files cannot be read, so every figure below is over "
                           "the other 6 (errors.csv lists each with the reason)")
    assert f"- ref.png -> d2.png (line 4): {rows[0]['error']}" in md
    assert f"- ref.png -> d5.png (line 7): {rows[1]['error']}" in md
    report = report_json(out)
    assert report["n_rows"] == report["n_scored"] == 6
    assert [(e["distorted"], e["error"]) for e in report["left_out"]] == [(e["distorted"], e["error"]) for e in rows]

    # the very statistics of the same set without those two rows (bootstrap intervals included)
    clean_out = tmp_path / "clean-out"
    r = mos_cli(without_rows(labels, {"d2.png", "d5.png"}, "clean.csv"), clean_out)
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    clean = report_json(clean_out)
    assert clean["left_out"] == [] and not (clean_out / "errors.csv").exists()
    assert report["metrics"] == clean["metrics"]
    assert (out / "scores.csv").read_text() == (clean_out / "scores.csv").read_text()


def test_eval_mos_strict_stops_as_before(tmp_path: Path) -> None:
    labels = damaged_mos(tmp_path / "mos")
    r = mos_cli(labels, tmp_path / "out", "--strict")
    assert r.exit_code == 1 and "1 image file(s) named in" in r.output and "not found under" in r.output, r.output
    (tmp_path / "mos" / "d5.png").write_bytes((tmp_path / "mos" / "d4.png").read_bytes())
    r = mos_cli(labels, tmp_path / "out", "--strict", "--overwrite")
    assert r.exit_code == 1 and f"cannot read {tmp_path / 'mos' / 'd2.png'}" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "out" / "errors.csv").exists()


def test_eval_mos_too_few_rows_left_is_the_too_few_error(tmp_path: Path) -> None:
    labels = mos_set(tmp_path / "mos", n=5)
    for i in (0, 1, 3):
        damage(tmp_path / "mos" / f"d{i}.png")
    r = mos_cli(labels, tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert "only 2 row(s) with a score among the first 5 can be read (3 left out, the first ref.png -> d0.png " \
           "(line 2): ImageReadError" in r.output and "correlations need at least 3" in r.output


# ---------------------------------------------------------------------------------------------------- BAPPS
def test_eval_2afc_leaves_out_a_damaged_and_a_missing_patch(tmp_path: Path) -> None:
    root = make_2afc(tmp_path / "bapps")
    damage(root / "2afc" / "val" / "traditional" / "p1" / "000001.png")
    (root / "2afc" / "val" / "cnn" / "ref" / "000000.png").unlink()
    out = tmp_path / "out"
    r = invoke("eval", "2afc", root, "-m", METRICS, "--no-plots", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"warning: 2 of 7 items left out (their files cannot be read); the statistics are over the other 5: see " \
           f"{out / 'errors.csv'}" in r.output
    rows = errors_csv(out)
    assert [(e["subset"], e["name"]) for e in rows] == [("traditional", "000001"), ("cnn", "000000")]
    assert rows[0]["error"].startswith("ImageReadError: cannot read ") and "p1/000001.png" in rows[0]["error"]
    assert rows[1]["error"] == f"ImageReadError: image file not found: {root}/2afc/val/cnn/ref/000000.png"
    md = (out / "report.md").read_text()
    assert md.splitlines()[2].startswith("**2 of 7 items left out**")
    assert f"- traditional/000001: {rows[0]['error']}" in md and f"- cnn/000000: {rows[1]['error']}" in md
    report = report_json(out)
    assert report["n"] == {"traditional": 3, "cnn": 2} and len(report["left_out"]) == 2

    # the same set without those triplets gives the same statistics, human ceiling included
    fewer = {"traditional": [t for i, t in enumerate(TRIPLETS["traditional"]) if i != 1],
             "cnn": TRIPLETS["cnn"][1:]}
    clean_out = tmp_path / "clean-out"
    r = invoke("eval", "2afc", make_2afc(tmp_path / "clean", fewer), "-m", METRICS, "--no-plots", "--out", clean_out)
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    clean = report_json(clean_out)
    assert report["metrics"] == clean["metrics"] and report["human_majority"] == clean["human_majority"]
    assert report["n"] == clean["n"]


def test_eval_2afc_strict_and_a_subset_left_empty(tmp_path: Path) -> None:
    root = make_2afc(tmp_path / "bapps")
    (root / "2afc" / "val" / "cnn" / "ref" / "000000.png").unlink()
    r = invoke("eval", "2afc", root, "-m", "l2", "--no-plots", "--out", tmp_path / "o1", "--strict")
    assert r.exit_code == 1 and "unmatched files" in r.output and "ref/ lacks 1: 000000" in r.output, r.output
    for i in (1, 2):
        damage(root / "2afc" / "val" / "cnn" / "p0" / f"{i:06d}.png")
    r = invoke("eval", "2afc", root, "-m", "l2", "--no-plots", "--out", tmp_path / "o2")
    assert r.exit_code == 1, r.output
    assert "no item of subset 'cnn' can be read (3 left out, the first cnn/000000: ImageReadError: image file " \
           "not found" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------------ the library
def test_run_raises_by_default_and_skips_on_request(tmp_path: Path) -> None:
    labels = damaged_mos(tmp_path / "mos")
    with pytest.raises(FileNotFoundError, match="not found under"):  # the readers' default is unchanged
        MOSDataset(labels)
    ds = MOSDataset(labels, on_missing="keep")
    with pytest.raises(ImageReadError, match=r"d2\.png"):  # run's default: the first unreadable item stops it
        run(ds, ["l2"], bootstrap=0)
    with pytest.raises(ImageReadError, match=r"d2\.png"):
        run(ds, ["l2"], bootstrap=0, on_error="raise")
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        run(ds, ["l2"], bootstrap=0, on_error="ignore")  # type: ignore[arg-type]

    res = run(ds, ["l2", "psnr"], bootstrap=0, on_error="skip")
    assert [(e["index"], e["distorted"], e["line"]) for e in res.errors] == [(2, "d2.png", 4), (5, "d5.png", 7)]
    assert res.indices == [0, 1, 3, 4, 6, 7] and res.n == 6
    assert res.names == ["d0.png", "d1.png", "d3.png", "d4.png", "d6.png", "d7.png"]
    assert all(len(v) == 6 for v in res.values.values())
    clean = run(MOSDataset(without_rows(labels, {"d2.png", "d5.png"}, "clean.csv")), ["l2", "psnr"], bootstrap=0)
    assert res.values == clean.values and res.metrics == clean.metrics

    # a metric's failure is not an unreadable item: it stops the run either way
    def broken(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ValueError("shapes do not fit")

    with pytest.raises(EvaluationError, match="bad: shapes do not fit"):
        run(ds, [EvalMetric("bad", broken)], bootstrap=0, on_error="skip")


def test_bapps_missing_judge_and_jnd_patch_are_left_out(tmp_path: Path) -> None:
    root = make_2afc(tmp_path / "bapps")
    (root / "2afc" / "val" / "traditional" / "judge" / "000002.npy").unlink()
    ds = BAPPS2AFC(root, on_missing="keep")
    with pytest.raises(ValueError, match="cannot read judge file"):
        run(ds, ["l2"])
    res = run(ds, ["l2"], on_error="skip")
    assert [(e["subset"], e["name"]) for e in res.errors] == [("traditional", "000002")]
    assert res.errors[0]["error"].startswith("DatasetError: cannot read judge file") and res.n == 6

    jnd = make_jnd(tmp_path / "jnd")
    damage(jnd / "jnd" / "val" / "cnn" / "p1" / "000001.png")
    res = run(BAPPSJND(jnd), ["l2"], on_error="skip")
    assert [e["item"] for e in res.errors] == ["cnn/000001"] and res.subsets.count("cnn") == 2


def test_write_lists_the_items_left_out_and_removes_a_stale_list(tmp_path: Path) -> None:
    folder = tmp_path / "mos"
    labels = mos_set(folder, n=5)
    os.rename(folder / "d1.png", folder / "=d1.png")  # a name a spreadsheet would run as a formula
    labels.write_text(labels.read_text().replace("d1.png", "=d1.png"))
    damage(folder / "=d1.png")
    out = tmp_path / "out"
    rep = write(run(MOSDataset(labels), ["l2"], bootstrap=0, on_error="skip"), out, plots=False)
    assert out / "errors.csv" in rep.files
    assert errors_csv(out)[0]["distorted"] == "'=d1.png"  # guarded as `patchmmd score`'s cells are
    save_image(torch.full((3, 16, 16), 0.6), folder / "=d1.png")
    rep = write(run(MOSDataset(labels), ["l2"], bootstrap=0, on_error="skip"), out, plots=False)
    assert not (out / "errors.csv").exists() and "left out" not in rep.markdown  # no list of another run's
    damage(folder / "=d1.png")
    write(run(MOSDataset(labels), ["l2"], bootstrap=0, on_error="skip"), out, plots=False)
    assert (out / "errors.csv").exists()
    remove_outputs(out)
    assert not (out / "errors.csv").exists()


# ------------------------------------------------------------------------------------------------- the cache
def test_a_resumed_run_reuses_the_cache_with_identical_values(tmp_path: Path) -> None:
    labels = damaged_mos(tmp_path / "mos")
    out = tmp_path / "out"
    assert mos_cli(labels, out).exit_code == 0
    first = (report_json(out), errors_csv(out), (out / "scores.csv").read_text())
    cached = json.loads((out / "cache" / "l2.json").read_text())
    assert [pos for pos, _ in cached["unreadable"]] == [2, 5] and cached["values"][2] == cached["values"][5] == []
    r = mos_cli(labels, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "l2: reusing" in r.output and "psnr: reusing" in r.output
    assert (report_json(out), errors_csv(out), (out / "scores.csv").read_text()) == first

    # the library: the same values and errors, read back from the cache
    events: list[Progress] = []
    ds = MOSDataset(labels, on_missing="keep")
    a = run(ds, ["l2"], bootstrap=0, cache=tmp_path / "c", on_error="skip")
    b = run(ds, ["l2"], bootstrap=0, cache=tmp_path / "c", on_error="skip", progress=events.append)
    assert [e.cached for e in events] == [tmp_path / "c" / "l2.json"]
    assert (a.values, a.errors, a.metrics) == (b.values, b.errors, b.metrics)
    with pytest.raises(ImageReadError, match=r"d2\.png"):  # a cache recording unreadable items does not hide them
        run(ds, ["l2"], bootstrap=0, cache=tmp_path / "c")


def test_resume_after_mending_a_file_is_refused(tmp_path: Path) -> None:
    """A file mended by writing it again is a changed image file: the cached values, computed without it, are
    refused (the settings' image stamps changed); --overwrite computes everything again."""
    labels = damaged_mos(tmp_path / "mos")
    out = tmp_path / "out"
    assert mos_cli(labels, out).exit_code == 0
    save_image(torch.full((3, 16, 16), 0.5 + 0.05 * 3), tmp_path / "mos" / "d2.png")  # as mos_set made them
    save_image(torch.full((3, 16, 16), 0.5 + 0.05 * 6), tmp_path / "mos" / "d5.png")
    r = mos_cli(labels, out, "--resume")
    assert r.exit_code == 2 and "images: files changed since" in r.output and "--overwrite" in r.output, r.output
    with pytest.raises(CacheMismatchError, match="images: files changed since"):
        run(MOSDataset(labels), ["l2"], bootstrap=0, cache=out / "cache", on_error="skip")
    r = mos_cli(labels, out, "--overwrite")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert report_json(out)["n_rows"] == 8 and not (out / "errors.csv").exists()


def test_resume_after_a_file_becomes_readable_in_place_recomputes(tmp_path: Path) -> None:
    """A file that reads now with the same size and modification time (its cached stamp unchanged) is read again
    on resuming: the cached values lack it, so each metric is computed again, over every item."""
    labels = mos_set(tmp_path / "mos", n=8)
    path = tmp_path / "mos" / "d2.png"
    good = path.read_bytes()
    damage(path)
    stamp = path.stat().st_mtime_ns
    out = tmp_path / "out"
    r = mos_cli(labels, out)
    assert r.exit_code == 0 and "1 of 8 items left out" in r.output, r.output
    path.write_bytes(good)  # the same size: mended without a trace in the stamps
    os.utime(path, ns=(stamp, stamp))
    r = mos_cli(labels, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "reusing" not in r.output and "warning" not in r.output
    assert report_json(out)["n_rows"] == 8 and not (out / "errors.csv").exists()
    clean_out = tmp_path / "clean-out"
    assert mos_cli(labels, clean_out).exit_code == 0
    assert report_json(out)["metrics"] == report_json(clean_out)["metrics"]
    assert "unreadable" not in json.loads((out / "cache" / "l2.json").read_text())
