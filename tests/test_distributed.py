"""torch.distributed: launch detection, devices and backends, sharded scoring under torchrun (2 CPU
processes, gloo, loopback only) against a single process, killing a rank and resuming, and DDP training
with the MMD++ loss keeping the ranks' parameters identical."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd import scoring
from patchmmd.io import save_image
from patchmmd.scoring import distributed

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddp_train.py"

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find a rank's process")


# --- helpers ------------------------------------------------------------------------------------------
def _images(folder: Path, n: int, *, size: int = 32, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        save_image(torch.rand(3, size, size, generator=g), folder / f"im{i:02d}.png")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="",
               PATCHMMD_DIST_TIMEOUT="90", PYTHONUNBUFFERED="1")
    return env


def _torchrun(*args: str | Path, nproc: int = 2) -> list[str]:
    """torchrun on one node, rendezvous and gloo on 127.0.0.1 only."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "--local_addr=127.0.0.1",
            *map(str, args)]


def _score_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["score", "--all-pairs", str(folder), "--out", str(out), "--device", "cpu", *extra]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))



def _same_rows(a: Path, b: Path, tol: float = 1e-6) -> None:
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        value = next(k for k in x if k in ("distance", "score"))
        assert (x["ref"], x["dist"], x["metric"], x["error"]) == (y["ref"], y["dist"], y["metric"], y["error"])
        if x[value] or y[value]:
            assert float(x[value]) == pytest.approx(float(y[value]), rel=tol, abs=tol)


