"""``benchmarks/bench_perf.py``: an option the chosen table does not read is refused, not dropped silently."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("argv, message", [
    (["--accuracy", "--configs", "64x1"], "--configs is read by .* not by --accuracy"),
    (["--scaling", "--configs", "64x1"], "--configs is read by .* not by --scaling"),
    (["--kernels", "--modes", "forward"], "--modes is read by .* not by --kernels"),
    (["--scaling", "--modes", "forward"], "--modes is read by .* not by --scaling"),
    (["--kernels", "--exact-max", "32"], "--exact-max is read by .* not by --kernels"),
    (["--scaling-sizes", "64,128"], "--scaling-sizes is read by --scaling and --scaling-thp, not by the timing"),
    (["--memory", "--accuracy-features", "64"], "--accuracy-features is read by --accuracy, not by --memory"),
])
def test_an_option_the_table_does_not_read_is_refused(bp, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bp.main(argv)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_tables_take_the_options_they_read(bp, monkeypatch):
    """The defaults apply where an option is not given; given options reach the table."""
    seen: dict[str, object] = {}
    monkeypatch.setattr(bp, "kernel_scaling", lambda configs, repeats, threads: seen.update(kernels=configs) or
                        [dict(method="k", median_s=0.1)])
    monkeypatch.setattr(bp, "scaling", lambda sizes, repeats, device: seen.update(scaling=sizes) or
                        [dict(method="s", median_s=0.1)])
    monkeypatch.setattr(bp, "bench", lambda configs, modes, repeats, device, exact_max, only: seen.update(
        bench=(configs, modes, exact_max)) or [dict(method="b", median_s=0.1)])
    bp.main(["--kernels", "--threads", "2", "--configs", "32x1"])
    bp.main(["--scaling", "--scaling-sizes", "32,48"])
    bp.main(["--threads", "1"])
    assert seen == {"kernels": [(32, 1)], "scaling": [32, 48],
                    "bench": ([(64, 16), (256, 4), (1024, 1)], ["forward", "forward+backward"], 64)}


def test_two_tables_are_refused_before_an_option_either_does_not_read(bp, capsys):
    """``--kernels --memory --modes forward`` said --modes is not read by --kernels; the problem is two tables."""
    with pytest.raises(SystemExit):
        bp.main(["--kernels", "--memory", "--modes", "forward"])
    assert "--kernels and --memory are two different tables" in capsys.readouterr().err
