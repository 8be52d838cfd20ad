"""``patchmmd score``, a third audit: a writer of an earlier run still alive after the output's lock was freed
(a launch whose rank 0 died), a FIFO in a journal's place, a folder in the lock's place, and a lock file whose
text would write control characters to the terminal."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import invoke
from patchmmd import scoring
from test_scoring import _images

needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="journals and outputs are locked with fcntl.flock")


def _all_pairs(folder: Path, out: Path, **kwargs: object) -> scoring.ScoreJob:
    return scoring.ScoreJob((folder,), all_pairs=True, output=out, metric="l2", **kwargs)  # type: ignore[arg-type]


def _header(folder: Path, tasks: list[scoring.PairTask]) -> dict[str, object]:
    """The job header ``score --all-pairs FOLDER -m l2`` writes."""
    return scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="all-pairs",
                              folder=str(folder.resolve()))


# --- a writer of an earlier run still alive ------------------------------------------------------------------
@needs_flock
def test_a_writer_of_an_earlier_run_still_alive_stops_a_resume_until_it_ends(tmp_path: Path) -> None:
    """Rank 0 of a launch holds the output's lock; when it dies (e.g. killed by the OOM killer, with ranks started
    one per task by srun), the lock is free while rank 1 still scores its share into its journal. A resume then must
    not read that journal as final, nor reopen it to append (two processes writing one journal at their own
    offsets overwrite each other's rows), nor finalize and delete it."""
    d = tmp_path / "d"
    _images(d, [f"im{i}.png" for i in range(5)])  # 10 pairs
    expected = tmp_path / "expected.csv"  # on the CPU, as the rows written below (a GPU's sums round otherwise)
    assert invoke("score", "--all-pairs", d, "--out", expected, "-m", "l2", "-q", "--device", "cpu").exit_code == 0
    out = tmp_path / "s.csv"
    tasks = scoring.all_pair_tasks(d)
    job = _header(d, tasks)
    with scoring.Journal.open(scoring.journal_path(out, 0, 2), job) as rank0:  # rank 0 died after 2 pairs
        scoring.run_tasks(scoring.shard(tasks, 0, 2)[:2], "l2", rank0)
    rank1 = scoring.Journal.open(scoring.journal_path(out, 1, 2), job)  # rank 1 lives on
    try:
        scoring.run_tasks(scoring.shard(tasks, 1, 2)[:2], "l2", rank1)
        before = {p.name: p.read_bytes() for p in scoring.find_journals(out)}
        with pytest.raises(scoring.OutputLockedError) as info:
            scoring.ScoreRunner(_all_pairs(d, out, resume=True), device="cpu").run()
        assert type(info.value).__name__ == "JournalBusyError"
        message = str(info.value)
        assert "still writing the journal" in message and "s.csv.rank1-of-2.journal" in message, message
        assert "--" not in message  # the library names no flag
        assert info.value.output == out
        again = pickle.loads(pickle.dumps(info.value))  # sent between ranks
        assert (type(again), again.journal, str(again)) == (scoring.JournalBusyError, info.value.journal, message)
        for extra in ("--resume", "--overwrite"):
            r = invoke("score", "--all-pairs", d, "--out", out, "-m", "l2", "--device", "cpu", extra)
            assert r.exit_code == 1 and "still writing the journal" in r.output, r.output
        # a launch of the same world size would reopen rank 1's journal: refused before it is cut or appended to
        with pytest.raises(scoring.OutputLockedError):
            scoring.Journal.open(scoring.journal_path(out, 1, 2), job, resume=True, tasks=tasks)
        assert {p.name: p.read_bytes() for p in scoring.find_journals(out)} == before
        assert not out.exists() and not scoring.lock_path(out).exists()
        scoring.run_tasks(scoring.shard(tasks, 1, 2), "l2", rank1)  # rank 1 finishes its share
    finally:
        rank1.close()
    assert scoring.journals_in_use(scoring.find_journals(out)) == []
    r = invoke("score", "--all-pairs", d, "--out", out, "-m", "l2", "--device", "cpu", "--resume")
    assert r.exit_code == 0, r.output
    assert "3 scored now, 7 from the journal" in r.output
    assert out.read_text() == expected.read_text() and scoring.find_journals(out) == []


# --- hostile files in the places of the journal and the lock -------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_the_journals_place_is_one_error_not_a_hang(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _images(d, ["a.png", "b.png"])
    out = tmp_path / "s.csv"
    os.mkfifo(scoring.journal_path(out))
    # in a child process: reading a FIFO waits for a writer, for ever
    p = subprocess.run([sys.executable, "-m", "patchmmd", "score", "--all-pairs", str(d), "--out", str(out), "-m",
                        "l2", "--device", "cpu", "--resume"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "cannot open the journal" in p.stderr and "not a regular file" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not out.exists()
    with pytest.raises(OSError, match="not a regular file"):
        scoring.Journal.open(scoring.journal_path(out), {"metric": "l2"}, resume=True)


def test_a_folder_in_the_locks_place_is_an_error_not_a_run_without_a_lock(tmp_path: Path) -> None:
    """``OUT.lock`` that is a folder cannot lock anything: the run would go on unlocked (as on a file system without
    flock), and a second run on the output would too."""
    d = tmp_path / "d"
    _images(d, ["a.png", "b.png"])
    out = tmp_path / "s.csv"
    scoring.lock_path(out).mkdir()
    with pytest.raises(scoring.OutputPathError, match="cannot create the lock file") as info:
        scoring.ScoreRunner(_all_pairs(d, out), device="cpu").run()
    assert info.value.reason == "cannot_create"
    r = invoke("score", "--all-pairs", d, "--out", out, "-m", "l2", "--device", "cpu")
    assert r.exit_code == 1 and "cannot create the lock file" in r.output and "warning" not in r.output, r.output
    assert not out.exists() and scoring.find_journals(out) == [] and scoring.lock_path(out).is_dir()


@needs_flock
def test_the_lock_holders_text_reaches_the_terminal_as_one_plain_line(tmp_path: Path) -> None:
    """The lock file is written by whoever holds the lock (in a shared folder, anyone): its host and command line
    are shown escaped, never as a terminal's escape sequences or extra lines."""
    out = tmp_path / "s.csv"
    with scoring.OutputLock.acquire(out, argv=["patchmmd", "score", "--out", "a\nb.csv"]) as lock:
        with pytest.raises(scoring.OutputLockedError) as info:
            scoring.OutputLock.acquire(out)
        assert "\n" not in str(info.value) and "a\\nb.csv" in str(info.value), str(info.value)
        lock.path.write_text(json.dumps({"pid": 7, "host": "node1\x1b]0;owned\x07\x1b[2J", "argv": ["x\x1b[31m"]}))
        with pytest.raises(scoring.OutputLockedError) as info:
            scoring.OutputLock.acquire(out)
    message = str(info.value)
    assert message.isprintable(), repr(message)
    assert message.startswith("another run (pid 7 on node1\\x1b]0;owned\\x07\\x1b[2J: 'x\\x1b[31m') is writing")
