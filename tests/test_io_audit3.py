"""``patchmmd.io`` on what two earlier audits left: PBM/PNM files in a folder, empty files, save_image's errors, and
reads checked against references computed here (numpy, written byte by byte): TIFF Orientation tags, interlaced
PNG, PGM/PPM of any maxval, 16-bit gray + alpha PNG, BMP with an alpha mask, GIF frames larger than their screen,
and luminance of images with alpha. No expected value is computed by the code under test."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchmmd.io import IMAGE_SUFFIXES, ImageReadError, ImageTooLargeError, load_image, save_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(a: np.ndarray, depth: int, colour_type: int, *, interlaced: bool = False) -> bytes:
    """A PNG of the samples ``a`` ((H, W) or (H, W, S)), filter 0, Adam7-interlaced if asked (the passes taken
    with numpy slicing as the PNG standard lists them)."""
    h, w = a.shape[:2]
    sample = ">u2" if depth == 16 else "u1"
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    images = [a[y0::dy, x0::dx] for x0, y0, dx, dy in passes] if interlaced else [a]
    raw = b"".join(b"\x00" + row.astype(sample).tobytes() for sub in images if sub.size for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])).double()


# ------------------------------------------------------------------------------------------- fixes
@pytest.mark.parametrize("suffix", [".pbm", ".pnm"])
def test_pbm_and_pnm_files_are_images_of_a_folder(tmp_path: Path, suffix: str) -> None:
    # PBM/PGM/PPM files are read, but .pbm and .pnm were not image suffixes: a folder of them was "no image files"
    # and `score` listed them as other files, ignored.
    from patchmmd.scoring import jobs

    assert suffix in IMAGE_SUFFIXES
    bits = np.array([[0, 1, 1, 0, 1, 0, 0, 1, 1, 1]], bool)  # 1 = black in PBM
    rows = np.packbits(bits, axis=1).tobytes()
    for folder in ("ref", "dist"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"b{suffix}").write_bytes(b"P4\n10 1\n" + rows)
    job = jobs.paired_tasks(tmp_path / "ref", tmp_path / "dist")
    assert [t.ref for t in job.tasks] == [f"b{suffix}"]
    assert torch.equal(load_image(tmp_path / "ref" / f"b{suffix}", mode="keep", dtype=torch.float64),
                       _chw(1.0 - bits))


def test_an_empty_file_is_said_to_be_empty(tmp_path: Path) -> None:
    # it was "not a file of the formats read (PNG, JPEG, ...)", for a file named .png that is merely empty
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"cannot read .*e\.png as an image: the file is empty"):
        load_image(tmp_path / "e.png")


def test_save_image_errors_from_pillow_name_the_file_and_format(tmp_path: Path) -> None:
    # Pillow's reasons ("cannot write mode LA as JPEG", "cannot write empty image") named neither
    with pytest.raises(OSError, match=r"save_image: cannot write .*x\.jpg as JPEG: cannot write mode LA"):
        save_image(torch.rand(2, 4, 4), tmp_path / "x.jpg")
    with pytest.raises(OSError, match=r"cannot write .*x\.ppm as PPM: cannot write mode LA"):
        save_image(torch.rand(2, 4, 4), tmp_path / "x.ppm")
    with pytest.raises(ValueError, match=r"cannot write .*x\.png as PNG: cannot write empty image"):
        save_image(torch.rand(3, 0, 4), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- values against references
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_tiffs_own_orientation_tag_is_applied(tmp_path: Path, orientation: int) -> None:
    tiff = pytest.importorskip("tifffile")
    a = np.arange(15, dtype=np.uint8).reshape(3, 5) * 10
    shown = {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.T, 6: np.rot90(a, -1), 7: np.rot90(a, 2).T,
             8: np.rot90(a, 1)}[orientation]  # the EXIF/TIFF standard's meaning of each value
    tiff.imwrite(tmp_path / "o.tif", a, extratags=[(274, 3, 1, orientation, True)])
    assert torch.equal(load_image(tmp_path / "o.tif", mode="L", dtype=torch.float64), _chw(shown / 255.0))


def test_interlaced_pngs_read_as_the_samples_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (11, 13, 3))
    gray16 = rng.integers(0, 65536, (11, 13))
    (tmp_path / "c.png").write_bytes(_png(rgb, 8, 2, interlaced=True))
    (tmp_path / "g.png").write_bytes(_png(gray16, 16, 0, interlaced=True))
    assert torch.equal(load_image(tmp_path / "c.png", mode="keep", dtype=torch.float64), _chw(rgb / 255.0))
    assert torch.equal(load_image(tmp_path / "g.png", mode="L", dtype=torch.float64), _chw(gray16 / 65535.0))


@pytest.mark.parametrize("maxval", [1, 15, 100, 256, 1000, 65534])
def test_pgm_of_any_maxval_reads_within_half_a_step_of_v_over_maxval(tmp_path: Path, maxval: int) -> None:
    # Pillow rescales to 0..255 (maxval below 255) or 0..65535 (above), rounding
    v = np.random.default_rng(maxval).integers(0, maxval + 1, (4, 6))
    v[0, :2] = maxval, 0
    sample = "u1" if maxval < 256 else ">u2"
    (tmp_path / "raw.pgm").write_bytes(f"P5\n6 4\n{maxval}\n".encode() + v.astype(sample).tobytes())
    (tmp_path / "plain.pgm").write_bytes(f"P2\n6 4\n{maxval}\n".encode() + " ".join(map(str, v.ravel())).encode())
    step = 255 if maxval < 256 else 65535
    for name in ("raw.pgm", "plain.pgm"):
        got = load_image(tmp_path / name, mode="L", dtype=torch.float64)
        assert (got - _chw(v / maxval)).abs().max().item() <= 0.5 / step + 1e-12
        assert got.max().item() == 1.0 and got.min().item() == 0.0


def test_a_16_bit_gray_and_alpha_png_warns_and_keeps_its_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    la = rng.integers(0, 65536, (3, 5, 2))
    (tmp_path / "la.png").write_bytes(_png(la, 16, 4))
    with pytest.warns(RuntimeWarning, match="16-bit colour PNG is read at 8-bit precision"):
        keep = load_image(tmp_path / "la.png", mode="keep", dtype=torch.float64)
    g, a = la[..., 0] / 65535.0, la[..., 1] / 65535.0
    assert keep.shape == (4, 3, 5)
    want = _chw(np.dstack([g, g, g, a]))
    assert (keep - want).abs().max().item() < 1 / 255  # the top 8 bits of each sample, over 255


def test_a_bmp_with_an_alpha_mask_reads_its_alpha(tmp_path: Path) -> None:
    # BITMAPV4HEADER, BI_BITFIELDS with an alpha mask: bottom-up rows of B, G, R, A bytes
    rgba = np.random.default_rng(2).integers(0, 256, (4, 5, 4)).astype(np.uint8)
    pixels = rgba[::-1][..., [2, 1, 0, 3]].tobytes()
    dib = (struct.pack("<IiiHHIIiiII", 108, 5, 4, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
           + struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"sRGB" + bytes(48))
    head = b"BM" + struct.pack("<IHHI", 14 + len(dib) + len(pixels), 0, 0, 14 + len(dib))
    (tmp_path / "a.bmp").write_bytes(head + dib + pixels)
    assert torch.equal(load_image(tmp_path / "a.bmp", mode="keep", dtype=torch.float64), _chw(rgba / 255.0))
    c, a = rgba[..., :3] / 255.0, rgba[..., 3:] / 255.0
    assert torch.equal(load_image(tmp_path / "a.bmp", dtype=torch.float64),
                       _chw(np.floor((a * c + 1 - a) * 255 + 0.5) / 255))


def test_a_gif_frame_larger_than_its_screen_is_counted_before_decoding(tmp_path: Path) -> None:
    # a 4 x 4 screen whose first frame claims 9000 x 9000: the image read is the frame's size
    gif = (b"GIF89a" + struct.pack("<HHBBB", 4, 4, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
           + b"," + struct.pack("<HHHHB", 0, 0, 9000, 9000, 0) + b"\x02\x02\x4c\x01\x00;")
    (tmp_path / "g.gif").write_bytes(gif)
    with pytest.raises(ImageTooLargeError, match=r"9000x9000 = 81000000 pixels is over the limit of 80000000"):
        load_image(tmp_path / "g.gif", max_pixels=80_000_000)


def test_luminance_of_images_with_alpha_is_itu_601_of_the_8_bit_composite(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (32, 32, 4))
    la = rng.integers(0, 256, (32, 32, 2))
    Image.fromarray(rgba.astype(np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(la.astype(np.uint8), "LA").save(tmp_path / "g.png")
    c, a = rgba[..., :3] / 255.0, rgba[..., 3:] / 255.0
    flat = np.floor((a * c + 1 - a) * 255 + 0.5).astype(np.int64)
    luma = (flat[..., 0] * 19595 + flat[..., 1] * 38470 + flat[..., 2] * 7471 + 0x8000) >> 16
    g, ga = la[..., 0] / 255.0, la[..., 1] / 255.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_image(tmp_path / "c.png", mode="L", dtype=torch.float64), _chw(luma / 255.0))
        assert torch.equal(load_image(tmp_path / "g.png", mode="L", dtype=torch.float64),
                           _chw(np.floor((ga * g + 1 - ga) * 255 + 0.5) / 255))
