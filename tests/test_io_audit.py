"""``patchmmd.io.load_image`` on more unusual and damaged files: low-bit-depth PNGs with a transparent gray
level, MinIsWhite TIFFs of 16 bits and floats, CIELab TIFFs, and files whose damage makes Pillow raise
something other than OSError/ValueError. Each file is built byte by byte (or by tifffile, which writes the
samples as given) and each expected tensor is computed from the samples written, not by the code under test."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchmmd.io import ImageReadError, load_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _gray_png(levels: np.ndarray, depth: int, key: int | None) -> bytes:
    """A grayscale PNG of one row of ``levels`` (each in 0..2**depth - 1) packed at ``depth`` bits, with the
    transparent level ``key`` (a tRNS chunk, in the file's bit depth as the PNG standard says) if given."""
    bits = "".join(format(int(v), f"0{depth}b") for v in levels)
    bits += "0" * (-len(bits) % 8)
    row = int(bits, 2).to_bytes(len(bits) // 8, "big")
    ihdr = struct.pack(">IIBBBBB", len(levels), 1, depth, 0, 0, 0, 0)
    trns = b"" if key is None else _chunk(b"tRNS", struct.pack(">H", key))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + trns + _chunk(b"IDAT", zlib.compress(b"\x00" + row))
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [2, 4])
def test_a_transparent_gray_level_of_a_low_bit_depth_png_is_alpha(tmp_path: Path, depth: int) -> None:
    # PNG optimisers write 2- and 4-bit grayscale with a tRNS level; Pillow spreads the samples over 0..255
    # but kept the key in the file's units, so no pixel matched it and the transparent ones read as their gray.
    top = (1 << depth) - 1
    levels = np.array([0, 1, top, 1, top - 1, 0])
    (tmp_path / "g.png").write_bytes(_gray_png(levels, depth, key=1))
    clear = levels == 1
    gray = torch.from_numpy(levels / top)
    got = load_image(tmp_path / "g.png", mode="L", dtype=torch.float64)
    torch.testing.assert_close(got[0, 0], torch.from_numpy(np.where(clear, 1.0, levels / top)))
    keep = load_image(tmp_path / "g.png", mode="keep", dtype=torch.float64)
    assert keep.shape == (4, 1, 6)
    torch.testing.assert_close(keep[:3, 0], gray.expand(3, -1))
    assert keep[3, 0].tolist() == np.where(clear, 0.0, 1.0).tolist()
    # the top level as the key, and no key at all
    (tmp_path / "t.png").write_bytes(_gray_png(levels, depth, key=top))
    assert load_image(tmp_path / "t.png", mode="keep")[3, 0].tolist() == np.where(levels == top, 0.0, 1.0).tolist()
    (tmp_path / "n.png").write_bytes(_gray_png(levels, depth, key=None))
    torch.testing.assert_close(load_image(tmp_path / "n.png", mode="L", dtype=torch.float64)[0, 0], gray)


def test_a_16_bit_or_float_min_is_white_tiff_reads_as_the_8_bit_one_does(tmp_path: Path) -> None:
    # PhotometricInterpretation 0: sample 0 is white. Pillow inverts 8-bit such files but read 16-bit and float
    # ones as stored, so the same scan saved in 16 bits read as its negative.
    tiff = pytest.importorskip("tifffile")
    stored8 = np.array([[0, 100, 255]], np.uint8)
    stored16 = np.array([[0, 25700, 65535]], np.uint16)
    stored_f = np.array([[0.0, 0.25, 1.0]], np.float32)
    for name, a in (("g8.tif", stored8), ("g16.tif", stored16), ("f.tif", stored_f)):
        tiff.imwrite(tmp_path / name, a, photometric="miniswhite")
    def read(name: str) -> torch.Tensor:
        return load_image(tmp_path / name, mode="L", dtype=torch.float64)[0]

    want8 = torch.from_numpy(1 - stored8 / 255.0)
    torch.testing.assert_close(read("g8.tif"), want8)
    torch.testing.assert_close(read("g16.tif"), torch.from_numpy(1 - stored16 / 65535.0))
    torch.testing.assert_close(read("g16.tif"), want8)  # 25700 / 65535 = 100 / 255: the same picture
    torch.testing.assert_close(read("f.tif"), torch.from_numpy(1 - stored_f.astype(np.float64)))
    tiff.imwrite(tmp_path / "black.tif", stored16, photometric="minisblack")  # unchanged: read as stored
    torch.testing.assert_close(read("black.tif"), torch.from_numpy(stored16 / 65535.0))


def test_a_cielab_tiff_has_no_alpha_channel(tmp_path: Path) -> None:
    # The "A" of mode "LAB" was taken for alpha: 'keep' read 4 channels (an opaque alpha added).
    lab = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    Image.fromarray(lab, "LAB").save(tmp_path / "lab.tif")
    assert Image.open(tmp_path / "lab.tif").mode == "LAB"
    rgb = load_image(tmp_path / "lab.tif", dtype=torch.float64)
    keep = load_image(tmp_path / "lab.tif", mode="keep", dtype=torch.float64)
    assert keep.shape == (3, 5, 6) and torch.equal(keep, rgb)
    luma = load_image(tmp_path / "lab.tif", mode="L", dtype=torch.float64)
    assert luma.shape == (1, 5, 6)


def _tiff_entry_offset(data: bytes, tag: int) -> int:
    """Where the IFD entry of ``tag`` starts in the first IFD of the little-endian TIFF ``data``."""
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, at)[0] == tag:
            return at
    raise AssertionError(f"no tag {tag}")


