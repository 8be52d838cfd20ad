"""``patchmmd score`` under a launch, third audit: ranks started by hand whose peers never come (the rendezvous
times out: one line, status 1, nothing touched) and a launch without ``MASTER_PORT`` (a usage error)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd import scoring
from patchmmd.scoring import distributed
from test_distributed import _env, _free_port, _images, _score_args, needs_gloo
from test_distributed_audit import no_launch  # noqa: F401  (a fixture)


# --- a rank that never starts ---------------------------------------------------------------------------
def _half_job(folder: Path, out: Path) -> bytes:
    """The journal of a single process's l2 job on ``folder`` that stopped after 2 pairs (its bytes)."""
    tasks = scoring.all_pair_tasks(folder)
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="all-pairs",
                             folder=str(folder.resolve()))
    with scoring.Journal.open(scoring.journal_path(out), job) as j:
        scoring.run_tasks(tasks[:2], "l2", j)
    return scoring.journal_path(out).read_bytes()


@needs_gloo
def test_a_rank_whose_peers_never_start_says_so_in_one_line(tmp_path: Path) -> None:
    """Rank 0 alone (its store waits for the others) and rank 1 alone (no store to reach): each waits the timeout,
    then ends with one line naming the rendezvous, WORLD_SIZE, the timeout and its variable, and that nothing was
    touched (status 1). It ended in PyTorch's own words (``Timed out after 3 seconds waiting for clients``)."""
    d = tmp_path / "imgs"
    _images(d, 3, size=16)
    procs, outs, journals = [], [], []
    for rank in (0, 1):  # two separate launches, one rank each
        out = tmp_path / f"launch{rank}" / "s.csv"
        out.parent.mkdir()
        outs.append(out)
        journals.append(_half_job(d, out))
        env = _env() | {"WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port()), "PATCHMMD_DIST_TIMEOUT": "2"}
        procs.append(subprocess.Popen([sys.executable, "-m", "patchmmd", *_score_args(d, out, "-m", "l2", "--resume")],
                                      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=90)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, err, out, journal) in enumerate(zip(procs, errs, outs, journals, strict=True)):
        assert p.returncode == 1, err
        ours = [line for line in err.splitlines() if line.startswith("patchmmd: error:")]
        assert len(ours) == 1 and err.rstrip().endswith(ours[0]), err
        assert f"rank {rank}: not all 2 ranks (WORLD_SIZE) joined the rendezvous at 127.0.0.1:" in ours[0], err
        assert "within 2 s (PATCHMMD_DIST_TIMEOUT)" in ours[0] and "MASTER_PORT" in ours[0], err
        assert "nothing was scored or written" in ours[0], err
        assert "Traceback" not in err and "lost contact" not in err
        # the earlier run's rows are untouched; no lock, no CSV, no journal of this launch
        assert scoring.find_journals(out) == [scoring.journal_path(out)]
        assert scoring.journal_path(out).read_bytes() == journal
        assert not out.exists() and not scoring.lock_path(out).exists()


def test_a_process_group_that_cannot_be_set_up_is_a_rendezvous_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """init's failures are one RendezvousError (a PeerLostError): a timeout says who was expected, another failure
    (gloo cannot connect) says what failed, without claiming a timeout."""
    import torch.distributed as dist

    two = distributed.DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2)
    monkeypatch.setenv("MASTER_ADDR", "node7.invalid")  # env:// as it is (no loopback store)
    monkeypatch.setenv("MASTER_PORT", "29517")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    errors = [dist.DistStoreError("wait timeout after 5000ms, keys: /0//cpu//0/2"),
              RuntimeError("Gloo connectFullMesh failed with [pair.h:311] Connect timeout [none]\nmore")]

    def fail(**kwargs: object) -> None:
        raise errors.pop(0)

    monkeypatch.setattr(dist, "init_process_group", fail)
    with pytest.raises(distributed.RendezvousError, match=r"rank 1: not all 2 ranks \(WORLD_SIZE\) joined the "
                       r"rendezvous at node7.invalid:29517 .* within 3 s \(PATCHMMD_DIST_TIMEOUT\); start every "
                       r"rank, 0 to 1 \(RANK\)") as e:
        distributed.init("cpu", two, timeout=timedelta(seconds=3))
    assert isinstance(e.value, distributed.PeerLostError)
    with pytest.raises(distributed.RendezvousError) as e:
        distributed.init("cpu", two, timeout=timedelta(seconds=3))
    assert str(e.value) == ("rank 1: could not set up the gloo process group through the rendezvous at "
                            "node7.invalid:29517 (MASTER_ADDR:MASTER_PORT): RuntimeError: Gloo connectFullMesh "
                            "failed with [pair.h:311] Connect timeout [none]")
    assert distributed._collective_device is None


