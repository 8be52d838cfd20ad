"""``patchmmd score`` against data loss and wrong rows: a full disk while scoring, a journal value too large for a
float, folders reached through symbolic links, and outputs with long names."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd import scoring
from test_scoring import _images


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    _images(d, [f"im{i}.png" for i in range(6)])  # 15 pairs
    return d


# --- a full disk while the journal is written ---------------------------------------------------------
def test_a_full_disk_while_scoring_is_one_clear_line_and_resume_finishes(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchmmd.scoring import journal as journal_module

    expected = tmp_path / "expected.csv"
    assert invoke("score", "--all-pairs", photos, "--out", expected, "-m", "l2", "-q").exit_code == 0
    out = tmp_path / "s.csv"
    journal = scoring.journal_path(out)
    real = journal_module._fsync
    calls = 0

    def full(fh: io.BufferedIOBase) -> None:
        """The header and two batches fit; the third batch is cut mid-line by a full disk."""
        nonlocal calls
        calls += 1
        if calls < 4:
            return real(fh)
        fh.flush()
        os.ftruncate(fh.fileno(), os.fstat(fh.fileno()).st_size - 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module, "_fsync", full)
    r = invoke("score", "--all-pairs", photos, "--out", out, "-m", "l2", "-b", "2")
    assert r.exit_code == 1, r.output
    message = r.output.strip()
    assert len(message.splitlines()) == 1 and "OSError" not in message and "Errno" not in message, message
    assert f"cannot write the journal {journal}: No space left on device; 4 of 15 pairs are saved" in message
    assert message.endswith("rerun the same command with --resume to finish")
    # the header, 4 durable rows, the failed batch's first row and its torn second one (cut off on resuming)
    assert not out.exists() and journal.read_bytes().count(b"\n") == 1 + 4 + 1
    monkeypatch.setattr(journal_module, "_fsync", real)  # space freed
    r = invoke("score", "--all-pairs", photos, "--out", out, "-m", "l2", "-b", "2", "--resume")
    assert r.exit_code == 0, r.output
    assert "5 from the journal" in r.output
    assert out.read_text() == expected.read_text() and not journal.exists()


def test_journal_append_reports_a_failed_write_and_closes_quietly(photos: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from patchmmd.scoring import journal as journal_module

    path = tmp_path / "s.csv.journal"
    row = {"id": "1", "ref": "a.png", "dist": "b.png", "metric": "l2", "value": 0.5, "error": None}
    j = scoring.Journal.open(path, {"metric": "l2"})

    def full(fh: io.BufferedIOBase) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module, "_fsync", full)
    with pytest.raises(scoring.JournalWriteError, match="No space left on device") as info:
        j.append([row])
    assert info.value.path == path and isinstance(info.value.__cause__, OSError)
    assert "1" not in j.done  # not durable: not counted as done
    j.close()


# --- the journal's values -----------------------------------------------------------------------------
def test_a_journal_value_too_large_for_a_float_is_a_journal_error(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    tasks = scoring.all_pair_tasks(photos)
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="all-pairs",
                             folder=str(photos.resolve()))
    journal = scoring.journal_path(out)
    with scoring.Journal.open(journal, job) as j:
        scoring.run_tasks(tasks[:2], "l2", j)
    lines = journal.read_text().splitlines()
    row = json.loads(lines[2])
    row["value"] = 10**400  # JSON has big integers; no float holds this one
    journal.write_text("\n".join([*lines[:2], json.dumps(row, sort_keys=True)]) + "\n")
    with pytest.raises(scoring.JournalError, match=r"line 3: 'value' must be a finite number, got 1000"):
        scoring.read_journal(journal, job, tasks)
    r = invoke("score", "--all-pairs", photos, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 2, r.output
    assert f"{journal}, line 3: 'value' must be a finite number" in r.output


# --- folders reached through symbolic links -------------------------------------------------------------
def test_images_in_a_folder_reached_through_a_symbolic_link_are_in_the_job(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _images(root, ["a.png", "sub/b.png"])
    _images(tmp_path / "elsewhere", ["c.png", "d.png"], seed=1)
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)  # a loop: never entered
    images, others = scoring.list_images(root)
    assert images == ["a.png", "linked/c.png", "linked/d.png", "sub/b.png"] and others == []
    assert len(scoring.all_pair_tasks(root)) == 6
    # a paired job: the linked images have partners, and none is reported unmatched
    dist = tmp_path / "dist"
    _images(dist, ["a.png", "sub/b.png", "linked/c.png", "linked/d.png"], seed=2)
    pairs = scoring.paired_tasks(root, dist)
    assert [t.ref for t in pairs.tasks] == images and pairs.only_ref == [] and pairs.only_dist == []


# --- long output names ----------------------------------------------------------------------------------
def test_an_output_with_a_long_name_is_written(photos: Path, tmp_path: Path) -> None:
    """The journal (name + 8 characters) fits the file system's 255; the temporary file of the atomic write
    must fit too, or every run, and every resume, would fail only at the end."""
    out = tmp_path / ("s" * 242 + ".csv")
    job = scoring.ScoreJob((photos,), all_pairs=True, output=out, metric="l2")
    result = scoring.ScoreRunner(job, device="cpu").run()
    assert len(result.rows) == 15 and out.exists() and scoring.find_journals(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photos", out.name])


# --- a device out of memory while the batch is moved to it ---------------------------------------------
def test_a_batch_the_device_cannot_hold_is_scored_pair_by_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    # the move to the device was outside the try: an out-of-memory there stopped the whole job
    from patchmmd.metrics import get_metric
    from patchmmd.scoring.jobs import PairTask
    from patchmmd.scoring.runner import _score_batch

    real_to = torch.Tensor.to

    def to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if args and isinstance(args[0], torch.device) and self.dim() == 4 and self.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_to(self, *args, **kwargs)  # type: ignore[arg-type]

    g = torch.Generator().manual_seed(0)
    batch = [(PairTask(i, f"p{i}", f"a{i}.png", f"b{i}.png", Path(f"a{i}.png"), Path(f"b{i}.png")),
              torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g)) for i in range(3)]
    l2 = get_metric("l2")
    expected = [float(l2(x[None], y[None])) for _, x, y in batch]
    monkeypatch.setattr(torch.Tensor, "to", to)
    rows = _score_batch(l2, batch, "l2", torch.device("cpu"))
    assert [r["error"] for r in rows] == [None] * 3
    assert [r["value"] for r in rows] == pytest.approx(expected, rel=1e-12)
