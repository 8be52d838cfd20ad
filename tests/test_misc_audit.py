"""Regression tests of the audit of the distortions, the sample data, the device parser and the ``demo``,
``theory`` and ``metrics`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd.cli.demo import distortion_ladder
from patchmmd.data import distortion_suite
from patchmmd.data.distortions import gaussian_blur, jpeg
from patchmmd.io import save_image
from patchmmd.runtime import DeviceError, resolve_device

THEORY_ARGS = ("--widths", "4,8", "--seeds", "1", "--crop", "8", "--window", "4", "--stride", "4")


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _photo_pair(folder: Path, size: int = 16) -> tuple[Path, Path]:
    x = _rand(3, size, size)
    a, b = folder / "a.png", folder / "b.png"
    save_image(x, a)
    save_image((x + 0.1 * _rand(3, size, size, seed=1)).clamp(0, 1), b)
    return a, b


@pytest.fixture
def meta_default_device() -> Iterator[None]:
    """The caller's default device set to one the functions must not use for their own tensors (``meta`` stands
    in for ``torch.set_default_device("cuda")``, which broke them the same way, on a machine without a GPU)."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def test_theory_writes_its_report_for_image_names_that_are_not_utf8(tmp_path: Path) -> None:
    # before: theory.md was written after the whole sweep with the raw name, whose lone surrogate failed the
    # write (UnicodeEncodeError, exit status 1, theory.md empty and no theory.png)
    a, b = _photo_pair(tmp_path)
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.png")
    try:
        Path(bad).write_bytes(b.read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    res = invoke("theory", a, bad, *THEORY_ARGS, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "theory.md").read_text(encoding="utf-8")
    assert "bad\\xff.png" in md
    assert (tmp_path / "out" / "theory.png").is_file()


def test_theory_crops_of_different_sizes_are_a_failure_not_a_usage_error(tmp_path: Path) -> None:
    # docs/cli.md, "Exit statuses": images that do not match are a failure (exit status 1), as in `compare`;
    # before: a usage error (exit status 2)
    a, _ = _photo_pair(tmp_path, size=16)
    small = tmp_path / "small.png"
    save_image(_rand(3, 6, 6), small)
    res = invoke("theory", a, small, *THEORY_ARGS, "--out", tmp_path / "out")
    assert res.exit_code == 1, res.output
    assert "patchmmd: error: the crops differ in size" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_gaussian_blur_is_the_same_inside_autocast() -> None:
    # before: the convolutions ran in bfloat16 under CPU autocast (errors of 4e-3, an 8-bit level)
    x = _rand(1, 3, 32, 32)
    outside = gaussian_blur(x, 1.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gaussian_blur(x, 1.5)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, outside, rtol=0, atol=1e-6)


def test_jpeg_refuses_sides_over_the_format_limit() -> None:
    # before: Pillow's "broken data stream when writing image file" (OSError)
    with pytest.raises(ValueError, match="65500"):
        jpeg(torch.rand(1, 1, 65501), 50)
    with pytest.raises(ValueError, match="65500"):
        jpeg(torch.rand(1, 65501, 1), 50)
    assert jpeg(torch.rand(1, 1, 65500), 50).shape == (1, 1, 65500)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "3", None])
def test_the_distortions_check_their_seed(seed: object) -> None:
    # before: -1 was taken as 2**64 - 1 without a word, the others failed in torch.Generator.manual_seed
    with pytest.raises(ValueError, match="seed"):
        distortion_ladder(_rand(3, 16, 16), seed=seed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        distortion_suite(4, seed=seed)  # type: ignore[arg-type]


@pytest.mark.usefixtures("meta_default_device")
def test_the_distortions_ignore_the_callers_default_device() -> None:
    # before: the blur's taps and the seeded noise followed torch's default device (the noise's CPU generator
    # then failed on it, the taps could not be copied out of it)
    x = torch.rand(3, 16, 16, device="cpu")
    torch.set_default_device(None)
    blurred, ladder, suite = gaussian_blur(x, 1.0), distortion_ladder(x)[2], distortion_suite(8)[1]
    torch.set_default_device("meta")
    assert torch.equal(gaussian_blur(x, 1.0), blurred)
    assert torch.equal(distortion_ladder(x)[2], ladder)
    assert torch.equal(distortion_suite(8)[1], suite)


@pytest.mark.parametrize("device", [torch.device("meta"), torch.device("xpu")])
def test_resolve_device_refuses_unsupported_device_objects(device: torch.device) -> None:
    # before: a torch.device was returned unchecked, though the same device as a string is refused
    with pytest.raises(DeviceError, match="device must be"):
        resolve_device(device)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `patchmmd metrics | head`: the broken pipe was reported as "patchmmd: error: [Errno 32] Broken pipe"
    p = subprocess.Popen([sys.executable, "-m", "patchmmd", "metrics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before the command writes (importing torch takes far longer)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and err == ""  # click's own ending for a closed stdout
