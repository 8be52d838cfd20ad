"""Second audit of the command line (compare, score, demo, theory and what they share): what a user coming from
other tools types. Grouped short flags (``-qm psnr``) cannot hide a repeated option; ``-`` as an output file is
refused rather than made a file called ``-``; an output name too long for the file system is a usage error naming
its option, as ``score`` says it; ``theory`` keeps stdout for its results and draws its progress bar on stderr only
for a terminal; a warning of the package is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd.io import save_image

#: Longer than any file system's limit on one name (255 bytes on the common ones).
LONG = "x" * 300


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    for d in (ref, dist):
        d.mkdir()
        save_image(torch.rand(3, 16, 16, generator=g), d / "x.png")
    return ref, dist


def test_grouped_short_flags_do_not_hide_a_repeated_option(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    # `-qm psnr -m l2`: the scan for repeated options read `-qm` as an unknown token, so click kept the last value
    # and the CSV held L2's numbers for a command that also asked for PSNR, without a word
    ref, dist = dirs
    out = tmp_path / "s.csv"
    for group in (["-qm", "psnr"], ["-qmpsnr"]):
        r = invoke("score", ref, dist, "-O", out, *group, "-m", "l2")
        assert r.exit_code == 2, r.output
        assert "--metric was given 2 times (psnr, l2)" in r.output and not out.exists(), r.output
    r = invoke("score", ref, dist, "-O", out, "-qb2", "-m", "l2", "-qm", "l2")  # the same value twice: harmless
    assert r.exit_code == 0 and out.read_text().splitlines()[1].split(",")[2] == "l2", r.output


def test_a_dash_is_not_taken_as_an_output_file_name(dirs: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # `--out -` made a file called "-" (and "-.journal", "-.lock" while it ran) and said "wrote 1 rows to -",
    # which reads as standard output, where nothing was written
    ref, dist = dirs
    monkeypatch.chdir(tmp_path)
    for args in (["score", ref, dist, "--out", "-", "-m", "l2"],
                 ["compare", ref / "x.png", dist / "x.png", "--map", "-"]):
        r = invoke(*args)
        assert r.exit_code == 2, r.output
        assert "'-' (standard output) is not supported" in r.output and "./-" in r.output, r.output
        assert not list(tmp_path.glob("-*")), r.output
    r = invoke("score", ref, dist, "--out", "./-", "-m", "l2", "-q")  # a file really named "-" is still possible
    assert r.exit_code == 0 and (tmp_path / "-").read_text().startswith("ref,dist,metric,distance,error\n"), r.output


@pytest.mark.parametrize("command", ["compare", "compare-deep", "demo", "theory"])
def test_an_output_name_too_long_is_a_usage_error_naming_the_option(dirs: tuple[Path, Path], tmp_path: Path,
                                                                     command: str) -> None:
    # a name over the file system's limit ended in "patchmmd: error: [Errno 36] File name too long: '...' (OSError)"
    # naming no option; `score --out` says it as a usage error (exit status 2) naming --out
    ref, dist = dirs
    option, args = {
        "compare": ("--map", ["compare", ref / "x.png", dist / "x.png", "--map", tmp_path / f"{LONG}.png"]),
        "compare-deep": ("--map", ["compare", ref / "x.png", dist / "x.png", "--map", tmp_path / LONG / "m.png"]),
        "demo": ("--out", ["demo", "--out", tmp_path / LONG]),
        "theory": ("--out", ["theory", "--widths", "2,4", "--seeds", "1", "--crop", "8", "--window", "4",
                             "--stride", "4", "--out", tmp_path / LONG / "t"]),
    }[command]
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert f"Error: {option} {tmp_path / LONG}" in r.output, r.output
    assert "the name is too long for the file system; give a shorter name" in r.output, r.output
    assert "Errno" not in r.output and "OSError" not in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "ref"]  # nothing written


def test_theory_keeps_stdout_for_results_and_draws_no_bar_off_a_terminal(tmp_path: Path) -> None:
    # the tqdm bar went to stderr even into a log or a pipe (carriage-return frames), and "wrote ..." went to
    # stdout with the results, where `demo` and `compare --map` say it on stderr
    out = tmp_path / "t"
    r = invoke("theory", "--widths", "2,4", "--seeds", "1", "--crop", "8", "--window", "4", "--stride", "4",
               "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stderr == f"wrote {out / 'theory.csv'}, {out / 'theory.md'}, {out / 'theory.png'}\n", r.stderr
    assert "\r" not in r.output and "wrote" not in r.stdout, r.output
    assert r.stdout.startswith("Analytic distance") and r.stdout.splitlines()[-1].startswith("Fitted log-log slope")


def test_a_warning_of_the_package_is_one_line(tmp_path: Path) -> None:
    # a warning of the package (here: the compiled kernels cannot be built) was printed the way Python prints one,
    # "/…/patchmmd/runtime.py:111: RuntimeWarning: patchmmd: …" followed by the source line "return _native.status()"
    env = {**os.environ, "CC": "/bin/false", "PATCHMMD_CACHE_DIR": str(tmp_path / "cache"), "PATCHMMD_NATIVE": "1"}
    r = subprocess.run([sys.executable, "-m", "patchmmd", "--version"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("patchmmd, version "), r.stderr
    assert r.stderr.startswith("patchmmd: warning: the build failed (/bin/false"), r.stderr
    assert r.stderr.endswith("(RuntimeWarning)\n") and len(r.stderr.splitlines()) == 1, r.stderr
    assert ".py:" not in r.stderr and "_native" not in r.stderr, r.stderr
