"""Second audit of benchmarks/ and scripts/: what the timing tables record, options that a table would drop
silently, output files (made before a run; none in the working folder by default) and the scripts' error paths.
Tiny sizes only: nothing here measures anything."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from test_scripts_audit import load

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def flags(bp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` sets the module's ``--unrelated`` and ``--compiled`` flags: each test gets its own."""
    monkeypatch.setattr(bp, "UNRELATED", [False])
    monkeypatch.setattr(bp, "COMPILED", [False])


def script(name: str) -> ModuleType:
    return load(name)  # the scripts audit's loader


# ------------------------------------------------------------------------------------------------ bench_perf
NO_CLEAR_REFS = """
import builtins
_open = builtins.open
def _no_reset(path, *args, **kwargs):
    if str(path).endswith("clear_refs"):
        raise PermissionError(13, "Permission denied", str(path))
    return _open(path, *args, **kwargs)
builtins.open = _no_reset
"""


def test_memory_child_refuses_a_peak_it_cannot_reset(bp):
    """Where the peak-RSS counter cannot be reset the child reported the process's peak since it started (the
    warm-up call's, the models' building) as the measured call's, silently: it stops with the reason."""
    code = bp._MEM_CHILD.format(bench_dir=str(ROOT / "benchmarks"), size=32, n=1, method="mmdpp-default",
                                mode="forward", threads=1, unrelated=False, compiled=False)
    assert bp._run_child(code, "test")["peak_mb"] > 0  # where it can (this machine: Linux)
    with pytest.raises(SystemExit, match=r"(?s)--memory mmdpp-default.*cannot reset it here.*Permission denied"):
        bp._run_child(NO_CLEAR_REFS + code, "--memory mmdpp-default")


def test_output_folders_are_made_before_the_run(bp, flags, monkeypatch, tmp_path):
    """--md into a folder that did not exist failed with a FileNotFoundError after the whole run (--out's folder
    was made, after the run too): both are made before it."""
    seen: list[bool] = []

    def fake_bench(*args):  # type: ignore[no-untyped-def]
        seen.append((tmp_path / "csv").is_dir() and (tmp_path / "md").is_dir())
        return [dict(method="lpips-alex", median_s=0.1)]

    monkeypatch.setattr(bp, "bench", fake_bench)
    bp.main(["--threads", "1", "--repeats", "1", "--configs", "32x1", "--modes", "forward", "--out",
             str(tmp_path / "csv" / "r.csv"), "--md", str(tmp_path / "md" / "r.md")])
    assert seen == [True]
    assert (tmp_path / "md" / "r.md").read_text().startswith("| method | median_s |")


def test_every_timing_table_records_its_repeats_and_threads(bp, flags):
    """The CSV of --scaling and --kernels said neither how many rounds each median is of (the timing table did)."""
    rows = bp.scaling([32, 48], 2, "cpu")
    assert all(r["repeats"] == 2 and r["threads"] == torch.get_num_threads() for r in rows)
    rows = bp.kernel_scaling([(32, 1)], 1, 2)
    assert all(r["repeats"] == 1 and r["threads"] == 2 for r in rows)


def test_scaling_thp_children_use_the_parent_pairs_and_record_rounds(bp, flags, monkeypatch):
    """--scaling-thp --unrelated timed x + noise pairs in its subprocesses (the flag was not passed to them), and
    its rows did not say how many rounds and calls each median is of."""
    codes: list[str] = []

    def fake_child(code, what, env=None):  # type: ignore[no-untyped-def]
        codes.append(code)
        return {"times": {"32": 0.01, "48": 0.02}, "peak_mb": 100.0}

    bp.UNRELATED[0] = True
    real_child = bp._run_child
    monkeypatch.setattr(bp, "_run_child", fake_child)
    rows = bp.scaling_thp([32, 48], 2, 3)
    assert len(codes) == 4 and len(rows) == 4
    assert all(r["rounds"] == 2 and r["repeats"] == 3 for r in rows)
    check = codes[0] + "\nprint(json.dumps(dict(unrelated=b.UNRELATED[0])))\n"  # the real child's pairs
    assert real_child(check, "test") == {"unrelated": True}


