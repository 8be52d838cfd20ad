"""``patchmmd score`` under a launch: the launch environment's rules, the timeout, the rendezvous store's error,
ranks that built different jobs, and a rank that lacks its GPU."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd import scoring
from patchmmd.scoring import distributed
from test_distributed import _env, _free_port, _images, _score_args, needs_gloo

_LAUNCH = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _LAUNCH:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- the launch environment ---------------------------------------------------------------------------
def test_a_world_size_without_a_rank_is_refused() -> None:
    """Every process would take itself for rank 0 and wait for the others until the timeout."""
    for environ in ({"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": " "}, {"WORLD_SIZE": "3", "LOCAL_RANK": "1"}):
        with pytest.raises(ValueError, match="RANK is not set"):
            distributed.detect(environ)
    assert distributed.detect({"WORLD_SIZE": "1"}) == distributed.DistEnv()  # one process needs no rank
    assert distributed.detect({"WORLD_SIZE": "2", "RANK": "0"}).is_main


@pytest.mark.parametrize("local_world_size", ["0", "-1", "3"])
def test_local_world_size_must_fit_the_world_size(local_world_size: str) -> None:
    with pytest.raises(ValueError, match=r"LOCAL_WORLD_SIZE must be in \[1, WORLD_SIZE=2\]"):
        distributed.detect({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": local_world_size})


def test_score_without_a_rank_is_a_usage_error(tmp_path: Path, no_launch: pytest.MonkeyPatch) -> None:
    _images(tmp_path / "d", 2, size=16)
    no_launch.setenv("WORLD_SIZE", "2")
    r = invoke(*_score_args(tmp_path / "d", tmp_path / "s.csv", "-m", "l2"))
    assert r.exit_code == 2, r.output
    assert "bad launch environment" in r.output and "RANK is not set" in r.output
    assert not (tmp_path / "s.csv").exists() and scoring.find_journals(tmp_path / "s.csv") == []


@pytest.mark.parametrize("text", ["inf", "1e30", "1e-9", "-5", "nan"])
def test_a_timeout_that_is_no_finite_positive_duration_is_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(distributed.TIMEOUT_ENV, text)
    with pytest.raises(ValueError, match="expected a positive"):
        distributed.default_timeout()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "0.5")
    assert distributed.default_timeout() == timedelta(seconds=0.5)


# --- the rendezvous store -----------------------------------------------------------------------------
@needs_gloo
def test_a_rendezvous_no_rank_joins_reports_the_timeout_and_frees_the_port() -> None:
    """The store closes its listening socket itself when it fails: closing it again hid the error behind
    ``[Errno 9] Bad file descriptor`` (or could close another file that took the descriptor's number)."""
    port = _free_port()
    env = distributed.DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    environ = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    with pytest.raises(RuntimeError, match=r"(?i)client|time"):  # PyTorch's DistStoreError: no rank came
        distributed.loopback_store(env, timedelta(seconds=1), environ)
    with socket.create_server(("127.0.0.1", port)):  # the listening socket is closed
        pass


# --- ranks that built different jobs ------------------------------------------------------------------
def run_two_ranks(args: list[list[str]], cwd: list[Path], *, timeout: str = "60",
                  wait: float = 120) -> tuple[list[int], list[str]]:
    """Two ranks of ``python -m patchmmd ARGS[r]`` started by hand (as by srun), rank ``r`` in ``cwd[r]``, each
    waiting ``timeout`` seconds for the other: their exit statuses and stderr (killed after ``wait`` seconds)."""
    env = _env() | {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                    "PATCHMMD_DIST_TIMEOUT": timeout}
    procs = [subprocess.Popen([sys.executable, "-m", "patchmmd", *args[r]], env=env | {"RANK": str(r),
                              "LOCAL_RANK": str(r)}, cwd=cwd[r], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    try:
        errs = [p.communicate(timeout=wait)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], errs


@needs_gloo
def test_ranks_that_list_different_files_refuse_to_start(tmp_path: Path) -> None:
    """Each rank lists the folders itself: ranks that see other files (inputs not on a shared file system) must
    stop before scoring, not leave journals of two jobs that no merge or resume accepts."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    _images(nodes[0] / "imgs", 3, size=16)
    _images(nodes[1] / "imgs", 4, size=16)  # one image more on the second "node"
    out = tmp_path / "shared" / "s.csv"
    args = _score_args(Path("imgs"), out, "-m", "l2", "-q")
    codes, errs = run_two_ranks([args, args], nodes)
    assert codes == [2, 2], errs
    assert "the ranks built different jobs" in errs[0] and "num_tasks: rank 0 3, rank 1 6" in errs[0], errs[0]
    assert "different jobs" not in errs[1]  # rank 0 alone says it
    assert not out.exists() and scoring.find_journals(out) == []


# --- a rank that lacks its GPU ------------------------------------------------------------------------
def _cuda_args(tmp_path: Path) -> list[str]:
    return ["score", "--all-pairs", str(tmp_path / "d"), "--out", str(tmp_path / "s.csv"), "-m", "l2",
            "--device", "cuda"]


def test_a_rank_without_its_gpu_says_why_it_stops(tmp_path: Path, no_launch: pytest.MonkeyPatch) -> None:
    """More processes on a node than GPUs: rank 0 has its GPU and cannot tell, so the rank says it itself."""
    _images(tmp_path / "d", 2, size=16)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        no_launch.setenv(name, value)
    no_launch.setattr(torch.cuda, "is_available", lambda: True)
    no_launch.setattr(torch.cuda, "device_count", lambda: 1)
    r = invoke(*_cuda_args(tmp_path))
    assert r.exit_code == 2, r.output
    assert "rank 1:" in r.output and "LOCAL_RANK=1" in r.output and "--device" in r.output, r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_no_rank_has_is_said_by_rank_0_alone(tmp_path: Path, no_launch: pytest.MonkeyPatch) -> None:
    _images(tmp_path / "d", 2, size=16)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        no_launch.setenv(name, value)
    r = invoke(*_cuda_args(tmp_path))
    assert r.exit_code == 2 and r.output.strip() == "", r.output


@pytest.mark.parametrize("environ", [{"PATCHMMD_DIST_TIMEOUT": "soon"},
                                     {"LOCAL_WORLD_SIZE": "1", "MASTER_PORT": "29500"}])  # no MASTER_ADDR, 2 nodes
def test_the_other_launch_settings_are_usage_errors_too(environ: dict[str, str], tmp_path: Path,
                                                        no_launch: pytest.MonkeyPatch) -> None:
    """A bad timeout or a missing MASTER_ADDR is a bad launch environment like a bad RANK (exit status 2)."""
    _images(tmp_path / "d", 2, size=16)
    for name, value in ({"WORLD_SIZE": "2", "RANK": "0"} | environ).items():
        no_launch.setenv(name, value)
    r = invoke(*_score_args(tmp_path / "d", tmp_path / "s.csv", "-m", "l2"))
    assert r.exit_code == 2, r.output
    assert "bad launch environment" in r.output
    assert not (tmp_path / "s.csv").exists() and scoring.find_journals(tmp_path / "s.csv") == []