def test_damage_that_pillow_reports_as_a_type_error_is_an_image_read_error(tmp_path: Path) -> None:
    # StripOffsets stored as FLOAT: Pillow seeks to a float and raises TypeError (a traceback, not a clear error).
    buf = io.BytesIO()
    Image.new("L", (4, 3), 7).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    at = _tiff_entry_offset(bytes(data), 273)  # StripOffsets
    count = struct.unpack_from("<I", data, at + 4)[0]
    assert count == 1
    offset = struct.unpack_from("<I", data, at + 8)[0]
    struct.pack_into("<HI", data, at + 2, 11, 1)  # type FLOAT, one value
    struct.pack_into("<f", data, at + 8, float(offset))
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"cannot read .*bad\.tif as an image: TypeError"):
        load_image(tmp_path / "bad.tif")


def _exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF block of one IFD: (tag, type, count, 4 value bytes) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_an_orientation_beside_a_mistyped_exif_tag_is_still_applied(tmp_path: Path) -> None:
    # CellWidth (a SHORT tag) holding text: Pillow reads it, but ImageOps.exif_transpose, rewriting the EXIF
    # block of its copy, raised struct.error; the picture must still turn (orientation 6: 90 degrees clockwise).
    pixels = np.random.default_rng(1).integers(0, 256, (3, 5, 3)).astype(np.uint8)
    exif = _exif([(0x0108, 2, 4, b"cam\x00"), (0x0112, 3, 1, struct.pack("<HH", 6, 0))])
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    got = load_image(tmp_path / "o.png", mode="keep", dtype=torch.float64)
    want = np.rot90(pixels, -1) / 255.0  # stored -> shown: turned 90 degrees clockwise
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1))))


@pytest.mark.parametrize("fmt", ["PCX", "ICO", "TGA", "EPS-header"])
def test_files_of_other_formats_are_refused_unread(tmp_path: Path, fmt: str) -> None:
    """Pillow's other readers were asked to parse any file, whatever its suffix: an EPS file named .png would have
    been handed to Ghostscript when loaded, where it is installed. Only the formats of IMAGE_FORMATS are opened."""
    path = tmp_path / "x.png"  # the suffix promises PNG; the content decides
    if fmt == "EPS-header":
        path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto\n")
    else:
        Image.new("RGB", (16, 16), (10, 200, 30)).save(path, format=fmt)
    with pytest.raises(ImageReadError, match=r"not a file of the formats read \(PNG, JPEG, TIFF"):
        load_image(path)


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp"),
                                         ("GIF", "gif"), ("WEBP", "webp"), ("PPM", "ppm"), ("MPO", "jpg")])
def test_the_formats_read_are_read_whatever_the_suffix(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = tmp_path / f"x.{suffix}"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(path, format=fmt)
    assert load_image(path).shape == (3, 16, 16)
    renamed = path.rename(tmp_path / "x.data")
    assert load_image(renamed).shape == (3, 16, 16)


def test_a_warning_turned_into_an_error_is_not_reported_as_a_damaged_file(tmp_path: Path) -> None:
    """Under ``-W error::RuntimeWarning`` the 8-bit-precision warning of a 16-bit colour PNG is raised as itself;
    a catch-all around the read turned it (and any bug of the package's own helpers) into "cannot read as an
    image", which ``score`` writes as an error row per file."""
    import warnings

    from test_io import _png16

    (tmp_path / "c.png").write_bytes(_png16(np.array([[[0, 25737, 65535]]], dtype=np.uint16), 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="read at 8-bit precision"):
            load_image(tmp_path / "c.png")
