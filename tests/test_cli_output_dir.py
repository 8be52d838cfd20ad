"""One output-folder policy for every command that writes a folder: a non-empty folder needs --overwrite."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.cli._common import prepare_output_dir


def test_prepare_output_dir(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b"
    assert prepare_output_dir(new, overwrite=False) == new and new.is_dir()
    assert prepare_output_dir(new, overwrite=False) == new  # empty: fine
    (new / "x.txt").write_text("x")
    with pytest.raises(click.UsageError, match="not empty; pass --overwrite"):
        prepare_output_dir(new, overwrite=False)
    assert prepare_output_dir(new, overwrite=True) == new and (new / "x.txt").exists()  # nothing deleted
    with pytest.raises(click.UsageError, match="is a file"):
        prepare_output_dir(new / "x.txt", overwrite=True)
    with pytest.raises(click.UsageError, match=r"^--map "):
        prepare_output_dir(new, overwrite=False, option="--map")


def test_theory_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["theory", "--widths", "8,16", "--seeds", "1", "--crop", "12", "--window", "8", "--stride", "4",
            "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    first = (out / "theory.csv").read_text()
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "not empty" in r.output and "--overwrite" in r.output
    r = CliRunner().invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "theory.csv").read_text() == first and (out / "notes.txt").read_text() == "mine"