# --- MASTER_PORT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("environ", [{}, {"MASTER_ADDR": "127.0.0.1"}, {"MASTER_ADDR": "node7.invalid"},
                                     {"MASTER_PORT": "http"}, {"MASTER_PORT": "70000"}])
def test_a_launch_without_a_master_port_is_a_usage_error(environ: dict[str, str], tmp_path: Path,
                                                         no_launch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """It was a failure (status 1) found only when the ranks met: ``patchmmd: error: Error initializing
    torch.distributed using env:// rendezvous: environment variable MASTER_PORT expected, but not set``."""
    _images(tmp_path / "d", 2, size=16)
    for name, value in ({"WORLD_SIZE": "2", "RANK": "1"} | environ).items():
        no_launch.setenv(name, value)
    out = tmp_path / "s.csv"
    r = invoke(*_score_args(tmp_path / "d", out, "-m", "l2"))
    assert r.exit_code == 2, r.output
    assert "bad launch environment: MASTER_PORT" in r.output, r.output
    assert ("is not set" in r.output) == ("MASTER_PORT" not in environ), r.output
    assert not out.exists() and scoring.find_journals(out) == [] and not scoring.lock_path(out).exists()
    assert not torch.distributed.is_initialized()


def test_the_rendezvous_port() -> None:
    assert distributed.rendezvous_port({"MASTER_PORT": " 29500 "}) == 29500
    for environ in ({}, {"MASTER_PORT": ""}, {"MASTER_PORT": "0"}, {"MASTER_PORT": "-1"}, {"MASTER_PORT": "x"}):
        with pytest.raises(ValueError, match="MASTER_PORT"):
            distributed.rendezvous_port(environ)


# --- a rank lost once the CSV is written ------------------------------------------------------------------
_SLOW_FINALIZE = """
import sys, time
import patchmmd.scoring.runner as runner
from patchmmd.cli import main
written = runner.finalize
def finalize(*args, **kwargs):
    rows = written(*args, **kwargs)
    time.sleep(4)  # the CSV is written and the journals removed: time for the test to kill rank 1
    return rows
runner.finalize = finalize
sys.argv[0] = "patchmmd"
main()
"""


@needs_gloo
def test_a_rank_lost_after_rank_0_wrote_the_csv_does_not_fail_the_job(tmp_path: Path) -> None:
    """Rank 0 said ``lost contact ...; rerun the same command with --resume`` (status 1) although the CSV was
    complete and the journals gone; the rerun then said ``nothing to resume``."""
    d = tmp_path / "imgs"
    _images(d, 4, size=16)
    out = tmp_path / "s.csv"
    reference = tmp_path / "ref.csv"
    assert invoke(*_score_args(d, reference, "-m", "l2", "-q")).exit_code == 0
    env = _env() | {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                    "PATCHMMD_DIST_TIMEOUT": "30"}
    args = _score_args(d, out, "-m", "l2")
    procs = [subprocess.Popen([sys.executable, "-c", _SLOW_FINALIZE, *args] if rank == 0 else
                              [sys.executable, "-m", "patchmmd", *args], env=env | {"RANK": str(rank)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        t0 = time.monotonic()
        while not out.exists():
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() - t0 < 60, "no CSV in time"
            time.sleep(0.02)
        procs[1].kill()  # waiting for rank 0 at the final meeting
        err = procs[0].communicate(timeout=60)[1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 0, err
    assert "wrote 6 rows" in err and "lost contact" not in err, err
    assert out.read_text() == reference.read_text()
    assert scoring.find_journals(out) == [] and not scoring.lock_path(out).exists()
