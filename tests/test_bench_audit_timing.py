"""Third audit of benchmarks/ and scripts/: what the tables record (full precision, spreads from one round's pairs,
orders reversed every other round), the GPU memory table's baseline, outputs that would overwrite an input, run
folders that lack what tasks_figures.py reads, and the LPIPS baseline against the library's LPIPS. Tiny sizes and
stand-in timers only: nothing here measures how fast anything is."""

from __future__ import annotations

import argparse
import ast
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from test_benchmarks import _load
from test_docs_commands import check, extract
from test_scripts_audit import live_like, load, sr_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def flags(bp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bp, "UNRELATED", [False])
    monkeypatch.setattr(bp, "COMPILED", [False])
    monkeypatch.setattr(bp, "_TARGETS", {})


def _fake_methods(names: tuple[str, ...] = ("lpips-alex", "b", "c")):
    def make(name: str):
        def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x - y).pow(2).flatten(1).sum(1)

        return fn

    return lambda device, size, with_exact: {k: make(k) for k in names}


def _timer(bp: ModuleType, monkeypatch: pytest.MonkeyPatch, times: list[float]) -> list[tuple[int, ...]]:
    """``run_once`` returning ``times`` in turn (warm-up calls included); records each call's input shape."""
    calls: list[tuple[int, ...]] = []
    it = iter(times)

    def fake(fn, x, y, mode, device):  # type: ignore[no-untyped-def]
        calls.append(tuple(x.shape))
        return next(it)

    monkeypatch.setattr(bp, "run_once", fake)
    return calls


# ------------------------------------------------------------------------------------------------ bench_perf
def test_timing_rows_keep_full_precision(bp, flags, monkeypatch):
    """The CSV and the Markdown table held medians rounded to 10 µs and ratios to three decimals (a GPU's 2.5 ms
    kept three digits): the rows hold what was measured."""
    monkeypatch.setattr(bp, "methods", _fake_methods(("lpips-alex", "b")))
    # warm-up a, b; round 0: a, b; round 1 (reversed): b, a; round 2: a, b
    _timer(bp, monkeypatch, [1.0, 1.0, 0.0123456789, 0.00333333333, 0.00444444444, 0.0111111111, 0.0133333333,
                             0.00277777777])
    rows = bp.bench([(8, 1)], ["forward"], 3, "cpu", 0, None)
    a, b = (next(r for r in rows if r["method"] == m) for m in ("lpips-alex", "b"))
    assert a["median_s"] == 0.0123456789
    assert b["median_s"] == 0.00333333333
    assert b["vs_lpips_alex"] == 0.00333333333 / 0.0123456789
    pairs = [0.00333333333 / 0.0123456789, 0.00444444444 / 0.0111111111, 0.00277777777 / 0.0133333333]
    assert b["ratio_min"] == min(pairs) and b["ratio_max"] == max(pairs)


def test_scaling_reverses_the_order_of_sizes_every_other_round(bp, flags, monkeypatch):
    """--scaling timed the sizes in the same order every round (each size after the same one), unlike the other
    tables; its rows kept the medians to 10 µs and the exponent to three decimals."""
    calls = _timer(bp, monkeypatch, [1.0, 1.0, 0.1, 0.4, 0.4, 0.1, 0.1, 0.4])
    rows = bp.scaling([8, 16], 3, "cpu")
    sizes = [shape[-1] for shape in calls]
    assert sizes == [8, 16, 8, 16, 16, 8, 8, 16]  # warm-up, then the order reversed in odd rounds
    assert rows[0]["median_s"] == 0.1 and rows[1]["median_s"] == 0.4
    assert rows[0]["exponent"] == bp._exponent([8, 16], [0.1, 0.4])


def test_kernel_scaling_reports_the_spread_of_same_round_speedups(bp, flags, monkeypatch):
    """The speedup was only the ratio of the medians, without the spread of one round's pair (the timing table's
    ratio_min / ratio_max)."""
    threads: list[int] = []

    def fake(fn, x, y, mode, device):  # type: ignore[no-untyped-def]
        threads.append(torch.get_num_threads())
        one = torch.get_num_threads() == 1
        rnd = (len(threads) - 1) // 4  # four calls a round: two parts on 1 and on 2 threads
        return (0.010 if one else 0.004 + 0.001 * rnd) / 1000

    monkeypatch.setattr(bp, "run_once", fake)
    rows = bp.kernel_scaling([(8, 1)], 2, 2)
    for row in rows:  # rounds 1 and 2 (round 0 warms up): speedups 10 / 5 and 10 / 6
        assert row["speedup"] == pytest.approx(10 / 5.5)
        assert row["speedup_min"] == pytest.approx(10 / 6) and row["speedup_max"] == pytest.approx(2.0)
        assert row["ms_1_thread"] == pytest.approx(0.01)


