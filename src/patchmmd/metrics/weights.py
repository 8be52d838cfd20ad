"""The one reader of weight files: local files only, data only, checked against the expected layout.

Every pretrained network of the package (the LPIPS and DISTS baselines, the pretrained VGG16 of
:class:`patchmmd.theory.cnn.VGGDistance`, the ``vgg`` loss) reads its files with :func:`load_weights` and checks
them with :func:`check_layout`; every failure is a :class:`WeightsError` (a ``ValueError``) whose message names
the file, and the key when one is at fault. Nothing is ever downloaded.

* Files are read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors only, never code.
* Only files the user controls are read: on POSIX the file (after symbolic links) must be owned by the user or
  root and writable by no one else (not by others; by its group only if that is the user's own group), in a
  folder with the same owners that no one else can write (a sticky folder such as ``/tmp`` is fine). Whoever
  can write a weight file decides what the metric computes; such a file is refused with the ``chmod``/copy that
  makes it safe, and the checked file is the one read (one open file, no second lookup of the path).
* A ``{"state_dict": {...}}`` / ``{"model": {...}}`` wrapper and a ``module.`` prefix (DataParallel) are unwrapped.
* The path must lead to a regular file (a FIFO is refused, not waited on); every tensor must be real floating point
  with finite values, dense and not on the ``meta`` device.
* :func:`check_layout` lists the missing keys, the unexpected keys and the wrong shapes.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "head.pt"
    >>> torch.save({"w": torch.ones(2)}, path)
    >>> sd = load_weights(path, what="a head", metric="demo", option="weights")
    >>> check_layout(sd, {"w": torch.zeros(2)}, metric="demo", option="weights", path=path)
    >>> check_layout(sd, {"w": torch.zeros(3)}, metric="demo", option="weights", path=path)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    patchmmd.metrics.weights.WeightsError: demo: weights file ... wrong shape: w must have shape (3,), got (2,)
    >>> load_weights(None, what="a head", metric="demo", option="weights")
    Traceback (most recent call last):
    ...
    patchmmd.metrics.weights.WeightsError: metric 'demo' needs weights=PATH: a head
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._trust import UntrustedFileError, check_controlled, open_without_blocking

__all__ = [
    "WEIGHT_FOLDER", "WeightsError", "WeightsFileNotFoundError", "WeightsPath", "check_layout", "check_nonnegative",
    "check_weight_tensor",
    "file_stamps", "folder_files", "folder_options", "load_weights",
]


#: A weight file's path; ``None`` (or ``""``) when none was given.
WeightsPath = str | os.PathLike[str] | None


class WeightsError(ValueError):
    """A weight file is missing, unreadable, or does not match the expected layout."""


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """No weight file at the given path (both a :class:`WeightsError` and a ``FileNotFoundError``)."""


#: The dtypes a weight tensor may have (float8 and the like have no ``isfinite``, and no metric computes in them).
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_weight_tensor(where: str, key: str, value: object) -> torch.Tensor:
    """``value`` if it is a real floating-point tensor of finite values; else :class:`WeightsError` naming ``key``."""
    if not isinstance(value, torch.Tensor):
        raise WeightsError(f"{where}: {key} must be a tensor, got {type(value).__name__}")
    if value.dtype not in _WEIGHT_DTYPES:
        raise WeightsError(f"{where}: {key} has dtype {value.dtype}, but {key} must be a real floating-point "
                           "tensor of finite values (float16, bfloat16, float32 or float64)")
    if value.layout != torch.strided:
        raise WeightsError(f"{where}: {key} is a {value.layout} tensor; weights must be dense (torch.strided)")
    if value.device.type == "meta":  # a shape without values (a model saved before its weights were loaded)
        raise WeightsError(f"{where}: {key} is a meta tensor (a shape without values); weights must hold values")
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise WeightsError(f"{where}: {key} contains NaN or Inf values; weights must be finite")
    return value


def _check_owned(fd: int, path: Path, *, metric: str, option: str) -> None:
    """:class:`WeightsError` unless the open file ``fd`` and its folder are controlled by the user (POSIX; see
    the module's docstring and :mod:`patchmmd._trust`): owned by the user or root, writable by no one else."""
    try:
        check_controlled(fd, path)
    except UntrustedFileError as e:
        raise WeightsError(f"{metric}: {option} file {path}: {e.problem}; whoever can write it decides what the "
                           f"metric computes. {e.fix}") from None
    except OSError as e:
        raise WeightsError(f"{metric}: cannot read {option} file {path}: {e}") from None


def load_weights(
    path: WeightsPath, what: str, metric: str, option: str, *, hint: str = ""
) -> dict[str, torch.Tensor]:
    """Read a tensor dictionary with ``torch.load(weights_only=True)``; :class:`WeightsError` for every failure.

    Args:
        path: the local file (``None`` or ``""``: none given).
        what: what the file holds, for the messages (e.g. ``"the VGG16 trunk's state_dict"``).
        metric: the metric or loss that needs it, for the messages.
        option: the option that names the file (``backbone``, ``weights``), for the messages.
        hint: appended to the "not found" / "needs a file" messages (e.g. how to save the file).

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a ``module.`` key prefix are unwrapped; every
    value must be a real floating-point tensor of finite values.
    """
    suffix = f". {hint}" if hint else ""
    if path is None or str(path) == "":
        raise WeightsError(f"metric {metric!r} needs {option}=PATH: {what}{suffix}")
    if not isinstance(path, (str, os.PathLike)):
        raise WeightsError(f"metric {metric!r}: {option} must be a file path (a str or os.PathLike), got "
                           f"{type(path).__name__} {path!r}")
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise WeightsFileNotFoundError(f"{metric}: {option} file not found: {p} ({what}){suffix}") from None
    except (OSError, ValueError) as e:  # a name too long, a folder on the way that cannot be searched, a NUL
        raise WeightsError(f"{metric}: cannot open {option} file {p}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"{metric}: {option} {p} is a folder; give the file itself ({what}){suffix}")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device (/dev/null) is no weight file
        raise WeightsError(f"{metric}: {option} {p} is not a regular file; give the file itself ({what}){suffix}")
    try:  # without blocking: a FIFO that replaced the file after the check above is refused below, not waited on
        f = open_without_blocking(p)  # closed below; the checked descriptor is the one torch reads
    except OSError as e:
        raise WeightsError(f"{metric}: cannot open {option} file {p}: {e.strerror or e}") from None
    try:
        _check_owned(f.fileno(), p, metric=metric, option=option)
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as e:  # unpickling errors come in many types
        # some carry no message (an empty file: a bare EOFError)
        reason = str(e) or f"{type(e).__name__} (the file is empty or cut short)"
        raise WeightsError(f"{metric}: cannot read {option} file {p} as a weights-only tensor file "
                           f"(torch.load(weights_only=True)): {reason}") from None
    finally:
        f.close()
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and set(obj) == {key} and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{metric}: {option} file {p} is not a state dict (a mapping of names to tensors), "
                           f"got {type(obj).__name__}")
    other = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if other:  # e.g. a training checkpoint: the weights under "state_dict" beside an epoch, an optimizer's state
        nested = [k for k in ("state_dict", "model", *other) if k in other and isinstance(obj[k], Mapping)]
        fix = f"; save the weights alone (torch.save(checkpoint[{nested[0]!r}], path))" if nested else ""
        raise WeightsError(f"{metric}: {option} file {p} is not a state dict (a mapping of names to tensors): its "
                           f"entry {other[0]!r} is of type {type(obj[other[0]]).__name__}, not a tensor{fix}")
    out: dict[str, torch.Tensor] = {}
    spelled: dict[str, object] = {}  # the file's key of each name, for the message
    for key, v in obj.items():
        k = str(key)
        check_weight_tensor(f"{metric}: {option} file {p}", k, v)
        name = k.removeprefix("module.")
        if name in out:  # "w" and "module.w" (or the key 0 and "0"): which one is meant is unknown
            raise WeightsError(f"{metric}: {option} file {p} holds {name} twice, as {spelled[name]!r} and {key!r}")
        out[name], spelled[name] = v, key
    return out


def check_layout(
    got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, metric: str, option: str, path: object
) -> None:
    """:class:`WeightsError` unless ``got`` has exactly ``expected``'s keys and shapes (the message lists the
    missing and unexpected keys and the wrong shapes, eight of each at most)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} must have shape {tuple(expected[k].shape)}, got {tuple(got[k].shape)}"
             for k in expected if k in got and got[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        if wrong:
            parts.append(f"wrong shape: {'; '.join(wrong[:8])}" + (" ..." if len(wrong) > 8 else ""))
        raise WeightsError(f"{metric}: {option} file {path} does not match the expected layout; " + " | ".join(parts))


def check_nonnegative(
    tensors: Mapping[str, torch.Tensor], *, metric: str, option: str, path: object, why: str
) -> None:
    """:class:`WeightsError` naming the first of ``tensors`` (by its key) that holds a negative value; ``why`` says
    what needs them non-negative (learned weights of a distance that are >= 0 by construction)."""
    for key, value in tensors.items():
        low = float(value.min()) if value.numel() else 0.0
        if low < 0:
            raise WeightsError(f"{metric}: {option} file {path}: {key} has negative values (min {low:.3g}); {why}")


#: A folder of the published weights, as ``shared/tools/published_weights.py`` writes it and ``patchmmd eval suite
#: --weights`` and the training tasks' ``--weights`` take it: the files each metric reads from it, by option.
WEIGHT_FOLDER: dict[str, dict[str, str]] = {
    "lpips-vgg": {"backbone": "vgg16.pth", "weights": "lpips/vgg.pth"},
    "lpips-alex": {"backbone": "alexnet.pth", "weights": "lpips/alex.pth"},
    "dists": {"backbone": "vgg16.pth", "weights": "dists.pt"},
    "vgg": {"weights": "vgg16.pth"},
}


def folder_files(name: str) -> dict[str, str]:
    """The files metric ``name`` reads from a folder of the published weights (:data:`WEIGHT_FOLDER`), by option;
    ``{}`` for a metric that needs none.

    Example:
        >>> folder_files("lpips-vgg"), folder_files("vgg"), folder_files("mmdpp")
        ({'backbone': 'vgg16.pth', 'weights': 'lpips/vgg.pth'}, {'weights': 'vgg16.pth'}, {})
    """
    return dict(WEIGHT_FOLDER.get(name, {}))


def file_stamps(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What identifies the files a metric's options name (its weight files): for each option whose value is a
    path (``str`` or ``os.PathLike``) to an existing regular file, its absolute path, size and modification time.

    Stored with cached and journaled results (``patchmmd eval``'s caches, a ``patchmmd score`` journal), so that
    a weight file replaced in place, or a relative path that leads elsewhere from another folder, is not taken
    for the file the results were computed with. Options that name no file are left out.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "head.pt"
        >>> _ = path.write_bytes(b"1234")
        >>> stamps = file_stamps({"weights": path, "net": "vgg"})
        >>> list(stamps), stamps["weights"]["size"], stamps["weights"]["path"] == str(path)
        (['weights'], 4, True)
    """
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(options, key=str):
        value = options[key]
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            continue
        path = Path(value).expanduser()
        try:
            st = path.stat()
        except (OSError, ValueError):  # no such file; a name the system refuses (a NUL, too long)
            continue
        if stat.S_ISREG(st.st_mode):
            out[str(key)] = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def folder_options(name: str, folder: str | os.PathLike[str]) -> dict[str, str]:
    """The options (paths in ``folder``) of :func:`folder_files` for metric ``name``.

    Raises:
        WeightsFileNotFoundError: a file of the layout is not in ``folder`` (the message names it, the metric and
            the folder).
    """
    options = {}
    for option, file in folder_files(name).items():
        path = Path(folder) / file
        if not path.is_file():
            layout = ", ".join(sorted({f for files in WEIGHT_FOLDER.values() for f in files.values()}))
            raise WeightsFileNotFoundError(
                f"weights folder {os.fspath(folder)}: {file} not found (needed by {name}); lay the folder out as "
                f"shared/tools/published_weights.py writes it ({layout})"
            )
        options[option] = os.fspath(path)
    return options
