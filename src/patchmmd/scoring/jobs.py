"""The job of ``patchmmd score``: the pairs to score, their stable ids, the shares of several writers and the
header that identifies a job.

* :func:`paired_tasks` pairs two folders by relative path, :func:`all_pair_tasks` takes every unordered
  pair of one folder; both give a deterministic, stably ordered list of :class:`PairTask`.
* :func:`shard` gives each of ``world_size`` writers a disjoint share.
* :func:`job_header` is what a journal records to recognise its job on resume.

Example:
    >>> import tempfile, pathlib, torch
    >>> from patchmmd.io import save_image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     save_image(torch.full((3, 8, 8), i / 4), d / f"im{i}.png")
    >>> [(t.ref, t.dist) for t in all_pair_tasks(d)]
    [('im0.png', 'im1.png'), ('im0.png', 'im2.png'), ('im1.png', 'im2.png')]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..core.validation import check_positive_int
from ..io import IMAGE_SUFFIXES
from .errors import printable_text


@dataclass(frozen=True)
class PairTask:
    """One pair to score: its position in the job, stable id, display paths and file paths.

    ``ref`` and ``dist`` are POSIX paths relative to the folder each image was found in; ``id`` depends
    only on them (not on the folders' absolute location), so it is stable across machines and runs.
    """

    index: int
    id: str
    ref: str
    dist: str
    ref_path: Path
    dist_path: Path


def task_id(ref: str, dist: str) -> str:
    """A stable 16-hex-digit id for the pair ``(ref, dist)`` of relative paths.

    File names that are not valid UTF-8 (held as :func:`os.fsdecode` gives them, with lone surrogates)
    are hashed as their raw bytes.

    Example:
        >>> task_id("a.png", "b.png") == task_id("a.png", "b.png") != task_id("b.png", "a.png")
        True
    """
    return hashlib.sha256(f"{ref}\0{dist}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def list_images(folder: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Image files under ``folder`` (recursively) as sorted relative POSIX paths, and the other files.

    A file counts as an image by its suffix (:data:`patchmmd.io.IMAGE_SUFFIXES`, any case); whether it
    really decodes is found out when it is scored. Hidden files and folders (name starting with ``.``) are
    skipped. Folders reached through a symbolic link are listed like the others, except one that leads back to
    a folder above it (a loop, whose images are listed already).

    A folder that cannot be listed (``folder`` itself or any folder under it, e.g. no read permission) is an
    error: its images would silently be left out of the job, and an image file that cannot be read becomes an
    error row only because it is known to exist.

    Raises:
        FileNotFoundError: ``folder`` does not exist. NotADirectoryError: it is not a folder.
        OSError: ``folder`` or a folder under it cannot be listed (the message names it; the error of the
            listing is its ``__cause__``).
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    images: list[str] = []
    others: list[str] = []
    def unreadable(e: OSError) -> NoReturn:
        where = e.filename if e.filename is not None else root
        raise OSError(f"cannot list the folder {printable_text(os.fsdecode(where))}: {e.strerror or e}") from e

    # Folders reached through a symbolic link are listed too, except a link back to a folder above (a loop):
    # ``above`` holds, for each folder to visit, the (device, inode) of the folders above it.
    above: dict[str, frozenset[tuple[int, int]]] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            unreadable(e)
        chain = above.pop(dirpath, frozenset()) | {(st.st_dev, st.st_ino)}
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            sub = os.path.join(dirpath, d)
            if os.path.islink(sub):
                try:
                    target = os.stat(sub)
                except OSError:
                    pass  # os.walk reports it
                else:
                    if (target.st_dev, target.st_ino) in chain:
                        continue
            above[sub] = chain
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            (images if name.lower().endswith(IMAGE_SUFFIXES) else others).append(rel)
    return sorted(images), sorted(others)


@dataclass
class PairedJob:
    """The tasks of a two-folder job and the files that found no partner."""

    tasks: list[PairTask]
    only_ref: list[str] = field(default_factory=list)
    only_dist: list[str] = field(default_factory=list)


def paired_tasks(ref_dir: str | os.PathLike[str], dist_dir: str | os.PathLike[str]) -> PairedJob:
    """Pairs of images with the same relative path under ``ref_dir`` and ``dist_dir``, sorted by path.

    Unmatched files are returned in :attr:`PairedJob.only_ref` / :attr:`PairedJob.only_dist`; the caller
    decides whether they are an error.
    """
    refs, _ = list_images(ref_dir)
    dists, _ = list_images(dist_dir)
    dist_set = set(dists)
    ref_set = set(refs)
    common = [r for r in refs if r in dist_set]
    tasks = [
        PairTask(i, task_id(r, r), r, r, Path(ref_dir) / r, Path(dist_dir) / r) for i, r in enumerate(common)
    ]
    return PairedJob(tasks, [r for r in refs if r not in dist_set], [d for d in dists if d not in ref_set])


def all_pair_tasks(folder: str | os.PathLike[str]) -> list[PairTask]:
    """Every unordered pair ``(i, j)``, ``i < j``, of the images under ``folder`` in sorted path order."""
    names, _ = list_images(folder)
    root = Path(folder)
    tasks: list[PairTask] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            tasks.append(PairTask(len(tasks), task_id(a, b), a, b, root / a, root / b))
    return tasks


def shard(tasks: Sequence[PairTask], rank: int, world_size: int) -> list[PairTask]:
    """The tasks of writer ``rank`` out of ``world_size``: every ``world_size``-th task from ``rank``.

    The shards are disjoint, cover the job, differ in size by at most one and keep the job's order.

    Example:
        >>> [t.index for t in shard([PairTask(i, str(i), "", "", Path(), Path()) for i in range(7)], 2, 3)]
        [2, 5]
    """
    world_size = check_positive_int("world_size", world_size)
    rank = check_positive_int("rank", rank, minimum=0, maximum=world_size - 1)
    return list(tasks[rank::world_size])


def tasks_digest(tasks: Iterable[PairTask]) -> str:
    """A hash of the job's task list (ids in order): changes when files are added, removed or renamed."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(t.id.encode())
    return h.hexdigest()[:16]


def job_header(
    metric: str,
    options: dict[str, Any],
    tasks: Sequence[PairTask],
    *,
    mode: str,
    resize: bool,
    **extra: Any,
) -> dict[str, Any]:
    """What identifies a job for ``--resume``: everything that changes a row's value.

    Device and batch size are left out: they do not change the result, so a job may be resumed with other
    ones. ``extra`` holds anything else the caller wants checked (e.g. the folders).

    The header is returned as the journal holds it once written and read back (JSON): tuples become lists and
    paths (``os.PathLike``) strings, so that a job compares equal to its own journal.

    Raises:
        TypeError: an option (or ``extra``) is not a JSON value (nor a path); ValueError: it is NaN or infinite.

    Example:
        >>> job_header("l2", {"weights": Path("w.pt"), "sizes": (1, 2)}, [], mode="RGB", resize=False)["options"]
        {'sizes': [1, 2], 'weights': 'w.pt'}
    """
    header = {
        "metric": metric,
        "options": {k: options[k] for k in sorted(options)},
        "mode": mode,
        "resize": bool(resize),
        "num_tasks": len(tasks),
        "tasks": tasks_digest(tasks),
        **{k: extra[k] for k in sorted(extra)},
    }

    def path_text(obj: Any) -> str:
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"a job's options must be JSON values (numbers, strings, lists, ...) or paths, got "
                        f"{type(obj).__name__} {obj!r}")

    try:
        text = json.dumps(header, default=path_text, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"a job's options must be finite: {e}") from None
    return json.loads(text)

