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


def _plant_links(out: Path, names: tuple[str, ...], victim: Path) -> None:
    """Symbolic links at a command's output names, all pointing at ``victim``, as anyone who could write into
    the output folder might plant them."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).symlink_to(victim)


def _assert_replaced(out: Path, names: tuple[str, ...], victim: Path) -> None:
    assert victim.read_text() == "keep me\n"
    for name in names:
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name


def test_theory_replaces_links_instead_of_writing_through_them(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out, names = tmp_path / "out", ("theory.csv", "theory.md", "theory.png")
    _plant_links(out, names, victim)
    args = ["theory", "--widths", "8,16", "--seeds", "1", "--crop", "12", "--window", "8", "--stride", "4",
            "--out", str(out), "--overwrite"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    _assert_replaced(out, names, victim)


def test_eval_replaces_links_instead_of_writing_through_them(tmp_path: Path) -> None:
    import torch

    from patchmmd.io import save_image

    data = tmp_path / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 32, 32, generator=g)
    save_image(ref, data / "ref.png")
    lines = ["reference,distorted,mos"]
    for i in range(4):
        save_image((ref + (i + 1) * 0.05 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1), data / f"d{i}.png")
        lines.append(f"ref.png,d{i}.png,{90 - 10 * i}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out, names = tmp_path / "out", ("report.json", "report.md", "scores.csv")
    args = ["eval", "mos", str(data / "labels.csv"), "-m", "l2", "--bootstrap", "0", "--group-column", "",
            "--no-plots", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    for name in names:  # --overwrite removes the old outputs first; --resume keeps them and writes the report again
        (out / name).unlink()
    _plant_links(out, names, victim)
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    _assert_replaced(out, names, victim)


def test_demo_replaces_links_instead_of_writing_through_them(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out, names = tmp_path / "out", ("demo.md", "demo.json", "distance_map.png")
    _plant_links(out, names, victim)
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--device", "cpu", "--overwrite"])
    assert r.exit_code == 0, r.output
    _assert_replaced(out, names, victim)
