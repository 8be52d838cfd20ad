"""The dev benchmark (`patchmmd eval suite`): the lattice measure, the shift ratio, and --quick end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.data import sample_image
from patchmmd.data.distortions import gaussian_blur
from patchmmd.evaluation.artifacts import lattice_power, lattice_ratio
from patchmmd.evaluation.shift import SHIFTS, shift_distances, shift_pairs, shift_ratios
from patchmmd.evaluation.suite import SuiteConfig, judge_tiles, parse_candidate, run_suite, write_suite
from patchmmd.io import save_image


# ------------------------------------------------------------------------------------------ lattice
def natural(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Photo-like test images: crops of the sample photos."""
    img = sample_image("astronaut")
    return torch.stack([img[:, 40 * i : 40 * i + size, 50 : 50 + size] for i in range(n)])


def test_lattice_ratio_is_one_without_a_lattice_and_large_with_one() -> None:
    truth = natural()
    g = torch.Generator().manual_seed(1)
    noisy = (truth + 0.01 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    assert lattice_ratio(truth, truth) == pytest.approx(1.0)
    assert 0.8 < lattice_ratio(noisy, truth) < 1.5  # white noise adds little at 15 of 4096 bins
    tile = torch.zeros(4, 4)
    tile[0, 0], tile[2, 1] = 0.06, -0.03  # a faint 4x4 pattern, as a pixel shuffle leaves
    lattice = (truth + tile.repeat(16, 16)).clamp(0, 1)
    assert lattice_ratio(lattice, truth) > 5  # about 10 here
    # a blur (what an L2-trained network gives) removes power: below 1
    assert lattice_ratio(gaussian_blur(truth, 1.5), truth) < 1


def test_lattice_power_sees_only_the_lattice_frequencies() -> None:
    h = w = 32
    xx = torch.arange(w).expand(h, w)
    off = (0.5 + 0.1 * torch.cos(2 * torch.pi * 3 * xx / w)).expand(1, 3, h, w)  # bin 3: not a lattice bin
    on = (0.5 + 0.1 * torch.cos(2 * torch.pi * xx / 4)).expand(1, 3, h, w)  # period 4: bin W/4
    assert float(lattice_power(off)) < 1e-9  # float32 rounding only
    # a cosine of amplitude A: two bins of (A H W / 2)² / (H W) each
    assert float(lattice_power(on)) == pytest.approx(2 * (0.1 * h * w / 2) ** 2 / (h * w), rel=1e-6)
    with pytest.raises(ValueError, match="multiples of the period"):
        lattice_power(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="differ in shape"):
        lattice_ratio(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16))


# -------------------------------------------------------------------------------------------- shift
def mean_abs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().mean(dim=(1, 2, 3))


def test_shift_ratio_on_a_ramp() -> None:
    """A horizontal ramp of slope a: a shift by s px differs by s·a everywhere (cubic interpolation is exact
    on a line), the diagonal shift as the horizontal one; the ratio divides by the milder distortion."""
    a = 0.01
    x = (0.2 + a * torch.arange(40.0)).expand(3, 40, 40).clone()
    d = shift_distances(mean_abs, x, seed=0)
    assert d["shift-1px"] == pytest.approx(a, rel=1e-5)
    assert d["shift-1px-diag"] == pytest.approx(a, rel=1e-5)
    assert d["shift-2px"] == pytest.approx(2 * a, rel=1e-5)
    assert d["shift-0.5px"] == pytest.approx(a / 2, rel=1e-5)
    mild = min(d["noise"], d["blur"])
    r = shift_ratios(mean_abs, x, seed=0)
    assert list(r) == list(SHIFTS)
    assert r["shift-2px"] == pytest.approx(2 * a / mild, rel=1e-5)
    # noise of σ 0.03: mean |N| = σ √(2/π); the blur only changes the ramp near the borders (reflect padding). The
    # mean of 3 x 36 x 36 draws of |N| has a relative standard deviation of √(π/2 - 1) / √3888 = 1.2 % (this seed:
    # -1.0 %): 4 % is over 3 of them, and a σ of 0.032 (+6.7 %) no longer passes as 0.03.
    assert d["noise"] == pytest.approx(0.03 * (2 / torch.pi) ** 0.5, rel=0.04)


