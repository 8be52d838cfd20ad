"""The benchmark scripts and the DDP example run their code paths, measure what they say, and stop clearly on bad
arguments. Small sizes, one or two rounds: these check what is measured and how, never how fast anything is."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from test_benchmarks import _load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddp() -> ModuleType:
    return _load("ddp_train", ROOT / "examples")


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    """``main(['--threads', ...])`` sets this process's thread count: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _fake_methods(calls: list[str]):
    """Three methods (``lpips-alex`` first) that record each call and return a per-image value with a gradient."""

    def make(name: str):
        def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return (x - y).pow(2).flatten(1).sum(1)

        return fn

    return lambda device, size, with_exact: {k: make(k) for k in ("lpips-alex", "b", "c")}


# ------------------------------------------------------------------------------------------------ bench_perf
def test_bench_alternates_the_order_of_methods_between_rounds(bp, monkeypatch):
    """A fixed order puts every method after the same one in every round (what ran just before changes a time):
    the order is reversed every other round, as ab_revisions.py alternates its arms."""
    calls: list[str] = []
    monkeypatch.setattr(bp, "methods", _fake_methods(calls))
    bp.bench([(8, 1)], ["forward"], 3, "cpu", 0, None)
    warm, rounds = calls[:3], [calls[3:6], calls[6:9], calls[9:12]]
    assert warm == ["lpips-alex", "b", "c"]
    assert rounds == [["lpips-alex", "b", "c"], ["c", "b", "lpips-alex"], ["lpips-alex", "b", "c"]]


def test_bench_rows_report_the_spread_over_rounds(bp, monkeypatch):
    """Each row carries the lowest and highest per-round ratio to LPIPS-alex, not only the median."""
    monkeypatch.setattr(bp, "methods", _fake_methods([]))
    rows = bp.bench([(8, 2)], ["forward", "forward+backward"], 3, "cpu", 0, None)
    assert len(rows) == 6
    for row in rows:
        assert row["repeats"] == 3 and row["threads"] == torch.get_num_threads()
        assert 0 < row["ratio_min"] <= row["ratio_max"]
        if row["method"] == "lpips-alex":
            assert row["ratio_min"] == row["ratio_max"] == row["vs_lpips_alex"] == 1.0


def test_run_once_backward_reaches_the_input(bp):
    """forward+backward computes ``x``'s gradient (a fresh leaf that requires it); forward builds no graph."""
    seen: list[torch.Tensor] = []

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(seen.append)
        return (x - y).pow(2).flatten(1).sum(1)

    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    bp.run_once(fn, x, y, "forward", "cpu")
    assert not seen and not x.requires_grad
    bp.run_once(fn, x, y, "forward+backward", "cpu")
    assert len(seen) == 1 and torch.allclose(seen[0], 2 * (x - y))
    assert not x.requires_grad and x.grad is None  # the caller's tensor is untouched


def test_every_method_has_an_input_gradient(bp):
    """Every timed method's forward+backward really backpropagates to ``x`` (no detached path timed as one)."""
    x, y = bp.images(1, 32, "cpu")
    for name, fn in bp.methods("cpu", 32, False).items():
        xg = x.detach().requires_grad_(True)
        fn(xg, y).sum().backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0, name


def test_bench_runs_the_real_methods(bp):
    rows = bp.bench([(32, 1)], ["forward", "forward+backward"], 1, "cpu", 0,
                    ["mmdpp-default", "mmdpp-default-target", "mmdpp-loss-target"])
    assert [(r["mode"], r["method"]) for r in rows] == [
        (m, k) for m in ("forward", "forward+backward")
        for k in ("lpips-alex", "mmdpp-default", "mmdpp-default-target", "mmdpp-loss-target")]
    assert all(r["median_s"] > 0 for r in rows)


def test_main_writes_the_csv_and_the_markdown_table(bp, tmp_path, capsys):
    out, md = tmp_path / "sub" / "r.csv", tmp_path / "r.md"
    bp.main(["--threads", "1", "--repeats", "1", "--configs", "32x1", "--modes", "forward", "--only",
             "mmdpp-default", "--out", str(out), "--md", str(md)])
    assert "threads=1" in capsys.readouterr().out
    header = out.read_text().splitlines()[0].split(",")
    assert header[:9] == ["device", "threads", "size", "batch", "mode", "method", "median_s", "vs_lpips_alex",
                          "repeats"]
    assert len(out.read_text().splitlines()) == 3 and md.read_text().count("\n") == 4


def test_memory_child_measures_its_call(bp):
    """The CPU memory measurement runs in its own interpreter; the peak is at least the growth during the call."""
    (row,) = bp.memory([(32, 1)], ["forward+backward"], "cpu", 0, ["lpips-alex"])
    assert row["method"] == "lpips-alex" and row["peak_mb"] > 50
    assert 0 <= row["above_inputs_mb"] <= row["peak_mb"]