def test_scaling_thp_alternates_which_setting_runs_first(bp, flags, monkeypatch):
    """THP off always ran first in each round; the rows also lacked the spread of one round's pair."""
    order: list[str] = []

    def fake_child(code, what, env=None):  # type: ignore[no-untyped-def]
        v = env["THP_MEM_ALLOC_ENABLE"]
        order.append(v)
        rnd = (len(order) - 1) // 2
        t = 0.1 if v == "0" else (0.05, 0.08, 0.09)[rnd]
        return {"times": {"8": t, "16": 4 * t}, "peak_mb": 10.0}

    monkeypatch.setattr(bp, "_run_child", fake_child)
    rows = bp.scaling_thp([8, 16], 3, 1)
    assert order == ["0", "1", "1", "0", "0", "1"]
    on = [r for r in rows if r["thp"] == "1"]
    assert on[0]["vs_thp_off"] == pytest.approx(0.8)
    assert on[0]["ratio_min"] == pytest.approx(0.5) and on[0]["ratio_max"] == pytest.approx(0.9)
    assert on[0]["peak_mb"] == 10.0


def test_scaling_thp_reports_no_peak_where_none_was_read(bp, flags, monkeypatch):
    """A child that cannot read its peak RSS (not Linux) made the row say 0 MB."""
    monkeypatch.setattr(bp, "_run_child", lambda code, what, env=None: {"times": {"8": 0.1, "16": 0.4},
                                                                        "peak_mb": None})
    rows = bp.scaling_thp([8, 16], 1, 1)
    assert all(r["peak_mb"] is None for r in rows)


def test_gpu_memory_of_a_method_does_not_count_earlier_targets(bp, flags, monkeypatch):
    """On a GPU the methods are measured in one process: the targets that ``-target`` methods precomputed (for
    other images, another preset) stayed in ``_TARGETS``, on the GPU, and counted in every later method's peak
    (up to about 89 MB at 1024² x1 fwd+bwd, the forward round's two targets). A CPU child starts without them."""

    def held() -> int:  # the stand-in allocator: the bytes the held targets take
        return sum(t.nelement() * t.element_size() for y, target in bp._TARGETS.values() for t in (y, target))

    def target_method(x, y):  # type: ignore[no-untyped-def]
        if "default" not in bp._TARGETS or bp._TARGETS["default"][0] is not y:
            bp._TARGETS["default"] = (y, torch.zeros(2**18))  # 1 MB
        return (x - y).pow(2).flatten(1).sum(1)

    plain = _fake_methods(("lpips-alex",))("cuda", 8, True)["lpips-alex"]
    monkeypatch.setattr(bp, "methods", lambda device, size, with_exact: {
        "lpips-alex": plain, "mmdpp-default-target": target_method, "mmdpp-default": plain})
    monkeypatch.setattr(bp, "images", lambda n, size, device: (torch.rand(n, 3, size, size),
                                                               torch.rand(n, 3, size, size)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: held())
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: held())
    rows = bp.memory([(8, 1)], ["forward"], "cuda", 0, None)
    peak = {r["method"]: r["peak_mb"] for r in rows}
    target_mb = (2**18 * 4 + 3 * 8 * 8 * 4) / 2**20
    assert peak["mmdpp-default"] == 0.0 and peak["lpips-alex"] == 0.0
    assert peak["mmdpp-default-target"] == pytest.approx(target_mb)  # its own target counts (it is held)


def test_out_and_md_naming_one_file_is_refused(bp, flags, monkeypatch, tmp_path, capsys):
    """--out and --md on one path: the Markdown table overwrote the CSV after the run."""
    ran: list[int] = []
    monkeypatch.setattr(bp, "bench", lambda *a: ran.append(1) or [dict(method="lpips-alex", median_s=0.1)])
    with pytest.raises(SystemExit) as e:
        bp.main(["--out", str(tmp_path / "r.csv"), "--md", str(tmp_path / "." / "r.csv")])
    assert e.value.code == 2 and not ran
    assert "--out and --md" in capsys.readouterr().err


