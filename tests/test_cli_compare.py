"""``patchmmd compare`` and ``patchmmd metrics`` end to end on small files made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import invoke
from patchmmd import l2_distance, mmdpp
from patchmmd.io import load_image, save_image


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 48, 48, generator=g)
    y = (x + 0.1 * torch.randn(3, 48, 48, generator=g)).clamp(0, 1)
    paths = {k: tmp_path / f"{k}.png" for k in ("a", "b", "small", "gray", "rgba", "bad")}
    save_image(x, paths["a"])
    save_image(y, paths["b"])
    save_image(torch.rand(3, 40, 44, generator=g), paths["small"])
    Image.fromarray((x.mean(0).numpy() * 255).astype(np.uint8), mode="L").save(paths["gray"])
    rgba = np.concatenate([(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8), np.full((48, 48, 1), 128, np.uint8)], 2)
    Image.fromarray(rgba, mode="RGBA").save(paths["rgba"])
    paths["bad"].write_text("this is not a PNG")
    return paths


def test_value_equals_library(files: dict[str, Path]) -> None:
    # on the CPU, as the library call it is compared with (--device auto would pick a GPU where there is one)
    r = invoke("compare", files["a"], files["b"], "--device", "cpu")
    assert r.exit_code == 0, r.output
    x, y = load_image(files["a"]), load_image(files["b"])
    assert float(r.output) == pytest.approx(float(mmdpp(x, y)), rel=1e-6)
    r = invoke("compare", files["a"], files["b"], "--metric", "l2", "--json", "--device", "cpu")
    obj = json.loads(r.output)
    assert obj["metric"] == "l2" and obj["distance"] == pytest.approx(float(l2_distance(x, y)), rel=1e-6)
    assert obj["shape_a"] == [3, 48, 48] and obj["higher_is_better"] is False and obj["resized"] is False


def test_metric_options(files: dict[str, Path]) -> None:
    r = invoke("compare", files["a"], files["b"], "-o", "seed=3", "-o", "num_features=64", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    x, y = load_image(files["a"]), load_image(files["b"])
    assert json.loads(r.output)["distance"] == pytest.approx(float(mmdpp(x, y, seed=3, num_features=64)), rel=1e-6)
    r = invoke("compare", files["a"], files["b"], "-o", "nonsense")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_sizes_and_resize(files: dict[str, Path]) -> None:
    r = invoke("compare", files["a"], files["small"])
    assert r.exit_code == 1
    assert "48x48" in r.output and "44x40" in r.output and "--resize" in r.output
    r = invoke("compare", files["a"], files["small"], "--resize", "--json", "-m", "l2")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert obj["resized"] is True and obj["shape_b"] == [3, 48, 48]


def test_modes(files: dict[str, Path]) -> None:
    # default RGB: grayscale replicated, alpha composited over white, so all compare
    for other in ("gray", "rgba"):
        r = invoke("compare", files["a"], files[other], "--json", "-m", "l2")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["shape_b"] == [3, 48, 48]
    r = invoke("compare", files["gray"], files["a"], "--mode", "L", "--json", "-m", "l2")
    assert json.loads(r.output)["shape_a"] == [1, 48, 48]
    r = invoke("compare", files["rgba"], files["a"], "--mode", "keep")
    assert r.exit_code == 1 and "different modes" in r.output and "4 channel" in r.output


def test_map(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    r = invoke("compare", files["a"], files["b"], "--map", out)
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
    r = invoke("compare", files["a"], files["b"], "--map", out)
    assert r.exit_code == 2 and "already exist" in r.output
    assert invoke("compare", files["a"], files["b"], "--map", out, "--overwrite").exit_code == 0
    r = invoke("compare", files["a"], files["b"], "--map", tmp_path / "m2.png", "-m", "l2")
    assert r.exit_code == 2 and "--map needs a metric with a distance map" in r.output
    assert not (tmp_path / "m2.png").exists()


def test_errors(files: dict[str, Path], tmp_path: Path) -> None:
    r = invoke("compare", files["a"], files["bad"])
    assert r.exit_code == 1 and "cannot read" in r.output
    r = invoke("compare", files["a"], tmp_path / "missing.png")
    assert r.exit_code == 1 and "not found" in r.output
    r = invoke("compare", files["a"], files["b"], "-m", "psnr-typo")
    assert r.exit_code == 2 and "unknown metric" in r.output and "mmdpp" in r.output


def test_metrics_listing() -> None:
    from patchmmd.metrics.registry import metric_names

    r = invoke("metrics")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split()[:4] == ["name", "group", "higher_is_better", "map"]
    assert {line.split()[0] for line in lines[1:]} == set(metric_names())
    rows = json.loads(invoke("metrics", "--json").output)
    mm = next(x for x in rows if x["name"] == "mmdpp")
    assert mm["has_map"] is True and mm["higher_is_better"] is False


def test_failures_are_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    for b, what in ((files["bad"], "cannot read"), (tmp_path / "missing.png", "not found"),
                    (files["small"], "differ in size")):
        r = invoke("compare", files["a"], b)
        assert r.exit_code == 1, r.output
        assert r.output.startswith("patchmmd: error: ") and what in r.output and len(r.output.splitlines()) == 1


def test_options_that_fail_on_images_are_a_usage_error_before_reading(files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("pytorch_msssim")
    for metric in ("ssim", "ms-ssim"):  # the option fails only when the metric runs
        r = invoke("compare", files["a"], tmp_path / "missing.png", "-m", metric, "-o", "win_size=4")
        assert r.exit_code == 2, r.output
        assert "--option" in r.output and "odd" in r.output and "missing.png" not in r.output


def test_ms_ssim(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(0)
    for name, size in (("a", 200), ("b", 200), ("c", 48), ("d", 48)):
        save_image(torch.rand(3, size, size, generator=g), tmp_path / f"{name}.png")
    r = invoke("compare", tmp_path / "a.png", tmp_path / "b.png", "-m", "ms-ssim", "--json")
    assert r.exit_code == 0, r.output
    assert 0 < json.loads(r.output)["score"] < 1
    r = invoke("compare", tmp_path / "c.png", tmp_path / "d.png", "-m", "ms-ssim")  # the images are too small
    assert r.exit_code == 1 and "needs images larger than 160 px" in r.output, r.output


def test_map_under_a_regular_file(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    for out in (tmp_path / "f" / "m.png", tmp_path / "f" / "sub" / "m.png"):
        r = invoke("compare", files["a"], files["b"], "--map", out)
        assert r.exit_code == 2, r.output
        assert f"--map {out}: {tmp_path / 'f'} is a file, not a folder" in r.output
        assert "Errno" not in r.output


def _strict_json(text: str) -> object:
    """``json.loads`` that refuses NaN and Infinity (Python's reader accepts them; JSON has neither)."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(("metric", "bad", "key"), [("l2", float("nan"), "distance"),
                                                     ("psnr", float("inf"), "score")])