def test_scaling_and_kernel_scaling_run(bp):
    rows = bp.scaling([32, 48], 1, "cpu")
    assert [r["size"] for r in rows] == [32, 48] and rows[0]["exponent"] == rows[1]["exponent"]
    before = torch.get_num_threads()
    rows = bp.kernel_scaling([(32, 1)], 1, 2)
    assert [r["part"] for r in rows] == ["mmd-term", "aligned-scan"] and rows[0]["threads"] == 2
    assert torch.get_num_threads() == before


def test_kernel_scaling_alternates_its_order_between_rounds(bp, monkeypatch):
    calls: list[tuple[str, int]] = []

    def fake(x, y, weight_l2=1.0, weight_local=1.0, weight_mmd=1.0):
        calls.append(("mmd" if weight_mmd else "aligned", torch.get_num_threads()))
        return (x - y).pow(2).flatten(1).sum(1)

    monkeypatch.setattr(bp.patchmmd, "mmdpp", fake)
    bp.kernel_scaling([(8, 1)], 2, 2)
    forward = [("mmd", 1), ("mmd", 2), ("aligned", 1), ("aligned", 2)]
    assert calls == forward + forward[::-1] + forward  # round 0 warms up


@pytest.mark.parametrize("argv, message", [
    (["--scaling", "--scaling-sizes", "32", "--repeats", "1"], "--scaling-sizes"),  # was a ZeroDivisionError
    (["--scaling", "--scaling-sizes", "32,big"], "--scaling-sizes"),
    (["--accuracy", "--accuracy-features", "256,x"], "--accuracy-features"),
    (["--kernels", "--threads", "1", "--configs", "32x1", "--repeats", "1"], "--kernels"),  # timed 1 against 1
    (["--threads", "0", "--configs", "32x1", "--repeats", "1", "--modes", "forward", "--only", "mmdpp-default"],
     "--threads"),  # was ignored
    (["--threads", "-1", "--configs", "32x1", "--repeats", "1", "--modes", "forward", "--only", "mmdpp-default"],
     "--threads"),  # was a RuntimeError from torch.set_num_threads
])
def test_main_rejects_bad_arguments(bp, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bp.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_parse_sizes(bp):
    assert bp.parse_sizes("256,512", "--scaling-sizes", at_least=2) == [256, 512]
    for bad in ("", "0,4", "4,4", "4", "a,4"):
        with pytest.raises(ValueError, match="--scaling-sizes"):
            bp.parse_sizes(bad, "--scaling-sizes", at_least=2)


# ---------------------------------------------------------------------------------------------- ab_revisions
def test_ab_worker_times_the_given_source(ab):
    """One arm end to end on this checkout's ``src`` (the worker builds the metric from the registry, times
    forward+backward, and the parent checks which ``patchmmd`` the subprocess imported)."""
    import argparse

    args = argparse.Namespace(mode="forward+backward", threads=1, calls=2, warmup=1)
    assert ab.run_arm(ROOT / "src", "mmdpp", {"preset": "loss"}, 32, 1, args) > 0


# -------------------------------------------------------------------------------------------------- ddp_train
def test_ddp_example_stops_when_no_batch_fits(tmp_path):
    """Fewer images per process than a batch: the loader yields nothing, and the step loop ran epochs forever."""
    try:
        p = subprocess.run([sys.executable, str(ROOT / "examples" / "ddp_train.py"), "--images", "4",
                            "--batch-size", "8", "--image-size", "8", "--steps", "1", "--device", "cpu"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the example did not stop")
    assert p.returncode == 2, p.stderr
    assert "fewer than --batch-size 8" in p.stderr


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "30"], "multiple of 4"),  # was a shape-mismatch traceback from the loss
    (["--batch-size", "0"], "at least 1"),  # was a ValueError traceback from the DataLoader
])
def test_ddp_example_rejects_bad_sizes(ddp, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ddp.main([*argv, "--steps", "1", "--device", "cpu"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_ddp_example_checks_the_loss_on_the_training_device(ddp, monkeypatch):
    """The start-up check compares the loss on every rank on the device the training uses (its features are
    moved there), not on the CPU."""
    seen: list[tuple[torch.device, torch.device]] = []

    class FakeLoss:
        def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            seen.append((a.device, b.device))
            return torch.zeros(())  # (a meta tensor has no value to print)

    @contextlib.contextmanager
    def fake_group(device):
        yield ddp.distributed.detect(), torch.device("meta")

    monkeypatch.setattr(ddp, "MMDPP", FakeLoss)
    monkeypatch.setattr(ddp.distributed, "process_group", fake_group)
    monkeypatch.setattr(ddp.distributed, "same_on_all_ranks", lambda *t: False)  # stop after the check
    assert ddp.main(["--image-size", "8", "--steps", "1"]) == 1
    assert seen == [(torch.device("meta"), torch.device("meta"))]
