"""Double backward for the hand-written backward passes (docs/method.md §6).

The estimator's fused paths (:class:`patchmmd.core.rff._RFFBlockMeans`, the compiled kernels' operators), the
SSIM term and the aligned terms' winning offsets compute their gradients by hand: closed forms and compiled
kernels, fast but not themselves recorded by autograd. When a caller asks for the graph of the gradient
(``torch.autograd.grad(..., create_graph=True)``: gradient penalties, Hessian-vector products), their backward
passes instead differentiate a plain PyTorch formulation of the same function with autograd, recording the
graph: :func:`graph_vjp`. The second derivatives are then exact (for the plain formulation, which equals the
fast one to rounding), where a backward pass that is not recorded would drop its own terms of them silently.

The same plain formulations serve the ``torch.func`` transforms (:func:`functorch_active`): the hand-written
backward passes are autograd functions without the ``setup_context``, vmap and forward-mode rules those
transforms need, and the compiled kernels read raw data pointers, which a transform's wrapped tensors do not have.

Example:
    >>> x = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    >>> with torch.enable_grad():  # inside a backward pass that records its graph
    ...     (g,) = graph_vjp(lambda t: (t**3,), (x,), (torch.ones(2, dtype=torch.float64),), (True,))
    >>> g  # 3 x²
    tensor([ 0.7500, 12.0000], dtype=torch.float64, grad_fn=<MulBackward0>)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch

__all__ = ["functorch_active", "graph_vjp", "outside_transforms", "plain_path"]


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vjp``, ``jacrev``, ``jacfwd``, ``hessian``, ``jvp``,
    ``vmap``) is running. The distances then take their plain differentiable PyTorch path, as under
    ``torch.compile``: no compiled kernels, no hand-written backward passes, no activation checkpointing (its
    saved-tensor hooks are refused by ``torch.func.grad``); the same values and gradients to rounding. One call
    into PyTorch's C++ (tens of nanoseconds), so the eager path pays nothing measurable for asking.

    Example:
        >>> functorch_active()
        False
        >>> bool(torch.func.grad(lambda t: t * float(functorch_active()))(torch.tensor(2.0)))
        True
    """
    return _TRANSFORMS_ACTIVE()


def plain_path() -> bool:
    """Whether the distances take their plain differentiable PyTorch path: while ``torch.compile`` traces them
    or a ``torch.func`` transform runs (:func:`functorch_active`), rather than their eager fast paths
    (hand-written backward passes, tiled loops).

    Example:
        >>> plain_path()
        False
    """
    return torch.compiler.is_compiling() or functorch_active()


# PyTorch's own check (private; there is no public one). A PyTorch without it: no transform is taken to run, and
# the distances keep their eager paths.
_TRANSFORMS_ACTIVE: Callable[[], bool] = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


@contextmanager
def outside_transforms() -> Iterator[None]:
    """Make plain tensors here even while a ``torch.func`` transform runs: for the constants that are cached beyond
    the call (random features, the SSIM window). Made inside a transform they would be its wrapped tensors, dead
    once it returns (a compiled kernel given one fails on its data pointer; a later transform could take it for
    one of its own), and ``vmap`` refuses random draws.

    Example:
        >>> def f(t):
        ...     with outside_transforms():
        ...         c = torch.ones(2) * 2  # a plain tensor, not one of grad's
        ...     return (t * c).sum()
        >>> torch.func.grad(f)(torch.zeros(2))
        tensor([2., 2.])
    """
    disable = getattr(torch._C, "_DisableFuncTorch", None)  # private; a PyTorch without it: nothing to leave
    with disable() if disable is not None else nullcontext():
        yield


def _autocast_known(device_type: str) -> bool:
    """Whether this PyTorch's ``torch.autocast`` takes ``device_type`` (before 2.5 or so, ``"mps"`` and ``"xpu"``
    raised "unsupported autocast device_type", even with ``enabled=False``)."""
    try:
        torch.autocast(device_type, enabled=False)
    except (RuntimeError, AttributeError, ValueError):
        return False
    return True


#: Whether :func:`autocast_off` turns off Apple's ``mps`` and Intel's ``xpu`` autocast too (this PyTorch knows
#: them). A constant, so that ``torch.compile`` traces one fixed set of context managers.
AUTOCAST_MPS_XPU = _autocast_known("mps") and _autocast_known("xpu")


@contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast turned off for the CPU and CUDA, and for ``mps`` and ``xpu`` where this PyTorch knows them
    (:data:`AUTOCAST_MPS_XPU`), whatever region the caller is in: the distances compute in their inputs' dtype.

    Example:
        >>> with torch.autocast("cpu", dtype=torch.bfloat16), autocast_off():
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    if AUTOCAST_MPS_XPU:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False), \
                torch.autocast("mps", enabled=False), torch.autocast("xpu", enabled=False):
            yield
    else:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield


def graph_vjp(
    fn: Callable[..., Sequence[torch.Tensor | None]], inputs: Sequence[torch.Tensor | None],
    grads: Sequence[torch.Tensor | None], needs: Sequence[bool],
) -> tuple[torch.Tensor | None, ...]:
    """``grads`` pulled back through ``fn(*inputs)`` to the inputs marked in ``needs``, with the graph recorded.

    ``fn`` returns a sequence of tensors, one per entry of ``grads`` (``None``: that output received no gradient;
    an output may be ``None`` too).
    Returns one entry per input: the gradient, or ``None`` where ``needs`` is false or the output does not
    depend on the input. Called from a backward pass while grad mode is on (``create_graph=True``). Autocast is
    off here, as in the distances' forward passes: a backward pass called inside an autocast region would
    otherwise record the plain formulation's products and convolutions in 16 bits.
    """
    with autocast_off():
        with torch.enable_grad():
            outs = fn(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True)
                 if g is not None and o is not None and o.requires_grad]
        wrt = [t for t, need in zip(inputs, needs, strict=True) if need and t is not None]
        if not pairs or not wrt:
            return tuple(None for _ in inputs)
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], create_graph=True,
                                       allow_unused=True))
    return tuple(next(got) if need and t is not None else None for t, need in zip(inputs, needs, strict=True))
