"""The scoring engine: job order and ids, sharding, the journal's crash tolerance, atomic output."""

from __future__ import annotations

import json
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
