"""Readers for human-judgment datasets, yielding images in the library's conventions ((C, H, W), [0, 1]).

* :class:`BAPPS2AFC`: BAPPS two-alternative forced choice triplets,
  ``2afc/{train,val}/<subset>/{ref,p0,p1,judge}/NNNNNN.{png,npy}`` (docs/method.md §5).
* :class:`BAPPSJND`: BAPPS just-noticeable-difference pairs, ``jnd/val/<subset>/{p0,p1,same}/``.
* :class:`MOSDataset`: any full-reference MOS/DMOS dataset given as a CSV of reference path, distorted path
  and score (e.g. ``shared/data/live-dev/labels.csv``).

Every reader is indexable and iterable; items are small named tuples of tensors read with
:func:`patchmmd.io.load_image`. Files are matched by name when the reader is built, so a missing folder, an
empty folder or an unmatched file is reported at once with a message naming it (:class:`DatasetError`, or
:class:`FileNotFoundError` for paths that do not exist), never halfway through an evaluation. With
``on_missing="keep"`` an item lacking a file (a BAPPS name missing from one part folder, a MOS row naming a file
that does not exist) is kept instead: reading it raises the error of the file it lacks, which
``evaluation.run(..., on_error="skip")`` turns into a row of its ``errors``; a missing folder or an empty one is
still refused at once.

BAPPS patches are stored at 256×256 and evaluated at 64×64 by LPIPS's loader; ``load_size=64`` (the default)
does the same (shorter side resized with antialiased bilinear interpolation); ``load_size=None`` keeps the
files' size. A ``load_size`` above :data:`MAX_LOAD_SIZE` (1024) is refused: it would only upsample the patches.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from patchmmd.io import save_image
    >>> import torch
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> sub = root / "2afc" / "val" / "traditional"
    >>> for part in ("ref", "p0", "p1", "judge"):
    ...     (sub / part).mkdir(parents=True)
    >>> for part in ("ref", "p0", "p1"):
    ...     save_image(torch.rand(3, 64, 64), sub / part / "000000.png")
    >>> np.save(sub / "judge" / "000000.npy", np.array([0.25]))
    >>> ds = BAPPS2AFC(root)
    >>> len(ds), ds.subsets
    (1, ['traditional'])
    >>> item = ds[0]
    >>> item.ref.shape, item.judge, item.subset
    (torch.Size([3, 64, 64]), 0.25, 'traditional')
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch

from ..core.validation import check_positive_int
from ..io import IMAGE_SUFFIXES, ImageMode, load_image

__all__ = [
    "BAPPS2AFC",
    "BAPPSJND",
    "BAPPS_SUBSETS",
    "MAX_LOAD_SIZE",
    "DatasetError",
    "JNDItem",
    "MOSDataset",
    "MOSItem",
    "TwoAFCItem",
    "distortion_column",
]

#: The subsets of BAPPS, in LPIPS's order. 2AFC has all six; JND has ``traditional`` and ``cnn``.
BAPPS_SUBSETS = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
_MAX_LISTED = 5

#: What a reader does with an item lacking a file: refuse the dataset at once (``"raise"``) or keep the item,
#: whose reading then fails naming the file (``"keep"``).
OnMissing = Literal["raise", "keep"]


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ("raise", "keep"):
        raise ValueError(f"on_missing must be 'raise' or 'keep', got {on_missing!r}")


class DatasetError(ValueError):
    """A dataset folder or label file is empty, malformed, or its files do not match up.

    Attributes:
        parameter: the argument of the reader the error is about (e.g. ``"score_column"``), or ``None``;
            front ends use it to name their own option.
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class TwoAFCItem(NamedTuple):
    """One 2AFC triplet: reference, two distorted patches, and ``judge`` = fraction preferring ``p1``."""

    ref: torch.Tensor
    p0: torch.Tensor
    p1: torch.Tensor
    judge: float
    subset: str
    name: str


class JNDItem(NamedTuple):
    """One JND pair and ``same`` = fraction of people who judged the two patches identical."""

    p0: torch.Tensor
    p1: torch.Tensor
    same: float
    subset: str
    name: str


class MOSItem(NamedTuple):
    """One row of a MOS/DMOS file; ``score`` is ``None`` where the file leaves it empty."""

    reference: torch.Tensor
    distorted: torch.Tensor
    score: float | None
    group: str | None
    reference_path: str
    distorted_path: str


