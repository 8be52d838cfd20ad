"""The research scripts of scripts/ that docs figures come from: their command lines refuse what they cannot do
(before any long computation) and compute what the docs say they compute. Nothing here needs the human data or
the published weights: the scripts' inputs are small stand-ins written to ``tmp_path``."""

from __future__ import annotations

import csv
import importlib.util
import json
import runpy
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from patchmmd.io import save_image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"scripts_audit_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image(seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ tasks_figures
def sr_run(folder: Path, loss: str, mmdpp_pixelwise: float) -> None:
    """A train-sr run folder as ``patchmmd train-sr --eval-distances=mmdpp-pixelwise,random-cnn`` writes it."""
    folder.mkdir(parents=True)
    scores = {"psnr": 27.0, "ssim": 0.86, "mse": 0.002, "mmdpp-pixelwise": mmdpp_pixelwise, "random-cnn": 0.0007,
              "sharpness": 0.1}
    (folder / "metrics.json").write_text(json.dumps({"heldout_tiles": 1, "heldout": scores, "bicubic": scores}))
    for stem in ("bicubic_000", "sr_000", "heldout_000"):
        save_image(image(0), folder / f"{stem}.png")


def test_tasks_figures_fill_the_mmdpp_column_of_the_documented_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # docs/tasks.md's commands evaluate mmdpp-pixelwise (the previous default) and its tables head the column
    # "MMD++ (pixelwise)"; the script looked the column up as "mmdpp" and printed "–" in every row
    sr_run(tmp_path / "runs" / "train-sr-l2", "l2", 0.009971)
    load("tasks_figures").main(tmp_path / "runs", tmp_path / "img")
    out = capsys.readouterr().out
    assert "MMD++ (pixelwise) ↓" in out
    row = next(line for line in out.splitlines() if line.startswith("| l2 |"))
    assert "0.009971" in row and "–" not in row
    assert (tmp_path / "img" / "tasks-sr.png").is_file()


@pytest.mark.parametrize("argv", [[], ["NO_RUNS", "img"]], ids=["no arguments", "no runs"])
def test_tasks_figures_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    # without arguments the script ended in an IndexError; a folder without runs printed nothing and exited 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tasks_figures.py", *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(SCRIPTS / "tasks_figures.py"), run_name="__main__")
    assert e.value.code == 2
    assert not (tmp_path / "img").exists()