def test_json_output_is_strict_when_the_metric_is_not_finite(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, metric: str, bad: float, key: str
) -> None:
    monkeypatch.setattr("patchmmd.cli.compare._checked_metric",
                        lambda name, options: lambda x, y: torch.full((x.shape[0],), bad))
    r = invoke("compare", files["a"], files["b"], "-m", metric, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    obj = _strict_json(r.output)
    assert isinstance(obj, dict) and obj[key] is None and obj["metric"] == metric
    assert len(r.output.strip().splitlines()) == 1  # one line, as before


def test_a_single_valued_option_given_twice_is_refused(files: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # click keeps the last value of a repeated option without a word: `-m psnr -m ssim` printed SSIM's number alone
    for args in (["-m", "psnr", "-m", "ssim"], ["--metric=psnr", "-mssim"], ["--mode", "RGB", "--mode", "L"]):
        r = invoke("compare", files["a"], files["b"], *args)
        assert r.exit_code == 2 and "was given 2 times" in r.output and "takes one value" in r.output, r.output
    r = invoke("compare", files["a"], files["b"], "-o", "seed=1", "-o", "seed=2")  # one key, two values
    assert r.exit_code == 2 and "seed was given twice (1, 2)" in r.output, r.output
    # the same value twice, flags twice and a repeatable option are harmless
    r = invoke("compare", files["a"], files["b"], "-m", "l2", "--metric", "l2", "--json", "--json",
                "-o", "value_range=[0, 1]", "-o", "value_range=[0, 1]", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["distance"] == pytest.approx(float(l2_distance(load_image(files["a"]),
                                                                               load_image(files["b"]))), rel=1e-6)
    # every command, the eval subcommands included; a value that looks like an option is still a value
    out = tmp_path / "s.csv"
    r = invoke("score", files["a"].parent, files["a"].parent, "--out", out, "--out", tmp_path / "t.csv")
    assert r.exit_code == 2 and "--out was given 2 times" in r.output and not out.exists(), r.output
    r = invoke("eval", "mos", tmp_path / "labels.csv", "--score-column", "a", "--score-column", "b")
    assert r.exit_code == 2 and "--score-column was given 2 times" in r.output, r.output
    monkeypatch.chdir(tmp_path)
    r = invoke("compare", files["a"], files["b"], "--map", "-mssim.png", "-m", "mmdpp")  # --map's file name
    assert r.exit_code == 0 and (tmp_path / "-mssim.png").is_file(), r.output
