"""``patchmmd score``, a second audit: temporary files a killed run leaves behind, output names too long for the
file system, and what a refused resume says when the folders' images changed."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cli_runner import invoke
from patchmmd import scoring
from test_scoring import _images

# A ``score`` run killed (SIGKILL, as by ``kill -9`` or the OOM killer) between writing a temporary file of the
# atomic write and renaming it over its target: the moment that leaves a temporary file behind.
_KILLED_AT_RENAME = """
import os, signal, sys
real = os.replace
def replace(src, dst, **kwargs):
    if os.fspath(dst).endswith((".csv", ".journal")):  # the CSV or a journal, not a cache of the package
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, **kwargs)
os.replace = replace
from patchmmd.cli import main
main(sys.argv[1:], prog_name="patchmmd")
"""


def _killed_at_rename(*args: object) -> None:
    r = subprocess.run([sys.executable, "-c", _KILLED_AT_RENAME, *map(str, args)], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == -signal.SIGKILL, r.stderr


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- temporary files left by a killed run ----------------------------------------------------------------
def test_the_temporary_files_of_a_killed_run_are_removed_by_the_next_and_the_csv_is_the_same(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, [f"im{i}.png" for i in range(4)])
    _images(dist, [f"im{i}.png" for i in range(4)], seed=1)
    expected = tmp_path / "expected.csv"
    assert invoke("score", ref, dist, "--out", expected, "-m", "l2", "-q").exit_code == 0
    good = (dist / "im1.png").read_bytes()
    (dist / "im1.png").write_bytes(b"still being copied")  # an error row, retried below
    outdir = tmp_path / "out"
    out = outdir / "s.csv"
    args = ("score", ref, dist, "--out", out, "-m", "l2", "-q")

    # killed while the CSV is written: its temporary file is left, the journal holds every row
    _killed_at_rename(*args)
    assert not out.exists() and len(_temporaries(outdir)) == 1
    (dist / "im1.png").write_bytes(good)
    # killed while --retry-errors rewrites the journal without its error row: that run removed the CSV's
    # temporary file; the journal's own is left, and the journal is as it was
    journal = scoring.journal_path(out)
    before = journal.read_bytes()
    _killed_at_rename(*args, "--resume", "--retry-errors")
    assert journal.read_bytes() == before
    temporaries = _temporaries(outdir)
    assert len(temporaries) == 1 and temporaries[0].startswith(".s.csv.journal."), temporaries

    r = invoke(*args, "--resume", "--retry-errors")
    assert r.exit_code == 0, r.output
    assert out.read_text() == expected.read_text()
    assert sorted(p.name for p in outdir.iterdir()) == ["s.csv"]  # nothing stale left: no .tmp, journal or lock


def _stale_temporary(target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary file an atomic write of ``target`` leaves when its process dies before the rename (made by
    the writer itself, named as it names them)."""
    from patchmmd import _files  # where the atomic writes live
    from patchmmd.scoring import output

    made: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)  # type: ignore[call-overload]
        made.append(name)
        return fd, name

    class Killed(BaseException):
        pass

    def replace(*args: object) -> None:
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(_files.tempfile, "mkstemp", mkstemp)
        mp.setattr(_files.os, "replace", replace)
        with pytest.raises(Killed):
            output.write_output_atomic(target, [], value_column="distance")
    stale = Path(made[0])
    stale.write_text("half a CSV")  # the writer cleaned up after the exception; SIGKILL would have left it
    return stale


def test_only_the_outputs_own_temporary_files_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two outputs whose long names start alike: a run of one must not remove a temporary file of the other
    (whose run, holding its own lock, may be renaming it right now)."""
    photos = tmp_path / "photos"
    _images(photos, ["a.png", "b.png", "c.png"])
    outdir = tmp_path / "out"
    outdir.mkdir()
    mine = outdir / ("scores_of_the_second_experiment_with_a_long_name_" + "a.csv")
    theirs = outdir / ("scores_of_the_second_experiment_with_a_long_name_" + "b.csv")
    my_stale = _stale_temporary(mine, monkeypatch)
    their_stale = _stale_temporary(theirs, monkeypatch)
    assert my_stale != their_stale
    # a symbolic link named as a temporary file of this output is not one of its files: left alone
    link = my_stale.with_name(my_stale.name[:-12] + "zzzzzzzz.tmp")
    link.symlink_to(their_stale)
    other = outdir / ".notes.tmp"
    other.write_text("someone else's")

    job = scoring.ScoreJob((photos,), all_pairs=True, output=mine, metric="l2")
    result = scoring.ScoreRunner(job, device="cpu").run()
    assert len(result.rows) == 3
    assert not my_stale.exists()
    assert their_stale.read_text() == "half a CSV" and link.is_symlink() and other.exists()
    assert sorted(p.name for p in outdir.iterdir()) == sorted([mine.name, link.name, their_stale.name, other.name])


def test_remove_stale_temporaries_removes_only_those_of_the_paths_given(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s.csv"
    stale = [_stale_temporary(p, monkeypatch) for p in (out, scoring.journal_path(out, 1, 2))]
    kept = [_stale_temporary(tmp_path / name, monkeypatch) for name in ("s.csv.old", "t.csv", "s.cs")]
    removed = scoring.remove_stale_temporaries([out, scoring.journal_path(out, 1, 2)])
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


# --- output names too long for the file system -----------------------------------------------------------
@pytest.mark.parametrize("length", [250, 300])
def test_an_output_name_too_long_for_the_file_system_is_one_usage_error(tmp_path: Path, length: int) -> None:
    """250: the name fits, but not with ``.journal`` or ``.lock`` (was: a warning that the output cannot be locked,
    then a failure to open the journal); 300: the name itself does not fit (was: an OSError)."""
    photos = tmp_path / "photos"
    _images(photos, ["a.png", "b.png"])
    out = tmp_path / ("s" * (length - 4) + ".csv")
    r = invoke("score", "--all-pairs", photos, "--out", out, "-m", "l2")
    assert r.exit_code == 2, r.output
    assert "the name is too long for the file system" in r.output and "give a shorter name" in r.output
    assert "cannot lock" not in r.output and "Errno" not in r.output and "OSError" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


# --- a resume refused because the images changed ---------------------------------------------------------
def test_a_resume_refused_because_the_images_changed_says_so(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _images(photos, [f"im{i}.png" for i in range(4)])
    out = tmp_path / "s.csv"

    def stop() -> None:
        raise KeyboardInterrupt

    job = scoring.ScoreJob((photos,), all_pairs=True, output=out, metric="l2")
    with pytest.raises(scoring.JobInterrupted):
        scoring.ScoreRunner(job, device="cpu", batch_size=2, after_batch=stop).run()
    args = ("score", "--all-pairs", photos, "--out", out, "-m", "l2", "--resume")
    (photos / "im3.png").rename(photos / "im9.png")  # as many pairs, other ones
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert "num_tasks, tasks: 6 pairs in the journal, 6 now, not the same ones: image files were added, removed or " \
        "renamed in the folders" in r.output
    assert "rerun with the same arguments and image files" in r.output
    (photos / "im9.png").rename(photos / "im3.png")
    _images(photos, ["im4.png"])
    r = invoke(*args, "-q")
    assert r.exit_code == 2 and "num_tasks, tasks: 6 pairs in the journal, 10 now" in r.output, r.output
    assert "tasks: journal" not in r.output  # not the hash of the list of pairs: it says nothing
    (photos / "im4.png").unlink()
    r = invoke(*args, "-q")
    assert r.exit_code == 0, r.output
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert sorted(os.listdir(tmp_path)) == ["photos", "s.csv"]
