"""Second audit of the task experiments: the evaluation's memory bound, errors that name the photo or path at
fault, and ``gim --size 0``'s help against what it does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from patchmmd.cli import main
from patchmmd.tasks.data import split_photos
from patchmmd.tasks.report import Evaluator, psnr, sharpness_ratio, ssim
from test_task_commands_audit import FAST


def test_the_evaluator_scores_many_tiles_in_bounded_chunks_with_the_same_numbers() -> None:
    # A folder of tall photos gives hundreds of held-out tiles; scored in one batch, the random CNN alone took
    # 8.8 GB for 256 tiles of 64 px. Each distance must see a bounded batch, and the means must not change.
    g = torch.Generator().manual_seed(0)
    y = torch.rand(40, 3, 64, 64, generator=g)
    x = (y + 0.1 * torch.randn(40, 3, 64, 64, generator=g)).clamp(0, 1)
    seen: list[int] = []

    def per_image_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(len(a))
        return (a - b).abs().flatten(1).mean(1)

    evaluate = Evaluator(())
    evaluate.distances["l1"] = per_image_l1
    m = evaluate(x, y)
    assert seen and max(seen) <= 16 and sum(seen) == len(x)  # 16 tiles of 64 px at once at most
    expected = {
        "psnr": float(psnr(x, y).mean()), "ssim": float(ssim(x, y).mean()), "mse": float((x - y).pow(2).mean()),
        "l1": float((x - y).abs().mean()), "sharpness": sharpness_ratio(x, y),
    }
    assert m == pytest.approx(expected, rel=2e-5)


def test_the_evaluator_refuses_batches_of_different_shapes() -> None:  # the chunks must pair x and y
    with pytest.raises(ValueError, match="same shape"):
        Evaluator(())(torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16))


def test_a_photo_too_small_for_the_crop_is_named_by_its_file(tmp_path: Path, photo_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"'b\.png' is 8x8"):
        split_photos([torch.rand(3, 32, 48), torch.rand(3, 8, 8)], 16, names=["a.png", "b.png"])
    with pytest.raises(ValueError, match="image 1 is 8x8"):  # without names, as before: the index
        split_photos([torch.rand(3, 32, 48), torch.rand(3, 8, 8)], 16)
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photo_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (8, 8)).save(folder / "tiny.png")
    result = CliRunner().invoke(main, ["train-ae", str(folder), "--crop", "16", "--out", str(tmp_path / "o"),
                                       "--loss", "l2", *FAST])
    assert result.exit_code == 2, result.output
    assert "'tiny.png' is 8x8" in result.output
    assert not (tmp_path / "o").exists()


def test_a_weights_path_that_does_not_exist_is_said_so(tmp_path: Path, photo_dir: Path) -> None:
    missing = tmp_path / "wieghts"  # a mistyped folder
    result = CliRunner().invoke(main, ["train-ae", str(photo_dir), "--crop", "16", "--out", str(tmp_path / "o"),
                                       *FAST, "--loss", "lpips-vgg", "--weights", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"{missing} does not exist" in " ".join(result.output.split())
    assert "is not a folder" not in result.output
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    result = CliRunner().invoke(main, ["train-ae", str(photo_dir), "--crop", "16", "--out", str(tmp_path / "o"),
                                       *FAST, "--loss", "lpips-vgg", "--weights", str(afile)])
    assert result.exit_code == 2 and "is not a folder" in result.output, result.output


def test_gim_size_0_of_several_images_is_their_common_size_as_the_help_says(tmp_path: Path) -> None:
    Image.new("RGB", (40, 24), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (36, 30), (40, 50, 60)).save(tmp_path / "b.png")
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["gim", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--size", "0",
                                       "--out", str(out), "--loss", "l2", *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["size"] == [24, 36]  # not a square
    help_text = " ".join(CliRunner().invoke(main, ["gim", "--help"]).output.split())
    assert "common height and width" in help_text


def test_overwrite_with_fewer_tiles_leaves_no_images_of_the_earlier_run(tmp_path: Path, photo_dir: Path) -> None:
    out = tmp_path / "o"
    base = ["train-sr", str(photo_dir), "--crop", "16", "--out", str(out), "--loss", "l2", *FAST]
    first = CliRunner().invoke(main, base)
    assert first.exit_code == 0, first.output
    many = sorted(p.name for p in out.glob("sr_*.png"))
    assert len(many) > 1
    (out / "notes.txt").write_text("mine")  # not the command's: kept
    again = CliRunner().invoke(main, [*base, "--max-tiles", "1", "--overwrite"])
    assert again.exit_code == 0, again.output
    for prefix in ("sr", "heldout", "lowres", "bicubic"):
        assert sorted(p.name for p in out.glob(f"{prefix}_*.png")) == [f"{prefix}_000.png"]
    assert (out / "notes.txt").read_text() == "mine"


def test_gim_inputs_inside_the_output_folder_are_never_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):  # named as gim's own series, and one beyond the two it is given
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(out / f"input_00{i}.png")
    args = ["gim", str(out / "input_001.png"), str(out / "input_002.png"), "--size", "16", "--steps", "1",
            "--loss", "l2", "--no-progress", "--eval-distances", "", "--out", str(out), "--overwrite"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "input_002.png").is_file()  # an input beyond the series written: kept
