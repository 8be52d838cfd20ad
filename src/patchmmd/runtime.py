"""Where computations run and how tensors are described in messages: one device parser, one shape formatter.

:func:`resolve_device` turns a device string (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) into a
:class:`torch.device`, checking that it exists; every command and :mod:`patchmmd.scoring` use it (the
command line's ``--device`` option wraps it). :func:`shape_text` writes an image's shape as people read it.
:func:`compiled_kernels_status` says whether the compiled CPU kernels are in use, and if not why.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> shape_text(torch.zeros(3, 20, 30))
    '30x20 (3 channels)'
"""

from __future__ import annotations

import torch

__all__ = ["DeviceError", "compiled_kernels_status", "resolve_device", "shape_text"]


class DeviceError(ValueError):
    """A device string that names no device, or a device this machine does not have."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device, *, local_rank: int | None = None) -> torch.device:
    """The :class:`torch.device` for ``device``: ``"auto"`` is CUDA when available, else the CPU;
    ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"`` are taken as given (case and spaces ignored).

    ``local_rank`` (a process of a multi-process launch) maps ``auto`` / ``cuda`` without an index to
    ``cuda:local_rank``, one GPU per process on a node; an explicit ``cuda:N`` is kept.

    Raises:
        DeviceError: an unknown device string (one that is none of the above, such as ``"meta"`` or ``"xpu"``,
            which PyTorch parses too) or a :class:`torch.device` of such a type; CUDA (or MPS) asked for but not
            available; ``cuda:N`` or ``local_rank`` beyond the node's GPUs.

    Example:
        >>> resolve_device(" CPU ")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            text = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError) as e:
            raise DeviceError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r} ({e})"
            ) from None
    if dev.type not in ("cpu", "cuda", "mps"):  # torch also parses 'meta', 'xpu', 'hip', ...: not supported here
        raise DeviceError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if dev.type == "mps" and not _mps_available():
        raise DeviceError(f"device {str(device)!r} asked for, but MPS is not available; use 'cpu' or 'auto'")
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but CUDA is not available; use 'cpu' or 'auto'")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceError(
            f"device {str(device)!r} asked for, but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})"
        )
    if dev.index is None and local_rank is not None:
        if local_rank >= count:
            raise DeviceError(
                f"LOCAL_RANK={local_rank} but this node has {count} GPU(s): start at most {count} processes "
                "per node, or compute on the CPU"
            )
        dev = torch.device("cuda", local_rank)
    return dev


def shape_text(img: torch.Tensor) -> str:
    """A ``(C, H, W)`` (or ``(..., C, H, W)``) image's shape as ``WxH (C channels)``.

    Example:
        >>> shape_text(torch.zeros(1, 4, 5))
        '5x4 (1 channel)'
    """
    c, h, w = (int(s) for s in img.shape[-3:])
    return f"{w}x{h} ({c} channel{'s' if c != 1 else ''})"


def compiled_kernels_status() -> str:
    """Whether the compiled CPU kernels (float32 CPU tensors; the module docstring of :mod:`patchmmd._native`) are
    in use, in one line: ``in use (...)`` with how the work is split and on how many threads, or ``off: ...`` with
    why and the PyTorch path used instead (same values, slower): ``PATCHMMD_NATIVE=0``, no C compiler found, the
    build failed (with the compiler's first error line), a platform without the file-system calls the loader
    needs. ``patchmmd --version`` prints it.

    The first call in a process loads the kernels (compiling them if no cached build exists), unless
    ``PATCHMMD_NATIVE`` turns them off.

    Example:
        >>> compiled_kernels_status().startswith(("in use (", "off: "))
        True
    """
    from . import _native

    return _native.status()
