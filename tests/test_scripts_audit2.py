"""Second audit of scripts/ and benchmarks/ab_revisions.py: bad input refused before the long work (not after it,
with the finished work lost), and one of the numbers the docs quote from a script recomputed independently.
Tiny sizes only; the human sets are small stand-ins written to ``tmp_path``."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pytest

from test_benchmarks import _load
from test_scripts_audit import live_like, load


class Worked(Exception):
    """Raised by a stand-in for a script's long computation: reaching it means the check came too late."""


# ---------------------------------------------------------------------------------------------- ab_revisions
def test_ab_refuses_a_bad_arm_before_timing_the_other(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # B's unknown option failed only in B's first subprocess, after A's first timing run (at the documented
    # 2048x1 configurations, minutes of warm-up and calls) had been spent
    ab = _load("ab_revisions")
    timed: list[str] = []
    real_run_arm = ab.run_arm

    def run_arm(src, name, options, size, batch, args, **kwargs):  # type: ignore[no-untyped-def]
        if not kwargs.get("build_only"):
            timed.append(f"{name} {options}")
        return real_run_arm(src, name, options, size, batch, args, **kwargs)

    monkeypatch.setattr(ab, "run_arm", run_arm)
    monkeypatch.setattr(ab, "check_not_dirty", lambda revs: None)  # other work may change src/ meanwhile
    with pytest.raises(SystemExit, match=r"(?s)failed in the subprocess.*nosuchopt"):
        ab.main(["HEAD@mmdpp", "HEAD@mmdpp:nosuchopt=1", "--configs", "32x1", "--rounds", "1", "--calls", "1",
                 "--warmup", "0"])
    assert timed == []


def test_ab_build_check_returns_no_time(tmp_path: Path) -> None:
    ab = _load("ab_revisions")
    args = argparse.Namespace(mode="forward", threads=1, calls=1, warmup=0)
    src = Path(__file__).resolve().parents[1] / "src"
    assert ab.run_arm(src, "l2", {}, 32, 1, args, build_only=True) == 0.0


# -------------------------------------------------------------------------------------- perceptual_components
def _labels(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.csv").write_text(text)
    return folder / "labels.csv"


@pytest.mark.parametrize("second, extra, message", [
    ("reference,distorted,dmos\nref.png,d0.png,1\n", [], "no distortion"),  # a KeyError after the first set
    ("reference,distorted,distortion,dmos\nref.png,gone.png,a,1\n", [], "not found"),  # mid-run FileNotFoundError
    ("reference,distorted,distortion,dmos\nref.png,d0.png,a,x\n", [], "not a number"),
    (None, ["--out", "NO_FOLDER/c.json"], "--out"),  # a traceback after the whole run, the rows not written
], ids=["no distortion column", "missing image", "bad dmos", "out folder missing"])
def test_perceptual_components_reads_every_set_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, second, extra, message) -> None:
    pc = load("perceptual_components")
    live_like(tmp_path / "live-dev")
    human = ["--human", str(tmp_path / "live-dev" / "labels.csv")]
    if second is not None:
        live_like(tmp_path / "csiq-dev")
        human += ["--human", str(_labels(tmp_path / "csiq-dev", second))]

    def compute(*a):  # type: ignore[no-untyped-def]
        raise Worked

    monkeypatch.setattr(pc, "compute", compute)
    argv = [*human, "--threads", "1", *(v.replace("NO_FOLDER", str(tmp_path / "none")) for v in extra)]
    with pytest.raises(SystemExit) as e:
        pc.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_perceptual_components_refuses_two_sets_of_one_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys) -> None:
    # a set is named after its folder: two folders named alike were merged into one set, silently
    pc = load("perceptual_components")
    live_like(tmp_path / "a" / "live-dev")
    live_like(tmp_path / "b" / "live-dev")
    monkeypatch.setattr(pc, "compute", lambda *a: (_ for _ in ()).throw(Worked()))
    with pytest.raises(SystemExit) as e:
        pc.main(["--human", str(tmp_path / "a" / "live-dev" / "labels.csv"),
                 "--human", str(tmp_path / "b" / "live-dev" / "labels.csv")])
    assert e.value.code == 2 and "named alike" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- theory_live_dev
