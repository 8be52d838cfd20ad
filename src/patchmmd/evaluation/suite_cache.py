"""The finished parts of a dev-benchmark run, kept so that an interrupted run resumes where it stopped.

:func:`~patchmmd.evaluation.suite.run_suite` with ``cache=FOLDER`` stores each finished piece of work as it
ends: a shift check per metric, a training run per (task, loss, seed), a generalized image mean per loss (and,
through :func:`~patchmmd.evaluation.runner.run`'s own cache, each metric's values on each human set, with an
entry per set holding the versions of patchmmd and PyTorch they were computed with). A later
run with the same folder reads them back instead of recomputing them, so a run stopped by a crash, a kill or a
full disk loses at most the piece it was working on.

Each entry is ``NAME.json`` (the settings it was computed with and its numbers) with, for the training tasks
and the image mean, ``NAME.npy``: the outputs the figures show (plain float32, read with
``numpy.load(allow_pickle=False)``: a file can hold numbers only, never code). Both are written atomically,
the outputs first: an entry exists once its ``.json`` does. An entry computed with other settings raises
:class:`~patchmmd.evaluation.runner.CacheMismatchError` (start over, or use another folder); an entry that
cannot be decoded is ignored with a ``RuntimeWarning`` and computed again. An entry someone else could have
written (not owned by the user or root, or writable by others: see :mod:`patchmmd._trust`) is refused with
:class:`~patchmmd.evaluation.runner.EvaluationError`: whoever can write it decides the figures. Reusing an
entry is exact: the suite seeds every piece of work by itself, so a resumed run reports what an uninterrupted
one would (``tests/test_suite.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._trust import UntrustedFileError, read_controlled
from .runner import CacheMismatchError, EvaluationError, describe_changes, safe_file_stem, settings_as_json

__all__ = ["SuiteCache", "entry_name", "tensor_digest"]


def entry_name(*parts: object) -> str:
    """A file name for an entry: the parts joined by ``-`` as :func:`~.runner.safe_file_stem` writes them, with a
    short hash of the exact parts (two labels that read alike after the replacement still differ).

    Example:
        >>> entry_name("sr", "mmdpp:preset=loss", "seed0")
        'sr-mmdpp_preset=loss-seed0-47a9ac7c'
    """
    texts = [str(p) for p in parts]
    return safe_file_stem("-".join(texts), key="\x00".join(texts), limit=160)


def tensor_digest(tensors: Any) -> str:
    """A SHA-256 fingerprint of tensors' shapes, dtypes and values, in order (what a piece of work was fed)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class SuiteCache:
    """The entries in ``folder`` (created on the first :meth:`put`).

    Example:
        >>> import tempfile
        >>> cache = SuiteCache(Path(tempfile.mkdtemp()) / "cache")
        >>> cache.get("shift-l2", {"size": 48}) is None
        True
        >>> cache.put("shift-l2", {"size": 48}, {"median": 0.5})
        >>> cache.get("shift-l2", {"size": 48})
        ({'median': 0.5}, None)
        >>> try:
        ...     cache.get("shift-l2", {"size": 64})
        ... except CacheMismatchError as e:
        ...     print(str(e).split(".json ")[1])
        was computed with other settings (size: 48, now 64)
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.reused = 0  #: how many entries were read back (the suite counts its human part's here too)

    def get(self, name: str, settings: Mapping[str, Any], *, count: bool = True
            ) -> tuple[dict[str, Any], torch.Tensor | None] | None:
        """The result and outputs stored under ``name`` for ``settings``; ``None`` if there is none (or it is
        damaged: a ``RuntimeWarning`` names it). ``count=False``: an entry that is no piece of work (a stamp)
        is not counted in :attr:`reused`.

        Raises:
            CacheMismatchError: the entry was computed with other settings.
            EvaluationError: the entry exists but cannot be read (permissions, an I/O error), or someone else
                could have written it or its outputs file (see :mod:`patchmmd._trust`).
        """
        path = self.folder / f"{name}.json"
        if not path.is_file():
            return None
        try:
            raw = read_controlled(path)
        except UntrustedFileError as e:
            raise _untrusted(path, e) from None
        except OSError as e:
            raise EvaluationError(f"cannot read the suite cache file {path}: {e.strerror or e}") from e
        want = settings_as_json(settings)
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            return self._damaged(path, f"not valid JSON: {e}")
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict) \
                or not isinstance(data.get("result"), dict):
            return self._damaged(path, "no settings or no result")
        what = describe_changes(data["settings"], want)
        if what:
            raise CacheMismatchError(f"{path} was computed with other settings ({what})", path, data["settings"])
        outputs = None
        if data.get("outputs") is not None:
            outputs = self._outputs(path.with_suffix(".npy"), data["outputs"])
            if outputs is None:
                return None
        if count:
            self.reused += 1
        return data["result"], outputs

    def put(self, name: str, settings: Mapping[str, Any], result: Mapping[str, Any],
            outputs: torch.Tensor | None = None) -> None:
        """Store ``result`` (JSON numbers; NaN kept) and ``outputs`` (saved as float32) under ``name``."""
        from ..scoring.output import atomic_write_bytes, atomic_write_text

        self.folder.mkdir(parents=True, exist_ok=True)
        shape = None
        if outputs is not None:
            array = outputs.detach().cpu().to(torch.float32).contiguous().numpy()
            buf = io.BytesIO()
            np.save(buf, array, allow_pickle=False)
            atomic_write_bytes(self.folder / f"{name}.npy", buf.getvalue())
            shape = list(array.shape)
        atomic_write_text(self.folder / f"{name}.json",
                          json.dumps({"settings": settings_as_json(settings), "result": dict(result),
                                      "outputs": shape}))

    def _outputs(self, path: Path, shape: Any) -> torch.Tensor | None:
        try:
            array = np.load(io.BytesIO(read_controlled(path)), allow_pickle=False)
        except UntrustedFileError as e:
            raise _untrusted(path, e) from None
        except OSError as e:
            if not path.is_file():
                return self._damaged(path, "its outputs file is missing")
            raise EvaluationError(f"cannot read the suite cache file {path}: {e.strerror or e}") from e
        except ValueError as e:  # not an .npy file, or one holding objects
            return self._damaged(path, f"not a NumPy array file: {e}")
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or list(array.shape) != shape:
            return self._damaged(path, f"not a float32 array of shape {shape}")
        return torch.from_numpy(array.copy())

    @staticmethod
    def _damaged(path: Path, problem: str) -> None:
        warnings.warn(f"the suite cache file {path} is damaged ({problem}); ignoring it: that part is computed "
                      "again and the file replaced", RuntimeWarning, stacklevel=3)
        return None


def _untrusted(path: Path, e: UntrustedFileError) -> EvaluationError:
    return EvaluationError(f"the suite cache file {path} is refused: {e.problem}; whoever can write it decides the "
                           f"figures read back. {e.fix} Or remove it, and it is computed again.")

