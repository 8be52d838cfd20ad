"""`patchmmd eval` end to end: synthetic BAPPS and MOS fixtures with hand-computed answers, and live-dev."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.evaluation.stats import jnd_map
from patchmmd.io import load_image, save_image

LIVE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "live-dev"

# (p0 offset, p1 offset, judge g) from a grey reference; l2 ranks by |offset|.
TRIPLETS = {
    "traditional": [(0.1, 0.2, 0.2), (0.3, 0.1, 0.7), (0.2, 0.2, 0.4)],  # scores 0.8, 0.7, 0.5 (tie)
    "cnn": [(0.05, 0.15, 0.9), (0.25, 0.05, 1.0)],  # scores 0.1, 1.0
}
EXPECTED_2AFC = {"traditional": (0.8 + 0.7 + 0.5) / 3, "cnn": (0.1 + 1.0) / 2}
# (p1 offset, same) with p0 grey: ranking by offset gives "same" fractions 0, 1, 1, 0
PAIRS = {"traditional": [(0.01, 0.0), (0.05, 1.0), (0.1, 1.0), (0.2, 0.0)], "cnn": [(0.02, 1.0), (0.3, 0.5)]}


def grey(v: float, size: int = 64) -> torch.Tensor:
    return torch.full((3, size, size), v)


def make_bapps(root: Path) -> Path:
    for s, rows in TRIPLETS.items():
        base = root / "2afc" / "val" / s
        for p in ("ref", "p0", "p1", "judge"):
            (base / p).mkdir(parents=True)
        for i, (o0, o1, g) in enumerate(rows):
            save_image(grey(0.5), base / "ref" / f"{i:06d}.png")
            save_image(grey(0.5 + o0), base / "p0" / f"{i:06d}.png")
            save_image(grey(0.5 + o1), base / "p1" / f"{i:06d}.png")
            np.save(base / "judge" / f"{i:06d}.npy", np.array([g]))
    for s, rows in PAIRS.items():
        base = root / "jnd" / "val" / s
        for p in ("p0", "p1", "same"):
            (base / p).mkdir(parents=True)
        for i, (o, same) in enumerate(rows):
            save_image(grey(0.5), base / "p0" / f"{i:06d}.png")
            save_image(grey(0.5 + o), base / "p1" / f"{i:06d}.png")
            np.save(base / "same" / f"{i:06d}.npy", np.array([same]))
    return root


@pytest.fixture
def bapps(tmp_path: Path) -> Path:
    return make_bapps(tmp_path / "bapps")


def make_mos_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 48, 64, generator=g) * 0.5 + 0.25
    save_image(ref, folder / "ref.png")
    lines = ["reference,distorted,distortion,mos"]
    for i in range(8):
        noise = (i + 1) * 0.02 * torch.randn(3, 48, 64, generator=g)
        save_image((ref + noise).clamp(0, 1), folder / f"d{i}.png")
        lines.append(f"ref.png,d{i}.png,{'noise' if i % 2 else 'other'},{100 - 10 * i}")
    lines.append("ref.png,ref.png,other,")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_eval_2afc_hand_computed(bapps: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = invoke("eval", "2afc", str(bapps), "-m", "l2,psnr", "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["subsets"] == ["traditional", "cnn"]
    for name in ("l2", "psnr"):  # psnr is a similarity: oriented before scoring, same answer
        res = report["metrics"][name]
        for s, v in EXPECTED_2AFC.items():
            assert res["subsets"][s] == pytest.approx(v)
        assert res["mean"] == pytest.approx(sum(EXPECTED_2AFC.values()) / 2)
    assert report["human_majority"]["subsets"]["cnn"] == pytest.approx((0.9 + 1.0) / 2)
    assert (out / "plot-l2.png").stat().st_size > 1000 and (out / "plot-psnr.png").exists()
    md = (out / "report.md").read_text()
    assert "| l2 | 0.667 | 0.550 | **0.608** |" in md
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "metric,subset,name,d0,d1,judge,score" and len(rows) == 1 + 2 * 5
    assert "| l2 |" in r.output  # the table is printed too


def test_eval_jnd_hand_computed(bapps: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = invoke("eval", "jnd", str(bapps), "-m", "l2", "--out", str(out), "--no-plots")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "report.json").read_text())["metrics"]["l2"]
    assert res["subsets"]["traditional"] == pytest.approx(2 / 3)
    # precision 1 at recall 2/3, then 3/4 at recall 1: 2/3 + 1/3 * 3/4
    assert res["subsets"]["cnn"] == pytest.approx(jnd_map([0.02, 0.3], [1.0, 0.5])) == pytest.approx(11 / 12)
    assert not list(out.glob("*.png"))


def test_eval_2afc_default_metric_limit_and_subset(bapps: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = invoke("eval", "2afc", str(bapps / "2afc"), "--subset", "traditional", "--limit", "2", "--out", str(out),
               "--no-plots")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["metrics"]) == ["mmdpp"] and report["n"] == {"traditional": 2}
    assert report["metrics"]["mmdpp"]["subsets"]["traditional"] == pytest.approx((0.8 + 0.7) / 2)


def test_eval_mos_synthetic(tmp_path: Path) -> None:
    labels = make_mos_csv(tmp_path / "mos")
    out = tmp_path / "out"
    r = invoke("eval", "mos", str(labels), "-m", "l2", "-m", "psnr", "--higher-is-better", "--bootstrap", "50",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_scored"] == 8 and report["group_column"] == "distortion"
    for name in ("l2", "psnr"):
        res = report["metrics"][name]
        assert res["all"]["srocc"] == pytest.approx(1.0) and res["all"]["krocc"] == pytest.approx(1.0)
        assert set(res) >= {"all", "noise", "other"} and res["noise"]["n"] == 4
        assert res["all"]["ci"]["srocc"][1] == pytest.approx(1.0)
    sanity = report["unscored_rows"]["l2"][0]
    assert sanity["identical"] and sanity["ok"] and sanity["value"] == 0.0
    assert report["unscored_rows"]["psnr"][0]["ok"]
    # without --higher-is-better the same data reads as DMOS: a good distance now looks bad
    r = invoke("eval", "mos", str(labels), "-m", "l2", "--bootstrap", "0", "--out", str(tmp_path / "o2"),
               "--group-column", "", "--no-plots")
    res = json.loads((tmp_path / "o2" / "report.json").read_text())["metrics"]["l2"]
    assert res["all"]["srocc"] == pytest.approx(-1.0) and list(res) == ["higher_is_better", "group", "all"]


def test_output_folder_policy(tmp_path: Path) -> None:
    labels = make_mos_csv(tmp_path / "mos")
    out = tmp_path / "out"
    args = ["eval", "mos", str(labels), "-m", "l2", "--bootstrap", "0", "--no-plots", "--out", str(out)]
    assert invoke(*args).exit_code == 0
    r = invoke(*args)
    assert r.exit_code == 2 and "already exists and is not empty" in r.output and "--overwrite" in r.output
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0 and "l2: reusing" in r.output
    assert invoke(*args, "--overwrite").exit_code == 0
    r = invoke(*args, "--overwrite", "--resume")
    assert r.exit_code == 2 and "exclude each other" in r.output
    # resuming with other settings is refused
    r = invoke(*args[:-2], "--limit", "5", "--out", str(out), "--resume")
    assert r.exit_code == 2 and "other settings" in r.output


@pytest.mark.parametrize("command", ["mos", "suite"])
def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path: Path, command: str) -> None:
    """Before, two runs could write one --out at once, and --overwrite deleted the other run's results as it
    wrote them. Now the folder is locked (OUT.lock beside it, as for `patchmmd score`): a second run is refused,
    naming the first, before it deletes anything; the lock file is gone once a run ends."""
    from patchmmd.scoring import OutputLock, lock_path

    out = tmp_path / "out"
    if command == "mos":
        args = ["eval", "mos", str(make_mos_csv(tmp_path / "mos")), "-m", "l2", "--bootstrap", "0", "--no-plots"]
    else:
        args = ["eval", "suite", "--quick", "--candidate", "l2", "--bootstrap", "5", "--train-steps", "2",
                "--no-figures"]
    assert invoke(*args, "--out", str(out)).exit_code == 0
    assert not lock_path(out).exists()
    before = sorted(p.name for p in out.iterdir())
    with OutputLock.acquire(out, argv=["patchmmd", "eval", "the-first-run"]):
        for flag in ("--overwrite", "--resume"):
            r = invoke(*args, "--out", str(out), flag)
            assert r.exit_code == 1 and "another run (pid" in r.output and "the-first-run" in r.output, r.output
        assert sorted(p.name for p in out.iterdir()) == before  # --overwrite deleted nothing
    r = invoke(*args, "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert not lock_path(out).exists()


def test_resume_over_a_damaged_cache_file(tmp_path: Path) -> None:
    """--resume after a crash that cut a cache file short (as in-place writes could) computes that metric again
    instead of failing on the JSON; the other metric is reused."""
    labels = make_mos_csv(tmp_path / "mos")
    out = tmp_path / "out"
    args = ["eval", "mos", str(labels), "-m", "l2,psnr", "--bootstrap", "0", "--no-plots", "--out", str(out)]
    assert invoke(*args).exit_code == 0
    first = json.loads((out / "report.json").read_text())["metrics"]
    text = (out / "cache" / "l2.json").read_text()
    (out / "cache" / "l2.json").write_text(text[: len(text) // 2])
    with pytest.warns(RuntimeWarning, match=r"cache file .*l2\.json is damaged"):
        r = invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "psnr: reusing" in r.output and "l2: reusing" not in r.output
    assert json.loads((out / "report.json").read_text())["metrics"] == first
    assert json.loads((out / "cache" / "l2.json").read_text())["values"] == json.loads(text)["values"]
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["l2.json", "psnr.json"]


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        ("none", ["eval", "2afc", "{tmp}/missing"], 1, "dataset folder not found"),
        ("empty", ["eval", "2afc", "{tmp}/empty"], 1, "folder is empty"),
        ("unmatched", ["eval", "2afc", "{tmp}/bapps", "--strict"], 1, "unmatched files"),
        ("bapps", ["eval", "jnd", "{tmp}/bapps", "-m", "l2,nope"], 2, "unknown metric 'nope'"),
        ("bapps", ["eval", "2afc", "{tmp}/bapps", "-m", "lpips-alex"], 2, "needs backbone=PATH"),
        ("bapps", ["eval", "2afc", "{tmp}/bapps", "-m", "dists", "-o", "backbone={tmp}/no.pth", "-o",
                   "weights={tmp}/no.pt"], 2, "backbone file not found"),
        ("bapps", ["eval", "2afc", "{tmp}/bapps", "-m", "l2", "-o", "psnr:max_db=50"], 2, "not among --metric"),
        ("none", ["eval", "mos", "{tmp}/missing.csv"], 1, "labels CSV not found"),
        ("mos-unmatched", ["eval", "mos", "{tmp}/mos/labels.csv", "-m", "l2", "--strict"], 1, "not found under"),
        ("mos", ["eval", "mos", "{tmp}/mos/labels.csv", "-m", "l2", "--score-column", "nope"], 1,
         "--score-column: column 'nope' is not in the header"),
        ("mos", ["eval", "mos", "{tmp}/mos/labels.csv", "-m", "l2", "--group-column", "kind"], 1,
         "--group-column: column 'kind' is not in the header"),
        ("mos", ["eval", "mos", "{tmp}/mos/labels.csv", "-m", "l2", "--limit", "2"], 1,
         "only 2 row(s) with a score among the first 2"),
    ],
)
def test_clear_errors(tmp_path: Path, setup: str, args: list[str], code: int, message: str) -> None:
    if setup in ("bapps", "unmatched"):
        make_bapps(tmp_path / "bapps")
    if setup == "unmatched":
        (tmp_path / "bapps" / "2afc" / "val" / "cnn" / "ref" / "000001.png").unlink()
    if setup == "empty":
        for p in ("ref", "p0", "p1", "judge"):
            (tmp_path / "empty" / "2afc" / "val" / "cnn" / p).mkdir(parents=True)
    if setup in ("mos", "mos-unmatched"):
        make_mos_csv(tmp_path / "mos")
    if setup == "mos-unmatched":
        (tmp_path / "mos" / "d3.png").unlink()
    r = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "o")])
    assert r.exit_code == code, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_lpips_through_the_cli(bapps: Path, tmp_path: Path) -> None:
    from patchmmd.metrics.baselines import alexnet_features

    torch.save({f"features.{k}": v for k, v in alexnet_features().state_dict().items()}, tmp_path / "alex.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))},
               tmp_path / "head.pth")
    r = invoke("eval", "2afc", str(bapps), "-m", "lpips-alex,l2", "-o", f"lpips-alex:backbone={tmp_path}/alex.pth",
               "-o", f"lpips-alex:weights={tmp_path}/head.pth", "--out", str(tmp_path / "o"), "--no-plots")
    assert r.exit_code == 0, r.output
    assert set(json.loads((tmp_path / "o" / "report.json").read_text())["metrics"]) == {"lpips-alex", "l2"}


def test_console_script_subprocess(tmp_path: Path) -> None:
    exe = shutil.which("patchmmd", path=str(Path(sys.executable).parent)) or shutil.which("patchmmd")
    if exe is None:
        pytest.skip("console script patchmmd not installed")
    labels = make_mos_csv(tmp_path / "mos")
    out = tmp_path / "out"
    p = subprocess.run([exe, "eval", "mos", str(labels), "-m", "psnr", "--bootstrap", "0", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "| psnr |" in p.stdout
    assert {"report.md", "report.json", "scores.csv", "plot-psnr.png"} <= {f.name for f in out.iterdir()}
    p = subprocess.run([exe, "eval", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "2afc" in p.stdout and "mos" in p.stdout


def test_live_dev_psnr_and_l2_against_scipy(tmp_path: Path) -> None:
    if not (LIVE_DEV / "labels.csv").exists():
        pytest.skip(f"live-dev not found at {LIVE_DEV}")
    out = tmp_path / "out"
    r = invoke("eval", "mos", str(LIVE_DEV / "labels.csv"), "-m", "l2,psnr", "--bootstrap", "0", "--out", str(out),
               "--no-plots")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_scored"] == 27 and report["group_column"] == "distortion"
    # independent computation: PSNR from the files with numpy, Spearman with scipy
    import csv

    rows = [row for row in csv.DictReader(open(LIVE_DEV / "labels.csv")) if row["dmos"].strip()]
    psnr, dmos, groups = [], [], []
    for row in rows:
        a = load_image(LIVE_DEV / row["reference"]).double().numpy()
        b = load_image(LIVE_DEV / row["distorted"]).double().numpy()
        psnr.append(10 * np.log10(1.0 / np.mean((a - b) ** 2)))
        dmos.append(float(row["dmos"]))
        groups.append(row["distortion"])
    psnr_a, dmos_a = np.array(psnr), np.array(dmos)
    expected = scipy.stats.spearmanr(-psnr_a, dmos_a).statistic
    assert 0.85 < expected < 0.95
    for name in ("psnr", "l2"):  # MSE ranks exactly like PSNR
        res = report["metrics"][name]
        assert res["all"]["srocc"] == pytest.approx(expected, abs=1e-9)
        assert res["all"]["krocc"] == pytest.approx(scipy.stats.kendalltau(-psnr_a, dmos_a).statistic, abs=1e-9)
        for g in set(groups):
            idx = [i for i, gg in enumerate(groups) if gg == g]
            assert res[g]["srocc"] == pytest.approx(scipy.stats.spearmanr(-psnr_a[idx], dmos_a[idx]).statistic)
    assert all(c["ok"] for c in report["unscored_rows"]["psnr"])


def test_metric_options_given_twice_are_refused_in_their_scope() -> None:
    from patchmmd.cli.evaluate import _metric_options

    got = _metric_options(["seed=1", "mmdpp:seed=2", "l2:value_range=[0, 1]"], ["mmdpp", "l2"])
    assert got == {"mmdpp": {"seed": 2}, "l2": {"seed": 1, "value_range": [0, 1]}}  # METRIC: wins over all
    assert _metric_options(["seed=1", "seed=1"], ["mmdpp"]) == {"mmdpp": {"seed": 1}}
    for items in (["seed=1", "seed=2"], ["mmdpp:seed=1", "mmdpp:seed=2"]):
        with pytest.raises(click.BadParameter, match=r"seed was given twice \(1, 2\)"):
            _metric_options(items, ["mmdpp"])
