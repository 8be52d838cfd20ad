"""Reading images into the library's conventions: float tensors ``(C, H, W)`` with values in [0, 1].

Modes (documented behaviour for the CLI and the dataset readers):

* ``"RGB"`` (default): grayscale images are replicated to three channels; an alpha channel is
  composited over white (so transparent pixels compare as white, not as whatever colour they hide);
  palette images are converted. A transparent palette entry or colour (PNG ``tRNS``, a GIF's transparent
  index) is alpha too. 8-bit alpha is composited in 8 bits, as Pillow does: each value is the multiple of
  1/255 nearest to ``a * c + (1 - a)`` (the numbers of the image flattened over white and saved as 8-bit).
* ``"L"``: one luminance channel (ITU-R 601-2, Pillow's conversion, of the image composited over white).
* ``"keep"``: the file's own channels (1, 3 or 4), alpha included: gray + alpha (a TIFF's premultiplied alpha
  too, taken back to straight alpha as Pillow does for RGB), and gray or RGB with a transparent colour, become
  RGBA; palette images RGB or RGBA; bilevel (1-bit) images one channel; CMYK, CIELab and YCbCr images RGB
  (Pillow's conversion).

Value ranges: each kind of file is read with its own fixed range, never a guess from the pixels.

* 8-bit files (and palette, bilevel, CMYK, ... converted by Pillow, and PGM/PPM with a maxval below 255, which
  Pillow rescales to 0..255, rounding): divided by 255.
* 16-bit grayscale (PNG, TIFF, and PGM/PPM with a maxval above 255, which Pillow rescales to 16 bits):
  divided by 65535, so a dark 16-bit image stays dark; a 12-bit grayscale TIFF (which Pillow reads unscaled,
  as 0..4095) by 4095. A TIFF whose 0 is white (PhotometricInterpretation MinIsWhite) reads as shown, as
  Pillow reads 8-bit ones: 16-bit samples become ``1 - v / 65535``, and floats ``1 - v``.
* 16-bit colour PNG (RGB, RGBA, gray + alpha), TIFF and PPM: Pillow reduces each sample to 8 bits, so these
  are read at 8-bit precision (divided by 255, the right range), with a :class:`RuntimeWarning` saying so (a
  16-bit transparent colour of such a PNG is then ignored, and the warning says that too).
* 32-bit float grayscale (TIFF mode ``F``): taken as they are; values must lie in [0, 1] (NaN, Inf or
  values outside are refused: their scale is unknown).
* 32-bit integer grayscale, and TIFFs of signed integers (8-bit ones included, which Pillow would read as
  unsigned), are refused: their range is unknown.

The EXIF orientation tag (a TIFF's own Orientation tag too) is applied (a photo saved rotated with an orientation
tag reads upright, as viewers show it). Colour management is not: an embedded ICC profile and PNG
``gAMA``/``cHRM``/``sRGB`` chunks are ignored and the samples are read as stored. An animated file (GIF, APNG,
WebP) is read as its first frame (an APNG's default image where that is not part of the animation, as Pillow reads
it), a multi-page TIFF as its first page. A DNG raw file, which Pillow would open as the small TIFF preview it
holds, is refused (the raw data needs a raw converter). A truncated file is refused, as Pillow refuses it, unless
the process has set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (then Pillow fills the missing part in, and such a
file reads without an error). Only the raster formats of :data:`IMAGE_FORMATS` are opened, by their content
whatever the file's suffix: Pillow's other readers (EPS, which runs Ghostscript; PSD, FITS, ...) are never asked
to parse a file. A file of one of them that Pillow cannot read (a TIFF of a sample layout it does not know, a PNG
of zero width) is refused with its format and Pillow's reason. Images larger than ``max_pixels`` (default
:data:`DEFAULT_MAX_PIXELS`) are refused from their header, before any pixel is decoded, so a small compressed file
that claims a huge size (a decompression bomb) costs nothing. ``.npy`` files (as in BAPPS's judgments) are not
images and are read with :func:`numpy.load` elsewhere.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from ._trust import open_without_blocking
from .core.validation import check_positive_int

ImageMode = Literal["RGB", "L", "keep"]
IMAGE_MODES = ("RGB", "L", "keep")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".gif")
#: The file formats :func:`load_image` opens, those of :data:`IMAGE_SUFFIXES` (Pillow's names; JPEG includes
#: multi-picture MPO files, PPM the PBM/PGM/PPM family). A file of any other format is refused unread, whatever
#: its suffix.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")

DEFAULT_MAX_PIXELS = 64 * 2**20
"""The default largest image :func:`load_image` reads: 64 megapixels (8192 x 8192).