def test_shift_pairs_are_crops_of_the_photo_and_seeded() -> None:
    x = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0))
    p = shift_pairs(x, seed=3)
    assert torch.equal(p["shift-1px"][0], x[:, 2:-2, 2:-2])
    assert torch.equal(p["shift-1px"][1], x[:, 2:-2, 3:-1])
    assert torch.equal(p["shift-1px-diag"][1], x[:, 3:-1, 3:-1])
    assert torch.equal(p["shift-2px"][1], x[:, 2:-2, 4:])
    assert torch.equal(p["noise"][1], shift_pairs(x, seed=3)["noise"][1])
    assert not torch.equal(p["noise"][1], shift_pairs(x, seed=4)["noise"][1])
    invariant = torch.rand(3, 20, 1, generator=torch.Generator().manual_seed(1)).expand(3, 20, 24).contiguous()
    assert shift_ratios(mean_abs, invariant)["shift-1px"] == 0.0
    with pytest.raises(ValueError, match="at least 12 px"):
        shift_pairs(torch.rand(3, 10, 10))


@pytest.mark.parametrize("nan_at", [4, 5])  # the noise pair, the blur pair
def test_shift_ratio_is_nan_when_either_mild_distortion_is_nan(nan_at: int) -> None:
    """``min(d(noise), d(blur))`` ignored a NaN blur distance (Python's min keeps its first argument when a
    comparison with NaN fails) but not a NaN noise distance: the ratio must be NaN in both cases."""

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = mean_abs(a, b)
        d[nan_at] = float("nan")
        return d

    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert list(shift_distances(dist, x)) == [*SHIFTS, "noise", "blur"]
    assert all(math.isnan(v) for v in shift_ratios(dist, x).values())


# ------------------------------------------------------------------------------------------ helpers
def test_parse_candidate_and_judge_tiles() -> None:
    assert SuiteConfig().quick is False and SuiteConfig.quick_config().quick is True
    assert parse_candidate("mmdpp") == ("mmdpp", {})
    assert parse_candidate("mmdpp:num_scales=3,features=iid") == ("mmdpp", {"num_scales": 3, "features": "iid"})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_candidate("mmdpp:num_scales")
    with pytest.raises(ValueError, match="no metric name"):
        parse_candidate(":a=1")
    t = judge_tiles([torch.rand(3, 50, 70), torch.rand(3, 10, 10)], 32, 2)  # the small image is skipped
    assert t.shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------------- end to end
