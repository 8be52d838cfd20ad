"""The registry's PSNR and SSIM metrics take the options their range errors tell the user to pass.

The errors of ``psnr`` say "pass data_range=255", those of ``ssim`` "out_of_range='clamp' / 'ignore'", but the
registry's ``psnr`` took only ``max_db`` and its ``ssim`` only ``win_size``: following the hint was refused as an
unknown option.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from patchmmd.metrics import get_metric
from patchmmd.metrics.classic import psnr, ssim

pytest.importorskip("pytorch_msssim")


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g)
    return x, (x + 0.1 * torch.rand(2, 3, 24, 24, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", ["psnr", "ssim", "ssim-downsampled"])
def test_every_option_a_range_error_names_is_accepted(name: str) -> None:
    x, y = _pair()
    with pytest.raises(ValueError, match="outside") as err:
        get_metric(name)(x * 255, y * 255)
    named = set(re.findall(r"(\w+)=", str(err.value)))
    assert named, err.value
    value = {"data_range": 255.0, "out_of_range": "clamp"}
    metric = get_metric(name, **{k: value[k] for k in named})
    assert torch.isfinite(pickle.loads(pickle.dumps(metric))(x * 255, y * 255)).all()


def test_the_options_give_the_functions_numbers() -> None:
    x, y = _pair()
    torch.testing.assert_close(get_metric("psnr", data_range=255.0)(x * 255, y * 255),
                               psnr(x * 255, y * 255, data_range=255.0))
    torch.testing.assert_close(get_metric("psnr", data_range=255.0)(x * 255, y * 255), psnr(x, y))
    over = x * 1.05
    torch.testing.assert_close(get_metric("ssim", out_of_range="clamp")(over, y),
                               ssim(over.clamp(0, 1), y))
    torch.testing.assert_close(get_metric("ssim", out_of_range="ignore")(over, y),
                               ssim(over, y, out_of_range="ignore"))


@pytest.mark.parametrize(("name", "options", "message"), [
    ("psnr", {"data_range": 0}, "data_range must be a finite number > 0"),
    ("ssim", {"out_of_range": "wrap"}, "out_of_range must be one of"),
])
def test_bad_option_values_are_refused_when_built(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_metric(name, **options)


def test_the_command_line_refuses_a_range_other_than_its_files(tmp_path: Path) -> None:
    """Image files are read in [0, 1]: ``compare -m psnr -o data_range=255`` gave a PSNR 48 dB too high, and
    ``-o value_range=[0,255]`` a distance of the wrong scale. Other ranges are refused; the files' own is accepted."""
    from cli_runner import invoke
    from patchmmd.io import save_image

    x, y = _pair()
    save_image(x[0], tmp_path / "a.png")
    save_image(y[0], tmp_path / "b.png")
    for args in (["-m", "psnr", "-o", "data_range=255"], ["-m", "mmdpp", "-o", "value_range=[0,255]"]):
        r = invoke("compare", tmp_path / "a.png", tmp_path / "b.png", *args)
        assert r.exit_code == 2 and "reads image files in [0, 1]" in r.output, r.output
    r = invoke("compare", tmp_path / "a.png", tmp_path / "b.png", "-m", "psnr", "-o", "data_range=1", "--json")
    assert r.exit_code == 0, r.output
