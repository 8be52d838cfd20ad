"""Regression tests of an audit of the human-judgment runner and the `patchmmd eval 2afc|jnd|mos` commands: the
per-metric cache (what it may reuse), --resume after an interrupt, the BAPPS readers against independent
computations of the 2AFC score and the JND mAP, targeted metric options, batches of mixed sizes, and MOS label
files as spreadsheets write them."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.evaluation import BAPPS2AFC, BAPPSJND, CacheMismatchError, DatasetError, EvalMetric, MOSDataset, run
from patchmmd.io import save_image


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).pow(2).flatten(1).mean(1)


def mos_set(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ref = torch.full((3, 16, 16), 0.5)
    save_image(ref, folder / "ref.png")
    rows = ["reference,distorted,dmos"]
    for i in range(n):
        save_image((ref + 0.05 * (i + 1)).clamp(0, 1), folder / f"d{i}.png")
        rows.append(f"ref.png,d{i}.png,{10 * (i + 1)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def replace_in_place(path: Path, image: torch.Tensor) -> None:
    """Write another image under the same name, with a modification time surely not the old one's."""
    old = path.stat().st_mtime_ns
    save_image(image, path)
    os.utime(path, ns=(old + 2_000_000_000, old + 2_000_000_000))


# (p0 offset, p1 offset, g) from a grey reference: ties (equal offsets), g at 0, 1/2 and 1.
TRIPLETS = {"traditional": [(0.1, 0.2, 0.2), (0.3, 0.1, 0.7), (0.2, 0.2, 0.4), (0.05, 0.3, 1.0)],
            "cnn": [(0.25, 0.05, 0.0), (0.15, 0.15, 0.5), (0.1, 0.3, 0.6)]}
# (p1 offset, same) with p0 grey; fractional "same", ranking not monotone in it.
PAIRS = {"traditional": [(0.02, 0.5), (0.3, 1.0), (0.1, 0.0), (0.2, 0.75), (0.05, 1.0)],
         "cnn": [(0.4, 1.0), (0.01, 0.25), (0.15, 0.0)]}


def make_2afc(root: Path, triplets: dict[str, list[tuple[float, float, float]]] = TRIPLETS) -> Path:
    for s, rows in triplets.items():
        base = root / "2afc" / "val" / s
        for p in ("ref", "p0", "p1", "judge"):
            (base / p).mkdir(parents=True)
        for i, (o0, o1, g) in enumerate(rows):
            save_image(torch.full((3, 32, 32), 0.4), base / "ref" / f"{i:06d}.png")
            save_image(torch.full((3, 32, 32), 0.4 + o0), base / "p0" / f"{i:06d}.png")
            save_image(torch.full((3, 32, 32), 0.4 + o1), base / "p1" / f"{i:06d}.png")
            np.save(base / "judge" / f"{i:06d}.npy", np.array([g]))
    return root


def make_jnd(root: Path) -> Path:
    for s, rows in PAIRS.items():
        base = root / "jnd" / "val" / s
        for p in ("p0", "p1", "same"):
            (base / p).mkdir(parents=True)
        for i, (o, same) in enumerate(rows):
            save_image(torch.full((3, 32, 32), 0.3), base / "p0" / f"{i:06d}.png")
            save_image(torch.full((3, 32, 32), 0.3 + o), base / "p1" / f"{i:06d}.png")
            np.save(base / "same" / f"{i:06d}.npy", np.array([same]))
    return root