@pytest.mark.parametrize("case", ["out folder missing", "missing image"])
def test_theory_live_dev_checks_before_the_first_distance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, case: str) -> None:
    # an --out in a folder that is not there failed after every distance was computed (18 minutes on the real
    # set) and before the table was printed; a missing image stopped the run at its row
    live_like(tmp_path / "data")
    argv = ["theory_live_dev.py", "--data", str(tmp_path / "data"), "--metrics", "l2"]
    if case == "missing image":
        (tmp_path / "data" / "d4.png").unlink()
    else:
        argv += ["--out", str(tmp_path / "none" / "d.csv")]
    script = load("theory_live_dev")
    computed: list[str] = []
    real = script.get_metric
    monkeypatch.setattr(script, "get_metric", lambda *a, **k: computed.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        script.main()
    assert e.value.code == 2 and not computed
    assert ("d4.png" if case == "missing image" else "--out") in capsys.readouterr().err


def test_theory_live_dev_writes_the_distances_it_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    live_like(tmp_path / "data")
    out = tmp_path / "d.csv"
    script = load("theory_live_dev")
    monkeypatch.setattr(sys, "argv", ["theory_live_dev.py", "--data", str(tmp_path / "data"), "--metrics", "l2",
                                      "--out", str(out)])
    assert script.main() == 0
    first = capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "distorted,distortion,dmos,l2,psnr" and len(lines) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "data"]  # no temporary file left
    monkeypatch.setattr(sys, "argv", ["theory_live_dev.py", "--data", str(tmp_path / "data"), "--metrics", "l2",
                                      "--from-csv", str(out)])
    assert script.main() == 0
    again = capsys.readouterr().out
    row = [line.split(" | ")[1] for line in first.splitlines() if line.startswith("| l2 |")]
    assert row and row == [line.split(" | ")[1] for line in again.splitlines() if line.startswith("| l2 |")]


# ----------------------------------------------------------------------------------------- scale_rule_dev
def test_scale_rule_dev_refuses_an_out_it_cannot_write_before_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # the table was written only after the sweep (several minutes), and failed there with a traceback
    script = load("scale_rule_dev")
    live_like(tmp_path / "live-dev")
    monkeypatch.setattr(script, "MOSDataset", lambda *a, **k: (_ for _ in ()).throw(Worked()))
    with pytest.raises(SystemExit) as e:
        script.main(["--live-dev", str(tmp_path / "live-dev"), "--out", str(tmp_path / "none" / "t.md")])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- calibrate_weights
def test_calibrate_weights_ssim_unit_matches_an_independent_ssim() -> None:
    """docs/method.md quotes 0.1007, the SSIM term's unit at native resolution from scripts/calibrate_weights.py:
    recomputed with pytorch-msssim's SSIM (11-px Gaussian window, σ 1.5) on the same mildest visible
    distortions of the shipped photos."""
    ssim = pytest.importorskip("pytorch_msssim").ssim
    from patchmmd.data import sample_image, sample_names
    from patchmmd.evaluation.shift import shift_pairs

    script = load("calibrate_weights")
    ours = script.unit(weight_l2=0.0, weight_local=0.0, weight_mmd=0.0, weight_ssim=1.0)
    values = []
    for i, name in enumerate(sample_names()):
        pairs = shift_pairs(sample_image(name).float(), seed=i)
        values.append(min(1 - float(ssim(*(t[None].double() for t in pairs[k]), data_range=1.0))
                          for k in ("noise", "blur")))
    assert ours == pytest.approx(statistics.median(values), rel=1e-4)
    assert f"{ours:.4f}" == "0.1007"