def _copy_weights(lib: torch.nn.Module, arch: torch.nn.Module) -> None:
    """The library LPIPS's trunk and heads into bench_perf's ``LPIPSArch`` (both Sequentials in torchvision's
    layout, AlexNet's without its last pooling)."""
    ours = [m for m in arch.trunk if isinstance(m, torch.nn.Conv2d)]
    theirs = [m for m in lib.features if isinstance(m, torch.nn.Conv2d)]
    assert len(ours) == len(theirs)
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            assert a.weight.shape == b.weight.shape and (a.stride, a.padding) == (b.stride, b.padding)
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        for a, b in zip(arch.heads, lib.lins, strict=True):
            a.weight.copy_(b.weight.abs())
            b.weight.copy_(b.weight.abs())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_baseline_computes_the_library_lpips(bp, net):
    """The timed LPIPS is LPIPS v0.1 (the library's LPIPS, checked against the lpips package's weights elsewhere):
    with the same weights it gives the same distances and the same input gradient, and a target without gradient
    gets none (the backward pass runs through ``x``'s trunk only)."""
    from patchmmd.metrics.lpips import LPIPS

    torch.manual_seed(0)
    lib, arch = LPIPS(net).double(), bp.LPIPSArch(net).double()
    _copy_weights(lib, arch)
    g = torch.Generator().manual_seed(1)
    # float32 values in float64 (the library's LPIPS reads its input through ``.float()``)
    x, y = (torch.rand(2, 3, 40, 40, generator=g).double() for _ in range(2))
    xa, xl = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    da, dl = arch(xa, y), lib(xl, y)
    assert torch.allclose(da, dl.double(), rtol=1e-10, atol=0)
    da.sum().backward()
    dl.sum().backward()
    # (the library's gradient passes its ``.float()``: float32 rounding)
    assert float((xa.grad - xl.grad).abs().max()) <= 1e-6 * float(xl.grad.abs().max())
    assert y.grad is None


# ---------------------------------------------------------------------------------------------- ab_revisions
def test_ab_prints_the_spread_of_same_round_ratios(ab, monkeypatch, capsys):
    """Only the ratio of the medians was printed, not how far one round's pair moved (bench_perf reports it)."""
    calls: list[int] = []
    times = {0: iter([0.100, 0.100, 0.100]), 1: iter([0.050, 0.090, 0.070])}

    def fake_arm(src, name, options, size, batch, args, build_only=False):  # type: ignore[no-untyped-def]
        if build_only:
            return 0.0
        arm = 0 if src == Path("A") else 1
        calls.append(arm)
        return next(times[arm])

    monkeypatch.setattr(ab, "check_not_dirty", lambda revs: None)
    monkeypatch.setattr(ab, "export", lambda rev, into: Path("A") if rev == "a1" else Path("B"))
    monkeypatch.setattr(ab, "run_arm", fake_arm)
    ab.main(["a1@mmdpp", "b1@mmdpp", "--configs", "8x1", "--rounds", "3"])
    assert calls == [0, 1, 1, 0, 0, 1]
    line = capsys.readouterr().out.splitlines()[-1]
    assert "B/A 0.700" in line and "(rounds 0.500-0.900)" in line


# --------------------------------------------------------------------------- outputs that would overwrite inputs
def test_theory_live_dev_refuses_an_out_that_is_its_labels(tmp_path, monkeypatch, capsys):
    """``--out DATA/labels.csv`` replaced the human scores with the distances."""
    live_like(tmp_path / "data")
    labels = tmp_path / "data" / "labels.csv"
    before = labels.read_text()
    script = load("theory_live_dev")
    monkeypatch.setattr(sys, "argv", ["theory_live_dev.py", "--data", str(tmp_path / "data"), "--metrics", "l2",
                                      "--out", str(labels)])
    with pytest.raises(SystemExit) as e:
        script.main()
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert labels.read_text() == before


def test_scale_rule_dev_refuses_an_out_that_is_its_labels(tmp_path, monkeypatch, capsys):
    live_like(tmp_path / "live-dev")
    labels = tmp_path / "live-dev" / "labels.csv"
    before = labels.read_text()
    script = load("scale_rule_dev")
    monkeypatch.setattr(script, "MOSDataset", lambda *a, **k: pytest.fail("the sweep started"))
    with pytest.raises(SystemExit) as e:
        script.main(["--live-dev", str(tmp_path / "live-dev"), "--out", str(labels)])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert labels.read_text() == before


def test_perceptual_components_refuses_an_out_that_is_a_human_set(tmp_path, monkeypatch, capsys):
    pc = load("perceptual_components")
    live_like(tmp_path / "live-dev")
    labels = tmp_path / "live-dev" / "labels.csv"
    before = labels.read_text()
    worked: list[int] = []
    monkeypatch.setattr(pc, "compute", lambda *a: worked.append(1) or [])
    with pytest.raises(SystemExit) as e:
        pc.main(["--human", str(labels), "--out", str(labels), "--threads", "1"])
    assert e.value.code == 2 and not worked and "--out" in capsys.readouterr().err
    assert labels.read_text() == before