# ------------------------------------------------------------------------------------------------- the cache
def test_cache_refuses_values_of_an_image_replaced_in_place(tmp_path: Path) -> None:
    """Cached values were matched on the items' names only: a distorted image (or a BAPPS patch) regenerated under
    the same name was scored with the old image's values on --resume. The files' sizes and modification times are
    now part of the settings."""
    labels = mos_set(tmp_path / "mos")
    cache = tmp_path / "cache"
    run(MOSDataset(labels), [EvalMetric("mse", mse)], cache=cache, bootstrap=0)
    replace_in_place(tmp_path / "mos" / "d0.png", torch.full((3, 16, 16), 0.5))  # now identical to the reference
    with pytest.raises(CacheMismatchError, match=r"other settings \(images: files changed since"):
        run(MOSDataset(labels), [EvalMetric("mse", mse)], cache=cache, bootstrap=0)
    assert run(MOSDataset(labels), [EvalMetric("mse", mse)], bootstrap=0).values["mse"][0] == [0.0]

    root = make_2afc(tmp_path / "bapps")
    run(BAPPS2AFC(root), ["l2"], cache=tmp_path / "c2")
    assert run(BAPPS2AFC(root), ["l2"], cache=tmp_path / "c2").values  # unchanged: read back
    replace_in_place(root / "2afc" / "val" / "cnn" / "p1" / "000002.png", torch.full((3, 32, 32), 0.4))
    with pytest.raises(CacheMismatchError, match="images: files changed since"):
        run(BAPPS2AFC(root), ["l2"], cache=tmp_path / "c2")


def test_cache_file_without_image_stamps_is_refused_and_changes_are_named(tmp_path: Path) -> None:
    """A file written before the image files were stamped cannot tell whether they changed since: refused, as any
    other difference of settings is, and the message names what changed instead of dumping the settings."""
    labels = mos_set(tmp_path / "mos")
    cache = tmp_path / "cache"
    run(MOSDataset(labels), ["l2"], cache=cache, bootstrap=0)
    with pytest.raises(CacheMismatchError, match=r"other settings \(mode: \"RGB\", now \"L\"\)"):
        run(MOSDataset(labels, mode="L"), ["l2"], cache=cache, bootstrap=0)
    data = json.loads((cache / "l2.json").read_text())
    del data["settings"]["images"]
    (cache / "l2.json").write_text(json.dumps(data))
    with pytest.raises(CacheMismatchError, match=r"images: not recorded \(a cache file of an earlier version\)"):
        run(MOSDataset(labels), ["l2"], cache=cache, bootstrap=0)


