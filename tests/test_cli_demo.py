"""``patchmmd demo`` end to end on the shipped photo."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from patchmmd.cli import main


def test_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for name in ("shift 1 px", "shift 2 px", "blur σ=1", "blur σ=2", "noise σ=0.03", "noise σ=0.06",
                 "JPEG q=50", "JPEG q=20"):
        assert name in r.output
    assert "MMD++" in r.output and "L2" in r.output
    data = json.loads((out / "demo.json").read_text())
    assert len(data["distortions"]) == 8
    for d in data["distortions"]:
        assert d["MMD++"]["value"] > 0 and d["L2"]["value"] > 0
    ranks = sorted(d["MMD++"]["rank"] for d in data["distortions"])
    assert ranks == list(range(1, 9))
    # the printed ratio has 3 significant digits (it was rounded to 2 decimals: 0.0062 showed as "0.01")
    value = {d["name"]: d["MMD++"]["value"] for d in data["distortions"]}
    ratio = value["shift 1 px"] / value["noise σ=0.03"]
    assert f"MMD++ {ratio:.3g}x" in r.output
    assert "| distortion |" in (out / "demo.md").read_text()
    with Image.open(out / "distance_map.png") as im:
        assert im.format == "PNG"
    # a second run refuses to overwrite, unless asked to
    r = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--image", "nope"])
    assert r.exit_code == 2 and "astronaut" in r.output
