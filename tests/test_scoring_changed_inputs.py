"""``patchmmd score --resume`` after image files changed in place: each journal row records the size and
modification time of its two files, and a resumed job scores again the pairs whose files changed since (a warning
says how many), instead of keeping their old values in the final CSV. Rows of an earlier version's journal (no
stamps) are kept, with a warning."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from cli_runner import invoke
from patchmmd import scoring
from patchmmd.io import save_image
from test_distributed import _env, _torchrun, needs_gloo, write_journals


def _folder(tmp_path: Path, suffix: str = ".png") -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in "abcd":
        save_image(torch.rand(3, 16, 16, generator=g), d / f"{name}{suffix}")
    return d


def _score(d: Path, out: Path, *extra: object) -> Result:
    return invoke("score", "--all-pairs", d, "--out", out, "-m", "l2", "--device", "cpu", "--batch-size", 1, *extra)


def _interrupted(d: Path, out: Path, batches: int) -> None:
    """A job on ``d`` stopped by Ctrl-C once ``batches`` batches are in its journal (of one pair each, except the
    error rows of a chunk of 4 pairs, which are one batch)."""
    real = scoring.Journal.append
    calls = [0]

    def append(self: scoring.Journal, rows: object) -> None:
        if calls[0] == batches:
            raise KeyboardInterrupt
        calls[0] += 1
        real(self, rows)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring.Journal, "append", append)
        r = _score(d, out)
    assert r.exit_code == 130, r.output
    assert scoring.read_journal(scoring.journal_path(out))


def _replace(path: Path, seed: int, *, flat: bool = False) -> None:
    """New content in place, under the same name: random (a PNG of the same size as before), or flat (smaller)."""
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed))
    save_image(torch.full_like(image, 0.25) if flat else image, path)


def _fresh(d: Path, tmp_path: Path) -> str:
    """The CSV of an uninterrupted job on the files as they are now."""
    ref = tmp_path / "fresh.csv"
    r = _score(d, ref, "-q", "--overwrite")
    assert r.exit_code == 0, r.output
    return ref.read_text()


def test_a_replaced_image_is_scored_again_on_resume(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    _interrupted(d, out, 3)  # (a, b), (a, c), (a, d) are done
    before = (d / "b.png").stat().st_size
    _replace(d / "b.png", seed=7, flat=True)
    assert (d / "b.png").stat().st_size != before
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert (f"warning: 1 finished pair(s) are scored again: 1 image file(s) changed since they were scored "
            f"({d / 'b.png'})") in r.output
    assert "4 scored now, 2 from the journal, 1 rescored (image files changed)" in r.output
    assert out.read_text() == _fresh(d, tmp_path)  # the old (a, b) value is gone
    assert scoring.find_journals(out) == []


def test_same_size_new_content_and_a_new_time_is_noticed(tmp_path: Path) -> None:
    d = _folder(tmp_path, ".bmp")  # uncompressed: every 16x16 image has the same size
    out = tmp_path / "s.csv"
    _interrupted(d, out, 3)
    st = (d / "a.bmp").stat()
    _replace(d / "a.bmp", seed=9)
    os.utime(d / "a.bmp", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clock tick later, whatever its grain
    assert (d / "a.bmp").stat().st_size == st.st_size
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "3 finished pair(s) are scored again" in r.output and "3 rescored" in r.output
    assert out.read_text() == _fresh(d, tmp_path)


def test_a_touched_image_is_scored_again_with_the_same_values(tmp_path: Path) -> None:
    """Same content, a new modification time: the pairs are scored again (time, never a wrong value)."""
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    _interrupted(d, out, 3)
    st = (d / "c.png").stat()
    os.utime(d / "c.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "1 finished pair(s) are scored again" in r.output and "1 rescored" in r.output
    assert out.read_text() == _fresh(d, tmp_path)


def test_unchanged_files_keep_their_rows_and_say_nothing(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    _interrupted(d, out, 3)
    rows = scoring.read_journal(scoring.journal_path(out))
    assert all(r["stamps"] == {"ref": scoring.file_stamp(d / r["ref"]), "dist": scoring.file_stamp(d / r["dist"])}
               for r in rows)
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "rescored" not in r.output and "3 from the journal" in r.output


def test_error_rows_of_unchanged_files_are_kept(tmp_path: Path) -> None:
    """A pair whose first file cannot be read leaves its second unread: the row still records that file's stamp,
    so that resuming does not take it for a changed file."""
    d = _folder(tmp_path)
    (d / "a.png").write_bytes(b"junk")
    out = tmp_path / "s.csv"
    _interrupted(d, out, 1)  # the first chunk's error rows: (a, b), (a, c), (a, d)
    rows = scoring.read_journal(scoring.journal_path(out))
    assert len(rows) == 3 and all(r["stamps"]["dist"] == scoring.file_stamp(d / r["dist"]) for r in rows)
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "3 from the journal; 3 with errors" in r.output


def test_an_error_row_whose_file_was_mended_is_kept_with_a_note(tmp_path: Path) -> None:
    """Error rows are kept by ``--resume`` as before (``--retry-errors`` scores them again), changed files or not:
    no value is wrong, and a note says which error rows are of changed files."""
    d = _folder(tmp_path)
    good = (d / "b.png").read_bytes()
    (d / "b.png").write_bytes(b"junk")
    out = tmp_path / "s.csv"
    _interrupted(d, out, 1)  # the first chunk's error rows: (a, b) and (b, c), b unreadable
    assert [r["error"] is not None for r in scoring.read_journal(scoring.journal_path(out))] == [True, True]
    (d / "b.png").write_bytes(good)
    copy = tmp_path / "copy.csv"
    copy.with_name("copy.csv.journal").write_bytes(scoring.journal_path(out).read_bytes())
    r = _score(d, copy, "--resume")
    assert r.exit_code == 0, r.output
    assert (f"note: 2 error row(s) are of image files changed since they were scored ({d / 'b.png'}); they are "
            "kept, --retry-errors scores them again") in r.output
    assert "2 from the journal; 2 with errors" in r.output and "rescored" not in r.output
    r = _score(d, out, "--resume", "--retry-errors")
    assert r.exit_code == 0, r.output
    assert "note" not in r.output and "2 error row(s) retried" in r.output and "0 with errors" in r.output
    assert out.read_text() == _fresh(d, tmp_path)


def test_an_old_journal_without_stamps_is_resumed_with_a_warning(tmp_path: Path) -> None:
    """A journal of an earlier version records no stamps: its rows are kept (finished work is not thrown away),
    and a warning says they could not be checked."""
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    _interrupted(d, out, 3)
    journal = scoring.journal_path(out)
    header, *rows = (json.loads(line) for line in journal.read_text().splitlines())
    for row in rows:
        del row["stamps"]
    journal.write_text("".join(json.dumps(obj, sort_keys=True) + "\n" for obj in (header, *rows)))
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert ("warning: 3 finished pair(s) come from a journal of an earlier patchmmd that records no file sizes or "
            "times: they are kept without checking") in r.output
    assert "3 scored now, 3 from the journal" in r.output and "rescored" not in r.output
    assert out.read_text() == _fresh(d, tmp_path)


def test_the_library_reports_changes_through_notices(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    _interrupted(d, out, 3)
    _replace(d / "d.png", seed=5)
    notices: list[object] = []
    job = scoring.ScoreJob((d,), all_pairs=True, output=out, metric="l2", resume=True)
    result = scoring.ScoreRunner(job, device="cpu", batch_size=1, notify=notices.append).run()
    assert notices == [scoring.ChangedImages(1, [str(d / "d.png")])]
    assert (result.changed, result.skipped, result.scored, result.retried) == (1, 2, 4, 0)


def test_malformed_stamps_are_refused_with_their_line(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    _interrupted(d, out, 2)
    journal = scoring.journal_path(out)
    lines = journal.read_text().splitlines()
    row = json.loads(lines[2])
    row["stamps"] = {"ref": [-1, 2], "dist": None}
    journal.write_text("\n".join([*lines[:2], json.dumps(row)]) + "\n")
    with pytest.raises(scoring.JournalError, match="line 3: 'stamps' must be an object"):
        scoring.read_journal(journal)
    row["stamps"] = {"ref": [852, -10**9], "dist": None}  # a file dated before 1970; a file that could not be stat'ed
    journal.write_text("\n".join([*lines[:2], json.dumps(row)]) + "\n")
    assert scoring.read_journal(journal)[1]["stamps"] == row["stamps"]


def test_resuming_several_writers_journals_scores_the_changed_pairs_again(tmp_path: Path) -> None:
    """A 3-writer job that died part-way, resumed by one process: the changed rows are dropped from every
    writer's journal before scoring, so no journal holds two rows of a pair and the CSV has the new values."""
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    write_journals(d, out, 3, lambda rank: 2)  # 6 of the 6 pairs
    _replace(d / "a.png", seed=11)  # 3 of the pairs
    r = _score(d, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "3 finished pair(s) are scored again" in r.output and "3 scored now, 3 from the journal" in r.output
    assert out.read_text() == _fresh(d, tmp_path)


@needs_gloo
def test_torchrun_resume_after_an_image_changed(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    out = tmp_path / "s.csv"
    write_journals(d, out, 3, lambda rank: 1 + rank % 2)  # 4 of the 6 pairs, in 3 writers' journals
    _replace(d / "b.png", seed=13)
    p = subprocess.run(_torchrun("-m", "patchmmd", "score", "--all-pairs", str(d), "--out", str(out), "--device",
                                 "cpu", "-m", "l2", "--batch-size", "1", "--resume"),
                       capture_output=True, text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    changed = sum(1 for row in _done(d, 3, lambda rank: 1 + rank % 2) if "b.png" in (row.ref, row.dist))
    assert changed and f"{changed} finished pair(s) are scored again" in p.stderr
    assert p.stderr.count("are scored again") == 1  # rank 0 alone says it
    assert out.read_text() == _fresh(d, tmp_path) and scoring.find_journals(out) == []


def _done(d: Path, writers: int, done: Callable[[int], int]) -> list[scoring.PairTask]:
    """The pairs :func:`write_journals` journals."""
    tasks = scoring.all_pair_tasks(d)
    return [t for rank in range(writers) for t in scoring.shard(tasks, rank, writers)[: done(rank)]]