@pytest.mark.parametrize("option", ["tuple", "nan", "path"])
def test_cache_of_a_metric_with_tuple_or_path_options_is_read_back(tmp_path: Path, option: str) -> None:
    """A tuple option read back from the cache as a list (and a NaN as a NaN, which equals nothing), so every
    rerun with the very same options was refused as "computed with other settings"; a path option (a weight file
    as ``Path``) could not be stored at all: a TypeError once the metric had run, its values lost."""
    labels = mos_set(tmp_path / "mos")
    value: Any = {"tuple": (1.0, 2.0), "nan": float("nan"), "path": labels}[option]  # labels: any existing file
    calls = {"pairs": 0}

    def counting(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["pairs"] += x.shape[0]
        return mse(x, y)

    metric = EvalMetric("m", counting, options={"weights": value})
    first = run(MOSDataset(labels), [metric], cache=tmp_path / "cache", bootstrap=0)
    assert calls["pairs"] == 6
    again = run(MOSDataset(labels), [metric], cache=tmp_path / "cache", bootstrap=0)
    assert calls["pairs"] == 6 and again.values == first.values  # read back, not computed again
    stored = json.loads((tmp_path / "cache" / "m.json").read_text())["settings"]
    assert json.dumps(stored["options"]) == json.dumps({"weights": {"tuple": [1.0, 2.0], "nan": float("nan"),
                                                                     "path": str(labels)}[option]})
    if option == "path":
        assert stored["files"]["weights"]["path"] == str(labels)
    with pytest.raises(CacheMismatchError, match=r"options.weights: "):
        run(MOSDataset(labels), [EvalMetric("m", counting, options={"weights": (1.0, 3.0)})],
            cache=tmp_path / "cache", bootstrap=0)


def test_interrupt_mid_metric_keeps_the_finished_ones_and_resume_goes_on(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the second metric: exit status 130, the first metric's cache file complete, no temporary file,
    no file of the second; --resume reuses the first and computes the second; a plain rerun is refused."""
    from patchmmd.evaluation import runner

    labels = mos_set(tmp_path / "mos")
    out = tmp_path / "out"
    args = ["eval", "mos", str(labels), "-m", "l2,psnr", "--bootstrap", "0", "--no-plots", "--batch-size", "2",
            "--out", str(out)]
    original = runner._compute

    def interrupted(metric: EvalMetric, *a: Any, **k: Any) -> Any:
        if metric.name == "psnr":
            raise KeyboardInterrupt
        return original(metric, *a, **k)

    monkeypatch.setattr(runner, "_compute", interrupted)
    r = invoke(*args)
    assert r.exit_code == 130, r.output
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["l2.json"]
    assert not (out / "report.json").exists()
    monkeypatch.undo()
    r = invoke(*args)
    assert r.exit_code == 2 and "--resume" in r.output
    r = invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "l2: reusing" in r.output and "psnr: reusing" not in r.output
    assert set(json.loads((out / "report.json").read_text())["metrics"]) == {"l2", "psnr"}


def test_targeted_metric_options_reach_their_metric_only(tmp_path: Path) -> None:
    """-o METRIC:KEY=VALUE goes to that metric (and into its cache settings), -o KEY=VALUE to every metric, the
    targeted value over the common one."""
    labels = mos_set(tmp_path / "mos")
    out = tmp_path / "out"
    r = invoke("eval", "mos", str(labels), "-m", "psnr,ssim", "-o", "psnr:max_db=50", "-o", "win_size=3",
               "-o", "ssim:win_size=5", "--bootstrap", "0", "--no-plots", "--out", str(out))
    assert r.exit_code == 2 and "psnr: unknown option(s) ['win_size']" in r.output  # the common one goes to both
    r = invoke("eval", "mos", str(labels), "-m", "psnr,ssim", "-o", "psnr:max_db=50", "-o", "ssim:win_size=5",
               "--bootstrap", "0", "--no-plots", "--out", str(out))
    assert r.exit_code == 0, r.output
    options = {m: json.loads((out / "cache" / f"{m}.json").read_text())["settings"]["options"]
               for m in ("psnr", "ssim")}
    assert options == {"psnr": {"max_db": 50}, "ssim": {"win_size": 5}}
    r = invoke("eval", "mos", str(labels), "-m", "psnr,ssim", "-o", "psnr:max_db=60", "-o", "ssim:win_size=5",
               "--bootstrap", "0", "--no-plots", "--out", str(out), "--resume")
    assert r.exit_code == 2 and "options.max_db: 50, now 60" in r.output, r.output


# ----------------------------------------------------------------------------------------------------- BAPPS
def test_bapps_item_whose_patches_differ_in_size_is_named(tmp_path: Path) -> None:
    """Patches of one triplet of different sizes (a file of another size, read at its own size) raised a bare
    RuntimeError of torch.cat (2AFC) or the metric's shape error naming no item (JND)."""
    root = make_2afc(tmp_path / "bapps", {"cnn": [(0.1, 0.2, 0.5), (0.1, 0.2, 0.5)]})
    save_image(torch.full((3, 32, 48), 0.5), root / "2afc" / "val" / "cnn" / "p1" / "000001.png")
    with pytest.raises(DatasetError, match=r"cnn/000001: its images differ in size: ref/000001\.png \(3, 32, 32\), "
                                           r"p0/000001\.png \(3, 32, 32\), p1/000001\.png \(3, 32, 48\)"):
        run(BAPPS2AFC(root, load_size=None), ["l2"])
    # resized to the same shorter side they still differ: the message says so
    with pytest.raises(DatasetError, match=r"differ in size \(shorter side resized to load_size=16\)"):
        BAPPS2AFC(root, load_size=16)[1]
    r = invoke("eval", "2afc", str(root), "-m", "l2", "--load-size", "0", "--out", str(tmp_path / "o"), "--strict")
    assert r.exit_code == 1 and "cnn/000001: its images differ in size" in r.output
    assert "Traceback" not in r.output and "RuntimeError" not in r.output

    jnd = make_jnd(tmp_path / "j")
    save_image(torch.full((3, 20, 32), 0.5), jnd / "jnd" / "val" / "cnn" / "p0" / "000002.png")
    with pytest.raises(DatasetError, match=r"cnn/000002: its images differ in size: p0/000002\.png \(3, 20, 32\)"):
        run(BAPPSJND(jnd, load_size=None), ["l2"])


def _two_afc_by_hand(rows: list[tuple[float, float, float]]) -> float:
    """BAPPS: g = fraction of people preferring p1; a triplet scores g when the metric prefers p1 (the smaller
    distance), 1 - g when it prefers p0, 1/2 on a tie; the subset's score is the mean."""
    per = [(g if o1 < o0 else (1 - g) if o0 < o1 else 0.5) for o0, o1, g in rows]
    return sum(per) / len(per)


def test_2afc_against_the_bapps_definition(tmp_path: Path) -> None:
    root = make_2afc(tmp_path / "bapps")
    out = tmp_path / "out"
    r = invoke("eval", "2afc", str(root), "-m", "l2,psnr", "--batch-size", "3", "--out", str(out), "--no-plots")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    expected = {s: _two_afc_by_hand(rows) for s, rows in TRIPLETS.items()}
    for m in ("l2", "psnr"):  # a distance and a similarity, ties included
        assert report["metrics"][m]["subsets"] == pytest.approx(expected)
        assert report["metrics"][m]["mean"] == pytest.approx(sum(expected.values()) / 2)
        assert f"| {m} | {expected['traditional']:.3f} | {expected['cnn']:.3f} | " in r.output  # printed alike
    ceiling = {s: float(np.mean([max(g, 1 - g) for *_, g in rows])) for s, rows in TRIPLETS.items()}
    assert report["human_majority"]["subsets"] == pytest.approx(ceiling)
    rows = list(csv.DictReader(io.StringIO((out / "scores.csv").read_text())))
    for m in ("l2", "psnr"):  # the per-triplet scores of scores.csv average to the report's
        for s in TRIPLETS:
            mine = [float(row["score"]) for row in rows if row["metric"] == m and row["subset"] == s]
            assert np.mean(mine) == pytest.approx(expected[s])


def _ap_by_hand(rows: list[tuple[float, float]]) -> tuple[float, float]:
    """(LPIPS's VOC-style AP, with the precision envelope; scikit-learn's step AP without it) of ranking the pairs
    by distance, ascending, each counting ``same`` true and ``1 - same`` false positives."""
    rows = sorted(rows)
    total = sum(s for _, s in rows)
    tp = fp = 0.0
    recall, precision = [], []
    for _, s in rows:
        tp, fp = tp + s, fp + 1 - s
        recall.append(tp / total)
        precision.append(tp / (tp + fp))
    step = sum((r - r0) * p for r0, r, p in zip([0.0, *recall], recall, precision, strict=False))
    envelope = [max(precision[i:]) for i in range(len(precision))]
    voc = sum((r - r0) * p for r0, r, p in zip([0.0, *recall], recall, envelope, strict=False))
    return voc, step


def test_jnd_map_against_an_independent_computation(tmp_path: Path) -> None:
    root = make_jnd(tmp_path / "bapps")
    out = tmp_path / "out"
    r = invoke("eval", "jnd", str(root), "-m", "l2,psnr", "--out", str(out), "--no-plots")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    for s, rows in PAIRS.items():
        voc, step = _ap_by_hand(rows)
        for m in ("l2", "psnr"):
            assert report["metrics"][m]["subsets"][s] == pytest.approx(voc)
    # LPIPS's AP (the one reported) is at least scikit-learn's: here it differs where precision rises again
    voc, step = _ap_by_hand(PAIRS["traditional"])
    assert voc > step + 0.01


def test_batches_of_mixed_image_sizes_give_the_values_of_one_pair_at_a_time(tmp_path: Path) -> None:
    """Consecutive items of different sizes go in separate batches: the values do not depend on batch_size."""
    folder = tmp_path / "mos"
    folder.mkdir()
    rows = ["reference,distorted,dmos"]
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(16, 16), (16, 16), (24, 16), (16, 16), (24, 16), (24, 16), (16, 20)]):
        save_image(torch.rand(3, h, w, generator=g), folder / f"r{i}.png")
        save_image(torch.rand(3, h, w, generator=g), folder / f"d{i}.png")
        rows.append(f"r{i}.png,d{i}.png,{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    sizes: list[int] = []

    def recording(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return mse(x, y)

    one = run(MOSDataset(folder / "labels.csv"), [EvalMetric("m", recording)], batch_size=1, bootstrap=0)
    sizes.clear()
    many = run(MOSDataset(folder / "labels.csv"), [EvalMetric("m", recording)], batch_size=8, bootstrap=0)
    assert sizes == [2, 1, 1, 2, 1] and many.values == one.values


def test_an_image_that_cannot_be_read_stops_a_strict_run_naming_it(tmp_path: Path) -> None:
    root = make_2afc(tmp_path / "bapps")
    bad = root / "2afc" / "val" / "cnn" / "p0" / "000001.png"
    bad.write_bytes(b"not a png")
    r = invoke("eval", "2afc", str(root), "-m", "l2", "--out", str(tmp_path / "o"), "--no-plots", "--strict")
    assert r.exit_code == 1 and f"cannot read {bad}" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------------------ MOS
def test_mos_csv_as_spreadsheets_write_it(tmp_path: Path) -> None:
    """A byte-order mark, CRLF line ends, quoted fields holding commas and line breaks, columns the reader does
    not use, and a row without a score (identical images, checked instead)."""
    folder = tmp_path / "my images"
    folder.mkdir()
    ref = torch.full((3, 16, 16), 0.5)
    save_image(ref, folder / "ref, 1.png")
    lines = ['id,"reference","distorted",distortion,dmos,"comment"']
    for i in range(7):
        save_image((ref + 0.04 * (i + 1)).clamp(0, 1), folder / f"d{i}.png")
        lines.append(f'{i},"my images/ref, 1.png",my images/d{i}.png,"blur, {i % 2}",{10 * (i + 1)},"a\r\nb"')
    lines.append('7,"my images/ref, 1.png","my images/ref, 1.png","blur, 0",,')
    labels = tmp_path / "labels.csv"
    labels.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    out = tmp_path / "out"
    r = invoke("eval", "mos", str(labels), "-m", "l2", "--bootstrap", "0", "--no-plots", "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_rows"] == 8 and report["n_scored"] == 7 and report["group_column"] == "distortion"
    assert set(report["metrics"]["l2"]) == {"higher_is_better", "group", "all", "blur, 0", "blur, 1"}
    assert report["metrics"]["l2"]["all"]["srocc"] == pytest.approx(1.0)
    assert report["unscored_rows"]["l2"] == [{"distorted": "my images/ref, 1.png", "identical": True, "value": 0.0,
                                              "value_on_itself": 0.0, "ok": True}]
    rows = list(csv.DictReader(io.StringIO((out / "scores.csv").read_text(encoding="utf-8"))))
    assert [row["reference"] for row in rows] == ["my images/ref, 1.png"] * 8 and rows[-1]["dmos"] == ""


# --------------------------------------------------------------------------------------------------- plots
def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    """write() switched the whole session's backend to Agg (matplotlib.use): in a notebook, the user's figures
    stopped showing after a report was written. Plots are now drawn without pyplot."""
    pytest.importorskip("matplotlib")
    import subprocess
    import sys

    labels = mos_set(tmp_path / "mos")
    code = ("import sys, matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; "
            "from patchmmd.evaluation import MOSDataset, run, write; "
            "rep = write(run(MOSDataset(sys.argv[1]), ['l2', 'psnr'], bootstrap=0), sys.argv[2]); "
            "print(matplotlib.get_backend(), plt.get_fignums(), sorted(rep.plots.values()))")
    done = subprocess.run([sys.executable, "-c", code, str(labels), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "[]", "['plot-l2.png',", "'plot-psnr.png']"]
    for name in ("plot-l2.png", "plot-psnr.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_image_grids_leave_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    """The tasks' and the suite's figures (``tasks._common.image_grid_figure``) switched the backend the same way."""
    pytest.importorskip("matplotlib")
    import subprocess
    import sys

    code = ("import sys, torch, matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; "
            "from patchmmd.tasks._common import image_grid_figure; "
            "image_grid_figure([[torch.rand(3, 8, 8), torch.rand(1, 8, 8)]], ['row'], ['a', 'b'], sys.argv[1]); "
            "print(matplotlib.get_backend(), plt.get_fignums())")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "grid.png")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "[]"]
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
