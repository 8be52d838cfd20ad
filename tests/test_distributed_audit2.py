"""``patchmmd score`` under a launch, second audit: ranks given other output flags, a rank without the launch's
size, uneven shares (fewer pairs than ranks, none left), and SIGTERM sent to ``torchrun`` itself."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_runner import invoke
from patchmmd import scoring
from patchmmd.scoring import distributed
from test_distributed import (
    _env,
    _images,
    _rows_in,
    _score_args,
    _torchrun,
    needs_gloo,
    needs_proc,
    write_journals,
)
from test_distributed_audit import no_launch, run_two_ranks  # noqa: F401  (no_launch: a fixture)

_TIMEOUT = "40"  # seconds a rank waits for the others: a hang shows as a timeout, not as a refusal


def _by_hand(folder: Path, out: Path, extra: tuple[list[str], list[str]], *,
             out1: Path | None = None) -> tuple[list[int], list[str], float]:
    """Two ranks started by hand (as by srun), each with its own extra arguments (and rank 1 with ``out1`` as its
    output when given): exit statuses, stderr, seconds."""
    outs = (out, out if out1 is None else out1)
    t0 = time.monotonic()
    codes, errs = run_two_ranks([[*_score_args(folder, outs[r], "-m", "l2", "-q"), *extra[r]] for r in range(2)],
                                [folder.parent, folder.parent], timeout=_TIMEOUT, wait=150)
    return codes, errs, time.monotonic() - t0


# --- ranks given other output flags -------------------------------------------------------------------
@needs_gloo
def test_ranks_that_differ_in_overwrite_refuse_to_start(tmp_path: Path) -> None:
    """Only the ranks with --overwrite deleted the journals and waited at a meeting the others never came to:
    every rank hung until the timeout, then said it had lost contact (exit status 1)."""
    d = tmp_path / "imgs"
    _images(d, 4, size=16)
    out = tmp_path / "out" / "s.csv"
    codes, errs, seconds = _by_hand(d, out, (["--overwrite"], []))
    assert codes == [2, 2], errs
    assert "the ranks built different jobs (overwrite: rank 0 True, rank 1 False)" in errs[0], errs[0]
    assert "different jobs" not in errs[1] and "lost contact" not in errs[0] + errs[1]
    assert seconds < float(_TIMEOUT)
    assert not out.exists() and scoring.find_journals(out) == []


@needs_gloo
def test_ranks_that_differ_in_retry_errors_refuse_to_start(tmp_path: Path) -> None:
    """Only the ranks with --retry-errors dropped the error rows: the ranks cut their shares from different lists
    of pairs, and one step's answer was taken for another's (rank 0 said ``rank 1: (29, 0)``)."""
    d = tmp_path / "imgs"
    _images(d, 8, size=16)
    (d / "broken.png").write_bytes(b"junk")  # 8 error rows
    out = tmp_path / "s.csv"
    tasks = scoring.all_pair_tasks(d)
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="all-pairs", folder=str(d.resolve()))
    with scoring.Journal.open(scoring.journal_path(out), job) as j:  # a single process's job, cut short
        scoring.run_tasks(tasks[:12], "l2", j)
    journal = scoring.journal_path(out).read_bytes()
    assert b'"error": null' in journal and b'"value": null' in journal  # error rows and rows with a value
    codes, errs, _ = _by_hand(d, out, (["--resume", "--retry-errors"], ["--resume"]))
    assert codes == [2, 2], errs
    assert "the ranks built different jobs (retry_errors: rank 0 True, rank 1 False)" in errs[0], errs[0]
    assert scoring.find_journals(out) == [scoring.journal_path(out)]
    assert scoring.journal_path(out).read_bytes() == journal  # the error rows are still there
    assert not out.exists()


@needs_gloo
def test_ranks_given_other_outputs_refuse_to_start(tmp_path: Path) -> None:
    """Each rank would score into its own output's journal, and rank 0 would find rows missing only at the end."""
    d = tmp_path / "imgs"
    _images(d, 3, size=16)
    codes, errs, _ = _by_hand(d, tmp_path / "a.csv", ([], []), out1=tmp_path / "b.csv")
    assert codes == [2, 2], errs
    assert "the ranks built different jobs (output: rank 0 " in errs[0], errs[0]
    assert not list(tmp_path.glob("*.journal")) and not list(tmp_path.glob("*.csv"))


