"""``patchmmd score`` end to end: outputs, messages, and resuming after kill -9 and Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd.io import save_image


def _images(folder: Path, n: int, *, seed: int = 0, size: int = 48) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        save_image(torch.rand(3, size, size, generator=g), folder / f"im{i:02d}.png")


@pytest.fixture
def pair_dirs(tmp_path: Path) -> tuple[Path, Path]:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, 5)
    _images(dist, 5, seed=1)
    return ref, dist



def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_paired_scores_match_the_library(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from patchmmd import l2_distance
    from patchmmd.io import load_image

    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "--metric", "l2", "-b", "2", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert list(rows[0]) == ["ref", "dist", "metric", "distance", "error"]
    assert [row["ref"] for row in rows] == [f"im{i:02d}.png" for i in range(5)]
    for row in rows:
        expect = l2_distance(load_image(ref / row["ref"]), load_image(dist / row["dist"]))
        assert float(row["distance"]) == pytest.approx(float(expect), rel=1e-6)
        assert row["metric"] == "l2" and row["error"] == ""
    assert not (tmp_path / "s.csv.journal").exists()
    assert "wrote 5 rows" in r.output


def test_all_pairs_and_default_metric(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _images(d, 4)
    out = tmp_path / "a.csv"
    r = invoke("score", "--all-pairs", d, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert [(x["ref"], x["dist"]) for x in rows] == [
        (f"im{i:02d}.png", f"im{j:02d}.png") for i in range(4) for j in range(i + 1, 4)
    ]
    assert all(x["metric"] == "mmdpp" and float(x["distance"]) > 0 for x in rows)


def test_bad_files_are_rows_and_the_job_goes_on(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    (dist / "im01.png").write_bytes(b"not an image at all")
    save_image(torch.rand(3, 40, 48), dist / "im02.png")
    (dist / "readme.txt").write_text("notes")
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2")
    assert r.exit_code == 0, r.output
    assert "1 file(s) without an image suffix ignored (readme.txt)" in r.output
    rows = {x["ref"]: x for x in _rows(out)}
    assert rows["im01.png"]["distance"] == "" and "ImageReadError" in rows["im01.png"]["error"]
    assert "48x40" in rows["im02.png"]["error"] and "--resize" in rows["im02.png"]["error"]
    assert rows["im03.png"]["error"] == ""
    assert "2 with errors" in r.output
    out2 = tmp_path / "s2.csv"
    assert invoke("score", ref, dist, "--out", out2, "-m", "l2", "--resize").exit_code == 0
    assert _rows(out2)[2]["error"] == "" and float(_rows(out2)[2]["distance"]) > 0


def test_messages(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("score", tmp_path / "missing", dist, "--out", out), "REF_DIR: folder not found"),
        (("score", ref, empty, "--out", out), "DIST_DIR: no image files"),
        (("score", "--all-pairs", empty, "--out", out), "no image files"),
        (("score", ref, "--out", out), "expected REF_DIR DIST_DIR"),
        (("score", "--all-pairs", ref, dist, "--out", out), "--all-pairs takes exactly one FOLDER"),
        (("score", ref, dist, "--out", out, "-m", "nosuch"), "unknown metric 'nosuch'"),
        (("score", ref, dist, "--out", out, "-m", "mmdpp", "-o", "bogus=1"), "unknown option(s) ['bogus']"),
        (("score", ref, dist, "--out", out, "--device", "tpu"), "device must be"),
        (("score", ref, dist, "--out", out, "--resume", "--overwrite"), "exclude each other"),
    ]
    for args, message in cases:
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (message, r.output)
    assert not out.exists()


def test_unmatched_pairs(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, 3)
    _images(dist, 2, seed=1)
    save_image(torch.rand(3, 48, 48), dist / "other.png")
    r = invoke("score", ref, dist, "--out", tmp_path / "s.csv", "-m", "l2")
    assert r.exit_code == 0
    assert "1 in REF_DIR only (im02.png)" in r.output and "1 in DIST_DIR only (other.png)" in r.output
    assert len(_rows(tmp_path / "s.csv")) == 2
    lone = tmp_path / "lone"
    _images(lone, 1)
    (tmp_path / "x").mkdir()
    save_image(torch.rand(3, 8, 8), tmp_path / "x" / "zz.png")
    r = invoke("score", lone, tmp_path / "x", "--out", tmp_path / "t.csv")
    assert r.exit_code == 2 and "no pairs" in r.output
    r = invoke("score", "--all-pairs", lone, "--out", tmp_path / "t.csv")
    assert r.exit_code == 2 and "single image" in r.output


def test_existing_output_policy(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    assert invoke("score", ref, dist, "--out", out, "-m", "l2").exit_code == 0
    first = out.read_text()
    r = invoke("score", ref, dist, "--out", out, "-m", "l2")
    assert r.exit_code == 2 and "already exist" in r.output and "--overwrite" in r.output
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 2 and "nothing to resume" in r.output
    r = invoke("score", ref, dist, "--out", out, "-m", "local", "--overwrite")
    assert r.exit_code == 0 and out.read_text() != first
    # a leftover journal alone also counts as an existing output
    (tmp_path / "new.csv.journal").write_text("")
    r = invoke("score", ref, dist, "--out", tmp_path / "new.csv")
    assert r.exit_code == 2 and "new.csv.journal" in r.output


def test_resume_with_other_arguments_is_refused(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from patchmmd import scoring

    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    tasks = scoring.paired_tasks(ref, dist).tasks
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="paired",
                             ref_dir=str(ref.resolve()), dist_dir=str(dist.resolve()))
    with scoring.Journal.open(scoring.journal_path(out), job) as j:
        scoring.run_tasks(tasks[:2], "l2", j)
    r = invoke("score", ref, dist, "--out", out, "-m", "local", "--resume")
    assert r.exit_code == 2 and "different job" in r.output and "metric" in r.output
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 0, r.output
    assert "2 from the journal" in r.output and len(_rows(out)) == 5


def test_a_decompression_bomb_is_an_error_row_and_resume_goes_past_it(
    pair_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    from patchmmd import scoring
    from test_io import bomb_png

    ref, dist = pair_dirs
    bomb_png(dist / "im03.png")  # 70 bytes claiming 50000x50000 pixels
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2")
    assert r.exit_code == 0, r.output
    assert r.exception is None and "Traceback" not in r.output
    rows = {x["ref"]: x for x in _rows(out)}
    assert rows["im03.png"]["distance"] == "" and "ImageTooLargeError" in rows["im03.png"]["error"]
    assert "decompression bomb" in rows["im03.png"]["error"]
    assert all(rows[f"im0{i}.png"]["error"] == "" for i in (0, 1, 2, 4))
    assert "1 with errors" in r.output
    # An interrupted job (two rows journaled) resumes past the bomb.
    out2 = tmp_path / "s2.csv"
    tasks = scoring.paired_tasks(ref, dist).tasks
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="paired",
                             ref_dir=str(ref.resolve()), dist_dir=str(dist.resolve()))
    with scoring.Journal.open(scoring.journal_path(out2), job) as j:
        scoring.run_tasks(tasks[:2], "l2", j)
    r = invoke("score", ref, dist, "--out", out2, "-m", "l2", "--resume")
    assert r.exit_code == 0, r.output
    assert r.exception is None and "2 from the journal" in r.output
    assert _rows(out2) == _rows(out)


def test_max_pixels(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs  # 48x48 images
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--max-pixels", 48 * 48 - 1)
    assert r.exit_code == 0, r.output
    assert all("48x48 = 2304 pixels is over the limit of 2303" in x["error"] for x in _rows(out))
    for limit in (48 * 48, 0, "none"):
        r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--max-pixels", limit, "--overwrite")
        assert r.exit_code == 0, r.output
        assert all(x["error"] == "" for x in _rows(out))
    # The limit changes rows, so it is part of the job: resuming with another one is refused.
    out2 = tmp_path / "s2.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("patchmmd.scoring.Journal.append", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        r = invoke("score", ref, dist, "--out", out2, "-m", "l2")
    assert r.exit_code == 130, r.output
    r = invoke("score", ref, dist, "--out", out2, "-m", "l2", "--resume", "--max-pixels", "none")
    assert r.exit_code == 2 and "max_pixels" in r.output
    r = invoke("score", ref, dist, "--out", out2, "-m", "l2", "--resume")
    assert r.exit_code == 0, r.output
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--max-pixels", "-5", "--overwrite")
    assert r.exit_code == 2 and "--max-pixels" in r.output
    r = invoke("score", "--help")
    assert "--max-pixels" in r.output and "no limit" in r.output


# --- real processes, really interrupted ---------------------------------------------------------------
def _cmd(folder: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "patchmmd", "score", "--all-pairs", str(folder), "--out", str(out),
            "-m", "l2", "-b", "2", "--device", "cpu", *extra]


def _wait_for_rows(journal: Path, proc: subprocess.Popen, rows: int, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 1 + rows:
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it could be interrupted: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail("the job wrote no rows in time")


@pytest.fixture
def job_dir(tmp_path: Path) -> tuple[Path, str]:
    d = tmp_path / "imgs"
    _images(d, 12, size=24)  # 66 pairs
    (d / "broken.png").write_bytes(b"junk")  # error rows must survive resuming too
    ref = tmp_path / "reference.csv"
    subprocess.run(_cmd(d, ref, "-q"), check=True, timeout=120)
    return d, ref.read_text()


def test_kill9_then_resume_equals_uninterrupted_run(job_dir: tuple[Path, str], tmp_path: Path) -> None:
    d, expected = job_dir
    out = tmp_path / "scores.csv"
    journal = tmp_path / "scores.csv.journal"
    proc = subprocess.Popen(_cmd(d, out, "-q", "--throttle", "0.05"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_rows(journal, proc, 6)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # never a half-written output
    done = journal.read_bytes().count(b"\n") - 1
    assert 6 <= done < 78
    with open(journal, "ab") as f:  # as if the kill had torn a write
        f.write(b'{"distance": 0.1, "id": "')
    # without --resume: refused, nothing touched
    r = subprocess.run(_cmd(d, out), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run(_cmd(d, out, "--resume"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{done} from the journal" in r.stderr
    assert out.read_text() == expected
    assert not journal.exists()


def test_ctrl_c_then_resume(job_dir: tuple[Path, str], tmp_path: Path) -> None:
    d, expected = job_dir
    out = tmp_path / "scores.csv"
    journal = tmp_path / "scores.csv.journal"
    # A background job of a shell without job control (``cmd &`` in a script, as CI may be started) inherits
    # SIGINT ignored, and Python then leaves it ignored: give the job Ctrl-C's default, as a terminal would.
    proc = subprocess.Popen(_cmd(d, out, "--throttle", "0.05"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_rows(journal, proc, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert not out.exists()
    r = subprocess.run(_cmd(d, out, "--resume", "-q"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == expected


# --- file names, the output's folder, a damaged journal -----------------------------------------------
def test_awkward_file_names_end_to_end(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    names = ["cr\rname.png", "=SUM(A1).png", "a,b.png", 'q"x.png', "-2.png"]
    g = torch.Generator().manual_seed(0)
    for n in names:
        save_image(torch.rand(3, 16, 16, generator=g), d / n)
    try:
        with open(os.path.join(os.fsencode(d), b"bad\xff.png"), "wb") as f:
            f.write((d / "a,b.png").read_bytes())
        odd = ["bad\\xff.png"]
    except (OSError, UnicodeError):
        odd = []  # the file system refuses names that are not UTF-8
    out = tmp_path / "s.csv"
    r = invoke("score", "--all-pairs", d, "--out", out, "-m", "l2")
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    shown = sorted({x["ref"] for x in rows} | {x["dist"] for x in rows})
    unguarded = sorted(s[1:] if s.startswith("'") else s for s in shown)
    assert unguarded == sorted(names + odd)
    assert all(not s.startswith(("=", "-", "\r")) for s in shown)
    assert all(x["error"] == "" and float(x["distance"]) >= 0 for x in rows)


def test_out_under_a_regular_file(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    (tmp_path / "f").write_text("a file")
    for out in (tmp_path / "f" / "s.csv", tmp_path / "f" / "sub" / "s.csv"):
        r = invoke("score", ref, dist, "--out", out, "-m", "l2")
        assert r.exit_code == 2, r.output
        assert f"{tmp_path / 'f'} is a file, not a folder" in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)


def _journal_of(ref: Path, dist: Path, out: Path, pairs: int) -> Path:
    """The journal of an l2 job on ``ref``/``dist`` into ``out`` with its first ``pairs`` pairs scored, one a batch."""
    from patchmmd import scoring

    tasks = scoring.paired_tasks(ref, dist).tasks
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="paired",
                             ref_dir=str(ref.resolve()), dist_dir=str(dist.resolve()))
    journal = scoring.journal_path(out)
    with scoring.Journal.open(journal, job) as j:
        scoring.run_tasks(tasks[:pairs], "l2", j, batch_size=1)
    return journal


def test_a_damaged_journal_row_is_a_one_line_error(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    journal = _journal_of(ref, dist, out, 2)
    good = journal.read_text()
    for bad, message in (("[]", "must be a JSON object"), ('{"x": 1}', "missing"),
                         (good.splitlines()[1].replace('"value": 0.', '"value": NaN, "v": 0.'), "unknown v"),
                         (good.splitlines()[1].replace('"error": null', '"error": null, "value": null')
                          .replace('"value": 0.', '"w": 0.'), "unknown w")):
        journal.write_text(good + bad + "\n")
        r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
        assert r.exit_code == 2, r.output
        assert f"{journal}, line 4: " in r.output and message in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)
        assert journal.read_text() == good + bad + "\n" and not out.exists()


# --- two runs on one output ---------------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused(job_dir: tuple[Path, str], tmp_path: Path) -> None:
    import socket

    d, expected = job_dir
    out = tmp_path / "scores.csv"
    journal = tmp_path / "scores.csv.journal"
    # slow enough (about a minute) to still be running while the second run starts; killed below
    proc = subprocess.Popen(_cmd(d, out, "-q", "--throttle", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_rows(journal, proc, 2)
        for flag in ("--resume", "--overwrite"):
            r = subprocess.run(_cmd(d, out, flag), capture_output=True, text=True, timeout=120)
            assert r.returncode == 1, r.stderr
            assert f"another run (pid {proc.pid} on {socket.gethostname()}, started " in r.stderr
            assert f"is writing {out}; wait for it or stop it" in r.stderr
            assert "Traceback" not in r.stderr
            assert journal.exists() and not out.exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert (tmp_path / "scores.csv.lock").exists()  # stale: the kernel dropped the lock with the process
    r = subprocess.run(_cmd(d, out, "--resume", "-q"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == expected
    assert not (tmp_path / "scores.csv.lock").exists() and not journal.exists()


# --- metric check, messages, locks --------------------------------------------------------------------
def test_ms_ssim_is_not_refused_for_the_size_of_the_metric_check(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_msssim")
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, 1, size=176)  # MS-SSIM needs more than 160 px
    _images(dist, 1, seed=1, size=176)
    save_image(torch.rand(3, 48, 48), ref / "small.png")
    save_image(torch.rand(3, 48, 48), dist / "small.png")
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "ms-ssim", "-q", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = {x["ref"]: x for x in _rows(out)}
    assert float(rows["im00.png"]["score"]) > 0 and rows["im00.png"]["error"] == ""
    assert "needs images larger than 160 px" in rows["small.png"]["error"]
    r = invoke("score", ref, dist, "--out", tmp_path / "t.csv", "-m", "ms-ssim", "-o", "win_size=12")
    assert r.exit_code == 2 and "--option" in r.output and "odd" in r.output, r.output


def test_channel_mismatch_suggests_the_mode_option(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, 1)
    dist.mkdir()
    save_image(torch.rand(4, 48, 48), dist / "im00.png")
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--mode", "keep", "-q")
    assert r.exit_code == 0, r.output
    (row,) = _rows(out)
    assert "--mode RGB" in row["error"] and "--resize" not in row["error"], row["error"]


def test_a_non_json_line_inside_the_journal_stops_resume(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    journal = _journal_of(ref, dist, out, 3)
    lines = journal.read_text().splitlines(keepends=True)
    damaged = "".join([*lines[:2], "garbage\n", *lines[2:]])
    journal.write_text(damaged)
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 2, r.output
    assert f"{journal}, line 3: not a JSON line" in r.output
    assert journal.read_text() == damaged and not out.exists()


def test_an_unwritable_output_folder_is_one_error(
    pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from patchmmd import scoring

    def denied(cls: type, output: Path, argv: object = None) -> None:  # as os.open in a read-only folder
        raise PermissionError(errno.EACCES, "Permission denied", str(output) + ".lock")

    monkeypatch.setattr(scoring.OutputLock, "acquire", classmethod(denied))
    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "-q")
    assert r.exit_code == 1, r.output
    assert r.output == f"patchmmd: error: --out {out}: cannot create the lock file {out}.lock: Permission denied\n"


def test_runtime_failures_are_one_line(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from patchmmd import scoring

    ref, dist = pair_dirs
    out = tmp_path / "s.csv"
    with scoring.OutputLock.acquire(out):
        r = invoke("score", ref, dist, "--out", out, "-m", "l2", "-q")
    assert r.exit_code == 1, r.output
    assert r.output.startswith("patchmmd: error: another run (pid ") and len(r.output.splitlines()) == 1
    r = invoke("score", ref, dist, "--out", out, "-m", "nope")  # a usage error keeps click's form
    assert r.exit_code == 2 and r.output.startswith("Usage: ") and "\nError: " in r.output


# --- a folder that cannot be listed -------------------------------------------------------------------
def test_a_folder_that_cannot_be_listed_is_a_usage_error(
    pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, dist = pair_dirs
    _images(ref / "sub", 2)
    _images(dist / "sub", 2)
    blocked = dist / "sub"
    scandir = os.scandir

    def refusing(path: object = ".") -> object:  # as chmod 000 does for a normal user (root lists anything)
        if Path(os.fsdecode(path)) == blocked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]
        return scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refusing)
    out = tmp_path / "s.csv"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2")
    assert r.exit_code == 2, r.output
    assert f"DIST_DIR: cannot list the folder {blocked}: Permission denied" in r.output
    assert "unmatched" not in r.output and not out.exists() and not (tmp_path / "s.csv.journal").exists()


# --- Ctrl-C outside the scoring itself ----------------------------------------------------------------
def _raise_interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_during_the_metric_check_exits_130_and_keeps_the_journal(
    pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, dist = pair_dirs
    expected = tmp_path / "expected.csv"  # on the CPU, as the journal's rows (a GPU's sums round otherwise)
    assert invoke("score", ref, dist, "--out", expected, "-m", "l2", "-q", "--device", "cpu").exit_code == 0
    out = tmp_path / "s.csv"
    journal = _journal_of(ref, dist, out, 2)
    before = journal.read_bytes()
    with monkeypatch.context() as mp:
        mp.setattr("patchmmd.scoring.runner.check_metric", _raise_interrupt)
        r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
        assert r.exit_code == 130, r.output
        assert f"interrupted: 2 of 5 pairs are saved in {journal}; rerun the same command with --resume" in r.output
        assert "Aborted" not in r.output
        assert journal.read_bytes() == before and not out.exists()
        r = invoke("score", ref, dist, "--out", tmp_path / "fresh.csv", "-m", "l2")  # a fresh job: nothing saved
        assert r.exit_code == 130 and "interrupted: 0 of 5 pairs are saved" in r.output, r.output
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume", "--device", "cpu")
    assert r.exit_code == 0 and "2 from the journal" in r.output, r.output
    assert out.read_text() == expected.read_text()


def test_ctrl_c_during_the_csv_write_exits_130_and_loses_nothing(
    pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, dist = pair_dirs
    expected = tmp_path / "expected.csv"
    assert invoke("score", ref, dist, "--out", expected, "-m", "l2", "-q").exit_code == 0
    out = tmp_path / "s.csv"
    with monkeypatch.context() as mp:
        mp.setattr("patchmmd.scoring.runner.write_output_atomic", _raise_interrupt)
        r = invoke("score", ref, dist, "--out", out, "-m", "l2")
    assert r.exit_code == 130, r.output
    journal = tmp_path / "s.csv.journal"
    assert f"interrupted: 5 of 5 pairs are saved in {journal}" in r.output and "Aborted" not in r.output
    assert not out.exists() and journal.read_bytes().count(b"\n") == 1 + 5
    assert not (tmp_path / "s.csv.lock").exists()
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 0 and "0 scored now" in r.output and "5 from the journal" in r.output, r.output
    assert out.read_text() == expected.read_text()


def test_ctrl_c_while_the_arguments_are_read_exits_130(
    pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, dist = pair_dirs
    monkeypatch.setattr("patchmmd.cli.score.parse_metric_options", _raise_interrupt)
    r = invoke("score", ref, dist, "--out", tmp_path / "s.csv", "-m", "l2")
    assert r.exit_code == 130 and "interrupted" in r.output and "Aborted" not in r.output, r.output


# --- --retry-errors ------------------------------------------------------------------------------------
@pytest.fixture
def flaky_job(pair_dirs: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """An interrupted job whose 3 journaled rows hold one error (``im01.png`` was unreadable then; it is now),
    and the CSV of an uninterrupted run on the mended files."""
    ref, dist = pair_dirs
    good = (dist / "im01.png").read_bytes()
    (dist / "im01.png").write_bytes(b"not yet written")
    journal = _journal_of(ref, dist, tmp_path / "s.csv", 3)
    (dist / "im01.png").write_bytes(good)
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert {r["ref"]: r["error"] is not None for r in rows} == {"im00.png": False, "im01.png": True, "im02.png": False}
    expected = tmp_path / "expected.csv"  # on the CPU, as the journal's rows (a GPU's sums round otherwise)
    assert invoke("score", ref, dist, "--out", expected, "-m", "l2", "-q", "--device", "cpu").exit_code == 0
    return ref, dist, expected


def test_resume_keeps_error_rows_and_retry_errors_scores_them_again(
    flaky_job: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import shutil

    ref, dist, expected = flaky_job
    out = tmp_path / "s.csv"
    kept = tmp_path / "kept.csv"
    shutil.copy(tmp_path / "s.csv.journal", tmp_path / "kept.csv.journal")
    # --resume alone keeps the error row
    r = invoke("score", ref, dist, "--out", kept, "-m", "l2", "--resume", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "1 with errors" in r.output
    assert _rows(kept)[1]["error"] != "" and _rows(kept)[1]["distance"] == ""
    # --retry-errors scores it again; the rows with a value are kept
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume", "--retry-errors", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "2 from the journal, 1 error row(s) retried" in r.output and "0 with errors" in r.output
    assert out.read_text() == expected.read_text()
    assert _rows(out)[0] == _rows(kept)[0] and _rows(out)[2] == _rows(kept)[2]


def test_retry_errors_replaces_an_error_row_of_another_writers_journal(
    pair_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The journals are merged in file order (OUT.journal first): an error row left in a rank's journal would
    win over its retried row in OUT.journal, so the error rows are dropped from every journal first."""
    from patchmmd import scoring

    ref, dist = pair_dirs
    good = (dist / "im03.png").read_bytes()
    (dist / "im03.png").write_bytes(b"junk")
    out = tmp_path / "s.csv"
    tasks = scoring.paired_tasks(ref, dist).tasks
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="paired",
                             ref_dir=str(ref.resolve()), dist_dir=str(dist.resolve()))
    for rank in range(2):  # a 2-writer job that died: rank 1 scored im01 and im03 (unreadable then)
        with scoring.Journal.open(scoring.journal_path(out, rank, 2), job) as j:
            scoring.run_tasks(scoring.shard(tasks, rank, 2)[:2], "l2", j)
    (dist / "im03.png").write_bytes(good)
    expected = tmp_path / "expected.csv"  # on the CPU, as the journals' rows
    assert invoke("score", ref, dist, "--out", expected, "-m", "l2", "-q", "--device", "cpu").exit_code == 0
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume", "--retry-errors", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "1 error row(s) retried" in r.output
    assert out.read_text() == expected.read_text()
    assert scoring.find_journals(out) == []


