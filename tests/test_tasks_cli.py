"""The task commands on tiny inputs: gim, train-ae, train-sr; the weight-file error; determinism."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from patchmmd.cli import main

FAST = ["--no-progress", "--eval-distances", "mmdpp"]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        base = rng.random((8, 12, 3))
        img = np.kron(base, np.ones((8, 8, 1))) * 0.8 + 0.2 * rng.random((64, 96, 3))
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_gim_shifts_writes_outputs_and_is_deterministic(tmp_path: Path) -> None:
    args = ["gim", "--shifts", "2", "astronaut", "--size", "32", "--steps", "2", "--loss", "mmdpp", *FAST]
    out = _run([*args, "--out", str(tmp_path / "a")])
    assert "wrote" in out
    _run([*args, "--out", str(tmp_path / "b")])
    for name in ("result.png", "pixel_mean.png", "input_000.png", "input_002.png", "figure.png"):
        assert (tmp_path / "a" / name).is_file()
    a = (tmp_path / "a" / "metrics.json").read_text()
    assert a == (tmp_path / "b" / "metrics.json").read_text()
    m = json.loads(a)
    assert m["offsets"] == [[0, 0], [0, 3], [0, -3]] and m["size"] == [32, 32] and len(m["loss_history"]) == 2
    assert m["loss_history_every"] == 1 and m["final_loss"] == m["loss_history"][-1]
    for key in ("psnr", "ssim", "mse", "mmdpp", "sharpness"):
        assert key in m["result"]["vs_inputs"] and key in m["pixel_mean"]["vs_first"]
    assert m["pixel_mean"]["vs_inputs"]["sharpness"] < 1
    assert "model" not in m and not (tmp_path / "a" / "model.pt").exists()  # GIM optimises an image, no network


def test_gim_image_files_and_errors(tmp_path: Path, photo_dir: Path) -> None:
    files = [str(p) for p in sorted(photo_dir.iterdir())]
    _run(["gim", *files, "--size", "32", "--steps", "2", "--loss", "l1", "--init", "noise", *FAST,
          "--out", str(tmp_path / "g")])
    assert (tmp_path / "g" / "result.png").is_file()
    r = CliRunner().invoke(main, ["gim", files[0], "--steps", "1", "--out", str(tmp_path / "h")])
    assert r.exit_code == 2 and "at least two images" in r.output
    r = CliRunner().invoke(main, ["gim", "nosuchfile.png", "astronaut", "--out", str(tmp_path / "i")])
    assert r.exit_code == 2 and "astronaut" in r.output
    # existing, non-empty output folder: refused unless --overwrite
    r = CliRunner().invoke(main, ["gim", *files, "--size", "32", "--steps", "1", "--loss", "l2", *FAST,
                                  "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    _run(["gim", *files, "--size", "32", "--steps", "1", "--loss", "l2", *FAST, "--out", str(tmp_path / "g"),
          "--overwrite"])


def test_vgg_without_weights_is_skipped_with_a_clear_message(tmp_path: Path) -> None:
    for cmd in (["gim", "--shifts", "2", "astronaut"], ["train-ae"], ["train-sr"]):
        out = tmp_path / cmd[0]
        r = CliRunner().invoke(main, [*cmd, "--loss", "vgg", "--out", str(out)])
        assert r.exit_code == 2 and "--weights" in r.output and "skipped" in r.output
        assert not out.exists()
    r = CliRunner().invoke(main, ["train-ae", "--loss", "vgg", "--weights", str(tmp_path / "no.pth"),
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not found" in r.output
    r = CliRunner().invoke(main, ["train-ae", "--loss", "l2", "--weights", str(tmp_path / "no.pth"),
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "vgg only" in r.output


def test_train_ae_tiny_is_deterministic(tmp_path: Path, photo_dir: Path) -> None:
    args = ["train-ae", str(photo_dir), "--crop", "32", "--steps", "2", "--width", "8", "--latent", "4",
            "--loss", "mmdpp", *FAST]
    _run([*args, "--out", str(tmp_path / "a")])
    _run([*args, "--out", str(tmp_path / "b")])
    a = (tmp_path / "a" / "metrics.json").read_text()
    assert a == (tmp_path / "b" / "metrics.json").read_text()
    m = json.loads(a)
    assert m["heldout_tiles"] == 4 and m["data"] == ["p0.png", "p1.png"]
    assert {"psnr", "ssim", "mmdpp", "sharpness"} <= set(m["heldout"])
    assert (tmp_path / "a" / "recon_003.png").is_file() and (tmp_path / "a" / "figure.png").is_file()


def test_train_sr_tiny_is_deterministic(tmp_path: Path, photo_dir: Path) -> None:
    args = ["train-sr", str(photo_dir), "--crop", "32", "--scale", "4", "--steps", "2", "--width", "8",
            "--blocks", "1", "--loss", "random-cnn", "-o", "width=32", "--no-progress", "--eval-distances", ""]
    _run([*args, "--out", str(tmp_path / "a")])
    _run([*args, "--out", str(tmp_path / "b")])
    a = (tmp_path / "a" / "metrics.json").read_text()
    assert a == (tmp_path / "b" / "metrics.json").read_text()
    m = json.loads(a)
    assert m["loss_options"] == {"width": 32} and m["scale"] == 4
    assert set(m["heldout"]) == {"psnr", "ssim", "mse", "sharpness"} and "psnr" in m["bicubic"]
    for name in ("sr_000.png", "lowres_000.png", "bicubic_000.png", "heldout_000.png", "figure.png"):
        assert (tmp_path / "a" / name).is_file()
    r = CliRunner().invoke(main, ["train-sr", str(photo_dir), "--crop", "30", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "multiple" in r.output


def test_train_ae_default_data_runs(tmp_path: Path) -> None:
    _run(["train-ae", "--crop", "64", "--steps", "1", "--width", "4", "--latent", "2", "--max-tiles", "2",
          "--loss", "l2", "--no-progress", "--eval-distances", "", "--out", str(tmp_path / "d")])
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["data"] == ["astronaut", "chelsea", "coffee"] and m["heldout_tiles"] == 2


def test_unknown_loss_lists_the_names() -> None:
    r = CliRunner().invoke(main, ["gim", "astronaut", "--loss", "lpips"])
    assert r.exit_code == 2 and "unknown loss 'lpips'" in r.output
    assert "random-cnn" in r.output and "lpips-alex" in r.output


def test_data_dir_skips_hidden_files(tmp_path: Path, photo_dir: Path) -> None:
    import shutil

    from patchmmd.tasks.data import load_photos

    data = shutil.copytree(photo_dir, tmp_path / "data")
    for hidden in (".x.png", "._p0.png"):  # e.g. macOS's metadata files, not images: skipped as `score` skips them
        (data / hidden).write_bytes(b"\x00\x05\x16\x07 not a PNG")
    images, names = load_photos(data)
    assert names == ["p0.png", "p1.png"] and [tuple(x.shape) for x in images] == [(3, 64, 96)] * 2


def test_eval_distances_are_checked_before_training(tmp_path: Path, photo_dir: Path) -> None:
    # a typo, or a distance that cannot take the tile size, is refused before the run (no folder), not after it
    base = ["train-ae", str(photo_dir), "--steps", "1", "--width", "4", "--latent", "2", "--loss", "l2",
            "--no-progress"]
    for crop, names in (("32", "mmdpp,nosuch"), ("8", "ms-ssim")):
        out = tmp_path / f"out-{crop}"
        r = CliRunner().invoke(main, [*base, "--crop", crop, "--eval-distances", names, "--out", str(out)])
        assert r.exit_code == 2 and "--eval-distances" in r.output, r.output
        assert not out.exists()


def test_metrics_json_is_strict_and_outputs_replace_symlinks(tmp_path: Path) -> None:
    data = tmp_path / "flat"
    data.mkdir()
    Image.new("RGB", (96, 64), (120, 130, 140)).save(data / "flat.png")  # a flat held-out tile: sharpness is NaN
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "metrics.json").symlink_to(victim)  # --overwrite replaces the command's files, never writes through a link
    (out / "figure.png").symlink_to(tmp_path / "nowhere.png")
    (out / "model.pt").symlink_to(tmp_path / "nowhere.pt")
    text = _run(["train-ae", str(data), "--crop", "32", "--steps", "1", "--width", "4", "--latent", "2", "--loss", "l2",
                 "--no-progress", "--eval-distances", "mmdpp-pixelwise", "--out", str(out), "--overwrite"])
    assert "msemmdpp" not in text and " mmdpp-pixelwise" in text  # the summary's columns keep a gap
    assert victim.read_text() == "keep me" and not (tmp_path / "nowhere.png").exists()
    assert not (out / "metrics.json").is_symlink() and not (out / "figure.png").is_symlink()
    assert not (out / "model.pt").is_symlink() and not (tmp_path / "nowhere.pt").exists()

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    m = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert m["heldout"]["sharpness"] is None


def test_bad_loss_option_names_the_option() -> None:
    r = CliRunner().invoke(main, ["train-ae", "-o", "width", "--loss", "random-cnn"])
    assert r.exit_code == 2 and "--loss-option" in r.output and "KEY=VALUE" in r.output


def _tiles(folder: Path, prefix: str) -> torch.Tensor:
    from patchmmd.io import load_image

    return torch.stack([load_image(p) for p in sorted(folder.glob(f"{prefix}_*.png"))])


def test_train_commands_save_a_model_that_reproduces_the_outputs(tmp_path: Path, photo_dir: Path) -> None:
    # metrics.json's "model" + torch.load(model.pt, weights_only=True) rebuild the network that wrote recon_/sr_NNN.png
    from patchmmd.tasks.superres import degrade

    common = [str(photo_dir), "--crop", "32", "--steps", "2", "--width", "4", "--loss", "l1", "--no-progress",
              "--eval-distances", ""]
    runs = {
        "train-ae": (["--latent", "2"], "recon", lambda x, m: x, "patchmmd.tasks.autoencoder.ConvAutoencoder",
                     {"width": 4, "latent": 2}),
        "train-sr": (["--scale", "4", "--blocks", "1"], "sr", lambda x, m: degrade(x, m["scale"]),
                     "patchmmd.tasks.superres.SRNet", {"scale": 4, "width": 4, "blocks": 1}),
    }
    for cmd, (extra, prefix, network_input, cls_name, args) in runs.items():
        out = tmp_path / cmd
        _run([cmd, *common, *extra, "--out", str(out)])
        m = json.loads((out / "metrics.json").read_text())
        assert m["model"] == {"file": "model.pt", "class": cls_name, "args": args}
        state = torch.load(out / m["model"]["file"], weights_only=True)
        module, _, name = m["model"]["class"].rpartition(".")
        model = getattr(importlib.import_module(module), name)(**m["model"]["args"])
        model.load_state_dict(state)
        model.eval()
        heldout = _tiles(out, "heldout")  # the photos are 8-bit: the saved tiles are the evaluated ones
        with torch.no_grad():
            outputs = model(network_input(heldout, m)).clamp(0, 1)
        saved = _tiles(out, prefix)
        assert saved.shape == outputs.shape == heldout.shape
        assert float((saved - outputs).abs().max()) <= 0.5 / 255 + 1e-6  # the PNGs round to 8 bits
        with torch.no_grad():
            untrained = model.__class__(**m["model"]["args"]).eval()(network_input(heldout, m)).clamp(0, 1)
        assert float((saved - untrained).abs().max()) > 2 / 255  # the check can tell a trained network apart


def test_deep_eval_distances_need_the_weights_folder(tmp_path: Path, photo_dir: Path) -> None:
    # lpips-vgg / dists / lpips-alex among --eval-distances read --weights DIR; without it: refused before training
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny = {"gim": ["gim", "--shifts", "2", "astronaut", "--size", "32"],
            "train-ae": ["train-ae", str(photo_dir), "--crop", "32", "--width", "4", "--latent", "2"],
            "train-sr": ["train-sr", str(photo_dir), "--crop", "32", "--width", "4", "--blocks", "1"]}
    for cmd, args in tiny.items():
        base = [*args, "--steps", "1", "--loss", "l2", "--no-progress"]
        out = tmp_path / f"{cmd}-none"
        r = CliRunner().invoke(main, [*base, "--eval-distances", "mmdpp,lpips-vgg", "--out", str(out)])
        assert r.exit_code == 2 and "lpips-vgg needs the published weights" in r.output, r.output
        said = " ".join(r.output.split())
        assert "given as weights_dir (--weights DIR); no folder given, so this run is skipped" in said
        assert "--eval-distances" in r.output and not out.exists()
        out = tmp_path / f"{cmd}-empty"
        r = CliRunner().invoke(main, [*base, "--eval-distances", "dists", "--weights", str(empty), "--out", str(out)])
        assert r.exit_code == 2 and "vgg16.pth not found (needed by dists)" in r.output, r.output
        assert not out.exists()
    r = CliRunner().invoke(main, [*tiny["train-ae"], "--loss", "lpips-alex", "--weights", str(empty),
                                  "--out", str(tmp_path / "loss")])
    assert r.exit_code == 2 and "alexnet.pth not found (needed by lpips-alex)" in r.output and "--weights" in r.output


def _published_weights() -> Path:
    """The published weights (``python ../shared/tools/published_weights.py WEIGHTS``): ``$PATCHMMD_WEIGHTS``, else
    ``../weights`` beside the repository, as tests/test_baselines.py finds them; skips when the files are absent."""
    d = Path(os.environ.get("PATCHMMD_WEIGHTS") or Path(__file__).resolve().parents[2] / "weights")
    files = ("alexnet.pth", "vgg16.pth", "lpips/alex.pth", "lpips/vgg.pth", "dists.pt")
    if not all((d / f).is_file() for f in files):
        pytest.skip(f"published weights not found in {d} (set PATCHMMD_WEIGHTS)")
    return d


def test_deep_eval_distances_with_the_published_weights(tmp_path: Path, photo_dir: Path) -> None:
    from patchmmd.metrics.registry import get_metric
    from patchmmd.tasks.superres import bicubic, degrade

    d = _published_weights()
    out = tmp_path / "sr"
    # the folder serves the loss (lpips-vgg) and the reported distances alike
    text = _run(["train-sr", str(photo_dir), "--crop", "32", "--steps", "1", "--width", "4", "--blocks", "1",
                 "--loss", "lpips-vgg", "--weights", str(d), "--eval-distances", "lpips-vgg,dists", "--no-progress",
                 "--out", str(out)])
    assert "lpips-vgg" in text and "dists" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["weights"] == str(d) and math.isfinite(m["final_loss"])
    heldout = _tiles(out, "heldout")
    bic = bicubic(degrade(heldout, 4), 4)
    assert set(m["heldout"]) == set(m["bicubic"]) == {"psnr", "ssim", "mse", "lpips-vgg", "dists", "sharpness"}
    files = {"lpips-vgg": ("vgg16.pth", "lpips/vgg.pth"), "dists": ("vgg16.pth", "dists.pt")}
    for name, (backbone, head) in files.items():
        assert math.isfinite(m["heldout"][name]) and m["heldout"][name] > 0
        expected = float(get_metric(name, backbone=str(d / backbone), weights=str(d / head))(bic, heldout).mean())
        assert m["bicubic"][name] == pytest.approx(expected, rel=1e-5)


def test_a_folder_too_big_to_hold_is_refused_before_decoding(tmp_path: Path, photo_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the tasks hold every photo as float32: a folder such as DIV2K's 800 training photos (about 27 GiB) used to
    # be decoded photo by photo until the process ran out of memory
    from patchmmd.tasks import data as task_data

    decoded: list[object] = []
    monkeypatch.setattr("patchmmd.io.load_image", lambda p, **kw: decoded.append(p))
    need = 2 * 3 * 4 * 64 * 96  # two 96x64 photos
    with pytest.raises(ValueError, match=r"the 2 photos in .* take 0\.0 GiB as float32 tensors, over the"):
        task_data.load_photos(photo_dir, max_bytes=need - 1)
    assert decoded == []
    monkeypatch.undo()
    assert len(task_data.load_photos(photo_dir, max_bytes=need)[0]) == 2  # exactly at the limit: loaded
    monkeypatch.setattr(task_data, "MAX_PHOTO_BYTES", need - 1)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["train-sr", str(photo_dir), "--steps", "1", "--crop", "32", "--width", "4",
                                  "--blocks", "1", "--loss", "l2", "--no-progress", "--out", str(out)])
    assert r.exit_code == 2 and "over the" in r.output and "fewer or smaller photos" in r.output, r.output
    assert not out.exists()


def test_a_diverged_training_run_is_one_line_naming_the_step(tmp_path: Path, photo_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(*args: object, **kwargs: object) -> object:
        return lambda x, y: (x - y).pow(2).mean() * float("nan")

    monkeypatch.setattr("patchmmd.cli.tasks._build_loss", nan_loss)
    r = CliRunner().invoke(main, ["train-sr", str(photo_dir), "--steps", "5", "--crop", "32", "--width", "4",
                                  "--blocks", "1", "--no-progress", "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1].startswith(
        "patchmmd: error: training diverged at step 1 of 5: the loss is NaN or infinite; try a lower learning rate")


def test_the_loss_history_says_which_steps_it_holds() -> None:
    """``metrics.json`` keeps about 50 of the losses; ``loss_history_every`` says they are the steps 0, every, ...
    (the last step is ``final_loss``)."""
    from patchmmd.cli.tasks import _history

    h = _history([float(i) for i in range(120)])
    assert h["loss_history_every"] == 2 and h["loss_history"] == [float(i) for i in range(0, 120, 2)]
    assert h["final_loss"] == 119.0
    assert _history([0.5]) == {"final_loss": 0.5, "loss_history": [0.5], "loss_history_every": 1}