# --- launch detection, devices, backends (no processes) -----------------------------------------------
def test_detect() -> None:
    assert distributed.detect({}) == distributed.DistEnv()
    env = distributed.detect({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (env.rank, env.world_size, env.local_rank, env.is_distributed, env.is_main) == (5, 8, 1, True, False)
    assert distributed.detect({"WORLD_SIZE": "2", "RANK": "1"}).local_rank == 1
    for bad, message in (({"WORLD_SIZE": "two"}, "not an integer"), ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK must"),
                         ({"WORLD_SIZE": "0"}, "at least 1"),
                         ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK")):
        with pytest.raises(ValueError, match=message):
            distributed.detect(bad)


def test_devices_backends_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    two = distributed.DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert distributed.device_for("cpu", two) == torch.device("cpu")
    assert distributed.choose_backend("cpu") == "gloo"
    with pytest.raises(ValueError, match="device must be"):
        distributed.device_for("gpu0", two)
    if torch.cuda.is_available():
        assert distributed.choose_backend("cuda:0") == "nccl"
        if torch.cuda.device_count() >= 2:
            assert distributed.device_for("auto", two) == torch.device("cuda", 1)
    else:
        assert distributed.device_for("auto", two) == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.device_for("cuda", two)
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.default_timeout() == timedelta(hours=1)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.default_timeout() == timedelta(seconds=90)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="positive number"):
        distributed.default_timeout()


def test_single_process_collectives_are_trivial() -> None:
    with distributed.process_group("cpu", env=distributed.DistEnv()) as (env, dev):
        assert not distributed.is_initialized()
        distributed.barrier()
        assert distributed.all_gather_object(3) == [3]
        assert distributed.same_on_all_ranks(torch.ones(2), torch.zeros(()))
        assert dev == torch.device("cpu") and env.world_size == 1


def test_bad_launch_environment_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _images(tmp_path / "d", 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "7")
    r = invoke(*_score_args(tmp_path / "d", tmp_path / "s.csv"))
    assert r.exit_code == 2 and "bad launch environment" in r.output and "RANK must be" in r.output


# --- resuming with another number of writers (the engine, in one process) ----------------------------
def write_journals(folder: Path, out: Path, writers: int, done: Callable[[int], int | None] = lambda r: None) -> None:
    """The journals an all-pairs ``l2`` job on ``folder`` with ``writers`` writers leaves beside ``out``: writer
    ``r`` having scored the first ``done(r)`` pairs of its share (``None``: all of them)."""
    tasks = scoring.all_pair_tasks(folder)
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="all-pairs",
                             folder=str(folder.resolve()))
    for rank in range(writers):
        with scoring.Journal.open(scoring.journal_path(out, rank, writers), job) as j:
            scoring.run_tasks(scoring.shard(tasks, rank, writers)[: done(rank)], "l2", j)


def test_resume_with_another_world_size(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _images(d, 7, size=16)
    (d / "broken.png").write_bytes(b"junk")
    ref = tmp_path / "ref.csv"
    assert invoke(*_score_args(d, ref, "-m", "l2", "-q")).exit_code == 0
    # a 3-writer job that died part-way: each writer finished only some of its share
    out = tmp_path / "s.csv"
    write_journals(d, out, 3, lambda rank: 2 + rank)
    assert [p.name for p in scoring.find_journals(out)] == [f"s.csv.rank{r}-of-3.journal" for r in range(3)]
    r = invoke(*_score_args(d, out, "-m", "l2"))
    assert r.exit_code == 2 and "rank0-of-3.journal" in r.output and "--resume" in r.output
    # one process takes over what is left
    r = invoke(*_score_args(d, out, "-m", "l2", "--resume"))
    assert r.exit_code == 0, r.output
    assert "9 from the journal" in r.output
    assert out.read_text() == ref.read_text()
    assert scoring.find_journals(out) == []


def test_overwrite_removes_every_journal(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _images(d, 3, size=16)
    out = tmp_path / "s.csv"
    for rank in range(2):
        scoring.journal_path(out, rank, 2).write_text("stale\n")
    r = invoke(*_score_args(d, out, "-m", "l2", "--resume"))
    assert r.exit_code == 2 and "cannot resume" in r.output
    r = invoke(*_score_args(d, out, "-m", "l2", "--overwrite"))
    assert r.exit_code == 0, r.output
    assert scoring.find_journals(out) == [] and len(_rows(out)) == 3


# --- real processes: torchrun, 2 CPU ranks, gloo on loopback ------------------------------------------
@needs_gloo
def test_torchrun_score_matches_single_process(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    _images(d, 6)  # 15 pairs, + 6 pairs with an unreadable file
    (d / "broken.png").write_bytes(b"junk")
    (d / "notes.txt").write_text("not an image")
    single = tmp_path / "single.csv"
    r = invoke(*_score_args(d, single, "-m", "mmdpp", "-b", "4", "-q"))
    assert r.exit_code == 0, r.output
    out = tmp_path / "sharded.csv"
    p = subprocess.run(_torchrun("-m", "patchmmd", *_score_args(d, out, "-m", "mmdpp", "-b", "3")),
                       capture_output=True, text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    _same_rows(out, single)
    assert out.read_text() == single.read_text()  # exact by design: a pair's value ignores its batch
    assert scoring.find_journals(out) == []
    assert "wrote 21 rows" in p.stderr and "by 2 processes" in p.stderr
    assert p.stderr.count("without an image suffix ignored") == 1  # rank 0 alone speaks
    assert p.stderr.count("wrote 21 rows") == 1


@needs_gloo
def test_torchrun_score_refuses_a_locked_output(tmp_path: Path) -> None:
    """Rank 0 takes the output's lock; when another run holds it, every rank stops before any journal."""
    d = tmp_path / "imgs"
    _images(d, 3, size=16)
    out = tmp_path / "s.csv"
    with scoring.OutputLock.acquire(out, argv=["patchmmd", "score"]):
        p = subprocess.run(_torchrun("-m", "patchmmd", *_score_args(d, out, "-m", "l2", "--resume")),
                           capture_output=True, text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode != 0, p.stdout + p.stderr
    assert p.stderr.count(f"another run (pid {os.getpid()} on ") == 1, p.stderr  # rank 0 alone speaks
    assert "patchmmd/cli" not in p.stderr and "patchmmd/scoring" not in p.stderr  # no traceback of ours
    assert scoring.find_journals(out) == [] and not out.exists()

def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def _rows_in(journal: Path) -> int:
    return max(journal.read_bytes().count(b"\n") - 1, 0) if journal.exists() else 0


@needs_gloo
@needs_proc
def test_torchrun_kill_one_rank_then_resume(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    _images(d, 12, size=24)  # 66 pairs
    (d / "broken.png").write_bytes(b"junk")  # + 12 error rows
    ref = tmp_path / "reference.csv"
    assert invoke(*_score_args(d, ref, "-m", "l2", "-b", "2", "-q")).exit_code == 0
    out = tmp_path / "scores.csv"
    args = _score_args(d, out, "-m", "l2", "-b", "2", "-q")
    launcher = subprocess.Popen(_torchrun("-m", "patchmmd", *args, "--throttle", "0.1"), env=_env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim_journal = scoring.journal_path(out, 1, 2)
    t0 = time.monotonic()
    while _rows_in(victim_journal) < 4:
        if launcher.poll() is not None:
            pytest.fail(f"the job ended before it could be interrupted: {launcher.communicate()}")
        if time.monotonic() - t0 > 120:
            launcher.kill()
            pytest.fail("rank 1 wrote no rows in time")
        time.sleep(0.05)
    victim = _rank_pid(launcher.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert not out.exists()  # never a half-written output
    journals = scoring.find_journals(out)
    assert [p.name for p in journals] == ["scores.csv.rank0-of-2.journal", "scores.csv.rank1-of-2.journal"]
    done = sum(map(_rows_in, journals))
    assert 4 <= done < 78
    assert "stopped (SIGTERM)" in err or "lost contact" in err, err  # the surviving rank says why it stops
    p = subprocess.run(_torchrun("-m", "patchmmd", *args[:-1], "--resume"), env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{78 - done} scored now by 2 processes, {done} from the journal" in p.stderr
    assert out.read_text() == ref.read_text()
    assert scoring.find_journals(out) == []


@needs_gloo
def test_a_lost_rank_is_reported_without_torchrun(tmp_path: Path) -> None:
    """Ranks started by hand (as by srun): when one dies, the other stops with a clear message."""
    d = tmp_path / "imgs"
    _images(d, 8, size=16)  # 28 pairs
    out = tmp_path / "s.csv"
    env = _env() | {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "patchmmd", *_score_args(d, out, "-m", "l2", "-b", "1", "--throttle", "0.05")]
    procs = [subprocess.Popen(cmd, env=env | {"RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        t0 = time.monotonic()
        while _rows_in(scoring.journal_path(out, 1, 2)) < 2:
            assert procs[1].poll() is None, procs[1].communicate()
            assert time.monotonic() - t0 < 120, "rank 1 wrote no rows in time"
            time.sleep(0.05)
        procs[1].kill()
        procs[1].wait(timeout=30)
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 1, err
    assert "rank 0: lost contact with the other ranks" in err and "--resume" in err
    assert not out.exists() and len(scoring.find_journals(out)) == 2


def _listening_addresses(port: int) -> list[str]:
    """The local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:
                    found.append(addr)
    return found


@needs_gloo
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket tables")
def test_rendezvous_of_hand_started_ranks_listens_on_loopback_only() -> None:
    port = _free_port()
    env = distributed.DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    environ = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    store = distributed.loopback_store(env, timedelta(seconds=10), environ)
    try:
        store.set("k", "v")
        assert store.get("k") == b"v"
        assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1, and nothing on 0.0.0.0 or ::
    finally:
        del store
    # PyTorch's own env:// server, for comparison, listens on every interface
    plain = torch.distributed.TCPStore("127.0.0.1", (p2 := _free_port()), 1, True, timedelta(seconds=10),
                                       wait_for_workers=False)
    try:
        assert any(a.strip("0") == "" for a in _listening_addresses(p2))
    finally:
        del plain


def test_rendezvous_store_is_left_to_torchrun_and_to_other_hosts() -> None:
    env = distributed.DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    t = timedelta(seconds=1)
    assert distributed.loopback_store(env, t, {"MASTER_ADDR": "node1", "MASTER_PORT": "29500"}) is None
    assert distributed.loopback_store(env, t, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                                              "TORCHELASTIC_USE_AGENT_STORE": "True"}) is None
    for bad in ("", "x", "0", "70000"):
        with pytest.raises(ValueError, match="MASTER_PORT"):
            distributed.loopback_store(env, t, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": bad})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:  # a port someone else listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        with pytest.raises(ValueError, match="cannot listen for the rendezvous"):
            distributed.loopback_store(env, t, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})


@needs_gloo
def test_ddp_example_keeps_ranks_identical(tmp_path: Path) -> None:
    sums = tmp_path / "sums"
    p = subprocess.run(_torchrun(EXAMPLE, "--steps", "3", "--image-size", "32", "--images", "16",
                                 "--batch-size", "4", "--device", "cpu", "--checksum-dir", sums),
                       capture_output=True, text=True, timeout=150, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    digests = [(sums / f"rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    assert "loss features identical on every rank" in p.stderr
    assert "done: 3 steps; parameters identical on all 2 rank(s)" in p.stderr
    # the parameters did move
    assert (sums / "rank0-init.txt").read_text() == (sums / "rank1-init.txt").read_text() != digests[0]


def test_resume_on_a_fresh_job_starts_it(tmp_path: Path) -> None:
    """Batch scripts may always pass --resume: with nothing to continue, it starts the job."""
    d = tmp_path / "d"
    _images(d, 3, size=16)
    out = tmp_path / "s.csv"
    r = invoke(*_score_args(d, out, "-m", "l2", "--resume"))
    assert r.exit_code == 0, r.output
    assert len(_rows(out)) == 3 and scoring.find_journals(out) == []
    r = invoke(*_score_args(d, out, "-m", "l2", "--resume"))
    assert r.exit_code == 2 and "nothing to resume" in r.output