# ---------------------------------------------------------------------------------------- theory_live_dev
def live_like(folder: Path) -> list[dict[str, str]]:
    """A labels.csv of six scored rows in two distortions (the images exist, 16 px)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_image(image(0), folder / "ref.png")
    rows = []
    for i in range(6):
        save_image((image(0) + 0.05 * (i + 1) * image(i + 1)).clamp(0, 1), folder / f"d{i}.png")
        rows.append({"reference": "ref.png", "distorted": f"d{i}.png", "distortion": "ab"[i % 2],
                     "dmos": str(10.0 * i + (i % 3)), "identical_to_reference": "0"})
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_theory_live_dev_refuses_a_metric_name_it_does_not_know(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a misspelt name used to match nothing: only PSNR was computed and the run ended with status 0
    live_like(tmp_path / "data")
    script = load("theory_live_dev")
    monkeypatch.setattr(sys, "argv", ["theory_live_dev.py", "--data", str(tmp_path / "data"), "--metrics", "l2,mmdpp+"])
    with pytest.raises(SystemExit) as e:
        script.main()
    assert e.value.code == 2


def test_theory_live_dev_from_csv_reports_the_chosen_metrics_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rows = live_like(tmp_path / "data")
    saved = tmp_path / "distances.csv"
    with open(saved, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["distorted", "distortion", "dmos", "mmdpp", "l2", "psnr"])
        for i, r in enumerate(rows):
            w.writerow([r["distorted"], r["distortion"], r["dmos"], 6 - i, i + 0.5 * (i % 2), 30 - i])
    script = load("theory_live_dev")
    argv = ["theory_live_dev.py", "--data", str(tmp_path / "data"), "--from-csv", str(saved)]
    monkeypatch.setattr(sys, "argv", [*argv, "--metrics", "l2"])
    assert script.main() == 0
    out = capsys.readouterr().out
    assert "| l2 |" in out and "| psnr |" in out and "| mmdpp |" not in out  # --metrics was ignored here
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "new.csv")])
    with pytest.raises(SystemExit) as e:  # --out wrote nothing with --from-csv, silently
        script.main()
    assert e.value.code == 2


# --------------------------------------------------------------------------------------- sr_loss_variants
@pytest.mark.parametrize("extra", [
    ["relu-mmd:weight=390", "relu-mmd"],  # no weight: a KeyError once the first variant had trained
    ["normalised-mmd:feature=256,weight=200"],  # misspelt option: a TypeError at the variant's first step
    ["--seeds", "0,,1", "charbonnier:weight=1"],
    ["--judges", "dists,nosuch", "charbonnier:weight=1"],
    ["--calibrate", "mmdpp:preset=loss"],  # a suite candidate has no term to calibrate: a KeyError
], ids=["no weight", "unknown option", "bad seeds", "unknown judge", "calibrate a candidate"])
def test_sr_loss_variants_refuses_bad_variants_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    script = load("sr_loss_variants")
    trained: list[str] = []
    monkeypatch.setattr(script.S, "sr_task", lambda *a, **k: trained.append("run"))
    # a --data without the human sets: the old code tried to read them first and failed with a traceback
    monkeypatch.setattr(sys, "argv", ["sr_loss_variants.py", "--weights", str(tmp_path), "--data",
                                      str(tmp_path / "no-data"), "--threads", "1", *extra])
    with pytest.raises(SystemExit) as e:
        script.main()
    assert e.value.code == 2 and not trained
    assert "error:" in capsys.readouterr().err


def test_sr_loss_variants_goes_on_after_a_diverged_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # the suite reports a diverged run and goes on; the script ended there, losing the variants after it
    from patchmmd.tasks._common import TrainingDiverged

    script = load("sr_loss_variants")
    for name in ("live-dev", "csiq-dev"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels.csv").write_text("reference,distorted,dmos\n")
    monkeypatch.setattr(script, "folder_options", lambda name, folder: {})
    monkeypatch.setattr(script.S, "_build", lambda m: m)
    monkeypatch.setattr(script.S, "open_human_set", lambda hs: None)
    monkeypatch.setattr(script.S, "reference_images", lambda ds, name: ([], []))
    monkeypatch.setattr(script.S, "task_photos", lambda *a: ([image(1, 96)], torch.rand(2, 3, 64, 64)))
    runs: list[tuple[str, int]] = []

    def sr_task(loss, seed, *args):  # type: ignore[no-untyped-def]
        runs.append((len(runs), seed))
        if seed == 1 and len(runs) == 2:  # the first variant's second run
            raise TrainingDiverged(4, 600, "the loss is")
        return None, {"dists": 0.2 + 0.01 * seed}

    monkeypatch.setattr(script.S, "sr_task", sr_task)
    monkeypatch.setattr(sys, "argv", ["sr_loss_variants.py", "--weights", str(tmp_path), "--data", str(tmp_path),
                                      "--threads", "1", "--seeds", "0,1,2", "charbonnier:weight=1",
                                      "laplacian-l1:weight=1"])
    script.main()
    out = capsys.readouterr().out.splitlines()
    assert [seed for _, seed in runs] == [0, 1, 0, 1, 2]  # the first variant stops at its diverged run
    assert any(line.startswith("charbonnier:weight=1 1 DIVERGED") for line in out)
    assert "MEAN charbonnier:weight=1 none: a run diverged" in out
    assert 'MEAN laplacian-l1:weight=1 {"dists": 0.21}' in out  # the three-seed mean of the next variant
