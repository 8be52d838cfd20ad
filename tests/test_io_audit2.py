"""``patchmmd.io`` on files and writes a first audit left: 12-bit grayscale TIFFs, TIFFs of gray + premultiplied
alpha, files of a read format that Pillow cannot read, and :func:`save_image`'s rounding and failures. Files are
built byte by byte (or by tifffile, which writes the samples as given); each expected value is computed from the
samples written, not by the code under test."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchmmd.io import ImageReadError, load_image, save_image


def _gray_tiff(values: np.ndarray, bits: int, photometric: int = 1) -> bytes:
    """An uncompressed one-strip little-endian grayscale TIFF of ``values`` (H, W): 16-bit samples little-endian,
    fewer bits packed most significant bit first, each row starting on a byte (as the TIFF standard packs them)."""
    h, w = values.shape
    rows = [values.astype("<u2").tobytes()] if bits == 16 else []
    for r in values if bits != 16 else ():
        s = "".join(format(int(v), f"0{bits}b") for v in r)
        s += "0" * (-len(s) % 8)
        rows.append(int(s, 2).to_bytes(len(s) // 8, "big"))
    data = b"".join(rows)
    entries = [(256, 3, w), (257, 3, h), (258, 3, bits), (259, 3, 1), (262, 3, photometric), (273, 4, 0),
               (277, 3, 1), (278, 3, h), (279, 4, len(data))]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                     struct.pack("<I", value))
    return out + struct.pack("<I", 0) + data


def test_a_12_bit_gray_tiff_is_divided_by_4095(tmp_path: Path) -> None:
    # Pillow reads BitsPerSample 12 as mode I;16 holding 0..4095, unscaled: divided by 65535 like a 16-bit file,
    # the whole picture read 16 times too dark (its white 0.0625), with no warning.
    levels = np.array([[0, 1, 2048, 4095], [4000, 100, 7, 3000]])
    (tmp_path / "g12.tif").write_bytes(_gray_tiff(levels, 12))
    assert Image.open(tmp_path / "g12.tif").mode == "I;16"
    got = load_image(tmp_path / "g12.tif", mode="L", dtype=torch.float64)
    torch.testing.assert_close(got[0], torch.from_numpy(levels / 4095), rtol=0, atol=1e-15)
    assert torch.equal(load_image(tmp_path / "g12.tif", dtype=torch.float64), got.expand(3, -1, -1))
    # 16-bit and 4-bit files of the same layout keep their ranges
    (tmp_path / "g16.tif").write_bytes(_gray_tiff(levels * 16, 16))
    torch.testing.assert_close(load_image(tmp_path / "g16.tif", mode="L", dtype=torch.float64)[0],
                               torch.from_numpy(levels * 16 / 65535), rtol=0, atol=1e-15)
    (tmp_path / "g4.tif").write_bytes(_gray_tiff(levels % 16, 4))
    torch.testing.assert_close(load_image(tmp_path / "g4.tif", mode="L", dtype=torch.float64)[0],
                               torch.from_numpy(levels % 16 / 15), rtol=0, atol=1e-15)


def test_a_gray_tiff_with_premultiplied_alpha_is_read(tmp_path: Path) -> None:
    # Pillow opens 8-bit gray + associated (premultiplied) alpha as mode "La", which it converts to LA only: the
    # file was refused in every mode ("conversion from La to L not supported").
    tiff = pytest.importorskip("tifffile")
    pairs = np.array([[(0, 255), (17, 85), (34, 170)], [(200, 255), (3, 51), (0, 0)]], np.uint8)  # (a * g, a)
    tiff.imwrite(tmp_path / "la.tif", pairs, photometric="minisblack", extrasamples=["assocalpha"])
    assert Image.open(tmp_path / "la.tif").mode == "La"
    g, a = pairs[..., 0].astype(np.int64), pairs[..., 1].astype(np.int64)
    # over white: a * (g / a) + (1 - a) = (g + 255 - a) / 255, a multiple of 1/255 itself
    flat = (g + 255 - a) / 255.0
    assert torch.equal(load_image(tmp_path / "la.tif", mode="L", dtype=torch.float64)[0], torch.from_numpy(flat))
    assert torch.equal(load_image(tmp_path / "la.tif", dtype=torch.float64),
                       torch.from_numpy(flat).expand(3, -1, -1))
    keep = load_image(tmp_path / "la.tif", mode="keep", dtype=torch.float64)
    assert keep.shape == (4, 2, 3)
    seen = a > 0  # straight alpha: the gray is g / a where the pixel is seen at all
    for c in range(3):
        assert torch.equal(keep[c][torch.from_numpy(seen)], torch.from_numpy(g[seen] / a[seen]))
    assert torch.equal(keep[3], torch.from_numpy(a / 255.0))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_a_file_of_a_read_format_that_pillow_cannot_read_is_named_as_such(tmp_path: Path) -> None:
    # Such files were refused as "not a file of the formats read (PNG, JPEG, TIFF, ...)": a TIFF said not to be
    # one of a list holding TIFF.
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))
    (tmp_path / "zero.png").write_bytes(png)
    with pytest.raises(ImageReadError, match=r"zero\.png as an image: a PNG file by its signature, damaged or of "
                                             r"a kind Pillow cannot read \("):
        load_image(tmp_path / "zero.png")
    (tmp_path / "g12.tif").write_bytes(_gray_tiff(np.array([[0, 7]]), 12, photometric=0))  # MinIsWhite: unknown
    with pytest.raises(ImageReadError, match=r"a TIFF file by its signature, damaged or of a kind Pillow cannot "
                                             r"read \(unknown pixel mode\)"):
        load_image(tmp_path / "g12.tif")
    (tmp_path / "text.png").write_text("hello")  # no format's signature: as before
    with pytest.raises(ImageReadError, match=r"not a file of the formats read \(PNG, JPEG, TIFF"):
        load_image(tmp_path / "text.png")


# ----------------------------------------------------------------------------------------- save_image
def _nearest_levels(x: np.ndarray) -> list[int]:
    """The nearest integer to 255 x for each value, exactly (rational arithmetic; no value here is a tie)."""
    out = []
    for v in x.astype(np.float64).tolist():
        q = Fraction(v) * 255
        lower = q.numerator // q.denominator
        assert q - lower != Fraction(1, 2)
        out.append(lower + (q - lower > Fraction(1, 2)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_image_rounds_values_beside_a_midpoint_to_the_nearest_level(tmp_path: Path, dtype: torch.dtype) -> None:
    # Values were converted to float32 and scaled there: a float64 value 1e-12 below a midpoint (k + 1/2) / 255
    # became the midpoint's float32 and was written as k + 1 (all 255 of them); a float32 value one ulp below one
    # was scaled by 255 in float32, rounded up to the midpoint, and written as k + 1 too (one in this range).
    k = np.arange(255)
    mid = (k + 0.5) / 255
    if dtype == torch.float64:
        values = np.concatenate([mid - 1e-12, mid + 1e-12])
    else:
        m32 = mid.astype(np.float32)
        values = np.concatenate([np.nextafter(m32, np.float32(0)), np.nextafter(m32, np.float32(1))])
    want = _nearest_levels(values)
    save_image(torch.from_numpy(values).to(dtype)[None, None], tmp_path / "r.png")
    assert np.asarray(Image.open(tmp_path / "r.png"))[0].tolist() == want


@pytest.mark.parametrize("channels, name", [(4, "old.jpg"), (2, "old.bmp"), (3, "old.xyz")])
def test_a_failed_save_leaves_the_existing_file_as_it_was(tmp_path: Path, channels: int, name: str) -> None:
    # Pillow opened (and so truncated) the file before finding that the format cannot hold the image; an earlier
    # result saved there was lost.
    old = tmp_path / name
    old.write_bytes(b"an earlier result")
    with pytest.raises((OSError, ValueError)):
        save_image(torch.rand(channels, 6, 5), old)
    assert old.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_save_image_into_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"the folder .*nope of .*x\.png does not exist"):
        save_image(torch.rand(3, 4, 4), tmp_path / "nope" / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_save_image_replaces_a_link_not_its_target(tmp_path: Path) -> None:
    # written through, a link at the output path overwrote whatever it pointed to
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "out.png").symlink_to(victim)
    x = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4) / 255
    save_image(x, tmp_path / "out.png")
    assert victim.read_text() == "keep" and not (tmp_path / "out.png").is_symlink()
    assert torch.equal(load_image(tmp_path / "out.png", mode="L", dtype=torch.float64), x)


def test_save_image_files_get_the_permissions_open_gives(tmp_path: Path) -> None:
    # the temporary file of the atomic write is private (0600) until given the usual mode
    with open(tmp_path / "plain", "wb"):
        pass
    save_image(torch.rand(3, 4, 4), tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_an_image_in_memory_is_refused_saying_how_to_convert_it() -> None:
    """A PIL image or a BytesIO passed as the path ended in "cannot read <PIL...> as an image: TypeError"; it is a
    TypeError naming what was given, and the conversion it gives is right."""
    import io as std_io

    import numpy as np
    from PIL import Image

    from patchmmd.data import sample_path

    im = Image.open(sample_path("coffee"))
    with pytest.raises(TypeError, match=r"path must be a file path \(str or os.PathLike\), got PngImageFile"):
        load_image(im)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got BytesIO"):
        load_image(std_io.BytesIO(b"x"))  # type: ignore[arg-type]
    converted = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) / 255
    assert torch.allclose(converted, load_image(sample_path("coffee")))
