"""Fresh-eyes audit of the task commands: what they refuse before a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from patchmmd.cli import main

FAST = ["--no-progress", "--eval-distances", "", "--steps", "1", "--width", "4", "--crop", "16"]


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("command", [["train-ae"], ["train-sr", "--scale", "2", "--blocks", "0"]])
def test_the_photo_folder_is_refused_as_the_output_folder(tmp_path: Path, photo_dir: Path,
                                                          command: list[str]) -> None:
    # --out DATA_DIR --overwrite wrote heldout_NNN.png (and the outputs) among the photos: the next run on the
    # folder trained on the held-out tiles, and a photo named like a series file (sr_001.png) was replaced
    data = tmp_path / "photos"
    shutil.copytree(photo_dir, data)
    shutil.copy(data / "p0.png", data / "heldout_000.png")
    before = _listing(data)
    for out in (data, data / ".." / data.name):  # (another spelling of the same folder)
        result = CliRunner().invoke(main, [*command, str(data), *FAST, "--overwrite", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "is DATA_DIR" in result.output and result.output.count("Error:") == 1
        assert _listing(data) == before  # nothing written, nothing replaced
    # a folder beside it is fine
    result = CliRunner().invoke(main, [*command, str(data), *FAST, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("loss", ["dists", "lpips-alex", "lpips-vgg"])
def test_a_deep_loss_without_weights_names_the_weights_folder(tmp_path: Path, loss: str) -> None:
    # it said "Invalid value for --loss-option: metric 'dists' needs backbone=PATH ...", pointing at -o alone,
    # not at --weights DIR, the documented way to give the published weights
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["gim", "--shifts", "2", "astronaut", "--size", "32", "--loss", loss,
                                       "--no-progress", "--out", str(out)])
    assert result.exit_code == 2, result.output
    error = result.output.split("Error: ", 1)[1]
    assert error.count("\n") == 1, error
    assert f"--loss {loss} needs its weight files: --weights DIR" in error
    assert "-o backbone=PATH -o weights=PATH" in error and "nothing written" in error
    assert not out.exists()


def test_images_too_small_to_score_are_refused_naming_the_size_not_eval_distances(tmp_path: Path) -> None:
    # gim --size 1 said "Invalid value for --eval-distances: Input images should be 4-d or 5-d tensors, but got
    # torch.Size([1, 3])" (pytorch-msssim's error, from the SSIM every run reports), even with no distances named
    from patchmmd.tasks.report import Evaluator

    with pytest.raises(ValueError, match=r"at least 2x2 px"):
        Evaluator(())(torch.rand(2, 3, 1, 1), torch.rand(2, 3, 1, 1))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["gim", "--shifts", "2", "astronaut", "--size", "1", "--loss", "l2",
                                       "--eval-distances", "", "--steps", "1", "--no-progress", "--out", str(out)])
    assert result.exit_code == 2, result.output
    error = result.output.split("Error: ", 1)[1]
    assert error.count("\n") == 1 and "--eval-distances" not in error, error
    assert "(1, 1) px images cannot be scored" in error and "at least 2x2 px" in error
    assert not out.exists()
