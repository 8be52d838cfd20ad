"""``patchmmd.io.load_image`` on hostile and unusual files: decompression bombs, huge images, 16-bit and float
files, EXIF orientation. Every file is written by Pillow or numpy into a temporary folder."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchmmd.io import DEFAULT_MAX_PIXELS, ImageReadError, ImageTooLargeError, load_image, save_image


def bomb_png(path: Path, width: int = 50000, height: int = 50000) -> Path:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` pixels (its data holds one pixel)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


# ------------------------------------------------------------------------------------------ too large
def test_decompression_bomb_is_an_image_read_error(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    for limit in (DEFAULT_MAX_PIXELS, None):
        with pytest.raises(ImageTooLargeError, match=r"bomb\.png") as info:
            load_image(path, max_pixels=limit)
        assert isinstance(info.value, ImageReadError)
        assert "--" not in str(info.value)  # a library message names no command-line flag


def test_over_the_limit_is_refused_from_the_header(tmp_path: Path) -> None:
    # 10000x10000 claimed, over the default limit and between Pillow's warning and error thresholds.
    path = bomb_png(tmp_path / "big.png", 10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        with pytest.raises(ImageTooLargeError, match=r"10000x10000 = 100000000 pixels is over the limit of "
                           rf"{DEFAULT_MAX_PIXELS} \(max_pixels\)"):
            load_image(path)


def test_max_pixels_is_a_limit_on_width_times_height(tmp_path: Path) -> None:
    save_image(torch.rand(3, 20, 30), tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=600).shape == (3, 20, 30)
    assert load_image(tmp_path / "a.png", max_pixels=None).shape == (3, 20, 30)
    with pytest.raises(ImageTooLargeError, match=r"30x20 = 600 pixels is over the limit of 599"):
        load_image(tmp_path / "a.png", max_pixels=599)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_pixels"):
            load_image(tmp_path / "a.png", max_pixels=bad)  # type: ignore[arg-type]


def test_the_default_limit_is_below_pillows() -> None:
    assert Image.MAX_IMAGE_PIXELS is None or DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS


# ------------------------------------------------------------------------------------------- ranges
def test_float_tiffs_are_read_as_they_are(tmp_path: Path) -> None:
    for name, v in (("a.tif", 0.2), ("b.tif", 0.6)):
        Image.fromarray(np.full((6, 7), v, np.float32)).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == "F"
    a, b = load_image(tmp_path / "a.tif"), load_image(tmp_path / "b.tif")
    assert a.shape == b.shape == (3, 6, 7)
    assert torch.allclose(a, torch.full_like(a, 0.2)) and torch.allclose(b, torch.full_like(b, 0.6))
    assert not torch.equal(a, b)
    assert load_image(tmp_path / "a.tif", mode="L").shape == (1, 6, 7)
    assert load_image(tmp_path / "a.tif", dtype=torch.float64)[0, 0, 0].item() == pytest.approx(0.2, abs=1e-7)


@pytest.mark.parametrize("values, what", [((-0.5, 2.0), r"\[-0.5, 2\]"), ((0.0, float("nan")), "NaN")])
def test_float_tiffs_outside_zero_one_are_refused(tmp_path: Path, values: tuple[float, float], what: str) -> None:
    a = np.zeros((4, 4), np.float32)
    a[0, :2] = values
    Image.fromarray(a).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=what):
        load_image(tmp_path / "f.tif")


def test_16_bit_pgm_keeps_its_brightness(tmp_path: Path) -> None:
    # Pillow writes 16-bit PGM with maxval 65535 and reads it back as mode "I"; one image's values all
    # fit in 8 bits, the other's do not: both must be divided by the same 65535.
    for name, v in (("dark.pgm", 200), ("bright.pgm", 400)):
        Image.fromarray(np.full((5, 5), v, np.uint16)).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == "I"
    dark, bright = load_image(tmp_path / "dark.pgm"), load_image(tmp_path / "bright.pgm")
    assert bright.mean().item() / dark.mean().item() == pytest.approx(2.0)
    assert dark.mean().item() == pytest.approx(200 / 65535)


def test_pgm_with_another_maxval_is_scaled_by_it(tmp_path: Path) -> None:
    values = np.array([[0, 100, 1023]], dtype=">u2")
    (tmp_path / "ten.pgm").write_bytes(b"P5\n3 1\n1023\n" + values.tobytes())
    got = load_image(tmp_path / "ten.pgm", mode="L", dtype=torch.float64)[0, 0]
    assert got.tolist() == pytest.approx([0.0, 100 / 1023, 1.0], abs=1e-4)


def test_16_bit_png_and_tiff(tmp_path: Path) -> None:
    a = np.array([[0, 1000, 65535]], np.uint16)
    for name in ("g.png", "g.tif"):
        Image.fromarray(a).save(tmp_path / name)
        got = load_image(tmp_path / name, mode="L", dtype=torch.float64)[0, 0]
        assert got.tolist() == pytest.approx([0.0, 1000 / 65535, 1.0])


def test_32_bit_integer_tiff_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    with pytest.raises(ImageReadError, match="32-bit integer"):
        load_image(tmp_path / "i.tif")


def test_8_bit_values_are_exact(tmp_path: Path) -> None:
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(np.stack([a, a[::-1], a.T], axis=2)).save(tmp_path / "rgb.png")
    for dtype in (torch.float32, torch.float64):
        got = load_image(tmp_path / "rgb.png", dtype=dtype)
        assert got.dtype == dtype and got.is_contiguous()
        want = torch.from_numpy(np.stack([a, a[::-1], a.T]).astype(np.float64) / 255.0).to(dtype)
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------- EXIF
def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    g = np.linspace(0, 255, 24 * 16).reshape(16, 24).astype(np.uint8)
    upright = np.stack([g, g[::-1], np.full_like(g, 128)], axis=2)  # 24 wide, 16 high
    Image.fromarray(upright).save(tmp_path / "upright.png")
    # Orientation 6: the stored pixels must be turned 90° clockwise to be shown upright, so store them
    # turned 90° counter-clockwise.
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    a, b = load_image(tmp_path / "upright.png"), load_image(tmp_path / "rotated.jpg")
    assert a.shape == b.shape == (3, 16, 24)
    assert (a - b).abs().mean().item() < 0.03  # the same picture, up to JPEG


# --------------------------------------------------------------------------------- in a scoring job
def _folder(path: Path, sizes: list[int], seed: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i, size in enumerate(sizes):
        save_image(torch.rand(3, size, size, generator=g), path / f"im{i:02d}.png")
    return path


def test_a_bomb_in_a_scoring_job_is_an_error_row(tmp_path: Path) -> None:
    from patchmmd import scoring

    ref, dist = _folder(tmp_path / "ref", [8, 8, 8]), _folder(tmp_path / "dist", [8, 8, 8], seed=1)
    bomb_png(dist / "im01.png")
    bomb_png(ref / "im02.png", 10000, 10000)
    tasks = scoring.paired_tasks(ref, dist).tasks
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False)
    with scoring.Journal.open(tmp_path / "j.journal", job) as journal:
        summary = scoring.run_tasks(tasks, "l2", journal, batch_size=4)
    assert (summary.scored, summary.errors) == (1, 2)
    rows = {r["ref"]: r for r in scoring.read_journal(tmp_path / "j.journal")}
    assert rows["im00.png"]["error"] is None
    assert rows["im01.png"]["value"] is None and "ImageTooLargeError" in rows["im01.png"]["error"]
    assert "10000x10000 = 100000000 pixels" in rows["im02.png"]["error"]


def test_batches_and_cache_are_bounded_in_pixels(tmp_path: Path) -> None:
    from patchmmd import scoring

    d = _folder(tmp_path / "d", [16] * 6)
    tasks = scoring.all_pair_tasks(d)  # 15 pairs of 16x16 = 256-pixel images
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False)
    sizes: list[int] = []
    with scoring.Journal.open(tmp_path / "j.journal", job) as journal:
        summary = scoring.run_tasks(tasks, "l2", journal, batch_size=16, batch_pixels=3 * 256,
                                    progress=sizes.append)
    assert summary.scored == 15 and sum(sizes) == 15
    assert max(sizes) == 3  # three pairs' pixels per batch, though 16 pairs were allowed
    rows = {(r["ref"], r["dist"]): r["value"] for r in scoring.read_journal(tmp_path / "j.journal")}
    with scoring.Journal.open(tmp_path / "k.journal", job) as journal:
        scoring.run_tasks(tasks, "l2", journal, batch_size=16)
    assert rows == {(r["ref"], r["dist"]): r["value"] for r in scoring.read_journal(tmp_path / "k.journal")}
    # A pair over the budget is scored alone.
    sizes.clear()
    with scoring.Journal.open(tmp_path / "m.journal", job) as journal:
        scoring.run_tasks(tasks, "l2", journal, batch_size=16, batch_pixels=100, progress=sizes.append)
    assert sizes == [1] * 15

    cache = scoring._ImageCache("RGB", pixel_capacity=2 * 256)
    for i in range(6):
        assert cache.get(d / f"im{i:02d}.png").shape == (3, 16, 16)
        assert cache.pixels <= 2 * 256 and len(cache._items) <= 2
    big = scoring._ImageCache("RGB", pixel_capacity=100)  # the newest image stays, even over the budget
    big.get(d / "im00.png")
    assert big.pixels == 256
    with pytest.raises(ImageTooLargeError):
        scoring._ImageCache("RGB", max_pixels=255).get(d / "im00.png")


# ----------------------------------------------------------------------------- compare and eval mos
def test_compare_reports_a_bomb_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from patchmmd.cli import main

    save_image(torch.rand(3, 8, 8), tmp_path / "a.png")
    bomb_png(tmp_path / "bomb.png")
    bomb_png(tmp_path / "big.png", 10000, 10000)
    for b, what in (("bomb.png", "decompression bomb"), ("big.png", "--max-pixels sets the limit")):
        r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.png"), str(tmp_path / b), "-m", "l2"])
        assert r.exit_code == 1, r.output
        assert isinstance(r.exception, SystemExit)  # a reported error, not an exception escaping
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
        assert r.output.startswith("patchmmd: error: ") and b in r.output and what in r.output


def test_eval_mos_reports_a_bomb_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from patchmmd.cli import main

    folder = tmp_path / "mos"
    g = torch.Generator().manual_seed(0)
    lines = ["reference,distorted,mos"]
    folder.mkdir()
    save_image(torch.rand(3, 8, 8, generator=g), folder / "ref.png")
    for i in range(4):
        save_image(torch.rand(3, 8, 8, generator=g), folder / f"d{i}.png")
        lines.append(f"ref.png,d{i}.png,{10 * i}")
    bomb_png(folder / "d2.png")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    args = ["eval", "mos", str(folder / "labels.csv"), "-m", "l2", "--bootstrap", "0", "--no-plots"]
    r = CliRunner().invoke(main, [*args, "--strict", "--out", str(tmp_path / "strict")])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert r.output.splitlines()[-1].startswith("patchmmd: error: ") and "d2.png" in r.output
    assert "decompression bomb" in r.output
    # without --strict the bomb's row is left out, with its reason in errors.csv, and the job finishes
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "d2.png" in errors and "decompression bomb" in errors and "1 of 4 items left out" in r.output


def _png16(a: np.ndarray, colour_type: int, trns: tuple[int, ...] | None = None) -> bytes:
    """A 16-bit PNG (no filter, no interlace) of ``a`` ``(H, W, C)`` uint16, with a transparent colour ``trns``
    (a tRNS chunk) if given."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    key = b"" if trns is None else chunk(b"tRNS", struct.pack(f">{len(trns)}H", *trns))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + key + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_16_bit_colour_png_is_read_at_8_bits_with_a_warning(tmp_path: Path) -> None:
    a = np.array([[[0, 25737, 65535], [1000, 2000, 3000]]], dtype=np.uint16)
    (tmp_path / "c.png").write_bytes(_png16(a, 2))
    with pytest.warns(RuntimeWarning, match="16-bit colour PNG is read at 8-bit precision"):
        got = load_image(tmp_path / "c.png", dtype=torch.float64)
    assert got.shape == (3, 1, 2)
    # the right range (the top 8 bits over 255), within the 8-bit step
    torch.testing.assert_close(got, torch.from_numpy(a.transpose(2, 0, 1) / 65535.0), atol=1 / 255, rtol=0)
    g = np.array([[[0], [40000]]], dtype=np.uint16)  # 16-bit grayscale: all 16 bits, no warning
    (tmp_path / "g.png").write_bytes(_png16(g, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gray = load_image(tmp_path / "g.png", mode="L", dtype=torch.float64)
    assert gray[0, 0].tolist() == pytest.approx([0.0, 40000 / 65535])


# --------------------------------------------------------------------------------- not regular files
@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_at_once_not_waited_for(tmp_path: Path) -> None:
    import os
    import threading

    from patchmmd import scoring

    ref, dist = _folder(tmp_path / "ref", [8, 8]), _folder(tmp_path / "dist", [8, 8], seed=1)
    (ref / "im01.png").unlink()
    os.mkfifo(ref / "im01.png")  # named like an image; opening it for reading waits for a writer
    outcome: list[BaseException | None] = []

    def score() -> None:
        try:
            with pytest.raises(ImageReadError, match="not a regular file"):
                load_image(ref / "im01.png")
            tasks = scoring.paired_tasks(ref, dist).tasks
            job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False)
            with scoring.Journal.open(tmp_path / "j.journal", job) as journal:
                scoring.run_tasks(tasks, "l2", journal)
            outcome.append(None)
        except BaseException as e:  # reported to the test's thread
            outcome.append(e)

    worker = threading.Thread(target=score, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # blocked on the FIFO: give it a writer so that the thread ends
        fd = os.open(ref / "im01.png", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=60)
        pytest.fail("reading a FIFO blocked until a writer came")
    assert outcome == [None], outcome
    rows = {r["ref"]: r for r in scoring.read_journal(tmp_path / "j.journal")}
    assert rows["im00.png"]["error"] is None
    assert rows["im01.png"]["value"] is None and "not a regular file" in rows["im01.png"]["error"]


def test_a_one_pixel_image_reads_without_a_warning(tmp_path: Path) -> None:
    save_image(torch.rand(3, 1, 1), tmp_path / "one.png")  # its channels-first view is contiguous already
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not PyTorch's "the given NumPy array is not writable"
        assert load_image(tmp_path / "one.png").shape == (3, 1, 1)


# ------------------------------------------------------------------ pixel values against a reference
# Each expected tensor below is computed from the pixels written, with numpy, not with the code under test.
def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])).double()


