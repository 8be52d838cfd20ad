from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from patchmmd.data import sample_image
from patchmmd.data.distortions import gaussian_blur, jpeg

LIVE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "live-dev"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def bp() -> ModuleType:
    """benchmarks/bench_perf.py as a module."""
    from test_benchmarks import _load

    return _load("bench_perf")


@pytest.fixture(scope="module")
def ab() -> ModuleType:
    """benchmarks/ab_revisions.py as a module."""
    from test_benchmarks import _load

    return _load("ab_revisions")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two random 48x32 RGB photos (PNG): training data for the task commands' quick runs."""
    from PIL import Image  # Pillow comes with the cli extra

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="session")
def live_dev() -> Path:
    if not (LIVE_DEV / "labels.csv").exists():
        pytest.skip(f"live-dev data not found at {LIVE_DEV}")
    return LIVE_DEV


@pytest.fixture(scope="session")
def photo_crop_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """24 real 64x64 crops of the shipped photos with four distortions (noise, blur, JPEG, 1-px shift), float64."""
    gen = np.random.default_rng(0)
    xs, ys = [], []
    for name in ("astronaut", "chelsea", "coffee"):
        img = sample_image(name, dtype=torch.float64)
        _, h, w = img.shape
        for t in range(8):
            i, j = int(gen.integers(0, h - 70)), int(gen.integers(0, w - 70))
            ref = img[:, i : i + 64, j : j + 64]
            kind = t % 4
            if kind == 0:
                dist = (ref + torch.from_numpy(gen.normal(0, 0.04, ref.shape))).clamp(0, 1)
            elif kind == 1:
                dist = gaussian_blur(img[:, i : i + 70, j : j + 70], 1.0)[:, :64, :64]
            elif kind == 2:
                dist = jpeg(ref, 20)
            else:
                dist = img[:, i + 1 : i + 65, j + 1 : j + 65]
            xs.append(ref)
            ys.append(dist)
    return torch.stack(xs), torch.stack(ys)
