"""Without Pillow (``import patchmmd`` does not need it), the functions that read or write image files say what
to install instead of failing with a bare ``No module named 'PIL'``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from patchmmd.data import sample_image, sample_path
from patchmmd.data.distortions import jpeg
from patchmmd.io import load_image, save_image


@pytest.fixture
def no_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` raises ImportError


@pytest.mark.parametrize("call", [
    lambda tmp: load_image(sample_path("coffee")),
    lambda tmp: save_image(torch.zeros(3, 4, 4), tmp / "a.png"),
    lambda tmp: sample_image("coffee"),
    lambda tmp: jpeg(torch.zeros(3, 8, 8), 50),
], ids=["load_image", "save_image", "sample_image", "jpeg"])
def test_image_files_without_pillow_say_how_to_install_it(no_pillow: None, tmp_path: Path, call) -> None:
    with pytest.raises(ImportError, match=r"needs Pillow .*pip install 'patchmmd\[cli\]'") as info:
        call(tmp_path)
    assert isinstance(info.value.__cause__, ImportError)
    assert not (tmp_path / "a.png").exists()


def test_the_distances_need_no_pillow(no_pillow: None) -> None:
    from patchmmd import mmdpp

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(mmdpp(x, x)) == 0.0