# --- a rank without the launch's size -----------------------------------------------------------------
def test_a_rank_without_world_size_is_refused_by_name() -> None:
    """The message said ``RANK must be in [0, WORLD_SIZE=1)`` although WORLD_SIZE was not set at all."""
    for environ, name in (({"RANK": "3"}, "RANK=3"), ({"LOCAL_RANK": "1"}, "LOCAL_RANK=1"),
                          ({"RANK": "1", "LOCAL_RANK": "0"}, "RANK=1"), ({"RANK": "2", "WORLD_SIZE": " "}, "RANK=2")):
        with pytest.raises(ValueError, match=f"^{name} is set but WORLD_SIZE is not"):
            distributed.detect(environ)
    assert distributed.detect({"RANK": "0", "LOCAL_RANK": "0"}) == distributed.DistEnv()  # a single process
    with pytest.raises(ValueError, match=r"RANK must be in \[0, WORLD_SIZE=1\)"):  # WORLD_SIZE given as 1
        distributed.detect({"RANK": "1", "WORLD_SIZE": "1"})


def test_score_with_a_rank_but_no_world_size_is_a_usage_error(tmp_path: Path,
                                                               no_launch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _images(tmp_path / "d", 2, size=16)
    no_launch.setenv("RANK", "1")
    r = invoke(*_score_args(tmp_path / "d", tmp_path / "s.csv", "-m", "l2"))
    assert r.exit_code == 2, r.output
    assert "bad launch environment: RANK=1 is set but WORLD_SIZE is not" in r.output
    assert not (tmp_path / "s.csv").exists() and scoring.find_journals(tmp_path / "s.csv") == []
    no_launch.setenv("RANK", "0")  # rank 0 of nothing: a single process, as without the variable
    r = invoke(*_score_args(tmp_path / "d", tmp_path / "s.csv", "-m", "l2", "-q"))
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 2


# --- uneven shares ------------------------------------------------------------------------------------
@needs_gloo
def test_fewer_pairs_than_ranks(tmp_path: Path) -> None:
    """One pair for two ranks: rank 1 scores nothing, writes an empty journal, and the CSV is a single process's."""
    d = tmp_path / "imgs"
    _images(d, 2, size=16)
    single = tmp_path / "single.csv"
    assert invoke(*_score_args(d, single, "-m", "l2", "-q")).exit_code == 0
    out = tmp_path / "s.csv"
    p = subprocess.run(_torchrun("-m", "patchmmd", *_score_args(d, out, "-m", "l2")), capture_output=True,
                       text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert out.read_text() == single.read_text()
    assert "wrote 1 rows" in p.stderr and scoring.find_journals(out) == []


@needs_gloo
def test_a_resumed_job_with_no_pair_left(tmp_path: Path) -> None:
    """Every pair is in the journals (the job was stopped while the CSV was written): the ranks score nothing and
    rank 0 merges the journals of another world size."""
    d = tmp_path / "imgs"
    _images(d, 5, size=16)
    single = tmp_path / "single.csv"
    assert invoke(*_score_args(d, single, "-m", "l2", "-q")).exit_code == 0
    out = tmp_path / "s.csv"
    write_journals(d, out, 3)  # every pair done
    p = subprocess.run(_torchrun("-m", "patchmmd", *_score_args(d, out, "-m", "l2", "--resume")),
                       capture_output=True, text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 scored now by 2 processes, 10 from the journal" in p.stderr
    assert out.read_text() == single.read_text() and scoring.find_journals(out) == []


# --- SIGTERM sent to torchrun -------------------------------------------------------------------------
@needs_gloo
@needs_proc
def test_sigterm_to_torchrun_stops_every_rank_with_its_count_then_resume(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    _images(d, 10, size=16)  # 45 pairs
    (d / "broken.png").write_bytes(b"junk")  # + 10 error rows
    single = tmp_path / "single.csv"
    assert invoke(*_score_args(d, single, "-m", "l2", "-q")).exit_code == 0
    out = tmp_path / "s.csv"
    args = _score_args(d, out, "-m", "l2", "-b", "2", "-q")
    launcher = subprocess.Popen(_torchrun("-m", "patchmmd", *args, "--throttle", "0.2"), env=_env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while min(_rows_in(scoring.journal_path(out, r, 2)) for r in range(2)) < 2:
        if launcher.poll() is not None:
            pytest.fail(f"the job ended before it could be stopped: {launcher.communicate()}")
        if time.monotonic() - t0 > 120:
            launcher.kill()
            pytest.fail("the ranks wrote no rows in time")
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert not out.exists()
    for rank in range(2):
        journal = scoring.journal_path(out, rank, 2)
        said = f"rank {rank}: stopped (SIGTERM): {_rows_in(journal)} of its {55 // 2 + (rank == 0)} pairs are " \
               f"saved in {journal}; rerun the same command with --resume to finish"
        assert said in err, err
    p = subprocess.run(_torchrun("-m", "patchmmd", *args, "--resume"), env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout + p.stderr
    assert out.read_text() == single.read_text() and scoring.find_journals(out) == []
