"""``patchmmd score``, a fourth audit: an output path that is one of the job's own images (by name, link or hard
link, or through the lock file kept next to it), file names with line breaks and control characters in messages
and error rows, and a pair that runs out of memory."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd import scoring
from test_scoring import _images

needs_links = pytest.mark.skipif(sys.platform == "win32", reason="symbolic and hard links")


def _paired(tmp_path: Path) -> tuple[Path, Path]:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["a.png", "b.png"], seed=0)
    _images(dist, ["a.png", "b.png"], seed=1)
    return ref, dist


def _files(tmp_path: Path) -> dict[str, bytes]:
    return {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}


def _left_alone(tmp_path: Path, before: dict[str, bytes]) -> None:
    """Every file under ``tmp_path`` is as it was: nothing written, nothing created (no lock, no journal)."""
    assert _files(tmp_path) == before


# --- an output that is one of the job's images -----------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--overwrite", "--resume", None])
def test_an_output_that_is_an_input_image_is_refused_before_anything(tmp_path: Path, flag: str | None) -> None:
    """``score ref/ dist/ --out ref/a.png --overwrite`` replaced the reference image a.png by the CSV (and scored it
    first); without ``--overwrite`` the message even suggested passing it. Refused now, whatever the flags, before
    any file is created or written."""
    ref, dist = _paired(tmp_path)
    before = _files(tmp_path)
    out = ref / "a.png"
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--device", "cpu", "-q", *([flag] if flag else []))
    assert r.exit_code == 2, r.output
    message = r.output.splitlines()[-1]
    assert message.startswith(f"Error: --out {out} is the image {out} that the job reads"), message
    assert "--overwrite" not in message and "--resume" not in message
    _left_alone(tmp_path, before)


def test_the_library_refuses_it_in_its_own_words(tmp_path: Path) -> None:
    ref, dist = _paired(tmp_path)
    job = scoring.ScoreJob((ref, dist), output=dist / "b.png", metric="l2", overwrite=True)
    with pytest.raises(scoring.OutputPathError) as info:
        scoring.ScoreRunner(job, device="cpu").run()
    assert info.value.reason == "is_input" and info.value.output == dist / "b.png"
    assert "--" not in str(info.value)
    # an all-pairs job: the folder's own image, given by another path to the same file
    other = tmp_path / "x" / ".." / "ref" / "b.png"
    (tmp_path / "x").mkdir()
    before = _files(tmp_path)
    job = scoring.ScoreJob((ref,), all_pairs=True, output=other, metric="l2", overwrite=True)
    with pytest.raises(scoring.OutputPathError, match=r"is the image .*b\.png that the job reads"):
        scoring.ScoreRunner(job, device="cpu").run()
    _left_alone(tmp_path, before)


def test_an_image_without_a_partner_is_an_input_too(tmp_path: Path) -> None:
    ref, dist = _paired(tmp_path)
    _images(ref, ["only.png"], seed=3)
    before = _files(tmp_path)
    r = invoke("score", ref, dist, "--out", ref / "only.png", "-m", "l2", "--device", "cpu", "-q", "--overwrite")
    assert r.exit_code == 2 and "is the image" in r.output, r.output
    _left_alone(tmp_path, before)


@needs_links
def test_a_link_to_an_input_image_is_refused(tmp_path: Path) -> None:
    ref, dist = _paired(tmp_path)
    (tmp_path / "soft.csv").symlink_to(ref / "a.png")
    os.link(dist / "b.png", tmp_path / "hard.csv")
    before = _files(tmp_path)
    for name, image in (("soft.csv", ref / "a.png"), ("hard.csv", dist / "b.png")):
        r = invoke("score", ref, dist, "--out", tmp_path / name, "-m", "l2", "--device", "cpu", "-q", "--overwrite")
        assert r.exit_code == 2, r.output
        assert f"is the image {image} that the job reads" in r.output, r.output
    _left_alone(tmp_path, before)
    assert (tmp_path / "soft.csv").is_symlink()


@needs_links
def test_a_lock_file_that_is_an_input_image_is_refused(tmp_path: Path) -> None:
    """The lock file is opened and rewritten in place (its holder's details): an ``OUT.lock`` that is a hard link
    to an image emptied that image."""
    ref, dist = _paired(tmp_path)
    out = tmp_path / "s.csv"
    os.link(ref / "a.png", scoring.lock_path(out))
    before = _files(tmp_path)
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--device", "cpu", "-q")
    assert r.exit_code == 2, r.output
    assert f"--out {out}: {scoring.lock_path(out)}, kept next to it while the job runs, is the image" in r.output
    _left_alone(tmp_path, before)


def test_an_output_next_to_the_images_is_still_fine(tmp_path: Path) -> None:
    """Only the job's own images are refused: an output in an input folder, of a name that is no image of the job
    (or an image file that does not exist yet), is written as before."""
    ref, dist = _paired(tmp_path)
    for name in ("scores.csv", "new.png"):
        r = invoke("score", ref, dist, "--out", ref / name, "-m", "l2", "--device", "cpu", "-q")
        assert r.exit_code == 0, r.output
        assert (ref / name).read_text().startswith("ref,dist,metric,distance,error\n")


# --- file names with line breaks and control characters -------------------------------------------------------
def test_an_unreadable_file_with_a_line_break_in_its_name_is_one_escaped_error(tmp_path: Path) -> None:
    """The error row said ``cannot read ref/bad name.png``: the line break became a space, and an escape
    character went through as it is. The error shows the name escaped; the ref and dist cells keep it exactly."""
    ref, dist = _paired(tmp_path)
    name = "bad\nna\x1bme.png"
    (ref / name).write_bytes(b"not an image")
    (dist / name).write_bytes(b"not an image either")
    for out in (tmp_path / "s.csv", tmp_path / "s.json"):
        r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--device", "cpu", "-q")
        assert r.exit_code == 0, r.output
        if out.suffix == ".csv":
            with out.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = json.loads(out.read_text())
        assert [(row["ref"], row["dist"]) for row in rows] == [("a.png",) * 2, ("b.png",) * 2, (name, name)]
        error = rows[2]["error"]
        assert f"cannot read {ref}/bad\\nna\\x1bme.png as an image" in error, error
        assert error.isprintable()
    # the CSV: one record per pair, the name quoted where it holds the line break
    lines = (tmp_path / "s.csv").read_text().split("\n")
    assert lines[3] == '"bad' and lines[4].startswith('na\x1bme.png","bad'), lines


def test_error_text_escapes_the_named_paths_and_keeps_one_line() -> None:
    from patchmmd.scoring.errors import error_text

    path = Path("d") / "x\ny\tz.png"
    text = error_text(ValueError(f"cannot read {path}:\nsecond line \x1b[2J"), paths=[path])
    assert text == "ValueError: cannot read d/x\\ny\\tz.png: second line \\x1b[2J"
    assert error_text(MemoryError()) == "MemoryError"


def test_notes_and_folder_errors_show_hostile_names_escaped(tmp_path: Path) -> None:
    """The notes of ignored files and images without a partner wrote the names as they are: a line break split the
    note, and an escape sequence (``\\x1b[2J`` clears the screen) reached the terminal."""
    ref, dist = _paired(tmp_path)
    _images(ref, ["only\x1b[2J.png"], seed=4)
    (dist / "note\nsecond.txt").write_text("x")
    r = invoke("score", ref, dist, "--out", tmp_path / "s.csv", "-m", "l2", "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "note: DIST_DIR: 1 file(s) without an image suffix ignored (note\\nsecond.txt)" in lines, lines
    assert "warning: unmatched images are skipped: 1 in REF_DIR only (only\\x1b[2J.png)" in lines, lines
    assert "\x1b" not in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x\ny.txt").write_text("x")
    r = invoke("score", "--all-pairs", empty, "--out", tmp_path / "e.csv", "-m", "l2", "--device", "cpu")
    assert r.exit_code == 2 and "e.g. x\\ny.txt); looked for" in r.output, r.output


def test_a_missing_row_names_its_pair_escaped(tmp_path: Path) -> None:
    task = scoring.PairTask(0, "0", "a\nb.png", "c\rd.png", Path("a"), Path("b"))
    with pytest.raises(ValueError, match=r"first: a\\nb\.png, c\\rd\.png\)$"):
        scoring.sorted_rows([], [task])


# --- out of memory --------------------------------------------------------------------------------------------
def test_an_image_that_runs_out_of_memory_is_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``MemoryError`` while an image was decoded stopped the whole job, and every resume met it again: the job
    could never finish. It is the pair's error row now, like any file that cannot be read."""
    ref, dist = _paired(tmp_path)
    real = scoring.runner.load_image

    def load(path: Path, **kwargs: object) -> torch.Tensor:
        if Path(path).name == "a.png" and Path(path).parent.name == "dist":
            raise MemoryError()
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scoring.runner, "load_image", load)
    r = invoke("score", ref, dist, "--out", tmp_path / "s.csv", "-m", "l2", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    with (tmp_path / "s.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["ref"], row["distance"] == "", row["error"]) for row in rows] == [
        ("a.png", True, "MemoryError"), ("b.png", False, "")]


def test_a_batch_that_runs_out_of_memory_is_scored_pair_by_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``MemoryError`` of the metric on a batch (torch's own out-of-memory errors are ``RuntimeError``s, retried
    pair by pair) stopped the job; the batch's pairs are now scored one by one, and only a pair that fails alone gets
    an error row."""
    from patchmmd.metrics import registry

    folder = tmp_path / "d"
    _images(folder, [f"im{i}.png" for i in range(4)])
    real = registry.get_metric

    def get_metric(name: str, **options: object) -> object:
        fn = real(name, **options)

        def limited(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 1:
                raise MemoryError()
            return fn(x, y)

        return limited

    monkeypatch.setattr(registry, "get_metric", get_metric)
    tasks = scoring.all_pair_tasks(folder)
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False)
    with scoring.Journal.open(tmp_path / "s.csv.journal", job) as journal:
        summary = scoring.run_tasks(tasks, "l2", journal, batch_size=4)
    assert (summary.scored, summary.errors) == (6, 0)
    rows = scoring.read_journal(tmp_path / "s.csv.journal", job, tasks)
    assert all(r["error"] is None and r["value"] > 0 for r in rows) and len(rows) == 6
