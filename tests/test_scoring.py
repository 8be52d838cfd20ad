"""The scoring engine: job order and ids, sharding, the journal's crash tolerance, atomic output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from patchmmd import scoring
from patchmmd.io import save_image


def _images(folder: Path, names: list[str], size: int = 16, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.rand(3, size, size, generator=g), folder / n)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    _images(d, ["b.png", "a.png", "sub/c.png", "d.jpg"])
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_text("skipped")
    return d


def test_list_images_sorted_relative_and_others(folder: Path) -> None:
    images, others = scoring.list_images(folder)
    assert images == ["a.png", "b.png", "d.jpg", "sub/c.png"]
    assert others == ["notes.txt"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder not found"):
        scoring.list_images(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        scoring.list_images(tmp_path / "f")


def test_all_pairs_order_and_stable_ids(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    assert len(tasks) == 6
    assert [t.index for t in tasks] == list(range(6))
    assert [(t.ref, t.dist) for t in tasks][:3] == [("a.png", "b.png"), ("a.png", "d.jpg"), ("a.png", "sub/c.png")]
    # ids depend on the relative paths only: a copy of the folder elsewhere gives the same ids
    import shutil

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, copy)
    assert [t.id for t in scoring.all_pair_tasks(copy)] == [t.id for t in tasks]
    assert len({t.id for t in tasks}) == len(tasks)


def test_paired_tasks_match_by_relative_path(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["x.png", "sub/y.png", "only_ref.png"])
    _images(dist, ["x.png", "sub/y.png", "only_dist.png", "y.png"])
    job = scoring.paired_tasks(ref, dist)
    assert [(t.ref, t.dist) for t in job.tasks] == [("sub/y.png", "sub/y.png"), ("x.png", "x.png")]
    assert job.only_ref == ["only_ref.png"]
    assert job.only_dist == ["only_dist.png", "y.png"]


@given(n=st.integers(0, 40), world=st.integers(1, 7))
def test_shard_partitions_the_job(n: int, world: int) -> None:
    tasks = [scoring.PairTask(i, str(i), "", "", Path(), Path()) for i in range(n)]
    shards = [scoring.shard(tasks, r, world) for r in range(world)]
    ids = sorted(t.index for s in shards for t in s)
    assert ids == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for s in shards:
        assert [t.index for t in s] == sorted(t.index for t in s)


def test_shard_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank must be"):
        scoring.shard([], 2, 2)
    with pytest.raises(ValueError, match="world_size must be"):
        scoring.shard([], 0, 0)


def _job(tasks: list[scoring.PairTask], metric: str = "l2") -> dict:
    return scoring.job_header(metric, {}, tasks, mode="RGB", resize=False)


def test_journal_tolerates_torn_last_line_and_cuts_it(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    path = tmp_path / "out.csv.journal"
    with scoring.Journal.open(path, job) as j:
        scoring.run_tasks(tasks[:3], "l2", j, batch_size=2)
    with open(path, "ab") as f:
        f.write(b'{"id": "abc", "ref": "a.p')  # a write cut short by kill -9
    assert len(scoring.read_journal(path, job)) == 3
    with scoring.Journal.open(path, job, resume=True) as j:
        assert len(j.done) == 3
        summary = scoring.run_tasks(tasks, "l2", j, batch_size=2)
    assert (summary.skipped, summary.scored) == (3, 3)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 6
    assert all(json.loads(line) for line in lines)  # the torn line is gone, not glued to the next


def test_journal_refuses_other_job_and_existing(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    path = tmp_path / "j.journal"
    scoring.Journal.open(path, _job(tasks)).close()
    with pytest.raises(FileExistsError):
        scoring.Journal.open(path, _job(tasks))
    with pytest.raises(scoring.JobMismatchError, match="metric"):
        scoring.Journal.open(path, _job(tasks, "mmdpp"), resume=True)
    with pytest.raises(scoring.JobMismatchError, match="tasks"):
        scoring.Journal.open(path, _job(tasks[:-1]), resume=True)
    path.write_text("garbage\n")
    with pytest.raises(scoring.JobMismatchError, match="not a patchmmd score journal"):
        scoring.Journal.open(path, _job(tasks), resume=True)


def test_run_tasks_error_rows_and_resize(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["ok.png", "bad.png", "size.png", "tiny.png"])
    _images(dist, ["ok.png"], seed=5)
    (dist / "bad.png").write_bytes(b"\x89PNG garbage")
    save_image(torch.rand(3, 20, 12), dist / "size.png")
    save_image(torch.rand(3, 16, 16), dist / "tiny.png")
    tasks = scoring.paired_tasks(ref, dist).tasks
    for resize, expect_size_error in ((False, True), (True, False)):
        path = tmp_path / f"j{resize}.journal"
        with scoring.Journal.open(path, _job(tasks)) as j:
            scoring.run_tasks(tasks, "l2", j, batch_size=4, resize=resize)
        rows = {r["ref"]: r for r in scoring.read_journal(path)}
        assert rows["ok.png"]["error"] is None and rows["ok.png"]["value"] > 0
        assert "ImageReadError" in rows["bad.png"]["error"] and rows["bad.png"]["value"] is None
        assert ("differ in shape" in (rows["size.png"]["error"] or "")) == expect_size_error
        assert "12x20" in (rows["size.png"]["error"] or "12x20")


def test_metric_failure_is_a_row_not_a_crash(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["big.png"], size=40)
    _images(ref, ["small.png"], size=2, seed=1)
    _images(dist, ["big.png"], size=40, seed=2)
    _images(dist, ["small.png"], size=2, seed=3)
    tasks = scoring.paired_tasks(ref, dist).tasks
    path = tmp_path / "j.journal"
    with scoring.Journal.open(path, _job(tasks, "mmdpp")) as j:
        summary = scoring.run_tasks(tasks, "mmdpp", j)
    rows = {r["ref"]: r for r in scoring.read_journal(path)}
    assert summary.errors == 1 and rows["big.png"]["value"] > 0
    assert rows["small.png"]["error"]


def test_sharded_writers_merge_to_single_run(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    single = tmp_path / "single.csv"
    with scoring.Journal.open(scoring.journal_path(single), job) as j:
        scoring.run_tasks(tasks, "l2", j, batch_size=3)
    scoring.finalize(single, tasks, job, value_column="distance")
    sharded = tmp_path / "sharded.csv"
    world = 3
    for rank in range(world):
        with scoring.Journal.open(scoring.journal_path(sharded, rank, world), job) as j:
            scoring.run_tasks(scoring.shard(tasks, rank, world), "l2", j, batch_size=2)
    scoring.finalize(sharded, tasks, job, value_column="distance", world_size=world)
    assert sharded.read_text() == single.read_text()
    assert not list(tmp_path.glob("*.journal"))


def test_finalize_refuses_unfinished_job(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    out = tmp_path / "o.csv"
    with scoring.Journal.open(scoring.journal_path(out), job) as j:
        scoring.run_tasks(tasks[:2], "l2", j)
    with pytest.raises(ValueError, match="4 of 6 pairs have no row"):
        scoring.finalize(out, tasks, job, value_column="distance")
    assert not out.exists()


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    out.write_text("old")
    scoring.atomic_write_text(out, "new\n")
    assert out.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_resolve_device() -> None:
    assert scoring.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        scoring.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            scoring.resolve_device("cuda")


# --- file names in the CSV, file modes ------------------------------------------------------------------
AWKWARD = ["cr\rname.png", "nl\nname.png", "a,b.png", 'q"x.png', "=SUM(A1).png", "+1.png", "-2.png", "@x.png",
           "\ttab.png", "'quoted.png", "plain.png"]


def _unguard(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def test_csv_round_trips_awkward_names_and_guards_formulas(tmp_path: Path) -> None:
    import csv

    rows = [{"id": str(i), "ref": name, "dist": "d.png", "metric": "l2", "value": -0.5, "error": None}
            for i, name in enumerate(AWKWARD)]
    rows.append({"id": "e", "ref": "r.png", "dist": "=cmd", "metric": "l2", "value": None, "error": "-boom"})
    out = tmp_path / "s.csv"
    scoring.write_csv_atomic(out, rows, value_column="distance")
    with open(out, newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert [_unguard(r["ref"]) for r in back] == [*AWKWARD, "r.png"]
    # no text cell can start a formula, numbers are never prefixed
    for r in back:
        for key in ("ref", "dist", "metric", "error"):
            assert not r[key].startswith(("=", "+", "-", "@", "\t", "\r"))
    assert back[0]["distance"] == "-0.5"
    assert back[-1]["dist"] == "'=cmd" and back[-1]["error"] == "'-boom" and back[-1]["distance"] == ""
    assert out.read_bytes().count(b"\n") == len(rows) + 2  # one line per row, plus the one inside "nl\nname"


def test_non_utf8_file_names(tmp_path: Path) -> None:
    import os

    d = tmp_path / "imgs"
    d.mkdir()
    _images(d, ["a.png"])
    try:
        raw = os.path.join(os.fsencode(d), b"bad\xff.png")
        with open(raw, "wb") as f:
            f.write((d / "a.png").read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses a file name that is not UTF-8")
    tasks = scoring.all_pair_tasks(d)
    assert [(t.ref, t.dist) for t in tasks] == [("a.png", "bad\udcff.png")]
    job = _job(tasks)
    out = tmp_path / "s.csv"
    with scoring.Journal.open(scoring.journal_path(out), job) as j:
        summary = scoring.run_tasks(tasks, "l2", j)
    assert summary.scored == 1
    assert [r["dist"] for r in scoring.read_journal(scoring.journal_path(out), job, tasks)] == ["bad\udcff.png"]
    scoring.finalize(out, tasks, job, value_column="distance", keep_journals=True)
    assert out.read_text(encoding="utf-8").splitlines()[1].startswith("a.png,bad\\xff.png,l2,0.0,")
    with scoring.Journal.open(scoring.journal_path(out), job, resume=True, tasks=tasks) as j:
        assert set(j.done) == {tasks[0].id}  # the journal keeps the raw name exactly


def test_csv_and_journal_honour_the_umask(folder: Path, tmp_path: Path) -> None:
    import os
    import stat

    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    out = tmp_path / "s.csv"
    old = os.umask(0o027)
    try:
        with scoring.Journal.open(scoring.journal_path(out), job) as j:
            scoring.run_tasks(tasks, "l2", j)
        journal_mode = stat.S_IMODE(scoring.journal_path(out).stat().st_mode)
        scoring.finalize(out, tasks, job, value_column="distance")
    finally:
        os.umask(old)
    assert journal_mode == 0o640
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_a_non_finite_metric_value_becomes_an_error_row(folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from patchmmd.metrics import registry

    registry.metric_names()  # load the built-ins first
    spec = registry.MetricSpec("nan-test", lambda: (lambda x, y: torch.full((x.shape[0],), float("nan"))), "test")
    monkeypatch.setitem(registry._REGISTRY, "nan-test", spec)
    tasks = scoring.all_pair_tasks(folder)[:2]
    job = _job(tasks, "nan-test")
    path = tmp_path / "j.journal"
    with scoring.Journal.open(path, job) as j:
        summary = scoring.run_tasks(tasks, "nan-test", j)
    assert summary.errors == 2
    rows = scoring.read_journal(path, job, tasks)
    assert all(r["value"] is None and r["error"] == "the metric returned nan" for r in rows)


# --- journal rows are checked -------------------------------------------------------------------------
BAD_ROWS = [
    ("[]", "must be a JSON object"),
    ('{"x": 1}', "missing dist, error, id, metric, ref, value; unknown x"),
    ('{"ref": "a.png", "dist": "b.png", "metric": "l2", "value": 1.0, "error": null}', "missing id"),
    ('{"id": 7, "ref": "a.png", "dist": "b.png", "metric": "l2", "value": 1.0, "error": null}', "'id' must be a str"),
    ("ROW value=null", "'value' must be a number when 'error' is null"),
    ("ROW value=NaN", "must be a finite number"),
    ("ROW value=Infinity", "must be a finite number"),
    ('ROW value="0.5"', "'value' must be a number"),
    ('ROW value=0.5 error="boom"', "'value' must be null when there is an error"),
    ('ROW value=null error=""', "'error' must be null or a non-empty string"),
    ('ROW metric="mmdpp"', "the job's metric is 'l2'"),
    ('ROW id="0123456789abcdef"', "is not a pair of this job"),
    ('ROW ref="zzz.png"', "is the pair ('a.png', 'b.png')"),
]


def _edited_row(template: str, first: dict) -> str:
    if not template.startswith("ROW"):
        return template
    row = dict(first)
    for assignment in template.split()[1:]:
        key, value = assignment.split("=", 1)
        row[key] = json.loads(value)
    return json.dumps(row)


@pytest.mark.parametrize(("line", "message"), BAD_ROWS)
def test_journal_rows_of_the_wrong_shape_are_refused_with_their_line(
    folder: Path, tmp_path: Path, line: str, message: str
) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    path = tmp_path / "j.journal"
    with scoring.Journal.open(path, job) as j:
        scoring.run_tasks(tasks[:2], "l2", j, batch_size=1)
    lines = path.read_text().splitlines()
    lines.insert(2, _edited_row(line, json.loads(lines[1])))  # between two good rows: line 3 of 4
    path.write_text("\n".join(lines) + "\n")
    for read in (lambda: scoring.read_journal(path, job, tasks),
                 lambda: scoring.done_rows([path], job, tasks),
                 lambda: scoring.Journal.open(path, job, resume=True, tasks=tasks)):
        with pytest.raises(scoring.JournalError, match=r"j\.journal, line 3: ") as info:
            read()
        assert message in str(info.value)
    assert path.read_text().count("\n") == 4  # nothing cut off


def test_journal_accepts_a_hand_edited_finite_value(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    path = tmp_path / "j.journal"
    with scoring.Journal.open(path, job) as j:
        scoring.run_tasks(tasks[:1], "l2", j)
    lines = path.read_text().splitlines()
    lines[1] = _edited_row("ROW value=999", json.loads(lines[1]))
    path.write_text("\n".join(lines) + "\n")
    assert [r["value"] for r in scoring.read_journal(path, job, tasks)] == [999.0]


@pytest.mark.parametrize("header", ["[]", '{"format": "patchmmd-score-journal", "version": 1, "job": []}', "1"])
def test_journal_header_of_the_wrong_shape(folder: Path, tmp_path: Path, header: str) -> None:
    tasks = scoring.all_pair_tasks(folder)
    path = tmp_path / "j.journal"
    path.write_text(header + "\n")
    with pytest.raises(scoring.JobMismatchError, match="not a patchmmd score journal"):
        scoring.Journal.open(path, _job(tasks), resume=True)


# --- the lock -------------------------------------------------------------------------------------------
_HOLD = """
import sys, time
from patchmmd.scoring import OutputLock
lock = OutputLock.acquire(sys.argv[1], argv=["patchmmd", "score", "--out", sys.argv[1]])
print("locked", flush=True)
time.sleep(120)
"""


def test_output_lock_refuses_a_second_holder_and_survives_kill9(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    out = tmp_path / "s.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(scoring.OutputLockedError) as info:
            scoring.OutputLock.acquire(out)
        message = str(info.value)
        assert message.startswith(f"another run (pid {proc.pid} on {socket.gethostname()}, started ")
        assert message.endswith(f"patchmmd score --out {out}) is writing {out}; wait for it or stop it")
        assert info.value.holder["pid"] == proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert scoring.lock_path(out).exists()  # left behind by kill -9, but stale
    with scoring.OutputLock.acquire(out) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not scoring.lock_path(out).exists()


# --- the job runner -----------------------------------------------------------------------------------
def test_score_runner_runs_resumes_and_reports(tmp_path: Path) -> None:
    _images(tmp_path / "d", ["a.png", "b.png", "c.png"])
    (tmp_path / "d" / "notes.txt").write_text("x")
    out = tmp_path / "o" / "s.csv"
    job = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="l2")
    seen: list[tuple[int, int]] = []
    notices: list[object] = []
    result = scoring.ScoreRunner(job, device="cpu", progress=lambda d, t: seen.append((d, t)),
                                 notify=notices.append).run()
    assert (result.scored, result.errors, result.skipped, len(result.rows)) == (3, 0, 0, 3)
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    assert notices == [scoring.IgnoredFiles("folder", ["notes.txt"])]
    assert out.read_text().startswith("ref,dist,metric,distance,error\n") and scoring.find_journals(out) == []
    # the output rules, in the library's words (never a flag)
    with pytest.raises(scoring.OutputExistsError, match="resume the job or overwrite it") as info:
        scoring.ScoreRunner(job, device="cpu").run()
    assert "--" not in str(info.value)
    again = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="l2", resume=True)
    with pytest.raises(scoring.NothingToResumeError, match="nothing to resume"):
        scoring.ScoreRunner(again, device="cpu").run()
    first = out.read_text()
    over = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="l2", overwrite=True)
    assert scoring.ScoreRunner(over, device="cpu").run().scored == 3 and out.read_text() == first


def test_score_runner_errors_name_no_flags(tmp_path: Path) -> None:
    _images(tmp_path / "ref", ["a.png"])
    _images(tmp_path / "dist", ["b.png"])
    out = tmp_path / "s.csv"
    cases = [
        (scoring.ScoreJob((tmp_path / "nope", tmp_path / "dist"), output=out), scoring.FolderError, "not found"),
        (scoring.ScoreJob((tmp_path / "ref",), all_pairs=True, output=out), scoring.FolderError, "single image"),
        (scoring.ScoreJob((tmp_path / "ref", tmp_path / "dist"), output=out), scoring.NoPairsError, "no pairs"),
        (scoring.ScoreJob((tmp_path / "ref", tmp_path / "ref"), output=out, metric="mmdpp", options={"bogus": 1}),
         scoring.MetricSetupError, "bogus"),
        (scoring.ScoreJob((tmp_path / "ref", tmp_path / "ref"), output=tmp_path), scoring.OutputPathError, "folder"),
    ]
    for job, kind, message in cases:
        with pytest.raises(kind, match=message) as info:
            scoring.ScoreRunner(job, device="cpu").run()
        assert "--" not in str(info.value), info.value
    assert not out.exists()
    with pytest.raises(ValueError, match="exclude each other"):
        scoring.ScoreJob((tmp_path / "ref",), all_pairs=True, output=out, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="two folders"):
        scoring.ScoreJob((tmp_path / "ref",), output=out)


def test_scoring_errors_pickle_with_their_attributes(tmp_path: Path) -> None:
    import pickle

    e = scoring.RankFailedError(1, scoring.NoPairsError("no pairs", only_ref=["a"], only_dist=["b"]))
    back = pickle.loads(pickle.dumps(e))
    assert (back.rank, str(back), back.cause.only_ref, back.cause.only_dist) == (1, str(e), ["a"], ["b"])
    locked = pickle.loads(pickle.dumps(scoring.OutputLockedError(tmp_path / "s.csv", {"pid": 3})))
    assert locked.holder == {"pid": 3} and "pid 3" in str(locked)


def test_check_metric_probes_a_size_the_metric_accepts() -> None:
    pytest.importorskip("pytorch_msssim")
    assert callable(scoring.check_metric("ms-ssim", {}))  # refuses 64 px (needs > 160), takes 256 px
    assert callable(scoring.check_metric("ms-ssim", {"win_size": 21}))  # needs > 320 px: the images' fault
    for name, options, message in (("ssim", {"win_size": 4}, "odd"), ("ms-ssim", {"win_size": 12}, "odd"),
                                   ("l2", {"bogus": 1}, "bogus")):
        with pytest.raises(scoring.MetricSetupError, match=message):
            scoring.check_metric(name, options)


def test_journal_line_damaged_before_the_last_is_refused(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = _job(tasks)
    path = tmp_path / "out.csv.journal"
    with scoring.Journal.open(path, job) as j:
        scoring.run_tasks(tasks[:3], "l2", j, batch_size=1)
    lines = path.read_text().splitlines(keepends=True)
    damaged = "".join([*lines[:2], '{"id": "x", "ref\n', *lines[2:]])  # line 3 of 5
    path.write_text(damaged)
    with pytest.raises(scoring.JournalError, match=rf"{path.name}, line 3: not a JSON line"):
        scoring.read_journal(path, job)
    with pytest.raises(scoring.JournalError, match="line 3"):
        scoring.Journal.open(path, job, resume=True)
    assert path.read_text() == damaged  # the finished rows after it are kept
    path.write_text("".join(lines) + "{not json\n")  # a torn last line, even with its newline, is dropped
    assert len(scoring.read_journal(path, job)) == 3


def test_channel_mismatch_suggests_the_mode_not_resizing(tmp_path: Path) -> None:
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["a.png"])
    dist.mkdir()
    save_image(torch.rand(4, 16, 16), dist / "a.png")
    tasks = scoring.paired_tasks(ref, dist).tasks
    for resize in (False, True):
        path = tmp_path / f"j{resize}.journal"
        with scoring.Journal.open(path, _job(tasks)) as j:
            scoring.run_tasks(tasks, "l2", j, mode="keep", resize=resize)
        (row,) = scoring.read_journal(path)
        assert scoring.DEFAULT_MODE_HINT in row["error"] and "resize" not in row["error"], row["error"]


def test_an_unwritable_output_folder_is_an_error_not_a_lock_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    _images(tmp_path / "ref", ["a.png"])
    notices: list[scoring.Notice] = []
    job = scoring.ScoreJob((tmp_path / "ref", tmp_path / "ref"), output=tmp_path / "s.csv", metric="l2")
    for code in (errno.EACCES, errno.EPERM, errno.EROFS):
        def denied(cls: type, output: Path, argv: object = None, code: int = code) -> None:
            raise OSError(code, os.strerror(code), str(output) + ".lock")

        monkeypatch.setattr(scoring.OutputLock, "acquire", classmethod(denied))
        with pytest.raises(scoring.OutputPathError, match="cannot create the lock file") as info:
            scoring.ScoreRunner(job, device="cpu", notify=notices.append).run()
        assert info.value.reason == "cannot_create" and not notices

    def no_flock(cls: type, output: Path, argv: object = None) -> None:  # a file system without flock
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(scoring.OutputLock, "acquire", classmethod(no_flock))
    assert scoring.ScoreRunner(job, device="cpu", notify=notices.append).run().scored == 1
    assert [type(n) for n in notices] == [scoring.LockUnavailable]


def test_a_symbolic_link_at_the_lock_path_is_never_followed(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    out = tmp_path / "o" / "s.csv"
    out.parent.mkdir()
    scoring.lock_path(out).symlink_to(precious)  # planted by anyone who can write the output's folder
    with pytest.raises(OSError, match="symbolic link"):
        scoring.OutputLock.acquire(out)
    _images(tmp_path / "d", ["a.png", "b.png"])
    job = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="l2")
    with pytest.raises(scoring.OutputPathError, match=r"s\.csv\.lock: it is a symbolic link") as info:
        scoring.ScoreRunner(job, device="cpu").run()
    assert info.value.reason == "cannot_create"
    assert precious.read_text() == "keep me\n" and scoring.lock_path(out).is_symlink() and not out.exists()


@pytest.mark.parametrize("content", [b"", b'{"format": "patchmmd-score-jou'])
def test_a_journal_cut_before_its_header_ended_is_resumed(tmp_path: Path, content: bytes) -> None:
    # kill -9 (or a power cut) as the journal was created: not one complete line, no row lost
    _images(tmp_path / "d", ["a.png", "b.png", "c.png"])
    out = tmp_path / "s.csv"
    scoring.journal_path(out).write_bytes(content)
    tasks = scoring.all_pair_tasks(tmp_path / "d")
    assert scoring.read_journal(scoring.journal_path(out), _job(tasks)) == []
    job = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="l2", resume=True)
    result = scoring.ScoreRunner(job, device="cpu").run()
    assert (result.scored, result.skipped, len(result.rows)) == (3, 0, 3)
    assert out.read_text().count("\n") == 4 and scoring.find_journals(out) == []


def test_options_that_json_turns_into_lists_or_strings_match_their_own_journal(tmp_path: Path) -> None:
    # a tuple comes back from the journal as a list, a path as a string: the job must still be its own
    _images(tmp_path / "d", ["a.png", "b.png"])
    out = tmp_path / "s.csv"
    options = {"scale_weights": (1.0, 1.0)}
    job = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="mmdpp", options=options)
    result = scoring.ScoreRunner(job, device="cpu").run()
    assert (result.scored, len(result.rows)) == (1, 1)
    tasks = scoring.all_pair_tasks(tmp_path / "d")
    header = scoring.job_header("mmdpp", {"scale_weights": (1.0, 1.0), "w": Path("x.pt")}, tasks, mode="RGB",
                                resize=False)
    assert header["options"] == {"scale_weights": [1.0, 1.0], "w": "x.pt"}
    path = tmp_path / "j.journal"
    scoring.Journal.open(path, header).close()
    with scoring.Journal.open(path, header, resume=True) as j:  # resuming the same job is not refused
        assert j.done == {}
    with pytest.raises(TypeError, match="JSON values"):
        scoring.job_header("l2", {"x": object()}, tasks, mode="RGB", resize=False)


def test_a_journal_restarted_after_a_cut_header_is_never_a_symbolic_link(tmp_path: Path) -> None:
    _images(tmp_path / "d", ["a.png", "b.png"])
    other = tmp_path / "token.txt"
    other.write_bytes(b"s3cret")  # one line without its newline, like a journal cut before its header ended
    out = tmp_path / "s.csv"
    scoring.journal_path(out).symlink_to(other)
    tasks = scoring.all_pair_tasks(tmp_path / "d")
    with pytest.raises(OSError):
        scoring.Journal.open(scoring.journal_path(out), _job(tasks), resume=True)
    job = scoring.ScoreJob((tmp_path / "d",), all_pairs=True, output=out, metric="l2", resume=True)
    with pytest.raises(scoring.JournalOpenError):
        scoring.ScoreRunner(job, device="cpu").run()
    assert other.read_bytes() == b"s3cret"


def _unreadable(path: Path) -> None:
    """``chmod 000`` on ``path``; skip the test where that does not stop listing it (root)."""
    path.chmod(0)
    try:
        os.listdir(path)
    except PermissionError:
        return
    path.chmod(0o755)
    pytest.skip("this user lists folders without read permission (root)")


@pytest.mark.parametrize("where", ["sub", "."])
def test_a_folder_that_cannot_be_listed_is_an_error_not_fewer_images(folder: Path, tmp_path: Path,
                                                                       where: str) -> None:
    blocked = (folder / where).resolve()
    _unreadable(blocked)
    try:
        with pytest.raises(OSError, match=f"cannot list the folder {blocked}: Permission denied") as info:
            scoring.list_images(folder)
        assert isinstance(info.value.__cause__, PermissionError)
        with pytest.raises(OSError, match="cannot list the folder"):
            scoring.all_pair_tasks(folder)
        job = scoring.ScoreJob((folder,), all_pairs=True, output=tmp_path / "s.csv", metric="l2")
        with pytest.raises(scoring.FolderError, match=f"cannot list the folder {blocked}") as err:
            scoring.ScoreRunner(job, device="cpu").run()
        assert err.value.role == "folder"
        assert not (tmp_path / "s.csv").exists() and scoring.find_journals(tmp_path / "s.csv") == []
    finally:
        blocked.chmod(0o755)


def test_a_folder_that_cannot_be_listed_is_an_error_even_as_root(folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """As the test above, with the listing failing where it does for a normal user (root reads any folder)."""
    blocked = folder / "sub"
    scandir = os.scandir

    def refusing(path: object = ".") -> object:
        if Path(os.fsdecode(path)) == blocked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]
        return scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(OSError, match=f"cannot list the folder {blocked}: Permission denied"):
        scoring.list_images(folder)
    job = scoring.ScoreJob((folder, folder), output=tmp_path / "s.csv", metric="l2")
    with pytest.raises(scoring.FolderError, match=f"cannot list the folder {blocked}") as err:
        scoring.ScoreRunner(job, device="cpu").run()
    assert err.value.role == "ref"


def test_score_runner_retries_error_rows_and_reports_an_interruption(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "d"
    _images(d, ["a.png", "b.png", "c.png"])
    out = tmp_path / "s.csv"
    with pytest.raises(ValueError, match="retry_errors goes with resume"):
        scoring.ScoreJob((d,), all_pairs=True, output=out, metric="l2", retry_errors=True)
    good = (d / "b.png").read_bytes()
    (d / "b.png").write_bytes(b"junk")
    job = scoring.ScoreJob((d,), all_pairs=True, output=out, metric="l2")
    # Ctrl-C as the CSV is written: every row is in the journal, which is kept
    monkeypatch.setattr("patchmmd.scoring.runner.write_output_atomic", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(scoring.JobInterrupted) as info:
        scoring.ScoreRunner(job, device="cpu").run()
    assert (info.value.signal, info.value.saved, info.value.total) == ("SIGINT", 3, 3)
    journal = scoring.journal_path(out)
    assert [r["error"] is None for r in scoring.read_journal(journal)].count(False) == 2  # (a, b) and (b, c)
    monkeypatch.undo()
    (d / "b.png").write_bytes(good)
    resume = scoring.ScoreJob((d,), all_pairs=True, output=out, metric="l2", resume=True, retry_errors=True)
    result = scoring.ScoreRunner(resume, device="cpu").run()
    assert (result.retried, result.skipped, result.scored, result.errors, result.error_rows) == (2, 1, 2, 0, 0)


def test_drop_error_rows_keeps_the_values_and_cuts_a_torn_line(folder: Path, tmp_path: Path) -> None:
    tasks = scoring.all_pair_tasks(folder)
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False)
    (folder / "a.png").write_bytes(b"junk")  # 3 of the 6 pairs fail
    path = tmp_path / "s.csv.journal"
    with scoring.Journal.open(path, job) as j:
        scoring.run_tasks(tasks, "l2", j)
    with open(path, "ab") as f:
        f.write(b'{"id": "torn')
    rows = scoring.read_journal(path, job, tasks)
    assert scoring.drop_error_rows(path, job, tasks) == 3
    assert scoring.read_journal(path, job, tasks) == [r for r in rows if r["error"] is None]
    assert path.read_bytes().endswith(b"}\n") and scoring.drop_error_rows(path, job, tasks) == 0
    with scoring.Journal.open(path, job, resume=True, tasks=tasks) as j:  # resumable as any journal
        assert len(j.done) == 3


def test_json_output_has_the_csv_fields_with_names_as_written(tmp_path: Path) -> None:
    import json

    rows = [{"id": str(i), "ref": name, "dist": "d.png", "metric": "l2", "value": 0.25, "error": None}
            for i, name in enumerate(AWKWARD)]
    rows += [{"id": "e", "ref": "r.png", "dist": "=cmd", "metric": "l2", "value": None, "error": "-boom"},
             {"id": "n", "ref": "bad\udcff.png", "dist": "x.png", "metric": "ssim", "value": float("nan"),
              "error": None}]
    out = tmp_path / "s.JSON"  # the suffix decides, in any case
    scoring.write_output_atomic(out, rows, value_column="score")
    back = json.loads(out.read_text(encoding="utf-8"))  # strict JSON: a NaN would not parse in other readers
    assert "NaN" not in out.read_text(encoding="utf-8")
    assert [r["ref"] for r in back] == [*AWKWARD, "r.png", "bad\\xff.png"]  # no formula guard, readable bytes
    assert back[0] == {"ref": AWKWARD[0], "dist": "d.png", "metric": "l2", "score": 0.25, "error": None}
    assert back[-2] == {"ref": "r.png", "dist": "=cmd", "metric": "l2", "score": None, "error": "-boom"}
    assert back[-1]["score"] is None and back[-1]["error"] is None
    csv_out = tmp_path / "s.csv"
    scoring.write_output_atomic(csv_out, rows, value_column="score")
    assert csv_out.read_text(encoding="utf-8").startswith("ref,dist,metric,score,error\n")
