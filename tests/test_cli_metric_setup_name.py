"""A metric that cannot be built is named once in the usage error, also when its own message names it."""

from __future__ import annotations

from pathlib import Path

from cli_runner import invoke
from patchmmd.data import sample_image
from patchmmd.io import save_image


def test_the_metric_is_named_once(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_image(sample_image("astronaut")[:, :32, :32], a)
    save_image(sample_image("coffee")[:, :32, :32], b)
    r = invoke("compare", a, b, "-m", "vgg", "-o", f"weights={tmp_path / 'missing.pth'}", "--device", "cpu")
    assert r.exit_code == 2 and "vgg: weights file not found" in r.output and "vgg: vgg:" not in r.output, r.output
    r = invoke("compare", a, b, "-o", "num_features=0", "--device", "cpu")
    assert r.exit_code == 2 and "mmdpp: num_features must be" in r.output, r.output
