"""Audit of ``patchmmd compare``, ``demo`` and ``theory``: outputs that are inputs, write failures, file names in
messages, and the demo's distortion ladder on images outside [0, 1]."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd.cli.demo import distortion_ladder
from patchmmd.io import save_image


def _pair(tmp_path: Path, size: int = 32) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, size, size, generator=g)
    y = (x + 0.1 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_image(x, a)
    save_image(y, b)
    return a, b


def test_compare_map_that_is_one_of_the_images_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    # before: `--map a.png --overwrite` replaced the reference image A with the heat map (exit status 0)
    a, b = _pair(tmp_path)
    hard = tmp_path / "hard.png"
    os.link(a, hard)
    link = tmp_path / "link.png"
    link.symlink_to(b)
    original = {p: p.read_bytes() for p in (a, b)}
    for a_arg, map_arg, role in ((a, a, "A"), (a, b, "B"), (a, hard, "A"), (link, b, "A"),
                                 (a, tmp_path / "." / "b.png", "B")):
        b_arg = b if a_arg != link else a
        r = invoke("compare", a_arg, b_arg, "--map", map_arg, "--overwrite")
        assert r.exit_code == 2, (map_arg, r.output)
        assert f"is the image {role}" in r.output and "Traceback" not in r.output
    assert {p: p.read_bytes() for p in (a, b)} == original
    # a map elsewhere is still written
    r = invoke("compare", a, b, "--map", tmp_path / "map.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_map_that_cannot_be_written_is_one_line_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: `patchmmd: error: [Errno 28] No space left on device (OSError)`, with no word of the map
    from matplotlib.figure import Figure

    def full_disk(self: Figure, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    a, b = _pair(tmp_path)
    r = invoke("compare", a, b, "--map", tmp_path / "map.png")
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines == [f"patchmmd: error: --map {tmp_path / 'map.png'}: cannot write the map: "
                     f"{os.strerror(errno.ENOSPC)}"], r.output


def test_file_names_in_messages_are_escaped_on_one_line(tmp_path: Path) -> None:
    # before: a line break in a name became a space (`new line.png`: another file's name) and a terminal escape
    # character went to the terminal as it is
    a, _ = _pair(tmp_path)
    odd = tmp_path / "new\nline\x1b[2J.png"
    save_image(torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1)), odd)
    r = invoke("compare", a, odd)
    assert r.exit_code == 1, r.output
    assert r.output.splitlines() == [r.output.rstrip("\n")] and "\x1b" not in r.output
    assert "new\\nline\\x1b[2J.png is 24x20" in r.output
    missing = tmp_path / "miss\ning.png"
    for args in (("compare", a, missing), ("theory", a, missing, "--out", tmp_path / "t")):
        r = invoke(*args)
        assert r.exit_code == 1, r.output
        assert r.output.rstrip("\n").endswith("miss\\ning.png") and len(r.output.splitlines()) == 1, r.output
    r = invoke("compare", a, a, "--map", tmp_path / "m\nap.png")
    assert r.exit_code == 0, r.output
    assert "wrote distance map to" in r.output and "m\\nap.png" in r.output


def test_theory_says_what_it_wrote_on_one_line(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, 16)
    out = tmp_path / "t\nout"
    r = invoke("theory", a, b, "--widths", "2,4", "--seeds", "1", "--crop", "8", "--window", "4", "--stride", "4",
               "--out", out)
    assert r.exit_code == 0, r.output
    assert [line for line in r.output.splitlines() if "theory.csv" in line] == [
        f"wrote {tmp_path}/t\\nout/theory.csv, {tmp_path}/t\\nout/theory.md, {tmp_path}/t\\nout/theory.png"]


@pytest.mark.parametrize("bad", ["above", "below", "nan"])
def test_distortion_ladder_refuses_images_outside_the_unit_range(bad: str) -> None:
    # before: accepted; the blurred, noisy and JPEG images were clipped to [0, 1] but the reference and the shifts
    # were not, so the ladder compared an image with partly clipped copies of itself
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    image = {"above": 2 * x, "below": x - 0.5, "nan": x.masked_fill(x > 0.9, float("nan"))}[bad]
    with pytest.raises(ValueError, match=r"outside \[0, 1\]|NaN"):
        distortion_ladder(image)
    ref, names, dist = distortion_ladder(x)  # in range: as before
    assert len(names) == 8 and dist.shape == (8, 3, 16, 14) and torch.equal(ref[0], x[..., :-2])
    # rounding just above 1 (resampling leaves such values) is accepted
    distortion_ladder(x * (1 + 1e-6))
