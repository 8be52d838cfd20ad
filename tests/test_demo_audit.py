"""Audit of the demo, the heat map of `compare --map`, the shift check and the lattice measure, against independent
references (SciPy's Gaussian filter, Pillow's JPEG, NumPy's FFT, the Keys cubic kernel written out)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from patchmmd.cli import main
from patchmmd.cli.compare import HEATMAP_MAX_SIDE, save_heatmap
from patchmmd.cli.demo import distortion_ladder
from patchmmd.data import sample_path
from patchmmd.evaluation.artifacts import lattice_power, lattice_ratio
from patchmmd.evaluation.shift import shift_pairs

ndimage = pytest.importorskip("scipy.ndimage")

_LUMA = np.array([0.299, 0.587, 0.114])


def _photo(name: str = "astronaut") -> np.ndarray:
    """The shipped photo as float64 (C, H, W), read with Pillow alone."""
    with sample_path(name).open("rb") as f:
        return np.asarray(Image.open(f).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255


# ------------------------------------------------------------------------------------------------ the demo


def test_demo_distortions_and_numbers_are_what_they_say(tmp_path: Path) -> None:
    x = _photo()
    w = x.shape[-1] - 2
    ref = x[..., :w]
    expected = {f"shift {k} px": x[..., k : k + w] for k in (1, 2)}
    for s in (1, 2):  # torch's "reflect" padding is SciPy's "mirror"; radius ceil(3 sigma)
        expected[f"blur σ={s}"] = np.stack([ndimage.gaussian_filter(c, s, mode="mirror", truncate=3.0)
                                            for c in x])[..., :w]
    g = torch.Generator().manual_seed(0)
    for s in (0.03, 0.06):
        noise = torch.randn((1, *x.shape), generator=g, dtype=torch.float32)[0].double().numpy()
        expected[f"noise σ={s:g}"] = np.clip(x + s * noise, 0, 1)[..., :w]
    for q in (50, 20):
        buf = io.BytesIO()
        Image.fromarray(np.round(x.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buf, "JPEG", quality=q)
        decoded = np.asarray(Image.open(buf).convert("RGB"), np.float64).transpose(2, 0, 1)
        expected[f"JPEG q={q}"] = decoded[..., :w] / 255

    r, names, dist = distortion_ladder(torch.from_numpy(x).float())
    assert names == list(expected) and np.abs(r[0].double().numpy() - ref).max() < 1e-7
    for i, n in enumerate(names):
        assert np.abs(dist[i].double().numpy() - expected[n]).max() < 1e-6, n

    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    assert data["shape"] == [3, x.shape[1], w]
    for row in data["distortions"]:
        mse4 = 4 * float(np.mean((expected[row["name"]] - ref) ** 2))  # L2 is on the [-1, 1] scale
        assert row["L2"]["value"] == pytest.approx(mse4, rel=1e-4), row["name"]
    # the documented noise is clipped: its spread on this photo is a little under the nominal sigma
    assert 0.9 < float(np.std(expected["noise σ=0.03"] - ref)) / 0.03 < 1.0
    assert "clipped to [0, 1]" in (out / "demo.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ the heat map


@pytest.mark.parametrize("shape", [(3, 6000), (6000, 3)])
def test_heatmap_of_an_elongated_image_stays_a_few_megapixels(tmp_path: Path, shape: tuple[int, int]) -> None:
    # before: the dots per inch grew with the long side and the fixed-size title and colour bar with them:
    # 7732 x 1725 px for a 3 x 6000 map (1.7 gigapixels and 9 GB for 3 x 50000)
    path = tmp_path / "map.png"
    save_heatmap(torch.rand(1, *shape), torch.rand(*shape), path, title="t")
    with Image.open(path) as im:
        assert max(im.size) <= 1.5 * HEATMAP_MAX_SIDE, im.size


def test_heatmap_keeps_full_resolution_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "map.png"
    save_heatmap(torch.rand(1, 64, HEATMAP_MAX_SIDE), torch.rand(64, HEATMAP_MAX_SIDE), path, title="t")
    with Image.open(path) as im:
        assert im.size[0] >= HEATMAP_MAX_SIDE  # at least one figure pixel per image pixel


# ------------------------------------------------------------------------------------------------ the shift check


def _keys(t: float, a: float = -0.5) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def test_shift_pairs_against_independent_references() -> None:
    x = _photo("coffee")[:, :40, :52]
    p = shift_pairs(torch.from_numpy(x), seed=0)
    h, w = x.shape[1:]
    ref = x[:, 2 : h - 2, 2 : w - 2]
    crops = {"shift-1px": x[:, 2 : h - 2, 3 : w - 1], "shift-1px-diag": x[:, 3 : h - 1, 3 : w - 1],
             "shift-2px": x[:, 2 : h - 2, 4:]}
    for k, v in crops.items():
        assert np.array_equal(p[k][0].numpy(), ref) and np.array_equal(p[k][1].numpy(), v), k
    # half a pixel: the Keys kernel (a = -0.5) evaluated at the four neighbours' distances
    half = sum(_keys(0.5 - j) * x[:, 2 : h - 2, 2 + j : w - 2 + j] for j in (-1, 0, 1, 2))
    assert np.abs(p["shift-0.5px"][1].numpy() - np.clip(half, 0, 1)).max() < 1e-12
    # it reproduces a quadratic exactly, and a band-limited half-pixel shift of a smooth image closely
    t = np.arange(40.0)
    quad = np.broadcast_to(0.2 + 0.5 * t / 40 + 0.3 * (t / 40) ** 2, (1, 16, 40)).copy()
    got = shift_pairs(torch.from_numpy(quad))["shift-0.5px"][1][0, 0].numpy()
    assert np.abs(got - (0.2 + 0.5 * (t[2:-2] + 0.5) / 40 + 0.3 * ((t[2:-2] + 0.5) / 40) ** 2)).max() < 1e-12
    smooth = ndimage.gaussian_filter(x, (0, 2, 2), mode="wrap")
    k = np.fft.fftfreq(w)
    fourier = np.real(np.fft.ifft(np.fft.fft(smooth, axis=-1) * np.exp(2j * np.pi * k * 0.5), axis=-1))
    got = shift_pairs(torch.from_numpy(smooth))["shift-0.5px"][1].numpy()
    step = np.abs(smooth[:, 2 : h - 2, 3 : w - 1] - smooth[:, 2 : h - 2, 2 : w - 2]).max()
    assert np.abs(got - fourier[:, 2 : h - 2, 2 : w - 2]).max() < 0.02 * step
    # the mild distortions: seeded noise of sigma 0.03 (clipped) and SciPy's Gaussian blur of the crop
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert np.abs(p["noise"][1].numpy() - np.clip(ref + 0.03 * noise, 0, 1)).max() < 1e-12
    blur = np.stack([ndimage.gaussian_filter(c, 1.0, mode="mirror", truncate=3.0) for c in ref])
    assert np.abs(p["blur"][1].numpy() - blur).max() < 1e-12


def test_shift_pairs_refuse_a_bad_seed_and_integer_images() -> None:
    x = torch.rand(3, 16, 16)
    for seed in (-1, 2**63, 1.5):
        with pytest.raises(ValueError, match="seed"):  # before: -1 wrapped around silently to 2**64 - 1
            shift_pairs(x, seed=seed)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):  # before: NotImplementedError from torch.randn
        shift_pairs((x * 255).to(torch.uint8))
    assert torch.equal(shift_pairs(x, seed=np.int64(3))["noise"][1], shift_pairs(x, seed=3)["noise"][1])


# ------------------------------------------------------------------------------------------------ the lattice


@pytest.mark.parametrize(("h", "w", "period"), [(32, 48, 4), (64, 64, 2), (24, 36, 3), (40, 40, 8)])
def test_lattice_power_is_the_fft_power_at_the_lattice_bins(h: int, w: int, period: int) -> None:
    g = torch.Generator().manual_seed(h + w + period)
    imgs = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    expected = []
    for lum in np.tensordot(_LUMA, imgs.numpy(), axes=([0], [1])):
        power = np.abs(np.fft.fft2(lum - lum.mean())) ** 2 / (h * w)
        expected.append(sum(power[i * h // period, j * w // period]
                            for i in range(period) for j in range(period) if i or j))
    assert np.allclose(lattice_power(imgs, period).numpy(), expected, rtol=1e-12, atol=0)
    # a pure lattice (one tile repeated) has all its energy at those bins: Parseval, the luma's squared deviations
    tile = torch.rand(3, period, period, generator=g, dtype=torch.float64)
    lattice = tile.repeat(1, h // period, w // period)
    lum = np.tensordot(_LUMA, lattice.numpy(), axes=([0], [0]))
    assert float(lattice_power(lattice, period)) == pytest.approx(float(((lum - lum.mean()) ** 2).sum()), rel=1e-12)
    # and a lattice added to an image raises the ratio by exactly its power where the image has none
    flat = torch.full((1, 3, h, w), 0.5, dtype=torch.float64)
    base = flat + 0.05 * torch.cos(2 * torch.pi * torch.arange(w, dtype=torch.float64) / w)  # bin 1 only
    assert lattice_ratio(base + lattice[None] * 0.1, base + lattice[None] * 0.05, period) == pytest.approx(4.0)


def test_lattice_refuses_what_it_cannot_measure() -> None:
    x = torch.rand(1, 3, 16, 16)
    assert float(lattice_power(x, np.int64(4))) == float(lattice_power(x, 4))
    for period in (4.0, "4", True, 1):
        with pytest.raises(ValueError, match="period"):  # before: 4.0 a slicing TypeError, "4" a comparison one
            lattice_power(x, period)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):  # before: RGBA averaged with its alpha, not BT.601 luma
        lattice_power(torch.rand(1, 4, 16, 16))
    assert float(lattice_power(x[:, :1])) == pytest.approx(float(lattice_power(x[:, :1].expand(1, 3, 16, 16))))
