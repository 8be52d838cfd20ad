"""The benchmark scripts' helpers (benchmarks/bench_perf.py, benchmarks/ab_revisions.py): argument checks, the
precomputed-target cache, and the clear exits of ab_revisions.py. Nothing here times anything."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, folder: Path = BENCH) -> ModuleType:
    """The script ``folder/name.py`` as a module (loaded once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- bench_perf
def test_target_methods_keep_their_own_precomputed_target(bp, monkeypatch):
    """Two ``-target`` methods interleaved in one round each precompute once (they used to evict each other's
    target, so every timed call of both included the precomputation)."""
    made: list[str] = []

    def fake_precompute(y, preset):
        made.append(preset)
        return (preset, y)

    monkeypatch.setattr(bp, "precompute_target", fake_precompute)
    monkeypatch.setattr(bp.patchmmd, "mmdpp", lambda x, target: target)
    monkeypatch.setattr(bp, "_TARGETS", {})
    default, loss = bp._with_target("default"), bp._with_target("loss")
    x, y = torch.zeros(1), torch.ones(1)
    for _ in range(3):
        assert default(x, y) == ("default", y)
        assert loss(x, y) == ("loss", y)
    assert made == ["default", "loss"]
    y2 = torch.ones(1)  # a new target image is precomputed again
    assert default(x, y2)[1] is y2
    assert made == ["default", "loss", "default"]


def test_parse_configs(bp):
    assert bp.parse_configs("64x16,256x4") == [(64, 16), (256, 4)]
    assert bp.parse_configs("2048X1") == [(2048, 1)]
    for bad in ("64", "64x", "64x16x2", "ax4", "0x4", "64x16,"):
        with pytest.raises(ValueError, match="SIZExBATCH"):
            bp.parse_configs(bad)


def test_parse_modes_rejects_unknown_modes(bp):
    """``run_once`` times every mode but ``forward`` as forward+backward: an unknown word must not pass."""
    assert bp.parse_modes("forward,forward+backward") == ["forward", "forward+backward"]
    with pytest.raises(ValueError, match="'fwd'"):
        bp.parse_modes("forward,fwd")


def test_check_only_names_unknown_methods(bp):
    available = ["lpips-alex", "mmdpp-default", "ssim"]
    bp.check_only(["mmdpp-default", "ssim"], available)
    with pytest.raises(ValueError, match="unknown method 'mmdpp-defualt'"):
        bp.check_only(["mmdpp-defualt"], available)
    with pytest.raises(ValueError, match="needs --compiled"):
        bp.check_only(["mmdpp-default-compiled"], available)
    with pytest.raises(ValueError, match="pytorch_msssim"):
        bp.check_only(["ssim"], ["lpips-alex"])


@pytest.mark.parametrize("argv", [["--modes", "fwd"], ["--configs", "64"], ["--only", "nope"], ["--repeats", "0"],
                                  # options those tables would ignore (they time fixed methods on the CPU)
                                  ["--kernels", "--only", "mmdpp-default"], ["--accuracy", "--device", "cuda"],
                                  ["--scaling", "--only", "ssim"], ["--scaling-thp", "--device", "cuda"]])
def test_main_rejects_bad_arguments_before_running(bp, argv, capsys):
    with pytest.raises(SystemExit) as e:
        bp.main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_memory_child_failure_is_reported_with_its_error(bp):
    with pytest.raises(SystemExit, match=r"(?s)--memory x.*RuntimeError: boom"):
        bp._run_child("raise RuntimeError('boom')", "--memory x")


# ---------------------------------------------------------------------------------------------- ab_revisions
def test_ab_bad_candidate_option_exits_clearly(ab):
    with pytest.raises(SystemExit, match=r"arm 'HEAD@mmdpp:badopt'.*KEY=VALUE"):
        ab.parse_arm("HEAD@mmdpp:badopt")
    with pytest.raises(SystemExit, match="REV@METRIC"):
        ab.parse_arm("mmdpp")


def test_ab_parse_configs(ab):
    assert ab.parse_configs("1024x1,2048x1") == [(1024, 1), (2048, 1)]
    for bad in ("32", "32x", "x4", "0x1"):
        with pytest.raises(SystemExit, match="SIZExBATCH"):
            ab.parse_configs(bad)


def test_ab_missing_revision_exits_clearly(ab, tmp_path):
    with pytest.raises(SystemExit, match="'no-such-rev-xyz' is not a commit"):
        ab.export("no-such-rev-xyz", tmp_path)
    assert not any(tmp_path.iterdir())


def test_ab_refuses_head_with_uncommitted_src(ab, monkeypatch):
    state = {"status": " M src/patchmmd/x.py"}

    def fake_git(*args):
        return "c0ffee" if args[0] == "rev-parse" else state["status"]

    monkeypatch.setattr(ab, "_git", fake_git)
    monkeypatch.setattr(ab, "resolve", lambda rev: "c0ffee" if rev in ("HEAD", "main") else "beef")
    with pytest.raises(SystemExit, match=r"'HEAD' resolves to HEAD.*committed code only"):
        ab.check_not_dirty(["HEAD~1", "HEAD"])
    ab.check_not_dirty(["HEAD~1", "HEAD~2"])  # neither arm is HEAD: the working tree does not matter
    state["status"] = ""
    ab.check_not_dirty(["HEAD~1", "HEAD"])  # clean: HEAD's committed code is the working tree's


def test_ab_failing_worker_exits_with_its_error(ab, monkeypatch, tmp_path):
    monkeypatch.setattr(ab, "WORKER", "raise ValueError('unknown metric nometric')")
    args = argparse.Namespace(mode="forward", threads=1, calls=1, warmup=0)
    with pytest.raises(SystemExit, match=r"(?s)nometric .*failed in the subprocess.*ValueError: unknown metric"):
        ab.run_arm(tmp_path, "nometric", {}, 32, 1, args)
