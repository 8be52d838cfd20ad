"""The command line across commands: one exit-status rule (docs/cli.md, "Exit statuses"), one-line errors, strict
JSON. A usage error (2) is a command line wrong as typed: an option value of the wrong type or range, an input path
of the wrong kind (a folder or a FIFO where a file is expected, a file where a folder is expected). A failure (1) is
an input file that does not exist or cannot be read, in every command alike."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import Result

from cli_runner import invoke
from patchmmd.io import save_image

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need POSIX")


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_image(torch.rand(3, 24, 24, generator=g), a)
    save_image(torch.rand(3, 24, 24, generator=g), b)
    return a, b


@pytest.fixture()
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.png"
    os.mkfifo(path)
    return path


def _invoke_unblocked(fifo: Path, *args: object, timeout: float = 60.0) -> Result:
    """``invoke(*args)`` in a thread; a command still running after ``timeout`` is blocked on ``fifo``: it is given
    an end of file (a writer that closes at once) so that the test fails instead of hanging."""
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(invoke(*args)), daemon=True)
    thread.start()
    thread.join(timeout)
    blocked = thread.is_alive()
    if blocked:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout)
    assert not blocked, f"patchmmd {' '.join(map(str, args))} blocked reading the FIFO"
    return results[0]


def _one_line_failure(r: Result, *words: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.output.startswith("patchmmd: error: ") and len(r.output.splitlines()) == 1, r.output
    assert "Traceback" not in r.output and all(w in r.output for w in words), r.output


def _usage_error(r: Result, *words: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Usage: ") and "\nError: " in r.output, r.output
    assert all(w in r.output for w in words), r.output


# --- input paths: the wrong kind is a usage error, a file that cannot be read a failure --------------------------


@needs_fifo
def test_compare_refuses_a_fifo_as_it_refuses_a_folder(pair: tuple[Path, Path], fifo: Path, tmp_path: Path) -> None:
    # a folder was a usage error (2) but a FIFO a failure (1), for the same mistake: a path that is not a file
    for path in (tmp_path, fifo):
        _usage_error(invoke("compare", pair[0], path, "-m", "l2"), "'B'")
        _usage_error(invoke("compare", path, pair[1], "-m", "l2"), "'A'")
    _usage_error(invoke("compare", pair[0], fifo, "-m", "l2"), "not a regular file")


@needs_fifo
def test_theory_reports_its_images_as_compare_does(pair: tuple[Path, Path], fifo: Path, tmp_path: Path) -> None:
    # a missing file was a usage error (2) here but a failure (1) in compare; a file that cannot be read ended
    # in "(ImageReadError)"; a FIFO was a failure (1)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    args = ("--widths", "4,8", "--seeds", "1", "--crop", "8", "--out", tmp_path / "out")
    _one_line_failure(invoke("theory", pair[0], tmp_path / "missing.png", *args), "image file not found")
    r = invoke("theory", pair[0], bad, *args)
    _one_line_failure(r, "cannot read")
    assert "ImageReadError" not in r.output
    assert invoke("compare", pair[0], bad).output.split("\n")[0] == r.output.split("\n")[0]
    _usage_error(invoke("theory", pair[0], fifo, *args), "not a regular file")
    _usage_error(invoke("theory", pair[0], tmp_path, *args), "is a directory")
    assert not (tmp_path / "out").exists()


@needs_fifo
def test_gim_reports_its_images_as_compare_does(pair: tuple[Path, Path], fifo: Path, tmp_path: Path) -> None:
    # an image that cannot be read was a usage error (2) in the task commands, a failure (1) in compare
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    fast = ("--size", "16", "--steps", "1", "--no-progress", "--eval-distances", "", "--loss", "l2", "--out", out)
    _one_line_failure(invoke("gim", pair[0], bad, *fast), "cannot read", "bad.png")
    _usage_error(invoke("gim", pair[0], tmp_path, *fast), "IMAGES", "folder")
    _usage_error(invoke("gim", pair[0], fifo, *fast), "IMAGES", "not a regular file")
    _usage_error(invoke("gim", pair[0], tmp_path / "nosuch.png", *fast), "IMAGES", "astronaut")  # no file, no name
    assert not out.exists()


def test_train_ae_reports_an_unreadable_photo_as_a_failure(pair: tuple[Path, Path], tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1)), photos / "good.png")
    (photos / "zz.png").write_text("not an image")
    out = tmp_path / "out"
    r = invoke("train-ae", photos, "--crop", "16", "--steps", "1", "--no-progress", "--eval-distances", "",
               "--loss", "l2", "--out", out)
    _one_line_failure(r, "cannot read", "zz.png")
    assert not out.exists()


@needs_fifo
def test_eval_mos_refuses_a_fifo_as_labels_without_blocking(fifo: Path, tmp_path: Path) -> None:
    # the command read the CSV's header itself before the dataset checked the file: it waited for ever on a FIFO
    r = _invoke_unblocked(fifo, "eval", "mos", fifo, "-m", "l2", "--no-plots", "--out", tmp_path / "out")
    _usage_error(r, "'LABELS'", "not a regular file")
    assert not (tmp_path / "out").exists()


def test_eval_mos_refuses_a_folder_as_labels(tmp_path: Path) -> None:
    # it said "labels CSV not found" (exit status 1) of a folder that exists
    r = invoke("eval", "mos", tmp_path, "-m", "l2", "--no-plots", "--out", tmp_path / "out")
    _usage_error(r, "'LABELS'", "is a directory")
    assert "not found" not in r.output


def test_eval_mos_labels_that_are_not_utf8_are_named(tmp_path: Path) -> None:
    # the command's own read of the header raised: "'utf-8' codec can't decode ... (UnicodeDecodeError)", no file
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\xff\xfereference,distorted,score\n")
    r = invoke("eval", "mos", labels, "-m", "l2", "--no-plots", "--out", tmp_path / "out")
    _one_line_failure(r, "labels.csv", "UTF-8")
    assert "UnicodeDecodeError" not in r.output


@pytest.mark.parametrize("kind", ["2afc", "jnd"])
def test_eval_bapps_refuses_a_file_as_root(pair: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    # a failure (1) "dataset folder is not a folder", where score and train-ae give a usage error for a file
    # in place of a folder
    _usage_error(invoke("eval", kind, pair[0], "-m", "l2", "--out", tmp_path / "out"), "'ROOT'", "is a file")
    assert not (tmp_path / "out").exists()


# --- option values: out of type or range is a usage error, before any work ----------------------------------------


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf", "0"])
def test_learning_rates_that_are_not_finite_are_usage_errors(pair: tuple[Path, Path], tmp_path: Path,
                                                             lr: str) -> None:
    # click's FloatRange(min=0, min_open=True) let nan and inf through to the library: exit status 1
    out = tmp_path / "out"
    for command in (["gim", *pair, "--size", "16"], ["train-ae", "--crop", "16"], ["train-sr", "--crop", "16"]):
        r = invoke(*command, "--lr", lr, "--steps", "1", "--no-progress", "--eval-distances", "", "--loss", "l2",
                   "--out", out)
        _usage_error(r, "--lr")
    assert not out.exists()


def test_seeds_out_of_range_are_usage_errors(pair: tuple[Path, Path], tmp_path: Path) -> None:
    # gim: "Overflow when unpacking long long" (exit 1); eval mos --seed -1: exit 1 after reading the dataset
    out = tmp_path / "out"
    for seed in ("-1", str(2**63), "99999999999999999999"):
        r = invoke("gim", *pair, "--size", "16", "--seed", seed, "--steps", "1", "--no-progress",
                   "--eval-distances", "", "--loss", "l2", "--out", out)
        _usage_error(r, "--seed")
        _usage_error(invoke("eval", "mos", tmp_path / "labels.csv", "--seed", seed, "--out", out), "--seed")
        _usage_error(invoke("eval", "suite", "--quick", "--seed", seed, "--out", out), "--seed")
    assert not out.exists()


def test_theory_refuses_a_huge_width_up_front(tmp_path: Path) -> None:
    # the sweep ran, then torch failed with its C++ stack trace folded into one very long line (exit status 1)
    r = invoke("theory", "--widths", f"4,{10**20}", "--seeds", "1", "--crop", "8", "--out", tmp_path / "out")
    _usage_error(r, "--widths")
    assert len(r.output) < 1000 and not (tmp_path / "out").exists()


def test_suite_refuses_an_unknown_candidate_as_a_usage_error(tmp_path: Path) -> None:
    # --metric nosuch is a usage error everywhere; --candidate nosuch failed (exit 1) once the suite ran
    r = invoke("eval", "suite", "--quick", "--candidate", "nosuch", "--out", tmp_path / "out")
    _usage_error(r, "--candidate", "unknown metric 'nosuch'")
    assert not (tmp_path / "out").exists()


# --- machine-readable output ------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names that are not UTF-8 need Linux")
def test_compare_json_writes_names_that_are_not_utf8_as_score_does(pair: tuple[Path, Path], tmp_path: Path) -> None:
    # the JSON held "bad\udcff.png": a lone surrogate, which strict JSON readers refuse (not valid Unicode)
    from test_compare_audit import non_utf8_copy

    b = non_utf8_copy(pair[1], tmp_path)
    r = invoke("compare", pair[0], b, "-m", "l2", "--json")
    assert r.exit_code == 0, r.output
    assert "\\udc" not in r.output
    obj = json.loads(r.output)
    assert obj["b"].endswith("bad\\xff.png") and obj["a"] == str(pair[0])
    obj["b"].encode("utf-8")  # valid Unicode


# --- Ctrl-C, outputs that cannot be made, the same option value twice ------------------------------------------


def test_ctrl_c_exits_130_in_every_command(pair: tuple[Path, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # only score exited 130; the others ended in click's "Aborted!" with exit status 1, the status of a failure
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("patchmmd.io.load_image", interrupted)
    fast = ("--steps", "1", "--no-progress", "--eval-distances", "", "--loss", "l2")
    for args in (["compare", *pair, "-m", "l2"],
                 ["theory", *pair, "--widths", "4,8", "--out", tmp_path / "t"],
                 ["gim", *pair, *fast, "--out", tmp_path / "g"]):
        r = invoke(*args)
        assert r.exit_code == 130, (args, r.output)
        assert r.output.strip() == "interrupted" and "Aborted" not in r.output, (args, r.output)


def test_an_output_folder_that_cannot_be_created_is_a_failure_as_in_score(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # score says "cannot create" with exit status 1 (an operating-system error); the folder policy of the other
    # commands said it as a usage error (2)
    import errno

    real_mkdir = Path.mkdir
    denied = tmp_path / "denied"

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == denied or denied in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    for args in (["demo", "--out", denied / "d"], ["compare", *pair, "--map", denied / "m.png"],
                 ["theory", *pair, "--widths", "4,8", "--seeds", "1", "--crop", "8", "--out", denied / "t"]):
        _one_line_failure(invoke(*args), "cannot create the folder", "Permission denied")
    # a regular file in the way stays a usage error
    _usage_error(invoke("demo", "--out", pair[0] / "d"), "is a file, not a folder")


def test_the_same_nan_option_twice_is_one_value(pair: tuple[Path, Path]) -> None:
    # "sigma was given twice (nan, nan); give it once": NaN != NaN made one value given twice look like two
    r = invoke("compare", *pair, "-o", "sigma=NaN", "-o", "sigma=NaN")
    assert "given twice" not in r.output, r.output
    r = invoke("compare", *pair, "-o", "sigma=NaN", "-o", "sigma=1")
    _usage_error(r, "sigma was given twice")


def test_suite_names_a_folder_given_as_labels_for_what_it_is(tmp_path: Path) -> None:
    # "labels file not found: DIR" of a folder that exists
    r = invoke("eval", "suite", "--quick", "--human", f"x={tmp_path}", "--out", tmp_path / "out")
    _usage_error(r, "--human", "not a regular file")
    assert "not found" not in r.output