def test_retry_errors_needs_resume_and_a_journal(flaky_job: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ref, dist, expected = flaky_job
    out = tmp_path / "s.csv"
    for extra in ((), ("--overwrite",)):
        r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--retry-errors", *extra)
        assert r.exit_code == 2 and "--retry-errors goes with --resume" in r.output, r.output
    r = invoke("score", ref, dist, "--out", expected, "-m", "l2", "--resume", "--retry-errors")
    assert r.exit_code == 2 and "can no longer be retried" in r.output, r.output
    assert "--retry-errors" in invoke("score", "--help").output


def test_retry_errors_under_torchrun(flaky_job: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from test_distributed import _env, _torchrun, needs_gloo

    if needs_gloo.args[0]:
        pytest.skip(needs_gloo.kwargs["reason"])
    ref, dist, expected = flaky_job
    out = tmp_path / "s.csv"
    p = subprocess.run(
        _torchrun("-m", "patchmmd", "score", ref, dist, "--out", out, "-m", "l2", "--device", "cpu", "--resume",
                  "--retry-errors"),
        capture_output=True, text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 error row(s) retried" in p.stderr and "by 2 processes" in p.stderr
    assert out.read_text() == expected.read_text()


def test_json_output_has_the_csv_rows(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, dist = pair_dirs
    (dist / "im01.png").write_bytes(b"not an image at all")
    csv_out, json_out = tmp_path / "s.csv", tmp_path / "s.json"
    assert invoke("score", ref, dist, "--out", csv_out, "--metric", "psnr", "-q").exit_code == 0
    r = invoke("score", ref, dist, "--out", json_out, "--metric", "psnr", "-q")
    assert r.exit_code == 0, r.output
    rows = json.loads(json_out.read_text())
    want = _rows(csv_out)
    assert [list(x) for x in rows] == [["ref", "dist", "metric", "score", "error"]] * 5
    for got, row in zip(rows, want, strict=True):
        assert (got["ref"], got["dist"], got["metric"]) == (row["ref"], row["dist"], row["metric"])
        assert got["score"] == (float(row["score"]) if row["score"] else None)
        assert (got["error"] or "") == row["error"]
    assert rows[1]["score"] is None and "im01.png" in rows[1]["error"]
    assert not (tmp_path / "s.json.journal").exists()  # finished: the journal is gone, as for a CSV
