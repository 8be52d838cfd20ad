"""The one reader of weight files: local files only, data only, checked against the expected layout.

Every pretrained network of the package (the LPIPS and DISTS baselines, the pretrained VGG16 of
:class:`patchmmd.theory.cnn.VGGDistance`, the ``vgg`` loss) reads its files with :func:`load_weights` and checks
them with :func:`check_layout`; every failure is a :class:`WeightsError` (a ``ValueError``) whose message names
the file, and the key when one is at fault. Nothing is ever downloaded.

* Files are read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors only, never code.
* A ``{"state_dict": {...}}`` / ``{"model": {...}}`` wrapper and a ``module.`` prefix (DataParallel) are unwrapped.
* Every tensor must be real floating point with finite values.
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
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "WeightsError", "WeightsFileNotFoundError", "WeightsPath", "check_layout", "check_weight_tensor", "load_weights",
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
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise WeightsError(f"{where}: {key} contains NaN or Inf values; weights must be finite")
    return value


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
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsFileNotFoundError(f"{metric}: {option} file not found: {p} ({what}){suffix}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise WeightsError(f"{metric}: cannot read {option} file {p} as a weights-only tensor file "
                           f"(torch.load(weights_only=True)): {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and set(obj) == {key} and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        got = type(obj).__name__
        raise WeightsError(f"{metric}: {option} file {p} is not a state dict (a mapping of names to tensors), "
                           f"got {got}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        k = str(k)
        check_weight_tensor(f"{metric}: {option} file {p}", k, v)
        name = k.removeprefix("module.")
        if name in out:  # "w" and "module.w": which one is meant is unknown
            raise WeightsError(f"{metric}: {option} file {p} holds {name} twice (with and without the "
                               "'module.' prefix)")
        out[name] = v
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