def _listing(paths: Sequence[object]) -> str:
    shown = ", ".join(str(p) for p in list(paths)[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _check_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder: {path}")


def _stems(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    _check_dir(folder, "folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in found:
                raise DatasetError(f"two files share the name {p.stem!r} in {folder}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    if not found:
        kinds = "/".join(suffixes) if len(suffixes) <= 2 else "image"
        raise DatasetError(f"folder is empty (no {kinds} files): {folder}")
    return found


def _match(folder: Path, parts: dict[str, Sequence[str]], keep_missing: bool = False
           ) -> list[tuple[str, dict[str, Path]]]:
    """Files of each part folder matched by name; a name missing from any part is an error, or with
    ``keep_missing`` kept with the path that part's file would have (the suffix of a file of the same kind the
    name has, else the first one accepted): reading it fails, naming that file."""
    files = {part: _stems(folder / part, suffixes) for part, suffixes in parts.items()}
    names = set().union(*files.values())
    problems = []
    for part, found in files.items():
        missing = sorted(names - set(found))
        if missing:
            problems.append(f"{part}/ lacks {len(missing)}: {_listing(missing)}")
    if problems and not keep_missing:
        raise DatasetError(f"unmatched files in {folder}: " + "; ".join(problems))

    def path(name: str, part: str) -> Path:
        if name in files[part]:
            return files[part][name]
        suffix = next((files[q][name].suffix for q in parts if parts[q] == parts[part] and name in files[q]),
                      parts[part][0])
        return folder / part / (name + suffix)

    return [(name, {part: path(name, part) for part in parts}) for name in sorted(names)]


def _load_fraction(path: Path, what: str) -> float:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise DatasetError(f"cannot read {what} file {path}: {e}") from None
    if not isinstance(a, np.ndarray):  # an .npz archive under an .npy name
        a.close()
        raise DatasetError(f"{what} file {path} must hold one number (a NumPy array), not an .npz archive")
    if a.dtype.kind not in "biuf":  # strings, complex or structured values would be converted silently or not at all
        raise DatasetError(f"{what} file {path} must hold one real number, got an array of dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size != 1 or not np.isfinite(a[0]) or not 0 <= a[0] <= 1:
        raise DatasetError(f"{what} file {path} must hold one fraction in [0, 1], got {a[:4].tolist()}")
    return float(a[0])


def _resize(t: torch.Tensor, load_size: int | None) -> torch.Tensor:
    if load_size is None:
        return t
    h, w = t.shape[-2:]
    if min(h, w) == load_size:
        return t
    scale = load_size / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = torch.nn.functional.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0, 1)


#: The largest ``load_size`` a BAPPS reader takes: 4 times the 256-pixel patches BAPPS stores (LPIPS evaluates at
#: 64). A larger one would only upsample every patch, its memory growing with the square of the size.
MAX_LOAD_SIZE = 1024


def _check_load_size(load_size: int | None) -> int | None:
    """``load_size`` as an ``int`` in ``[1, MAX_LOAD_SIZE]``, or ``None`` (keep the files' size)."""
    if load_size is None:
        return None
    size = check_positive_int("load_size", load_size)
    if size > MAX_LOAD_SIZE:
        raise ValueError(f"load_size must be at most {MAX_LOAD_SIZE} pixels, got {size}: BAPPS patches are stored at "
                         f"256x256 (LPIPS evaluates them at 64), so a larger size only upsamples them, at a memory "
                         f"cost that grows with its square; None keeps the files' size")
    return size


_SPLITS = ("train", "val")


def _check_split(folder: Path, split: str) -> None:
    """A folder of subsets named after the other BAPPS split is not read as ``split`` (results would carry the
    wrong split's name)."""
    if folder.name in _SPLITS and folder.name != split:
        raise ValueError(f"{folder} is BAPPS's {folder.name!r} split, but split={split!r} was asked for; pass "
                         f"split={folder.name!r}, or point at the {split!r} folder")


def _subset_dirs(root: str | os.PathLike[str], kind: str, split: str, subsets: Sequence[str] | None,
                 parts: Sequence[str]) -> dict[str, Path]:
    """Resolve BAPPS subset folders under ``root`` (the BAPPS root, its ``kind`` folder, a split, or a subset)."""
    root = Path(root)
    _check_dir(root, "dataset folder")
    if all((root / p).is_dir() for p in parts):  # root is itself one subset
        if subsets:
            raise ValueError(f"{root} is a single subset folder; do not also select subsets {list(subsets)}")
        absolute = Path(os.path.abspath(root))  # "." or ".." name the folder they stand for
        _check_split(absolute.parent, split)
        return {absolute.name: root}
    def holds_subsets(base: Path) -> bool:
        return base.is_dir() and any(c.is_dir() and all((c / q).is_dir() for q in parts) for c in base.iterdir())

    for base in (root / kind / split, root / split, root):
        if holds_subsets(base):
            break
    else:
        raise FileNotFoundError(
            f"no BAPPS {kind} data under {root}: expected {kind}/{split}/<subset>/{{{','.join(parts)}}}/ "
            f"(subsets: {', '.join(BAPPS_SUBSETS)})"
        )
    _check_split(Path(os.path.abspath(base)), split)
    if subsets:
        names = []
        for s in subsets:
            if "/" in s:
                s_split, s = s.split("/", 1)
                if s_split != split:
                    raise ValueError(f"subset {s_split}/{s} does not belong to split {split!r}")
            names.append(s)
    else:
        names = [s for s in BAPPS_SUBSETS if (base / s).is_dir()]
        names += sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in BAPPS_SUBSETS
                        and all((p / q).is_dir() for q in parts))
    out = {}
    for s in names:
        _check_dir(base / s, f"subset folder {s!r}")
        out[s] = base / s
    return out


class _BAPPS:
    _parts: ClassVar[dict[str, Sequence[str]]] = {}
    _kind: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike[str], subsets: Sequence[str] | str | None = None, *,
                 split: str = "val", load_size: int | None = 64, mode: ImageMode = "RGB",
                 on_missing: OnMissing = "raise") -> None:
        if isinstance(subsets, str):
            subsets = [s.strip() for s in subsets.split(",") if s.strip()]
        _check_on_missing(on_missing)
        self.root = Path(root)
        self.split = split
        self.load_size = _check_load_size(load_size)
        self.mode = mode
        self.subset_dirs = _subset_dirs(root, self._kind, split, subsets, list(self._parts))
        self.items: list[tuple[str, str, dict[str, Path]]] = []
        for name, folder in self.subset_dirs.items():
            self.items += [(name, stem, files) for stem, files in _match(folder, self._parts, on_missing == "keep")]

    @property
    def subsets(self) -> list[str]:
        """Names of the subsets read, in order."""
        return list(self.subset_dirs)

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, path: Path) -> torch.Tensor:
        return _resize(load_image(path, mode=self.mode), self.load_size)

    def _image_parts(self) -> list[str]:
        return [p for p, suffixes in self._parts.items() if suffixes is IMAGE_SUFFIXES]

    def image_files(self, i: int) -> list[Path]:
        """The image files of item ``i``, in the order its item holds them (``ref``, ``p0``, ``p1`` for 2AFC); with
        ``on_missing="keep"``, a file it lacks under the name it would have."""
        return [self.items[i][2][p] for p in self._image_parts()]

    def _images(self, i: int) -> list[torch.Tensor]:
        """The images of item ``i``, which a metric compares: of one size, or a :class:`DatasetError` naming
        them."""
        subset, stem, files = self.items[i]
        parts = self._image_parts()
        images = [self._image(files[p]) for p in parts]
        if any(t.shape != images[0].shape for t in images):
            sizes = ", ".join(f"{p}/{files[p].name} {tuple(t.shape)}" for p, t in zip(parts, images, strict=True))
            resized = "" if self.load_size is None else f" (shorter side resized to load_size={self.load_size})"
            raise DatasetError(f"{subset}/{stem}: its images differ in size{resized}: {sizes}, in "
                               f"{self.subset_dirs[subset]}")
        return images

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, subsets={self.subsets}, n={len(self)})"


_IMG = IMAGE_SUFFIXES
_NPY = (".npy",)


class BAPPS2AFC(_BAPPS):
    """BAPPS 2AFC triplets (``ref``, ``p0``, ``p1``, ``judge``), all subsets found or those named.

    Args:
        root: the BAPPS root (holding ``2afc/``), the ``2afc`` folder, a split folder, or one subset folder.
        subsets: names (``"traditional"`` or ``"val/traditional"``), a comma-separated string, or ``None``
            for every subset present, in LPIPS's order.
        split: ``"val"`` (default) or ``"train"``.
        load_size: shorter side after resizing (64, LPIPS's evaluation size; at most :data:`MAX_LOAD_SIZE`) or
            ``None`` (the files' size).
        mode: colour mode of :func:`patchmmd.io.load_image`.
        on_missing: ``"raise"``: a name missing from any part folder is a :class:`DatasetError` at once;
            ``"keep"``: its item is kept, and reading it fails (:class:`~patchmmd.io.ImageReadError` for a
            patch, :class:`DatasetError` for a judge file), naming the file it lacks.

    Raises:
        ValueError: ``load_size`` is not an integer in ``[1, MAX_LOAD_SIZE]`` (nor ``None``).
        FileNotFoundError: the root or a named subset folder does not exist.
        DatasetError: a folder is empty or its files do not match by name (``on_missing="raise"``); on
            indexing, the item's patches differ in size (once resized) or its judge file does not hold one
            fraction.
        ImageReadError: on indexing, a patch cannot be read.
    """

    _parts: ClassVar[dict[str, Sequence[str]]] = {"ref": _IMG, "p0": _IMG, "p1": _IMG, "judge": _NPY}
    _kind = "2afc"

    def __getitem__(self, i: int) -> TwoAFCItem:
        subset, stem, f = self.items[i]
        ref, p0, p1 = self._images(i)
        return TwoAFCItem(ref, p0, p1, _load_fraction(f["judge"], "judge"), subset, stem)

    def __iter__(self) -> Iterator[TwoAFCItem]:
        return (self[i] for i in range(len(self)))


class BAPPSJND(_BAPPS):
    """BAPPS JND pairs (``p0``, ``p1``, ``same``); arguments as :class:`BAPPS2AFC` (``root`` holds ``jnd/``)."""

    _parts: ClassVar[dict[str, Sequence[str]]] = {"p0": _IMG, "p1": _IMG, "same": _NPY}
    _kind = "jnd"

    def __getitem__(self, i: int) -> JNDItem:
        subset, stem, f = self.items[i]
        p0, p1 = self._images(i)
        return JNDItem(p0, p1, _load_fraction(f["same"], "same"), subset, stem)

    def __iter__(self) -> Iterator[JNDItem]:
        return (self[i] for i in range(len(self)))


_REFERENCE_COLUMNS = ("reference", "ref", "reference_path", "ref_path", "ref_name", "reference_image")
_DISTORTED_COLUMNS = ("distorted", "dist", "distorted_path", "dist_path", "dis_path", "dist_name",
                      "distorted_image", "image")
_SCORE_COLUMNS = ("dmos", "mos", "score", "dmos_score", "mos_score", "zscore")


def distortion_column(labels: str | os.PathLike[str]) -> str | None:
    """The default group column of a MOS label file: its ``distortion`` column, the name read as
    :class:`MOSDataset` reads the other columns' names (in any case, with spaces around it, as in a header written
    with ``", "`` between names); ``None`` if there is none, or if the file cannot be read (:class:`MOSDataset`
    then says why, naming it). Of several such columns, the exact name ``distortion``, else none.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels.csv"
        >>> _ = p.write_text("Reference, Distorted, DMOS, Distortion\\n")
        >>> distortion_column(p)
        ' Distortion'
    """
    try:
        with open(labels, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, ValueError):  # missing, not UTF-8, not CSV
        return None
    if "distortion" in header:
        return "distortion"
    found = list(dict.fromkeys(h for h in header if h.strip().lower() == "distortion"))
    return found[0] if len(found) == 1 else None


def _pick_column(header: Sequence[str], given: str | None, candidates: Sequence[str], what: str,
                 parameter: str) -> str:
    if given is not None:
        if given not in header:
            raise DatasetError(f"column {given!r} is not in the header {list(header)}", parameter=parameter)
        return given
    for c in candidates:
        found = list(dict.fromkeys(h for h in header if h.lower().strip() == c))  # MOSDataset reports exact repeats
        if len(found) > 1:  # e.g. "dmos" and "DMOS": which one holds the data?
            raise DatasetError(f"the header {list(header)} has {len(found)} columns that read as the {what} column "
                               f"{c!r} ({', '.join(map(repr, found))}); name the column explicitly",
                               parameter=parameter)
        if found:
            return found[0]
    raise DatasetError(
        f"cannot find the {what} column in the header {list(header)} (looked for {', '.join(candidates)}); "
        "name the column explicitly", parameter=parameter,
    )


class MOSDataset:
    """A full-reference MOS/DMOS dataset from a CSV with reference path, distorted path and score columns.

    Args:
        labels_csv: the CSV file (a header row, then one row per distorted image).
        root: folder the paths are relative to (default: the CSV's folder).
        reference_column, distorted_column, score_column: column names; by default the first of the usual
            names found (``reference``/``ref``…, ``distorted``/``dist``…, ``dmos``/``mos``/``score``…).
        group_column: a column to group results by (e.g. ``distortion``), or ``None``.
        mode: colour mode of :func:`patchmmd.io.load_image`.
        on_missing: ``"raise"``: a file named by a row that does not exist is a :class:`FileNotFoundError` at
            once; ``"keep"``: the row is kept, and reading it raises :class:`~patchmmd.io.ImageReadError` naming
            the file.

    Rows whose score is empty (e.g. live-dev's copies identical to their reference) are kept with
    ``score=None``; :attr:`scored` lists the others. Every referenced file must exist (unless
    ``on_missing="keep"``).

    Raises:
        FileNotFoundError: the CSV or the root does not exist, or (``on_missing="raise"``) files it names do not
            (the first few are listed).
        DatasetError: the CSV is not UTF-8 text, cannot be parsed as CSV or has no rows, a column is missing or
            appears twice (or, found by name, two columns read as the same name, e.g. ``dmos`` and ``DMOS``), a row
            has more fields than the header or too few to reach a column used, a path is absolute or leads
            out of ``root`` (``..``), a (reference, distorted) pair appears twice, or a score is not a finite
            number.

    Example:
        >>> from pathlib import Path
        >>> live = Path(__file__).resolve().parents[3] / "shared" / "data" / "live-dev"
        >>> if (live / "labels.csv").exists():
        ...     ds = MOSDataset(live / "labels.csv", group_column="distortion")
        ...     print(len(ds), len(ds.scored), sorted(set(ds.groups)))
        ... else:
        ...     print(29, 27, ['gblur', 'jpeg', 'wn'])
        29 27 ['gblur', 'jpeg', 'wn']
    """

    def __init__(self, labels_csv: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *,
                 reference_column: str | None = None, distorted_column: str | None = None,
                 score_column: str | None = None, group_column: str | None = None,
                 mode: ImageMode = "RGB", on_missing: OnMissing = "raise") -> None:
        _check_on_missing(on_missing)
        self.labels_csv = Path(labels_csv)
        if not self.labels_csv.is_file():
            raise FileNotFoundError(f"labels CSV not found: {self.labels_csv}")
        self.root = Path(root) if root is not None else self.labels_csv.parent
        _check_dir(self.root, "image root folder")
        self.mode = mode
        rows: list[dict[str, str]] = []
        lines: list[int] = []  # the line each row ends on (blank rows skipped, quoted fields may span lines)
        reader: csv.DictReader[str] | None = None
        try:
            with open(self.labels_csv, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                for r in reader:
                    if None in r:  # more fields than the header: a stray comma, or columns out of line
                        raise DatasetError(
                            f"{self.labels_csv}, line {reader.line_num}: {len(header) + len(r[None])} fields, "
                            f"but the header has {len(header)} ({list(header)})"
                        )
                    if any((v or "").strip() for v in r.values()):
                        rows.append(r)
                        lines.append(reader.line_num)
        except UnicodeDecodeError as e:
            raise DatasetError(f"labels CSV is not UTF-8 text: {self.labels_csv} ({e})") from None
        except csv.Error as e:  # e.g. a field over the csv module's size limit (an unclosed quote in a large file)
            line = reader.reader.line_num if reader is not None else 1  # DictReader's own count lags on errors
            raise DatasetError(f"{self.labels_csv}, line {line}: not readable as CSV ({e})") from None
        if not header or not rows:
            raise DatasetError(f"labels CSV has no data rows: {self.labels_csv}")
        self.reference_column = _pick_column(header, reference_column, _REFERENCE_COLUMNS, "reference path",
                                             "reference_column")
        self.distorted_column = _pick_column(header, distorted_column, _DISTORTED_COLUMNS, "distorted path",
                                             "distorted_column")
        self.score_column = _pick_column(header, score_column, _SCORE_COLUMNS, "score", "score_column")
        self.group_column = None if group_column is None else _pick_column(header, group_column, (), "group",
                                                                           "group_column")
        for column, parameter in ((self.reference_column, "reference_column"),
                                  (self.distorted_column, "distorted_column"), (self.score_column, "score_column"),
                                  (self.group_column, "group_column")):
            if column is not None and list(header).count(column) > 1:
                raise DatasetError(f"column {column!r} appears {list(header).count(column)} times in the header "
                                   f"{list(header)}", parameter=parameter)
        self.rows = rows
        #: per row, the line of the CSV it ends on (for messages)
        self.lines = lines
        self.references: list[str] = []
        self.distorted: list[str] = []
        self.scores: list[float | None] = []
        self.groups: list[str | None] = []
        missing: list[str] = []
        seen: dict[tuple[str, str], int] = {}
        for line, r in zip(lines, rows, strict=True):
            if r.get(self.reference_column) is None or r.get(self.distorted_column) is None or (
                    r.get(self.score_column) is None) or (self.group_column and r.get(self.group_column) is None):
                raise DatasetError(f"{self.labels_csv}, line {line}: {sum(v is not None for v in r.values())} "
                                   f"fields, but the header has {len(header)} ({list(header)})")
            ref, dist = (r.get(self.reference_column) or "").strip(), (r.get(self.distorted_column) or "").strip()
            if not ref or not dist:
                raise DatasetError(f"{self.labels_csv}, line {line}: empty reference or distorted path")
            for p in (ref, dist):
                if os.path.isabs(p) or os.path.normpath(p).split(os.sep)[0] == os.pardir:
                    raise DatasetError(f"{self.labels_csv}, line {line}: path {p!r} leads out of the image root "
                                       f"{self.root}; paths must be relative to it (choose a root that holds "
                                       "every image)", parameter="root")
                if not (self.root / p).is_file():
                    missing.append(p)
            key = (os.path.normpath(ref), os.path.normpath(dist))
            if key in seen:
                raise DatasetError(f"{self.labels_csv}, line {line}: the pair ({ref}, {dist}) is already on line "
                                   f"{seen[key]}; each pair must appear once")
            seen[key] = line
            raw = (r.get(self.score_column) or "").strip()
            try:
                score = float(raw) if raw else None
            except ValueError:
                raise DatasetError(
                    f"{self.labels_csv}, line {line}: score {raw!r} in column {self.score_column!r} is not a number"
                ) from None
            if score is not None and not np.isfinite(score):
                raise DatasetError(f"{self.labels_csv}, line {line}: score must be finite, got {raw!r}")
            self.references.append(ref)
            self.distorted.append(dist)
            self.scores.append(score)
            self.groups.append((r.get(self.group_column) or "").strip() if self.group_column else None)
        if missing and on_missing == "raise":
            missing = sorted(set(missing))
            raise FileNotFoundError(
                f"{len(missing)} image file(s) named in {self.labels_csv} not found under {self.root}: "
                f"{_listing(missing)}"
            )
        self._load = lru_cache(maxsize=8)(self._load_uncached)

    @property
    def scored(self) -> list[int]:
        """Indices of the rows with a score."""
        return [i for i, s in enumerate(self.scores) if s is not None]

    def _load_uncached(self, path: str) -> torch.Tensor:
        return load_image(self.root / path, mode=self.mode)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int) -> MOSItem:
        ref, dist = self._load(self.references[i]), self._load(self.distorted[i])
        if ref.shape != dist.shape:
            raise DatasetError(
                f"reference {self.references[i]} {tuple(ref.shape)} and distorted {self.distorted[i]} "
                f"{tuple(dist.shape)} differ in size ({self.labels_csv}, line {self.lines[i]})"
            )
        return MOSItem(ref, dist, self.scores[i], self.groups[i], self.references[i], self.distorted[i])

    def __iter__(self) -> Iterator[MOSItem]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"MOSDataset({str(self.labels_csv)!r}, n={len(self)}, scored={len(self.scored)})"