A 64-megapixel RGB image takes 768 MB as float32, and a metric's intermediates several times that; the
limit is also below Pillow's own decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``, about 89
megapixels for a warning and 179 for an error), so Pillow never warns first. Pass ``max_pixels=None`` to
lift it (Pillow's error threshold then still applies unless ``PIL.Image.MAX_IMAGE_PIXELS`` is raised).
"""

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Formats whose mode "I" images are 16-bit (Pillow's PGM/PPM reader rescales maxval > 255 to 0..65535,
# and Pillow before 10 opened 16-bit grayscale PNG as "I").
_SIXTEEN_BIT_AS_I = ("PNG", "PPM")
_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt, not an image, or of a kind that cannot be read."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than allowed: ``max_pixels``, or (``by_pillow``) Pillow's decompression-bomb
    limit ``PIL.Image.MAX_IMAGE_PIXELS``, which a larger ``max_pixels`` does not lift."""

    def __init__(self, message: str, *, by_pillow: bool = False) -> None:
        super().__init__(message)
        self.by_pillow = by_pillow


def check_max_pixels(max_pixels: int | None) -> int | None:
    """Validate a pixel limit: a positive integer, or ``None`` for no limit.

    Raises:
        ValueError: anything else (0, a negative number, a float, a bool).

    Example:
        >>> check_max_pixels(1000), check_max_pixels(None)
        (1000, None)
    """
    if max_pixels is None:
        return None
    return check_positive_int("max_pixels", max_pixels)


def load_image(
    path: str | os.PathLike[str],
    *,
    mode: ImageMode = "RGB",
    dtype: torch.dtype = torch.float32,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Read an image file as a ``(C, H, W)`` tensor in [0, 1].

    Args:
        path: the file.
        mode: ``"RGB"``, ``"L"`` or ``"keep"`` (see the module's docstring).
        dtype: the tensor's floating dtype.
        max_pixels: the largest width x height read (checked from the header before decoding);
            ``None`` for no limit of ours (Pillow's decompression-bomb error still applies).

    Raises:
        ImageTooLargeError: the image has more than ``max_pixels`` pixels (a subclass of ImageReadError).
        ImageReadError: the file does not exist, is not a regular file (a FIFO, a device: refused at once,
            never waited on), cannot be decoded as an image, or holds values whose range is unknown (32-bit
            or signed integers, floats outside [0, 1]), or is a DNG raw file.
        TypeError: ``path`` is not a path (a PIL image or a file object: the error says how to convert one).
        ValueError: ``mode`` is not one of ``"RGB"``, ``"L"``, ``"keep"``, ``dtype`` is not a floating dtype
            (an integer one would truncate the [0, 1] values to 0 and 1), or ``max_pixels`` is not a positive
            integer or None.

    Example:
        >>> from patchmmd.data import sample_path
        >>> load_image(sample_path("coffee")).shape
        torch.Size([3, 256, 384])
        >>> load_image(sample_path("coffee"), mode="L").shape
        torch.Size([1, 256, 384])
    """
    require_pillow("load_image")
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, str | bytes | os.PathLike):  # a PIL image, a BytesIO: not read as a "file not found"
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}; an 8-bit image "
                        "in memory converts as torch.from_numpy(np.array(im.convert('RGB'))).permute(2, 0, 1) / 255")
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {IMAGE_MODES}, got {mode!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating dtype such as torch.float32, got {dtype!r}")
    max_pixels = check_max_pixels(max_pixels)
    try:
        with open_without_blocking(path) as f, warnings.catch_warnings():
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO would block for ever, a device never end
                raise ImageReadError(f"cannot read {path}: not a regular file (a FIFO, a device or a socket)")
            # Our own limit decides (it is below Pillow's warning threshold by default).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(f, formats=IMAGE_FORMATS)
            except UnidentifiedImageError:
                raise ImageReadError(f"cannot read {path} as an image: {_why_unidentified(f, path)}") from None
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{path}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} (max_pixels)"
                )
            fmt = im.format  # an upright copy has none
            if fmt == "TIFF" and _DNG_VERSION in getattr(im, "tag_v2", {}):
                raise ImageReadError(f"cannot read {path}: a DNG raw file; only the small preview it holds could "
                                     "be read, not its raw data; convert it to PNG or 16-bit TIFF with a raw "
                                     "converter (e.g. rawpy, dcraw) first")
            if fmt == "TIFF" and _tiff_signed(im):  # whatever Pillow widens it to (16 bits: mode I)
                raise ImageReadError(f"cannot read {path}: a TIFF of signed {_tiff_bits(im)}integers has no known "
                                     "value range; save it as unsigned 8- or 16-bit, or float with values in [0, 1]")
            ppm_maxval = _ppm_maxval(im)  # known from the decoder's arguments, gone once loaded
            min_is_white = fmt == "TIFF" and getattr(im, "tag_v2", {}).get(262) == 0  # PhotometricInterpretation
            top = _gray_top(im)
            im.load()
            _scale_low_bit_gray_key(im, f)
            bits = _colour_bits_reduced(im, f, ppm_maxval)
            key_ignored = bool(bits) and "transparency" in im.info and len(im.getbands()) > 1
            if key_ignored:  # a 16-bit colour key: no 8-bit sample matches it
                del im.info["transparency"]
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as e:
        # Pillow's error threshold is twice MAX_IMAGE_PIXELS: below it, our own limit refuses first.
        over_ours = max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and (
            max_pixels < 2 * Image.MAX_IMAGE_PIXELS)
        detail = f"over the limit of {max_pixels} pixels (max_pixels), and " if over_ours else ""
        raise ImageTooLargeError(
            f"{path}: {detail}refused by Pillow as a possible decompression bomb: {e} "
            "(Pillow's limit is PIL.Image.MAX_IMAGE_PIXELS)",
            by_pillow=True,
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(f"cannot read {path} as an image: {e}") from None
    except (TypeError, struct.error, IndexError, KeyError, ZeroDivisionError) as e:
        # how Pillow's parsers fail on damaged files besides the errors above (a TIFF with float StripOffsets: a
        # TypeError); the package's own bugs and warnings turned into errors are not hidden as damaged files
        raise ImageReadError(f"cannot read {path} as an image: {type(e).__name__}: {e}") from e
    if bits:
        ignored = "; its transparent colour (tRNS) is ignored" if key_ignored else ""
        warnings.warn(f"{path}: a {bits}-bit colour {fmt} is read at 8-bit precision (Pillow reduces each "
                      f"sample to 8 bits){ignored}; save it as 8-bit, or 16-bit grayscale, to avoid this",
                      RuntimeWarning, stacklevel=2)
    a, scale = _pixels(_upright(im), fmt, mode, path, min_is_white=min_is_white, top=top)
    del im  # only the samples are needed now: let Pillow's copy go before the float one is made
    return _to_tensor(a, scale, mode, dtype)


def require_pillow(what: str) -> ModuleType:
    """Pillow's ``PIL.Image``, which reading and writing image files needs (it is not a dependency of
    ``import patchmmd``).

    Raises:
        ImportError: Pillow is not installed; the message names ``what`` needs it and how to install it.
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"{what} needs Pillow (image files); install it with `pip install 'patchmmd[cli]'` "
                          "(or `pip install pillow`)") from e
    return Image


def _why_unidentified(f: Any, path: str | os.PathLike[str]) -> str:
    """Why Pillow identified the file open in ``f`` as none of :data:`IMAGE_FORMATS`: a file of one of them by its
    signature that Pillow cannot read (a zero-size PNG, a TIFF of a sample layout Pillow does not know), with
    Pillow's reason, or a file of another format."""
    from PIL import Image

    f.seek(0)
    prefix = f.read(16)
    if not prefix:
        return "the file is empty"
    for fmt in IMAGE_FORMATS:
        factory, accept = Image.OPEN[fmt]
        try:
            looks = accept(prefix) if accept is not None else False
        except (IndexError, TypeError, struct.error):  # a prefix too short for it: as Pillow does, not this one
            looks = False
        if isinstance(looks, str):  # Pillow lacks the codec
            return f"a {fmt} file by its signature, which Pillow cannot read here ({looks})"
        if looks:
            reason = "its header is not understood"
            try:
                f.seek(0)
                factory(f, os.fspath(path)).close()  # it failed in Image.open: say how
            except Exception as e:  # Pillow's parsers raise many kinds (SyntaxError, struct.error, ...)
                reason = str(e) or type(e).__name__
            return f"a {fmt} file by its signature, damaged or of a kind Pillow cannot read ({reason})"
    return f"not a file of the formats read ({', '.join(IMAGE_FORMATS)})"


def _png_depth_and_colour(f: Any) -> tuple[int, int]:
    """The bit depth and colour type of the PNG open in ``f``, from its IHDR chunk ((0, 0) if it is cut short)."""
    f.seek(16)  # 8-byte signature, IHDR length and type; then width, height, bit depth, colour type
    head = f.read(10)
    return (head[8], head[9]) if len(head) == 10 else (0, 0)


def _png_colour_depth16(f: Any) -> bool:
    """Whether the PNG open in ``f`` has 16-bit samples and colour or alpha (IHDR: bit depth 16, colour type 2,
    4 or 6), which Pillow reduces to 8 bits."""
    depth, colour = _png_depth_and_colour(f)
    return depth == 16 and colour in (2, 4, 6)


def _scale_low_bit_gray_key(im: Any, f: Any) -> None:
    """Scale the transparent gray level of a loaded 2- or 4-bit grayscale PNG to the 8-bit samples Pillow made.

    The tRNS chunk holds the level in the file's bit depth (1 of 0..3 for 2 bits) while Pillow spreads the
    samples over 0..255 (1 becomes 85); left as it is, the key would match no pixel. (Pillow maps 1-bit keys
    itself; a key already spread, a multiple of 85 or 17 above the depth's top level, is left alone.)"""
    key = im.info.get("transparency")
    if im.format != "PNG" or im.mode != "L" or not isinstance(key, int):
        return
    depth, colour = _png_depth_and_colour(f)
    if depth in (2, 4) and colour == 0:
        top = (1 << depth) - 1
        if 0 <= key <= top:
            im.info["transparency"] = key * (255 // top)


#: The TIFF tag that marks a DNG raw file (DNGVersion).
_DNG_VERSION = 50706


def _tiff_signed(im: Any) -> bool:
    """Whether the TIFF ``im`` holds signed integers (SampleFormat 2)."""
    fmt = getattr(im, "tag_v2", {}).get(339, 1)
    return 2 in (fmt if isinstance(fmt, tuple) else (fmt,))


def _tiff_bits(im: Any) -> str:
    """``"16-bit "`` for a TIFF ``im`` of 16-bit samples (BitsPerSample), ``""`` when not known."""
    bits = getattr(im, "tag_v2", {}).get(258)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return f"{bits[0]}-bit " if bits and isinstance(bits[0], int) and len(set(bits)) == 1 else ""


def _ppm_maxval(im: Any) -> int:
    """The maxval of a PPM/PGM ``im`` not yet loaded, from its decoder's arguments (255 when not known)."""
    try:
        codec, args = im.tile[0][0], im.tile[0][3]
        if im.format == "PPM" and codec in ("ppm", "ppm_plain") and isinstance(args, tuple):
            return int(args[1])
    except (IndexError, TypeError, ValueError):
        pass
    return 255


def _colour_bits_reduced(im: Any, f: Any, ppm_maxval: int) -> int:
    """The bits per sample of a loaded colour (or gray + alpha) image with more than 8 of them, which Pillow
    reduced to 8 (a PNG, TIFF or PPM); 0 for any other image."""
    if len(im.getbands()) < 2:
        return 0
    if im.format == "PNG":
        return 16 if _png_colour_depth16(f) else 0
    if im.format == "TIFF":
        depth = getattr(im, "tag_v2", {}).get(258, 8)
        depth = max(depth) if isinstance(depth, tuple) and depth else depth
        return int(depth) if isinstance(depth, int) and depth > 8 else 0
    if im.format == "PPM" and ppm_maxval > 255:
        return ppm_maxval.bit_length()
    return 0


def _gray_top(im: Any) -> int:
    """The largest sample of the 16-bit mode (``I;16``) image ``im`` not yet loaded: ``2**bits - 1`` for a TIFF of
    9 to 15 bits per sample (Pillow reads a 12-bit one as ``I;16`` holding 0..4095, not rescaled), else 65535
    (16-bit files, and PGM/PPM, which Pillow rescales to 0..65535)."""
    bits = getattr(im, "tag_v2", {}).get(258, 16) if im.format == "TIFF" else 16  # BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    return (1 << bits) - 1 if isinstance(bits, int) and 8 < bits < 16 else 65535


def _upright(im: Any) -> Any:
    """``im`` turned as its EXIF orientation tag says (unchanged without one or with unreadable EXIF).

    The turn is ``ImageOps.exif_transpose``'s, without its rewriting of the EXIF block (which fails on some
    damaged tags that do not matter here)."""
    from PIL import Image

    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, EOFError, IndexError, struct.error):
        return im  # damaged EXIF: the pixels are still good, read them as stored
    t = Image.Transpose
    method = {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
              7: t.TRANSVERSE, 8: t.ROTATE_90}.get(orientation) if isinstance(orientation, int) else None
    return im if method is None else im.transpose(method)


def _pixels(im: Any, fmt: str | None, mode: ImageMode, path: str | os.PathLike[str], *,
            min_is_white: bool = False, top: int = 65535) -> tuple[np.ndarray, float]:
    """The image's samples as stored (``(H, W)`` or ``(H, W, C)``; 8-bit, 16-bit or float32) and the number
    they are divided by to map them to [0, 1]. ``fmt`` is the file's format (``im`` may be an upright copy,
    which has none). ``min_is_white``: a TIFF whose 0 is white (PhotometricInterpretation 0); Pillow inverts
    its 1- to 8-bit samples itself but reads 16-bit and float ones as stored, so those are inverted here.
    ``top``: the largest sample of a 16-bit mode image (4095 for a 12-bit TIFF, which Pillow reads unscaled).

    Raises:
        ImageReadError: a mode whose range is unknown (32-bit integers), floats outside [0, 1], or a mode
            Pillow cannot convert.
    """
    if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and fmt in _SIXTEEN_BIT_AS_I):
        a = np.asarray(im)
        if im.mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ImageReadError(f"cannot read {path}: its {fmt} 16-bit values are out of range")
        if min_is_white:
            a = top - a
        key = im.info.get("transparency")
        if isinstance(key, int):  # a transparent gray level (PNG tRNS), as in 8-bit files
            clear = a == key
            if mode == "keep":
                return np.stack([a, a, a, np.where(clear, 0, top).astype(a.dtype)], axis=2), float(top)
            a = np.where(clear, top, a).astype(a.dtype)  # composited over white
        return a, float(top)
    if im.mode == "I":
        raise ImageReadError(
            f"cannot read {path}: a 32-bit integer image ({fmt}, mode I) has no known value range; "
            "save it as 8-bit, 16-bit, or float with values in [0, 1]"
        )
    if im.mode == "F":
        a = np.asarray(im)
        if a.size:
            lo, hi = float(a.min()), float(a.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ImageReadError(f"cannot read {path}: its float values include NaN or Inf")
            if lo < 0.0 or hi > 1.0:
                raise ImageReadError(
                    f"cannot read {path}: a float image (mode F) is read as it is and must hold values in "
                    f"[0, 1]; it holds [{lo:.6g}, {hi:.6g}]"
                )
        return (1.0 - a if min_is_white else a), 1.0
    try:
        im = _to_8bit(im, mode)
    except ValueError as e:
        raise ImageReadError(f"cannot read {path}: cannot convert its mode {im.mode}: {e}") from None
    return np.asarray(im), 255.0


def _to_tensor(a: np.ndarray, scale: float, mode: ImageMode, dtype: torch.dtype) -> torch.Tensor:
    """``a / scale`` as a contiguous ``(C, H, W)`` tensor of ``dtype``; a gray ``(H, W)`` array becomes 3
    channels in ``"RGB"`` mode.

    The division is done in float32 for float32 results (the same values as in float64, rounded: exact
    for 8- and 16-bit samples) and in float64 otherwise, with one float copy of the image.
    """
    work = torch.float32 if dtype == torch.float32 else torch.float64
    if a.ndim == 3:
        # Channels first, still in the file's sample type (a small, writable copy), then one float copy.
        t = torch.from_numpy(a.transpose(2, 0, 1).copy()).to(work)
    else:
        t = torch.from_numpy(a.astype(np.float32 if work == torch.float32 else np.float64))[None]
    if scale != 1.0:
        t /= scale
    if mode == "RGB" and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.to(dtype).contiguous()


def _to_8bit(im: Any, mode: ImageMode) -> Any:
    """``im`` converted to an 8-bit mode: ``"L"``, ``"RGB"`` or (``keep`` only) ``"RGBA"``. A transparent
    palette entry or colour (``im.info["transparency"]``) becomes alpha."""
    from PIL import Image

    if im.mode == "LAB":  # no alpha, although its mode has an "A"; Pillow converts it to RGB, not to L
        im = im.convert("RGB")
    elif im.mode == "La":  # gray + premultiplied alpha (a TIFF's associated alpha): Pillow converts it to LA only
        im = im.convert("LA")
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        im = im.convert("RGBA")  # Pillow turns the transparent index, gray level or colour into alpha
    elif im.mode == "P":
        im = im.convert("RGB")
    if mode == "keep":
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "L" if im.mode == "1" else "RGB")
        return im
    if "A" in im.mode:
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im if im.mode == mode else im.convert(mode)


def output_file(path: str | os.PathLike[str]) -> Path:
    """``path``, with a symbolic link found there removed, for a command's output file: an output is replaced,
    never written through a link (which could point at a file outside the output folder).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "victim.txt").write_text("keep")
    >>> (d / "out.txt").symlink_to(d / "victim.txt")
    >>> _ = output_file(d / "out.txt").write_text("new")
    >>> (d / "victim.txt").read_text(), (d / "out.txt").is_symlink()
    ('keep', False)
    """
    p = Path(path)
    if p.is_symlink():
        p.unlink()
    return p


def file_in_the_way(path: str | os.PathLike[str]) -> Path | None:
    """The nearest existing parent folder of ``path`` when it is not a folder (a regular file where a folder of
    the path should be: why creating an output's folder failed), else ``None``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "f").write_text("x")
    >>> file_in_the_way(d / "f" / "sub" / "out.csv") == d / "f", file_in_the_way(d / "new" / "out.csv")
    (True, None)
    """
    blocker = next((p for p in Path(path).parents if p.exists()), None)
    return blocker if blocker is not None and not blocker.is_dir() else None


def save_image(t: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write a ``(C, H, W)`` or ``(1, C, H, W)`` floating tensor in [0, 1] as an 8-bit image file; ``C`` is 1
    (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).

    The format is the one of ``path``'s suffix, with Pillow's default settings. Each value is rounded to the
    nearest multiple of 1/255 (computed in float64: exactly for float32 and narrower tensors), so
    :func:`load_image` reads 8-bit values back exactly from PNG and TIFF, and from BMP and PPM without alpha
    (these two drop an RGBA image's alpha); JPEG and WebP are lossy by default, GIF holds at most 256 colours
    and no partial alpha (Pillow drops a gray + alpha image's alpha, and keeps of an RGBA one at most one
    transparent colour). Values outside [0, 1] (infinities included) are clamped.

    The file is encoded in memory first and then written atomically (a temporary file in the same folder,
    renamed over ``path``): a failure (a format that cannot hold the image, a full disk, an interruption)
    leaves an existing file at ``path`` as it was, never a truncated one. A symbolic link at ``path`` is
    replaced by the file, not written through.

    Raises:
        TypeError: ``t`` is not a floating tensor (the 0..255 of an integer one would all clamp to 1).
        ValueError: another shape, a batch of more than one image, NaN values, a suffix that names no format
            Pillow writes, or (from Pillow, naming ``path``) an image of no pixels.
        OSError: a format that cannot hold the image's channels (alpha in JPEG, gray + alpha in BMP or PPM):
            Pillow's reason, naming ``path`` and the format; ``FileNotFoundError`` when ``path``'s folder does
            not exist.
    """
    Image = require_pillow("save_image")

    from ._files import atomic_write_bytes

    if not t.is_floating_point():
        raise TypeError(f"save_image takes a floating tensor with values in [0, 1], got {t.dtype}")
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or not 1 <= t.shape[0] <= 4:
        raise ValueError(f"save_image takes one (C, H, W) or (1, C, H, W) image with C in 1..4, got shape "
                         f"{tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError("save_image: the image holds NaN values")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"save_image: {path}: no format Pillow writes has the suffix {suffix!r} (the format is "
                         "chosen by the suffix, such as .png)")
    folder = Path(path).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"save_image: the folder {folder} of {path} does not exist")
    # float64: x * 255 is exact for float32 and narrower values, so the rounding is to the nearest level
    a = torch.round(t.detach().to(device="cpu", dtype=torch.float64).clamp(0, 1) * 255).to(torch.uint8).numpy()
    a = a.transpose(1, 2, 0)
    buf = io.BytesIO()
    try:
        Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format=fmt)
    except (OSError, ValueError) as e:  # Pillow's reason ("cannot write mode LA as JPEG") names no file
        kind = OSError if isinstance(e, OSError) else ValueError
        raise kind(f"save_image: cannot write {path} as {fmt}: {e}") from None
    atomic_write_bytes(path, buf.getvalue())
