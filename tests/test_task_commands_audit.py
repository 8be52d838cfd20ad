"""Audit regressions of the task commands: checks made before the run, and errors named after their option."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from patchmmd.cli import main

FAST = ["--no-progress", "--eval-distances", "", "--steps", "2"]


@pytest.mark.parametrize("args", [
    ["gim", "--shifts", "2", "astronaut", "--size", "8"],
    ["train-ae", "PHOTOS", "--crop", "8"],
    ["train-sr", "PHOTOS", "--crop", "8", "--scale", "2"],
])
def test_a_loss_that_cannot_take_the_size_is_refused_before_training(tmp_path: Path, photo_dir: Path,
                                                                   args: list[str]) -> None:
    out = tmp_path / "out"
    args = [str(photo_dir) if a == "PHOTOS" else a for a in args]
    result = CliRunner().invoke(main, [*args, "--loss", "ssim", *FAST, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "--loss ssim" in result.output and "win_size=11" in result.output
    assert not out.exists()  # nothing made, no training ran


def test_an_unreadable_weights_file_is_named_after_weights_on_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "vgg16.pth"
    bad.write_text("not a state dict\n")
    for weights in (bad, tmp_path):  # the file itself, or a folder holding it
        out = tmp_path / "out"
        result = CliRunner().invoke(main, ["gim", "--shifts", "2", "astronaut", "--size", "16", "--loss", "vgg",
                                           "--weights", str(weights), *FAST, "--out", str(out)])
        assert result.exit_code == 2, result.output
        error = result.output.split("Error: ", 1)[1]
        assert error.startswith("Invalid value for --weights: ") and error.count("\n") == 1, error
        assert not out.exists()


def test_max_shift_without_shifts_is_refused(tmp_path: Path, photo_dir: Path) -> None:
    out = tmp_path / "out"
    files = [str(p) for p in sorted(photo_dir.iterdir())]
    result = CliRunner().invoke(main, ["gim", *files, "--max-shift", "2", "--size", "16", *FAST, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "--max-shift" in result.output and "--shifts" in result.output
    assert not out.exists()
