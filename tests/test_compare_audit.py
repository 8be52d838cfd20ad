"""``patchmmd compare`` and :mod:`patchmmd.runtime` against what docs/cli.md promises: the device parser (each
documented behaviour, and the device strings it must refuse), and ``--map`` with odd file names and paths."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_runner import invoke
from patchmmd import mmdpp, runtime
from patchmmd.io import load_image, save_image
from patchmmd.runtime import DeviceError, compiled_kernels_status, resolve_device, shape_text


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 32, 32, generator=g)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_image(x, a)
    save_image((x + 0.1 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1), b)
    return a, b


def non_utf8_copy(image: Path, folder: Path) -> str:
    """A copy of ``image`` in ``folder`` named ``bad\\xff.png`` (not valid UTF-8), as the str Python gives for it;
    the test is skipped where the file system refuses such names."""
    name = os.fsdecode(os.fsencode(folder) + b"/bad\xff.png")
    try:
        Path(name).write_bytes(image.read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    return name


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with cuda:0 and cuda:1 as far as :func:`resolve_device` can tell (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --- patchmmd.runtime: each documented behaviour ---------------------------------------------------------------


@pytest.mark.usefixtures("no_gpu")
def test_resolve_device_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")  # case and surrounding spaces ignored
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")  # no GPU: a launch computes on the CPU
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for device, what in (("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available"),
                         ("mps", "MPS is not available"), ("gpu0", "device must be"), ("", "device must be")):
        with pytest.raises(DeviceError, match=what):
            resolve_device(device)
    assert issubclass(DeviceError, ValueError)


@pytest.mark.usefixtures("two_gpus")
def test_resolve_device_with_gpus() -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # one GPU per process of a launch
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index is kept
    with pytest.raises(DeviceError, match="LOCAL_RANK=2 but this node has 2 GPU"):
        resolve_device("auto", local_rank=2)


def test_resolve_device_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert resolve_device(" MPS ") == torch.device("mps")


def test_shape_text_and_kernels_status() -> None:
    assert shape_text(torch.zeros(3, 20, 30)) == "30x20 (3 channels)"
    assert shape_text(torch.zeros(2, 1, 4, 5)) == "5x4 (1 channel)"
    assert compiled_kernels_status().startswith(("in use (", "off: "))


# --- device strings that torch parses but that name no supported device -----------------------------------------


@pytest.mark.parametrize("device", ["meta", "xpu", "hip", "lazy", "vulkan", "privateuseone"])
def test_device_types_other_than_cpu_cuda_mps_are_refused(pair: tuple[Path, Path], device: str) -> None:
    # torch.device accepts them, so they used to get through and fail only when computing (exit status 1, with
    # torch's message: "Tensor.item() cannot be called on meta tensors", "Torch not compiled with XPU enabled", or
    # for privateuseone a wrong "needs an optional dependency")
    with pytest.raises(DeviceError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        resolve_device(device)
    r = invoke("compare", *pair, "-m", "l2", "--device", device)
    assert r.exit_code == 2, r.output
    assert "--device" in r.output and f"got {device!r}" in r.output


@pytest.mark.usefixtures("two_gpus")
def test_a_cuda_index_beyond_the_machines_gpus_is_refused(pair: tuple[Path, Path]) -> None:
    # `--device cuda:7` on a machine with fewer GPUs used to pass the parser and fail when moving the images
    # ("CUDA error: invalid device ordinal", exit status 1), unlike every other unavailable device
    for device in ("cuda:2", "cuda:7", torch.device("cuda", 7)):
        with pytest.raises(DeviceError, match=r"this machine has 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
            resolve_device(device)
        with pytest.raises(DeviceError, match="has 2 GPU"):
            resolve_device(device, local_rank=0)
    r = invoke("compare", *pair, "-m", "l2", "--device", "cuda:7")
    assert r.exit_code == 2, r.output
    assert "--device" in r.output and "has 2 GPU(s)" in r.output


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "foo"])
def test_unavailable_devices_are_a_usage_error(pair: tuple[Path, Path], device: str) -> None:
    r = invoke("compare", *pair, "--device", device)
    assert r.exit_code == 2, r.output
    assert "Invalid value for --device" in r.output and "Traceback" not in r.output


# --- the value printed -----------------------------------------------------------------------------------------


def test_the_printed_value_is_exact(pair: tuple[Path, Path]) -> None:
    x, y = load_image(pair[0]), load_image(pair[1])
    expected = float(mmdpp(x, y))
    r = invoke("compare", *pair, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert float(r.output) == expected  # every digit: the value round-trips
    r = invoke("compare", *pair, "--device", "cpu", "--json")
    assert json.loads(r.output)["distance"] == expected


# --- --map -----------------------------------------------------------------------------------------------------


def test_map_is_a_png_at_exactly_the_path_given(pair: tuple[Path, Path], tmp_path: Path) -> None:
    # matplotlib picks the format from the suffix: `--map where` wrote `where.png` (not the file checked: an
    # existing where.png was replaced without --overwrite), `--map m.jpg` a JPEG, `--map m.txt` failed after
    # the metric ran
    existing = tmp_path / "where.png"
    existing.write_bytes(b"keep me")
    for name in ("where", "m.jpg", "m.txt"):
        out = tmp_path / name
        r = invoke("compare", *pair, "--map", out)
        assert r.exit_code == 0, r.output
        with Image.open(out) as im:
            assert im.format == "PNG"
    assert existing.read_bytes() == b"keep me"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names that are not UTF-8 need Linux")
def test_map_with_file_names_that_are_not_utf8(pair: tuple[Path, Path], tmp_path: Path) -> None:
    # the title drew the name's lone surrogate: matplotlib raised (a one-line TypeError, exit 1) and no map
    b = non_utf8_copy(pair[1], tmp_path)
    out = os.fsdecode(os.fsencode(tmp_path) + b"/map\xff.png")
    r = invoke("compare", pair[0], b, "--map", out)
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.format == "PNG"


def test_map_with_dollar_signs_in_file_names(pair: tuple[Path, Path], tmp_path: Path) -> None:
    # the title was read as matplotlib mathtext: `a$^{.png` vs `b$.png` failed with a ParseSyntaxException (exit 1)
    a, b = tmp_path / "a$^{.png", tmp_path / "b$.png"
    a.write_bytes(pair[0].read_bytes())
    b.write_bytes(pair[1].read_bytes())
    r = invoke("compare", a, b, "--map", tmp_path / "m.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.png").is_file()


def test_usage_errors_create_no_map_folder(pair: tuple[Path, Path], tmp_path: Path) -> None:
    for args in (["--device", "foo"], ["-o", "seed=-1"]):
        r = invoke("compare", *pair, "--map", tmp_path / "new" / "m.png", *args)
        assert r.exit_code == 2, r.output
        assert not (tmp_path / "new").exists()


def test_a_symbolic_link_leading_nowhere_is_an_existing_output(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """``--map`` (compare) and ``--out`` (score) at a symbolic link whose target does not exist: before, the link
    did not count as an existing output and was replaced without ``--overwrite``."""
    a, b = pair
    link = tmp_path / "where.png"
    link.symlink_to(tmp_path / "nowhere" / "x.png")
    r = invoke("compare", str(a), str(b), "--map", str(link))
    assert r.exit_code == 2 and "already exist" in r.output and "--overwrite" in r.output, r.output
    assert link.is_symlink()
    r = invoke("compare", str(a), str(b), "--map", str(link), "--overwrite")
    assert r.exit_code == 0 and not link.is_symlink() and link.read_bytes().startswith(b"\x89PNG"), r.output

    from test_scoring import _images

    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["a.png", "b.png"])
    _images(dist, ["a.png", "b.png"], seed=1)
    out = tmp_path / "s.csv"
    out.symlink_to(tmp_path / "nowhere" / "s.csv")
    r = invoke("score", str(ref), str(dist), "--out", str(out), "-m", "l2")
    assert r.exit_code == 2 and "already exist" in r.output, r.output
    assert out.is_symlink()
    r = invoke("score", str(ref), str(dist), "--out", str(out), "-m", "l2", "--overwrite")
    assert r.exit_code == 0 and not out.is_symlink() and out.read_text().startswith("ref,"), r.output