def test_alpha_is_composited_over_white_with_straight_alpha(tmp_path: Path) -> None:
    # every (colour, alpha) pair: the nearest multiple of 1/255 to a * c + (1 - a), never c + (1 - a)
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    Image.fromarray(np.stack([c, 255 - c, c // 2, a], axis=2).astype(np.uint8)).save(tmp_path / "rgba.png")
    got = load_image(tmp_path / "rgba.png", dtype=torch.float64)
    exact = np.stack([c, 255 - c, c // 2]) / 255.0 * (a / 255.0) + (1 - a / 255.0)
    assert (got - torch.from_numpy(exact)).abs().max().item() <= 0.5 / 255 + 1e-12
    assert torch.equal(got, torch.from_numpy(np.floor(exact * 255 + 0.5) / 255))
    keep = load_image(tmp_path / "rgba.png", mode="keep", dtype=torch.float64)
    assert torch.equal(keep, _chw(np.stack([c, 255 - c, c // 2, a], axis=2) / 255.0))


def test_l_is_pillows_itu_601_of_the_composite(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3))
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "rgb.png")
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16  # 299, 587, 114 / 1000
    got = load_image(tmp_path / "rgb.png", mode="L", dtype=torch.float64)
    assert torch.equal(got, _chw(luma / 255.0))
    assert (got - _chw((rgb @ np.array([0.299, 0.587, 0.114])) / 255)).abs().max().item() <= 0.5 / 255 + 1e-12


def test_palette_images_with_and_without_transparency(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    index = rng.integers(0, 256, (7, 9)).astype(np.uint8)
    alphas = rng.integers(0, 256, 256).astype(np.uint8)
    im = Image.frombytes("P", (9, 7), index.tobytes())
    im.putpalette(palette.flatten().tolist())
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "one.gif", transparency=int(index[0, 0]))
    im.save(tmp_path / "table.png", transparency=alphas.tobytes())  # an alpha for every entry
    colours = palette[index] / 255.0
    assert torch.equal(load_image(tmp_path / "p.png", dtype=torch.float64), _chw(colours))
    clear = (index == index[0, 0])[..., None]
    assert torch.equal(load_image(tmp_path / "one.gif", dtype=torch.float64), _chw(np.where(clear, 1.0, colours)))
    a = (alphas[index] / 255.0)[..., None]
    got = load_image(tmp_path / "table.png", dtype=torch.float64)
    assert (got - _chw(colours * a + 1 - a)).abs().max().item() <= 0.5 / 255 + 1e-12


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_reads_as_exif_transpose_shows_it(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for suffix in ("png", "webp"):  # lossless, so the pixels compare exactly
        path = tmp_path / f"o.{suffix}"
        Image.fromarray(pixels).save(path, exif=exif.tobytes(), **({"lossless": True} if suffix == "webp" else {}))
        want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")) / 255.0
        assert want.shape[:2] == ((8, 5) if orientation >= 5 else (5, 8))
        assert torch.equal(load_image(path, dtype=torch.float64), _chw(want))


def test_an_animated_file_is_read_as_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((4, 6, 3), v, np.uint8)) for v in (10, 200, 90)]
    for name in ("a.gif", "a.png", "a.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100,
                       **({"lossless": True} if name.endswith("webp") else {}))
        assert torch.equal(load_image(tmp_path / name, dtype=torch.float64), torch.full((3, 4, 6), 10 / 255.0,
                                                                                          dtype=torch.float64))


def test_float64_is_exactly_k_over_255_and_over_65535(tmp_path: Path) -> None:
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "g8.png")
    Image.fromarray(np.arange(65536, dtype=np.uint16).reshape(256, 256)).save(tmp_path / "g16.png")
    for name, n in (("g8.png", 255), ("g16.png", 65535)):
        want = torch.arange(n + 1, dtype=torch.float64).reshape(1, *((16, 16) if n == 255 else (256, 256))) / n
        assert torch.equal(load_image(tmp_path / name, mode="L", dtype=torch.float64), want)
        assert torch.equal(load_image(tmp_path / name, mode="L"), want.float())  # float32: the same, rounded


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool, torch.complex64])
def test_a_dtype_that_is_not_floating_is_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    # an integer dtype truncated every value in [0, 1) to 0
    save_image(torch.rand(3, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        load_image(tmp_path / "a.png", dtype=dtype)


@pytest.mark.parametrize("suffix", ["png", "tif", "bmp"])
def test_keep_reads_a_bilevel_image_as_one_channel(tmp_path: Path, suffix: str) -> None:
    bits = np.random.default_rng(2).integers(0, 2, (5, 7)).astype(bool)
    Image.fromarray(bits).save(tmp_path / f"b.{suffix}")
    assert Image.open(tmp_path / f"b.{suffix}").mode == "1"
    assert torch.equal(load_image(tmp_path / f"b.{suffix}", mode="keep", dtype=torch.float64), _chw(bits * 1.0))
    assert torch.equal(load_image(tmp_path / f"b.{suffix}", mode="L", dtype=torch.float64), _chw(bits * 1.0))


def test_a_transparent_gray_level_or_colour_is_alpha(tmp_path: Path) -> None:
    # PNG tRNS on a gray or RGB image: the pixels of that value are transparent, as a palette's entry is
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (6, 8)).astype(np.uint8)
    rgb = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    rgb[1, 2] = rgb[0, 0]
    Image.fromarray(gray).save(tmp_path / "g.png", transparency=int(gray[0, 0]))
    Image.fromarray(rgb).save(tmp_path / "c.png", transparency=tuple(int(v) for v in rgb[0, 0]))
    bits = np.array([[0, 1, 1], [1, 0, 1]], bool)
    Image.fromarray(bits).save(tmp_path / "b.png", transparency=255)  # the white pixels are transparent
    for name, colours, clear in (("g.png", np.repeat(gray[..., None], 3, 2), gray == gray[0, 0]),
                                 ("c.png", rgb, (rgb == rgb[0, 0]).all(axis=2)),
                                 ("b.png", np.repeat(bits[..., None] * 255, 3, 2), bits)):
        assert clear.any() and not clear.all()
        assert torch.equal(load_image(tmp_path / name, dtype=torch.float64),
                           _chw(np.where(clear[..., None], 1.0, colours / 255.0)))
        keep = load_image(tmp_path / name, mode="keep", dtype=torch.float64)
        assert torch.equal(keep, _chw(np.dstack([colours, np.where(clear, 0, 255)]) / 255.0))
    luma = load_image(tmp_path / "g.png", mode="L", dtype=torch.float64)
    assert torch.equal(luma, _chw(np.where(gray == gray[0, 0], 1.0, gray / 255.0)))


def test_a_transparent_16_bit_gray_level_is_alpha(tmp_path: Path) -> None:
    g = np.array([[[0], [300], [40000], [300]]], dtype=np.uint16)
    (tmp_path / "g.png").write_bytes(_png16(g, 0, trns=(300,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_image(tmp_path / "g.png", mode="L", dtype=torch.float64)
        keep = load_image(tmp_path / "g.png", mode="keep", dtype=torch.float64)
    assert got[0, 0].tolist() == [0.0, 1.0, 40000 / 65535, 1.0]
    assert keep.shape == (4, 1, 4)
    assert keep[:, 0, 2].tolist() == [40000 / 65535] * 3 + [1.0] and keep[3, 0].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_a_16_bit_transparent_colour_is_not_matched_at_8_bits(tmp_path: Path) -> None:
    # The key (0, 0, 0) is one 16-bit colour; (0, 0, 100) differs from it but reads as 8-bit (0, 0, 0).
    a = np.array([[[0, 0, 100], [65535, 0, 0]]], dtype=np.uint16)
    (tmp_path / "c.png").write_bytes(_png16(a, 2, trns=(0, 0, 0)))
    with pytest.warns(RuntimeWarning, match=r"8-bit precision .*transparent colour \(tRNS\) is ignored"):
        got = load_image(tmp_path / "c.png", dtype=torch.float64)
    assert got[:, 0, 0].tolist() == [0.0, 0.0, 0.0]  # not white


def test_16_bit_colour_tiff_and_ppm_warn_as_png_does(tmp_path: Path) -> None:
    tiff = pytest.importorskip("tifffile")  # Pillow does not write 16-bit colour TIFFs
    a = np.array([[[0, 25737, 65535], [1000, 2000, 3000]]], dtype=np.uint16)
    tiff.imwrite(tmp_path / "c.tif", a)
    (tmp_path / "c.ppm").write_bytes(b"P6\n2 1\n65535\n" + a.astype(">u2").tobytes())
    for name in ("c.tif", "c.ppm"):
        with pytest.warns(RuntimeWarning, match="16-bit colour (TIFF|PPM) is read at 8-bit precision"):
            got = load_image(tmp_path / name, dtype=torch.float64)
        torch.testing.assert_close(got, _chw(a / 65535.0), atol=1 / 255, rtol=0)  # the right range
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "c8.tif")
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "c8.ppm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "c8.tif")
        load_image(tmp_path / "c8.ppm")


def test_signed_integer_tiffs_are_refused(tmp_path: Path) -> None:
    tiff = pytest.importorskip("tifffile")
    tiff.imwrite(tmp_path / "s8.tif", np.array([[-128, -1, 0, 127]], np.int8))  # Pillow reads -1 as 255
    with pytest.raises(ImageReadError, match="TIFF of signed 8-bit integers"):
        load_image(tmp_path / "s8.tif")
    tiff.imwrite(tmp_path / "s16.tif", np.array([[-5, 7]], np.int16))  # Pillow widens it to 32 bits (mode I)
    with pytest.raises(ImageReadError, match="TIFF of signed 16-bit integers"):
        load_image(tmp_path / "s16.tif")
    tiff.imwrite(tmp_path / "s32.tif", np.array([[-5, 7]], np.int32))
    with pytest.raises(ImageReadError, match="TIFF of signed 32-bit integers"):
        load_image(tmp_path / "s32.tif")


def test_a_16_bit_mode_i_image_keeps_its_range_when_turned_upright(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow before 10 opened a 16-bit grayscale PNG as mode "I"; turned upright (a copy, which has no format)
    # it was refused as a 32-bit image. A 16-bit PGM, also mode "I", stands in for it.
    import patchmmd.io as pio

    Image.fromarray(np.array([[0, 300, 65535]], np.uint16)).save(tmp_path / "g.pgm")
    assert Image.open(tmp_path / "g.pgm").mode == "I"
    monkeypatch.setattr(pio, "_upright", lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    got = load_image(tmp_path / "g.pgm", mode="L", dtype=torch.float64)
    assert got[0, 0].tolist() == [1.0, 300 / 65535, 0.0]


# ----------------------------------------------------------------------------------------- save_image
@pytest.mark.parametrize("channels, mode", [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_save_then_load_is_exact_for_8_bit_values(tmp_path: Path, channels: int, mode: str) -> None:
    k = torch.arange(256, dtype=torch.float64).reshape(1, 16, 16).expand(channels, -1, -1) / 255
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        save_image(k.to(dtype)[None], tmp_path / "k.png")
        assert Image.open(tmp_path / "k.png").mode == mode
        want = k if channels != 2 else torch.cat([k[:1], k[:1], k[:1], k[1:]])  # gray + alpha reads as RGBA
        assert torch.equal(load_image(tmp_path / "k.png", mode="keep", dtype=torch.float64), want)


def test_save_rounds_to_nearest_and_clamps(tmp_path: Path) -> None:
    x = torch.tensor([[[0.49 / 255, 0.51 / 255, 254.49 / 255, 254.51 / 255, -0.3, 1.7, float("inf"), -float("inf")]]])
    save_image(x, tmp_path / "x.png")
    assert np.asarray(Image.open(tmp_path / "x.png")).tolist() == [[0, 1, 254, 255, 0, 255, 255, 0]]


def test_save_refuses_what_it_would_write_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NaN"):  # was written as 0
        save_image(torch.tensor([[[0.5, float("nan")]]]), tmp_path / "n.png")
    with pytest.raises(TypeError, match="floating tensor"):  # 0..255 was clamped to 1: all white
        save_image(torch.full((3, 2, 2), 128, dtype=torch.uint8), tmp_path / "u.png")
    with pytest.raises(ValueError, match="one"):  # only the first image of the batch was written
        save_image(torch.rand(2, 3, 4, 4), tmp_path / "b.png")
    for shape in ((4, 4), (5, 4, 4)):
        with pytest.raises(ValueError, match="shape"):
            save_image(torch.rand(*shape), tmp_path / "s.png")
    assert not list(tmp_path.iterdir())


def test_dng_raw_files_are_refused_not_read_as_their_preview(tmp_path: Path) -> None:
    tiff = pytest.importorskip("tifffile")
    preview = np.zeros((32, 48, 3), np.uint8)
    tiff.imwrite(tmp_path / "raw.dng", preview, subfiletype=1, extratags=[(50706, "B", 4, (1, 4, 0, 0), True)])
    with pytest.raises(ImageReadError, match="DNG raw file"):
        load_image(tmp_path / "raw.dng")
    tiff.imwrite(tmp_path / "plain.tif", preview, subfiletype=1)  # the same TIFF without the DNG tag reads
    assert load_image(tmp_path / "plain.tif").shape == (3, 32, 48)
