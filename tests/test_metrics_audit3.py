"""Third audit of the metrics library (:mod:`patchmmd.metrics`), as a user of lpips / piq / torchmetrics meets it: PSNR
of 16-bit images, metric modules converted to 16 bits, weight files that are meta tensors, devices, FIFOs, or names
the file system refuses.

Everything runs on small random weights (no published weights, no download).
"""

from __future__ import annotations

import copy
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from patchmmd.metrics.dists import DISTS
from patchmmd.metrics.lpips import LPIPS
from patchmmd.metrics.weights import WeightsError, load_weights


def _load(path: object) -> dict[str, torch.Tensor]:
    return load_weights(path, what="a head", metric="demo", option="weights")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ modules in 16 bits


@pytest.mark.parametrize("make", [lambda: LPIPS("alex"), lambda: LPIPS("vgg"), DISTS], ids=["alex", "vgg", "dists"])
def test_a_deep_baseline_converted_to_16_bits_is_refused_naming_the_fix(make: object) -> None:
    # m.half() stopped the call in "Input type (float) and bias type (c10::Half) should be the same"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = make()  # type: ignore[operator]  # random weights: the dtype does not depend on them
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 40, 40, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    want = m(x, y)
    # float64 still works (.double()), and gives the float32 value
    torch.testing.assert_close(copy.deepcopy(m).double()(x, y), want.double(), rtol=1e-4, atol=1e-6)
    for convert in (lambda n: n.half(), lambda n: n.to(torch.bfloat16)):
        convert(m)
        with pytest.raises(TypeError, match=r"weights were converted to torch\.(b?float16), but it computes in "
                                            r"float32 .*convert the module back with \.float\(\)$"):
            m(x, y)
    assert m.float()(x, y).dtype == torch.float32  # what the message says works


# --------------------------------------------------------------------------------------------------- weight files


def test_a_weight_file_of_meta_tensors_is_refused(tmp_path: Path) -> None:
    # a state dict saved before its weights were loaded: "Tensor.item() cannot be called on meta tensors"
    path = tmp_path / "meta.pt"
    torch.save({"w": torch.empty(2, device="meta")}, path)
    with pytest.raises(WeightsError, match=r"meta\.pt: w is a meta tensor \(a shape without values\)"):
        _load(path)


def test_a_weight_file_with_one_name_twice_names_both_keys(tmp_path: Path) -> None:
    # the message said "with and without the 'module.' prefix" of the keys 0 and "0"
    path = tmp_path / "twice.pt"
    torch.save({0: torch.ones(2), "0": torch.ones(2)}, path)
    with pytest.raises(WeightsError, match=r"twice\.pt holds 0 twice, as 0 and '0'$"):
        _load(path)
    torch.save({"w": torch.ones(2), "module.w": torch.ones(2)}, path)
    with pytest.raises(WeightsError, match=r"twice\.pt holds w twice, as 'w' and 'module\.w'$"):
        _load(path)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_weight_path_that_is_no_regular_file_is_said_to_be_one(tmp_path: Path, kind: str) -> None:
    # "weights file not found: /dev/null" of a path that exists
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        path = Path(os.devnull)
        if not path.exists() or os.name == "nt":
            pytest.skip("no device file here")
    with pytest.raises(WeightsError, match=r"^demo: weights .* is not a regular file; give the file itself") as e:
        _load(path)
    assert not isinstance(e.value, FileNotFoundError)


def test_a_weight_path_the_file_system_refuses_is_a_weights_error(tmp_path: Path) -> None:
    # a name too long for the file system raised a bare OSError from the folder check ("[Errno 36] File name too
    # long"), not the WeightsError every failure of the reader is
    with pytest.raises(WeightsError, match=r"^demo: cannot open weights file .*a{40}"):
        _load(tmp_path / ("a" * 4000 + ".pth"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"^demo: cannot open weights file .*file/x\.pth: "):
        _load(tmp_path / "file" / "x.pth")  # a file on the way: "Not a directory"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_put_in_the_place_of_a_weight_file_is_refused_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the file was opened with a blocking open(): a FIFO put in its place after the check that it is a regular file
    # (here: that check is told so) hung the job until something wrote to the FIFO
    path = tmp_path / "w.pth"
    os.mkfifo(path)
    real_stat = os.stat

    def stat_says_regular(p: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real_stat(p, *args, **kwargs)  # type: ignore[arg-type]
        if os.fspath(p) == os.fspath(path):  # type: ignore[arg-type]
            return os.stat_result((stat.S_IFREG | 0o600, *st[1:]))
        return st

    monkeypatch.setattr(os, "stat", stat_says_regular)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            _load(path)
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    blocked = thread.is_alive()
    if blocked:  # release the reader (a writer that closes at once: the reader sees an empty file)
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
    assert not blocked, "the reader waited on the FIFO"
    assert len(errors) == 1 and isinstance(errors[0], WeightsError), errors
    assert "not a regular file" in str(errors[0])
