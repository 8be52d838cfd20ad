"""Third audit of the command line (`eval mos`, `eval 2afc`, `eval jnd` options): regressions of what it found."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.io import save_image

FAST = ("-m", "l2", "--bootstrap", "0", "--no-plots", "--device", "cpu")


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def mos_set(folder: Path, header: str, sep: str = ",") -> Path:
    """Eight noisy copies of one image, scored by their noise, half of them in each of two distortion groups."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 32, 32, generator=g) * 0.5 + 0.25
    save_image(ref, folder / "ref.png")
    lines = [header]
    for i in range(8):
        save_image((ref + (i + 1) * 0.02 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1), folder / f"d{i}.png")
        lines.append(sep.join(["ref.png", f"d{i}.png", str(10 * i + 1), "blur" if i % 2 else "noise"]))
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


def test_eval_mos_finds_the_distortion_column_as_it_finds_the_others(tmp_path: Path) -> None:
    """The reader takes ``Reference``, `` DMOS`` (any case, spaces after the commas) as its columns; the default
    group column was only the exact name ``distortion``, so such a file was silently reported without its groups."""
    labels = mos_set(tmp_path / "set", "Reference, Distorted, DMOS, Distortion", sep=", ")
    result = invoke("eval", "mos", str(labels), *FAST, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["group_column"] == " Distortion"
    assert {"blur", "noise"} <= set(report["metrics"]["l2"]), report["metrics"]["l2"].keys()
    # --group-column '' still means none
    result = invoke("eval", "mos", str(labels), *FAST, "--group-column", "", "--out", str(tmp_path / "out2"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["group_column"] is None and "blur" not in report["metrics"]["l2"]


def test_eval_mos_refuses_a_file_as_root_as_a_usage_error(tmp_path: Path) -> None:
    """docs/cli.md: a file where a folder is expected is a usage error (exit status 2) naming the option; ``--root``
    was a failure (exit status 1) that did not name it."""
    labels = mos_set(tmp_path / "set", "reference,distorted,dmos,distortion")
    result = invoke("eval", "mos", str(labels), *FAST, "--root", str(labels), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "--root" in result.output and "is a file" in result.output
    assert not (tmp_path / "out").exists()


def test_a_metric_option_naming_no_metric_is_a_usage_error(tmp_path: Path) -> None:
    """``-m ""`` (an unset shell variable) ran the default metric, mmdpp, as if no --metric were given."""
    labels = mos_set(tmp_path / "set", "reference,distorted,dmos,distortion")
    for value in ("", " , "):
        result = invoke("eval", "mos", str(labels), "-m", value, "--out", str(tmp_path / "out"))
        assert result.exit_code == 2, result.output
        assert "--metric" in result.output and "names no metric" in result.output
        assert not (tmp_path / "out").exists()
    for kind in ("2afc", "jnd"):  # the same option of the BAPPS commands, refused before ROOT is read
        result = invoke("eval", kind, str(tmp_path / "no-such-root"), "-m", "", "--out", str(tmp_path / "out"))
        assert result.exit_code == 2 and "names no metric" in result.output, result.output
    # a trailing comma is still fine
    result = invoke("eval", "mos", str(labels), *FAST[2:], "-m", "l2,", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output


def test_eval_scores_csv_never_writes_a_file_name_as_a_formula(tmp_path: Path) -> None:
    """eval's scores.csv wrote a labels file's ``=...`` name as is (a spreadsheet runs it as a formula); it gets the
    leading ``'`` that ``score``'s CSV and eval's errors.csv give such names."""
    import csv as csv_module

    from patchmmd.evaluation import MOSDataset, run, write

    g = torch.Generator().manual_seed(0)
    rows = ["reference,distorted,dmos"]
    for i in range(4):
        save_image(torch.rand(3, 16, 16, generator=g), tmp_path / f"r{i}.png")
        save_image(torch.rand(3, 16, 16, generator=g), tmp_path / f"=d{i}.png")
        rows.append(f"r{i}.png,=d{i}.png,{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    write(run(MOSDataset(tmp_path / "labels.csv"), ["l2"], bootstrap=0), tmp_path / "out", plots=False)
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as f:
        cells = [r["distorted"] for r in csv_module.DictReader(f)]
    assert cells == [f"'=d{i}.png" for i in range(4)]