def tiny_human_set(root: Path) -> Path:
    """Two 64x64 scenes, four distortions each with a DMOS that grows with the distortion."""
    g = torch.Generator().manual_seed(0)
    rows = ["reference,distorted,distortion,dmos"]
    for k, name in enumerate(("astronaut", "coffee")):
        ref = sample_image(name)[:, 60 : 60 + 64, 80 : 80 + 64]
        save_image(ref, root / f"{name}.png")
        for level in (1, 2):
            noisy = (ref + 0.04 * level * torch.randn(ref.shape, generator=g)).clamp(0, 1)
            save_image(noisy, root / f"{name}_noise{level}.png")
            rows.append(f"{name}.png,{name}_noise{level}.png,noise,{10 * level + k}")
            save_image(gaussian_blur(ref, 1.0 * level), root / f"{name}_blur{level}.png")
            rows.append(f"{name}.png,{name}_blur{level}.png,blur,{12 * level + k}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def without_seconds(d: object) -> object:
    if isinstance(d, dict):
        return {k: without_seconds(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [without_seconds(v) for v in d]
    return d


def test_quick_suite_end_to_end_without_weights(tmp_path: Path) -> None:
    labels = tiny_human_set(tmp_path)
    out = tmp_path / "out"
    args = ["eval", "suite", "--quick", "--human", f"live-tiny={labels}", "--candidate", "mmdpp",
            "--candidate", "l2", "--out", str(out), "--bootstrap", "5", "--train-steps", "4"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "figure-sr.png", "figure-ae.png",
                                               "figure-gim.png"}
    data = json.loads((out / "report.json").read_text())
    assert data["candidates"] == ["mmdpp"]  # --quick keeps the first candidate
    assert (data["config"]["sr_steps"], data["config"]["ae_steps"]) == (4, 4)  # --train-steps, over --quick's 3
    assert set(data["metrics"]) == {"mmdpp", "l2", "ssim"}  # no deep baselines without --weights
    assert any("no weights folder" in n for n in data["notes"])
    human = data["human"]["live-tiny"]["metrics"]["mmdpp"]
    assert set(human) == {"all", "noise", "blur"} and human["all"]["n"] == 8
    assert "ci" in human["all"] and human["all"]["ci"]
    assert set(data["shift"]["metrics"]["mmdpp"]["median"]) == set(SHIFTS)
    assert set(data["tasks"]["sr"]) == {"bicubic (no training)", "mmdpp", "l2", "ssim"}
    assert {"psnr", "ssim", "sharpness", "lattice"} <= set(data["tasks"]["sr"]["mmdpp"])
    assert set(data["tasks"]["gim"]) == {"pixel mean (no optimisation)", "mmdpp", "l2", "ssim"}
    checks = {c["check"]: c["pass"] for c in data["checks"]["mmdpp"]}
    assert checks["human-live"] in (True, False) and checks["shift"] in (True, False)
    assert checks["sr-vs-l2"] is None and checks["human-csiq"] is None  # not judged: no weights / no csiq set
    md = (out / "report.md").read_text()
    for heading in ("## Checks", "## 1. Human scores", "## 2. Shift check", "## 3. Tasks", "### SR ×4 (4 steps",
                    "### Autoencoder (4 steps"):
        assert heading in md
    assert "not judged" in md

    again = CliRunner().invoke(main, args)  # a non-empty --out is refused
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_suite_is_deterministic(tmp_path: Path) -> None:
    cfg = SuiteConfig.quick_config(bootstrap=0, shift_size=24, gim_steps=2, sr_steps=2, ae_steps=2)
    a = run_suite(["mmdpp"], config=cfg).data
    b = run_suite(["mmdpp"], config=cfg).data
    assert without_seconds(a) == without_seconds(b)
    assert a["tiles"]["source"].startswith("held-out strips")  # no human sets: held-out strips of the photos


def test_task_seeds_report_the_mean_and_every_run(tmp_path: Path) -> None:
    small = dict(bootstrap=0, shift_size=24, gim_steps=2, sr_steps=2, ae_steps=2)
    one = run_suite(["mmdpp"], config=SuiteConfig.quick_config(**small)).data["tasks"]
    result = run_suite(["mmdpp"], config=SuiteConfig.quick_config(task_seeds=2, seed=0, **small))
    two = result.data["tasks"]
    assert result.data["config"]["training_seeds"] == [0, 1]
    for task in ("sr", "ae"):
        for loss in ("mmdpp", "l2", "ssim"):
            r = two[task][loss]
            assert r["per_seed"]["seeds"] == [0, 1]
            for key in ("psnr", "sharpness", *(("lattice",) if task == "sr" else ())):
                runs = r["per_seed"][key]
                assert r[key] == pytest.approx(sum(runs) / 2, rel=1e-5)
                assert runs[0] == one[task][loss][key]  # the first seed is the single-seed run
            assert r["per_seed"]["psnr"][0] != r["per_seed"]["psnr"][1]  # another seed trains another network
            assert "per_seed" not in one[task][loss]
    assert "per_seed" not in two["gim"]["mmdpp"]  # the image mean has no random initialisation
    write_suite(result, tmp_path, figures=False)
    md = (tmp_path / "report.md").read_text()
    assert md.count("Trained with seeds 0, 1") == 2  # under the SR and the autoencoder tables
    with pytest.raises(ValueError, match="task_seeds"):
        SuiteConfig(task_seeds=0)
    res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--task-seeds", "0", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--task-seeds" in res.output
    res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--train-steps", "0", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--train-steps" in res.output


def test_missing_weight_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "vgg16.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"lpips/vgg\.pth"):
        run_suite(["mmdpp"], weights=tmp_path, config=SuiteConfig.quick_config())
    res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--candidate", "mmdpp:oops", "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


@pytest.mark.parametrize("nan_at", ["shift-1px", "shift-1px-diag"])
def test_shift_check_fails_when_either_shift_ratio_is_nan(nan_at: str) -> None:
    # max(0.01, nan) is 0.01 in Python: a NaN diagonal ratio used to pass the check on the straight one alone
    from patchmmd.evaluation.suite import _checks

    med = {"shift-1px": 0.01, "shift-1px-diag": 0.02, nan_at: math.nan}
    data = {"human": {}, "tasks": {}, "shift": {"metrics": {"mmdpp": {"median": med}}}}
    (row,) = [r for r in _checks(data, ["mmdpp"], [])["mmdpp"] if r["check"] == "shift"]
    assert row["pass"] is False and "nan" in row["value"]
    med[nan_at] = 0.03
    (row,) = [r for r in _checks(data, ["mmdpp"], [])["mmdpp"] if r["check"] == "shift"]
    assert row["pass"] is True


def test_a_nan_photo_makes_the_shift_summary_nan() -> None:
    # statistics.median sorts, and sorting with a NaN is undefined: median([nan, 0.2, 0.1]) came out 0.1
    import statistics

    from patchmmd.evaluation.suite import _over_photos

    values = [math.nan, 0.2, 0.1]
    assert not math.isnan(statistics.median(values)) and not math.isnan(max(values[1:] + values[:1]))
    assert math.isnan(_over_photos(statistics.median, values)) and math.isnan(_over_photos(max, values[::-1]))
    assert _over_photos(statistics.median, [0.3, 0.2, 0.1]) == 0.2


def test_a_diverged_run_is_recorded_and_the_suite_goes_on() -> None:
    # a diverged run used to raise out of run_suite: the human and shift parts and every finished run were lost
    from patchmmd.evaluation.suite import _seeded_runs
    from patchmmd.tasks._common import TrainingDiverged

    def run(loss: object, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        if seed == 1:
            raise TrainingDiverged(6, 600, "the loss is")
        return torch.zeros(1), {"dists": 0.2}

    lines: list[str] = []
    result, first = _seeded_runs(run, lambda x, y: x, [0, 1, 2], "SR x4 with l2 (600 steps)", lines.append)
    assert first is None and set(result) == {"diverged", "seconds"}  # no mean over the runs that did not diverge
    assert result["diverged"] == "seed 1: training diverged at step 7 of 600: the loss is NaN or infinite; try a " \
                                 "lower learning rate"
    assert lines == [f"tasks: SR x4 with l2 (600 steps) diverged ({result['diverged']}); the suite goes on"]


def _nan_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).pow(2).mean() * math.nan


@pytest.mark.parametrize("diverges", ["mmdpp", "l2"])
def test_a_suite_with_a_diverging_loss_finishes_and_fails_or_skips_its_checks(
        diverges: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import patchmmd.evaluation.suite as suite

    make = suite._make_loss
    monkeypatch.setattr(suite, "_make_loss", lambda name, options: _nan_loss if name == diverges
                        else make(name, options))
    cfg = SuiteConfig.quick_config(bootstrap=0, shift_size=24, gim_steps=2, sr_steps=2, ae_steps=2)
    result = run_suite(["mmdpp"], config=cfg)
    tasks = result.data["tasks"]
    for task in ("sr", "ae", "gim"):
        assert "at step 1 of 2: the loss is NaN" in tasks[task][diverges]["diverged"]
        assert diverges not in result.figures[task]
        other = "l2" if diverges == "mmdpp" else "mmdpp"
        assert "diverged" not in tasks[task][other] and other in result.figures[task]
    checks = {c["check"]: c for c in result.data["checks"]["mmdpp"]}
    if diverges == "mmdpp":  # the candidate fails every task check, with the reason
        for key in ("sr-vs-l2", "sr-vs-lpips", "sr-lattice", "ae-vs-l2", "gim-vs-l2"):
            assert checks[key]["pass"] is False and "training diverged" in checks[key]["note"]
    else:  # the reference diverged: the checks against it are not judged, and say why
        for key in ("ae-vs-l2", "gim-vs-l2"):
            assert checks[key]["pass"] is None and "the l2 loss's training diverged" in checks[key]["note"]
        assert checks["sr-lattice"]["pass"] in (True, False)
    assert checks["shift"]["pass"] in (True, False)  # the other parts are kept
    write_suite(result, tmp_path, figures=True)
    md = (tmp_path / "report.md").read_text()
    assert md.count(f"{diverges}: training diverged, no numbers") == 3
    assert json.loads((tmp_path / "report.json").read_text())["tasks"]["sr"][diverges]["diverged"]