# ------------------------------------------------------------------------------------------------ tasks_figures
def _run_tasks_figures(monkeypatch: pytest.MonkeyPatch, runs: Path, img: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["tasks_figures.py", str(runs), str(img)])
    runpy.run_path(str(SCRIPTS / "tasks_figures.py"), run_name="__main__")


def test_tasks_figures_refuses_run_folders_that_lack_an_image(tmp_path, monkeypatch, capsys):
    """A run folder with its metrics.json but without an image the figure shows printed its table, then ended in a
    FileNotFoundError traceback: the script now names what is missing before any output."""
    sr_run(tmp_path / "runs" / "train-sr-l2", "l2", 0.01)
    sr_run(tmp_path / "runs" / "train-sr-mmdpp", "mmdpp", 0.005)
    (tmp_path / "runs" / "train-sr-mmdpp" / "sr_000.png").unlink()
    with pytest.raises(SystemExit) as e:
        _run_tasks_figures(monkeypatch, tmp_path / "runs", tmp_path / "img")
    captured = capsys.readouterr()
    assert e.value.code == 2 and "train-sr-mmdpp/sr_000.png" in captured.err
    assert "###" not in captured.out and not (tmp_path / "img").exists()


def test_tasks_figures_says_which_cells_a_run_did_not_evaluate(tmp_path, monkeypatch, capsys):
    """A run made without the documented --eval-distances printed "–" in its cells, silently."""
    sr_run(tmp_path / "runs" / "train-sr-l2", "l2", 0.01)
    metrics = tmp_path / "runs" / "train-sr-l2" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"random-cnn"', '"other"'))
    _run_tasks_figures(monkeypatch, tmp_path / "runs", tmp_path / "img")
    err = capsys.readouterr().err
    assert "row 'l2' has no random-cnn" in err and "row 'bicubic' has no random-cnn" in err


def test_tasks_figures_problems_lists_nothing_for_complete_runs(tmp_path):
    sr_run(tmp_path / "runs" / "train-sr-l2", "l2", 0.01)
    assert load("tasks_figures").problems(tmp_path / "runs") == []


# ------------------------------------------------------------------------- commands in the scripts' docstrings
def _docstring_commands() -> list[tuple[str, object]]:
    """The ``python scripts/...`` / ``python benchmarks/...`` / ``torchrun ...`` lines of the scripts' module
    docstrings (test_docs_audit.py reads the package's ``patchmmd ...`` lines, not these)."""
    found = []
    for path in sorted([*SCRIPTS.glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").glob("*.py")]):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False) or ""
        commands, _, _ = extract("```\n" + doc.replace("\\\\", "\\") + "\n```\n", path.name)
        found += [(f"{path.relative_to(ROOT)}:{c.line}", c) for c in commands]
    return found


DOCSTRING_COMMANDS = _docstring_commands()


@pytest.mark.parametrize("where,command", DOCSTRING_COMMANDS, ids=[w for w, _ in DOCSTRING_COMMANDS])
def test_commands_in_the_scripts_docstrings_parse(where, command):
    check(command)


def test_scripts_docstring_commands_are_found():
    where = {w.split(":")[0] for w, _ in DOCSTRING_COMMANDS}
    assert {"benchmarks/bench_perf.py", "benchmarks/ab_revisions.py", "benchmarks/tf32_emulation.py",
            "scripts/sr_loss_variants.py", "scripts/theory_live_dev.py", "scripts/perceptual_components.py",
            "scripts/scale_rule_dev.py", "scripts/calibrate_weights.py"} <= where
    assert len(DOCSTRING_COMMANDS) >= 25


@pytest.mark.parametrize("script", sorted(p.relative_to(ROOT).as_posix() for d in ("scripts", "benchmarks")
                                          for p in (ROOT / d).glob("*.py")))
def test_every_script_has_a_help(script):
    """``--help`` prints a usage and exits 0 without running anything (parsed by the script's own parser)."""
    module = load(Path(script).stem) if script.startswith("scripts/") else _load(Path(script).stem)
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0


def test_a_broken_docstring_command_of_a_script_fails():
    (command,) = extract("```\npython benchmarks/bench_perf.py --repeatz 3\n```\n", "x.py")[0]
    with pytest.raises(Exception, match="--repeatz"):
        check(command)