def _record_tables(bp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    for name in ("bench", "memory", "scaling", "scaling_thp", "kernel_scaling", "accuracy"):
        monkeypatch.setattr(bp, name, lambda *a, _n=name, **k: ran.append(_n) or [{"x": 1}])
    return ran


@pytest.mark.parametrize("argv, message", [
    (["--memory", "--scaling"], "two different tables"),  # ran --scaling only
    (["--kernels", "--accuracy"], "two different tables"),  # ran --kernels only
    (["--memory", "--accuracy"], "two different tables"),
    (["--scaling", "--compiled"], "--compiled"),  # torch.compile is timed by the timing and memory tables only
    (["--accuracy", "--unrelated"], "--unrelated"),  # the accuracy table uses its own photos
    (["--only", "exact-default", "--configs", "128x1"], "--exact-max 64"),  # timed lpips-alex alone
])
def test_main_refuses_what_the_table_would_drop(bp, flags, monkeypatch, capsys, argv, message):
    ran = _record_tables(bp, monkeypatch)
    with pytest.raises(SystemExit) as e:
        bp.main([*argv, "--repeats", "1"])
    assert e.value.code == 2 and not ran
    assert message in capsys.readouterr().err
    assert bp.COMPILED == [False]  # a refused --compiled leaves nothing behind


def test_main_still_takes_scaling_with_its_huge_page_variant(bp, flags, monkeypatch):
    ran = _record_tables(bp, monkeypatch)
    bp.main(["--scaling", "--scaling-thp", "--repeats", "1"])
    assert ran == ["scaling_thp"]


# ------------------------------------------------------------------------------------------ calibrate_weights
def test_calibrate_weights_has_a_command_line():
    """``--help`` and unknown options ran the whole calibration and exited 0."""
    run = [sys.executable, str(SCRIPTS / "calibrate_weights.py")]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith("usage:") and "weight_mmd" not in shown.stdout
    bad = subprocess.run([*run, "--threads", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr and not bad.stdout


# -------------------------------------------------------------------------------------- perceptual_components
def _component_rows(pc: ModuleType) -> list[dict[str, object]]:
    terms = {k: 1.0 for k in (*pc.FINE_TERMS, *pc.COARSE_TERMS, "mmdpp")}
    rows: list[dict[str, object]] = [
        {"set": "live-dev", "ref": "r", "dist": f"d{i}", "distortion": "a", "dmos": float(i),
         **{k: v + i for k, v in terms.items()}} for i in range(3)]
    for j, case in enumerate((*pc.SHIFT_CASES, "noise0.03", "blur1")):
        rows.append({"set": "shift", "photo": 0, "case": case, **{k: v + j for k, v in terms.items()}})
    return rows


def test_perceptual_components_writes_only_where_told(tmp_path, monkeypatch, capsys):
    """--out defaulted to components.json in the working folder: the JSON is written with --out only."""
    pc = script("perceptual_components")
    labels = tmp_path / "labels.csv"
    labels.write_text("reference,distorted,distortion,dmos\n")
    monkeypatch.setattr(pc, "compute", lambda *a: _component_rows(pc))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["perceptual_components.py", "--human", str(labels), "--threads", "1"])
    pc.main()
    assert not any(work.iterdir())
    assert "| mmdpp |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["perceptual_components.py", "--human", str(labels), "--threads", "1",
                                      "--out", str(tmp_path / "c.json")])
    pc.main()
    assert not any(work.iterdir())
    assert len(json.loads((tmp_path / "c.json").read_text())["rows"]) == 9


@pytest.mark.parametrize("extra, message", [
    (["--human", "NOFILE"], "--human: no such file"),  # a FileNotFoundError traceback
    (["--human", "LABELS", "--weights", "NOFOLDER"], "--weights: weights folder"),  # a traceback
    (["--human", "LABELS", "--threads", "0"], "--threads"),  # a RuntimeError from torch
])
def test_perceptual_components_usage_errors_before_any_work(tmp_path, monkeypatch, capsys, extra, message):
    pc = script("perceptual_components")
    labels = tmp_path / "labels.csv"
    labels.write_text("reference,distorted,distortion,dmos\n")
    worked: list[int] = []
    monkeypatch.setattr(pc, "compute", lambda *a: worked.append(1) or [])
    paths = {"NOFILE": str(tmp_path / "no" / "labels.csv"), "LABELS": str(labels), "NOFOLDER": str(tmp_path / "w")}
    monkeypatch.setattr(sys, "argv", ["perceptual_components.py", *(paths.get(v, v) for v in extra)])
    with pytest.raises(SystemExit) as e:
        pc.main()
    assert e.value.code == 2 and not worked
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------- theory_live_dev, scale_rule_dev
@pytest.mark.parametrize("name, option", [("theory_live_dev", "--data"), ("scale_rule_dev", "--live-dev")])
def test_a_missing_human_set_is_a_usage_error(tmp_path, monkeypatch, capsys, name, option):
    """A folder without labels.csv ended in a FileNotFoundError traceback."""
    module = script(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", option, str(tmp_path / "nothing")])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2
    assert f"{option}: " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- sr_loss_variants
def test_sr_loss_variants_finds_the_human_sets_from_any_folder(tmp_path, monkeypatch):
    """--data was ``../shared/data`` relative to the working folder (the other scripts' data is relative to the
    repository): run from anywhere but the repository root, the default named a folder that is not there."""
    monkeypatch.chdir(tmp_path)
    args = script("sr_loss_variants").build_parser().parse_args(["charbonnier:weight=1"])
    assert args.data == ROOT.parent / "shared" / "data"


def test_sr_loss_variants_refuses_threads_below_one(tmp_path, monkeypatch, capsys):
    module = script("sr_loss_variants")
    monkeypatch.setattr(sys, "argv", ["sr_loss_variants.py", "--calibrate", "--threads", "0", "charbonnier"])
    with pytest.raises(SystemExit) as e:  # was a RuntimeError traceback from torch.set_num_threads
        module.main()
    assert e.value.code == 2
    assert "--threads" in capsys.readouterr().err
