"""The infinitely wide random CNN: its arc-cosine (NNGP) kernel and the closed-form distance (docs/method.md §4).

The network of :mod:`patchmmd.theory.cnn` (a ``k x k`` convolution to ``N`` channels, then ``depth - 1`` 1x1
convolutions, a ReLU after each, Gaussian weights of variance ``sigma_w2 / fan_in``, Gaussian biases of
variance ``sigma_b2``) maps the patch ``p`` at each pixel to a feature vector ``Φ(p)``. As ``N -> ∞`` the
empirical kernel ``(1/N) <Φ(p), Φ(q)>`` converges to the NNGP kernel, computed by the recursion::

    K¹(p, q)   = σ_b² + σ_w² (p·q) / d                      (pre-activations of layer 1, d = C k²)
    E_l(p, q)  = √(K^l_pp K^l_qq) / 2 · κ₁(cos θ_l),  cos θ_l = K^l_pq / √(K^l_pp K^l_qq)
    K^{l+1}    = σ_b² + σ_w² E_l
    k(p, q)    = E_L(p, q)                                  (after the last of the L ReLUs)

with ``κ₁(c) = (√(1 - c²) + (π - arccos c) c) / π`` (``E[ReLU(u) ReLU(v)]`` for a centred Gaussian pair).
Without biases it has the closed form ``k = (σ_w²/2)^L (‖p‖‖q‖ / d) κ₁^{∘L}(cos∠(p, q))``: for He scaling
(``σ_w² = 2``) the ``(‖p‖‖q‖/d) κ₁^{∘L}`` of docs/method.md §4. First-layer variants:

* ``"he"``: the kernel on the raw patches;
* ``"zero_mean"``: first-layer filters made zero-mean per colour channel, so ``w·p = w·Πp``: the same
  kernel on the Π-centred patches (``d`` stays ``C k²``);
* ``"patch_norm"``: the first layer's output divided by the patch norm (smoothed:
  ``p / √(‖p‖² + ε²)``, ``ε =`` :data:`PATCH_NORM_EPS`), so without biases ``k ≈ κ₁^{∘L}(cos∠) / d``.

Every step is safe where the textbook formulas are not: cosines are clamped to ``[-1, 1]``, ``κ₁`` has
its own derivative ``(π - arccos c) / π`` (finite at ``c = ±1``, where autograd through ``√(1 - c²)`` and
``arccos`` gives ``inf - inf``), and zero patches (flat patches after Π) give zero values and zero,
finite gradients.

The distance :class:`InfiniteCNNDistance` is the windowed V-statistic MMD² of this kernel, computed by the
exact, memory-bounded window machinery of :mod:`patchmmd.core.mmd`; with ``pooling=None`` it is the aligned
distance ``mean_u [k(p_u, p_u) + k(q_u, q_u) - 2 k(p_u, q_u)]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core.kernels import _checkpointed
from ..core.mmd import windowed_mmd2_exact
from ..core.patches import extract_patches, window_grid
from ..core.validation import (
    OutOfRange,
    Reduction,
    _values,
    check_nonnegative_float,
    check_out_of_range,
    check_patch_size,
    check_positive_float,
    check_positive_int,
    check_reduction,
    check_value_range,
    compute_dtype,
    full_precision,
    prepare_pair,
    reduce,
)

FirstLayer = Literal["he", "zero_mean", "patch_norm"]
FIRST_LAYERS = ("he", "zero_mean", "patch_norm")

#: Pooling of the network's last feature map: ``(window, stride)`` average pooling, ``"global"`` (one
#: window over the image) or ``None`` (no pooling: the aligned, position-by-position distance).
Pooling = tuple[int, int] | Literal["global"] | None

#: Smoothing of the ``"patch_norm"`` first layer: patches are divided by ``√(‖p‖² + ε²)`` on the [-1, 1]
#: scale, so a zero patch maps to zero with a finite gradient.
PATCH_NORM_EPS = 1e-3

_PI = math.pi


class _Elementwise(torch.autograd.Function):
    """An elementwise function of ``c`` whose derivative is :meth:`derivative` in both modes (``setup_context``
    saves ``c`` for both; ``vmap``'s rule is generated). Subclasses define ``forward`` and ``derivative``; each
    gets the ``backward`` and ``jvp`` that multiply by its ``derivative`` (static methods, as autograd calls them,
    made once per subclass here)."""

    generate_vmap_rule = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        derivative = cls.derivative

        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return grad * derivative(ctx.saved_tensors[0])

        def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
            return tangent * derivative(ctx.saved_tensors[0])

        cls.backward = staticmethod(backward)  # type: ignore[method-assign]
        cls.jvp = staticmethod(jvp)  # type: ignore[method-assign]

    @staticmethod
    def derivative(c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ``ctx`` is typed Any: torch's ``FunctionCtx`` declares ``save_for_backward`` but not ``saved_tensors``.
    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        (c,) = inputs
        ctx.save_for_backward(c)
        ctx.save_for_forward(c)


class _Kappa1(_Elementwise):
    """``κ₁(c)`` for ``c`` clamped to ``[-1, 1]``, with the derivative ``(π - arccos c) / π`` everywhere (and,
    when the gradient's graph is asked for, the second derivative ``1 / (π √(1 - c²))`` inside ``(-1, 1)``).

    At ``c = ±1`` the second derivative is infinite, and autograd would give ``inf · 0 = NaN`` in every Hessian
    that meets such an entry (every diagonal ``k(p, p)``, every pair of equal patches). It is taken as 0 there,
    which is the exact contribution: ``c = ±1`` is where a cosine is extreme, so ``1 ∓ c = O(|δ|²)`` for a
    perturbation ``δ`` of the inputs, and ``κ₁`` deviates from its linear part by ``O((1 ∓ c)^{3/2}) = O(|δ|³)``.

    The derivative is itself an autograd function (:class:`_Kappa1Derivative`) used by both modes, so reverse over
    reverse, ``hessian``'s forward over reverse and reverse over forward take the second derivative rather than a
    constant. Forward over forward (``jacfwd(jacfwd(...))``, ``jvp`` of ``jvp``) is not supported: PyTorch gives
    the forward rule's own derivative as 0 there (measured), so use ``hessian`` or reverse mode for second
    derivatives. The forward does not see
    ``ctx`` (``setup_context`` saves ``c``), and ``vmap``'s rule is generated: ``torch.func``'s transforms
    (``grad``, ``vmap``, ``jacrev``, ``jvp``, ``jacfwd``, ``hessian``) go through it.
    """

    @staticmethod
    def forward(c: torch.Tensor) -> torch.Tensor:
        cc = c.clamp(-1.0, 1.0)
        theta = torch.arccos(cc)
        s = torch.sqrt((1.0 - cc * cc).clamp_min(0.0))
        return (s + (_PI - theta) * cc) / _PI

    @staticmethod
    def derivative(c: torch.Tensor) -> torch.Tensor:
        return _Kappa1Derivative.apply(c)


class _Kappa1Derivative(_Elementwise):
    """``κ₁'(c) = (π - arccos c) / π`` for ``c`` clamped to ``[-1, 1]``, with the derivative ``1 / (π √(1 - c²))``
    inside ``(-1, 1)`` and 0 at ``c = ±1`` (see :class:`_Kappa1`), in both modes; the derivative is plain PyTorch
    operations, so higher orders follow."""

    @staticmethod
    def forward(c: torch.Tensor) -> torch.Tensor:
        return (_PI - torch.arccos(c.clamp(-1.0, 1.0))) / _PI

    @staticmethod
    def derivative(c: torch.Tensor) -> torch.Tensor:
        inside = c.abs() < 1.0
        safe = torch.where(inside, c, torch.zeros_like(c))
        return torch.where(inside, 1.0 / (_PI * torch.sqrt(1.0 - safe * safe)), torch.zeros_like(c))


def _cosine_tolerance(dtype: torch.dtype) -> float:
    """How far a cosine may stray outside ``[-1, 1]`` by rounding: 1024 units in the last place, at least 1e-6 and
    at most 1/16 (1024 units of float16 are 1.0 and of bfloat16 8.0: no check at all)."""
    return max(1e-6, min(1024 * float(torch.finfo(dtype).eps), 1 / 16))


def kappa1(c: torch.Tensor) -> torch.Tensor:
    """The degree-1 arc-cosine function ``κ₁(c) = (√(1 - c²) + (π - arccos c) c) / π``.

    ``2 E[ReLU(u) ReLU(v)]`` for standard Gaussians ``u, v`` of correlation ``c``. ``c`` is a cosine: values
    may stray outside ``[-1, 1]`` by rounding (up to ``1024 eps`` of the dtype, at least 1e-6 and at most 1/16) and
    are clamped; farther out, or NaN, is an error. The gradient ``(π - arccos c) / π`` is finite everywhere (1 at
    ``c = 1``, 0 at ``c = -1``).

    Raises:
        TypeError: ``c`` is not a floating-point ``torch.Tensor``.
        ValueError: ``c`` has NaN values or values outside ``[-1, 1]`` beyond rounding.

    Example:
        >>> c = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
        >>> [round(v, 6) for v in kappa1(c).tolist()]
        [0.0, 0.31831, 1.0]
        >>> kappa1(c).sum().backward(); c.grad.tolist()
        [0.0, 0.5, 1.0]
    """
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"c must be a torch.Tensor of cosines, got {type(c).__name__}; use torch.as_tensor(c)")
    if not c.is_floating_point():
        raise TypeError(f"c must be a floating-point tensor, got {c.dtype}")
    if c.numel():
        lo, hi = (float(v) for v in torch.aminmax(_values(c)))  # (under vmap: the whole batch's values)
        tol = _cosine_tolerance(c.dtype)
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError("c contains NaN values")
        if lo < -1.0 - tol or hi > 1.0 + tol:
            raise ValueError(
                f"c must hold cosines in [-1, 1] (up to rounding, {tol:.2g}), got values in [{lo:g}, {hi:g}]"
            )
    return _Kappa1.apply(c)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """``√v`` for ``v >= 0`` with gradient 0 (not ``inf``) at ``v = 0``."""
    pos = v > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v))


def _cosine(pq: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, c)``: ``g = a b`` and the cosine ``c = pq / g`` where ``g > 0`` (0 elsewhere), for norms ``a, b >= 0``.

    ``pq`` is divided by ``a`` and then by ``b``, not by their product: the gradient of a quotient divides by the
    denominator once more, and for vectors of norm about 1e-20 (float32; 1e-155 in float64) ``c / g`` overflowed,
    which made the gradient inf or NaN. ``pq / a`` is at most ``b`` in size, so neither step overflows.
    """
    g = a * b
    pos = g > 0
    one = torch.ones((), dtype=g.dtype, device=g.device)
    c = pq / torch.where(a > 0, a, one) / torch.where(b > 0, b, one)
    return g, torch.where(pos, c, torch.zeros_like(c))


def _check_kernel_options(
    depth: object, sigma_w2: object, sigma_b2: object, first_layer: object
) -> tuple[int, float, float]:
    """``(depth, sigma_w2, sigma_b2)`` checked, as ``int, float, float``; ``first_layer`` checked."""
    if first_layer not in FIRST_LAYERS:
        raise ValueError(f"first_layer must be one of {FIRST_LAYERS}, got {first_layer!r}")
    return (check_positive_int("depth", depth), check_positive_float("sigma_w2", sigma_w2),
            check_nonnegative_float("sigma_b2", sigma_b2))


def check_first_layer_size(first_layer: object, kernel_size: int) -> None:
    """Refuse ``first_layer="zero_mean"`` with ``kernel_size=1``: a 1x1 filter made zero-mean is 0, so every
    feature, and the distance of every pair, would be 0 (as ``patch_mmd`` refuses ``patch_size=1`` with
    ``center=True``)."""
    if first_layer == "zero_mean" and kernel_size == 1:
        raise ValueError(
            "first_layer='zero_mean' with kernel_size=1 compares nothing: a zero-mean 1x1 filter is 0, so the "
            "distance would be 0 for every pair; use kernel_size >= 3 or another first_layer"
        )


def nngp_from_inner_products(
    pp: torch.Tensor,
    qq: torch.Tensor,
    pq: torch.Tensor,
    *,
    dim: int,
    depth: int,
    sigma_w2: float = 2.0,
    sigma_b2: float = 0.0,
    method: Literal["auto", "recursion", "closed_form"] = "auto",
) -> torch.Tensor:
    """The NNGP kernel from the inner products ``p·p``, ``q·q``, ``p·q`` of input vectors of dimension ``dim``.

    ``method="recursion"`` runs the general layer recursion (any ``sigma_b2``); ``"closed_form"`` the
    no-bias closed form ``(σ_w²/2)^L (‖p‖‖q‖/d) κ₁^{∘L}(cos)``; ``"auto"`` picks the closed form when
    ``sigma_b2 == 0``. Shapes broadcast.

    Raises:
        ValueError: ``depth`` or ``dim`` not an integer >= 1, ``sigma_w2`` not a finite number > 0, ``sigma_b2``
            not a finite number >= 0 (no network has no layer or a negative variance), an unknown ``method``, or
            ``method="closed_form"`` with ``sigma_b2 > 0``.

    Example:
        >>> pp, qq, pq = (torch.tensor(v, dtype=torch.float64) for v in (4.0, 9.0, 0.0))
        >>> v = nngp_from_inner_products(pp, qq, pq, dim=6, depth=1)  # (2 * 3 / 6) * κ₁(0) = 1/π
        >>> round(float(v) * math.pi, 12)
        1.0
        >>> r = nngp_from_inner_products(pp, qq, pq, dim=6, depth=3, method="recursion")
        >>> bool(torch.isclose(r, nngp_from_inner_products(pp, qq, pq, dim=6, depth=3)))
        True
    """
    if method not in ("auto", "recursion", "closed_form"):
        raise ValueError(f"method must be 'auto', 'recursion' or 'closed_form', got {method!r}")
    depth, sigma_w2, sigma_b2 = (check_positive_int("depth", depth), check_positive_float("sigma_w2", sigma_w2),
                                 check_nonnegative_float("sigma_b2", sigma_b2))
    dim = check_positive_int("dim", dim)
    if method == "closed_form" and sigma_b2 != 0:
        raise ValueError(f"the closed form needs sigma_b2 == 0, got sigma_b2={sigma_b2!r}")
    if method == "closed_form" or (method == "auto" and sigma_b2 == 0):
        g, c = _cosine(pq, _safe_sqrt(pp), _safe_sqrt(qq))
        for _ in range(depth):
            c = _Kappa1.apply(c)
        return g * c * ((sigma_w2 / 2.0) ** depth / dim)
    kpp = sigma_b2 + sigma_w2 / dim * pp
    kqq = sigma_b2 + sigma_w2 / dim * qq
    kpq = sigma_b2 + sigma_w2 / dim * pq
    post = kpq
    for layer in range(depth):
        g, c = _cosine(kpq, _safe_sqrt(kpp), _safe_sqrt(kqq))
        post = 0.5 * g * _Kappa1.apply(c)
        if layer + 1 < depth:
            kpq = sigma_b2 + sigma_w2 * post
            kpp = sigma_b2 + sigma_w2 * 0.5 * kpp
            kqq = sigma_b2 + sigma_w2 * 0.5 * kqq
    return post


def first_layer_transform(p: torch.Tensor, first_layer: FirstLayer, channels: int | None = None) -> torch.Tensor:
    """What the first layer's filters effectively see: ``p`` (``"he"``), ``Πp`` (``"zero_mean"``, needs
    ``channels``) or ``p / √(‖p‖² + ε²)`` (``"patch_norm"``). Patch vectors in the last dimension,
    channel-major.

    Example:
        >>> p = torch.tensor([[1.0, 2.0, 3.0, 10.0, 10.0, 10.0]])
        >>> first_layer_transform(p, "zero_mean", channels=2).tolist()
        [[-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]
    """
    if first_layer == "he":
        return p
    if first_layer == "zero_mean":
        if channels is None:
            raise ValueError("first_layer='zero_mean' needs channels= (the colour channels of the patch vectors)")
        d = p.shape[-1]
        channels = check_positive_int("channels", channels)
        if d % channels:
            raise ValueError(f"patch dimension {d} is not a multiple of channels={channels}")
        v = p.reshape(*p.shape[:-1], channels, d // channels)
        return (v - v.mean(dim=-1, keepdim=True)).reshape(p.shape)
    if first_layer == "patch_norm":
        return p / torch.sqrt((p * p).sum(-1, keepdim=True) + PATCH_NORM_EPS**2)
    raise ValueError(f"first_layer must be one of {FIRST_LAYERS}, got {first_layer!r}")


def _check_vectors(name: str, t: object) -> None:
    """A set of vectors ``(..., n, d)``: a floating-point tensor of finite values, ``d >= 1``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., n, d), got {type(t).__name__}; "
                        "use torch.as_tensor")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (..., n, d) (at least 2 dimensions), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.shape[-1] == 0:
        raise ValueError(f"{name} must have vectors of dimension d >= 1, got shape {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def nngp_kernel(
    P: torch.Tensor,
    Q: torch.Tensor,
    *,
    depth: int,
    sigma_w2: float = 2.0,
    sigma_b2: float = 0.0,
    first_layer: FirstLayer = "he",
    channels: int | None = None,
) -> torch.Tensor:
    """The NNGP (arc-cosine) kernel matrix of the random ReLU CNN between two sets of patch vectors.

    The limit of ``(1/N) <Φ(p), Φ(q)>`` for the network of :class:`patchmmd.theory.cnn.RandomCNNDistance` with
    ``depth`` ReLU layers (see the module docstring for the recursion and the closed form).

    Args:
        P, Q: patch vectors ``(..., n, d)`` and ``(..., m, d)``, channel-major (as :func:`extract_patches`
            lays them out), on the [-1, 1] scale; ``d = C k²`` is the first layer's fan-in.
        depth: number of ReLU layers ``L``.
        sigma_w2, sigma_b2: weight variance times fan-in (2 = He) and bias variance.
        first_layer: ``"he"``, ``"zero_mean"`` (needs ``channels``) or ``"patch_norm"``.

    Returns:
        ``(..., n, m)``.

    16-bit ``P`` and ``Q`` are computed in float32 (:func:`patchmmd.core.validation.compute_dtype`) and the
    result is cast back: in float16, ``p·p`` overflows for vectors of norm above 256.

    Raises:
        TypeError: ``P`` or ``Q`` is not a floating-point tensor.
        ValueError: fewer than 2 dimensions, different vector dimensions, dtypes or devices, batch dimensions
            that do not broadcast, NaN or Inf, ``channels`` not a positive integer (or, for ``"zero_mean"``,
            missing or not dividing ``d``).

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> K = nngp_kernel(p, p, depth=1)
        >>> K.diagonal().tolist()  # k(p, p) = ‖p‖² / d
        [0.5, 2.0]
        >>> round(float(K[0, 1]), 6) == round(2 / 2 / math.pi, 6)  # orthogonal: (‖p‖‖q‖/d) κ₁(0)
        True
    """
    depth, sigma_w2, sigma_b2 = _check_kernel_options(depth, sigma_w2, sigma_b2, first_layer)
    if channels is not None:
        channels = check_positive_int("channels", channels)
    _check_vectors("P", P)
    _check_vectors("Q", Q)
    if P.shape[-1] != Q.shape[-1]:
        raise ValueError(f"P and Q must have the same vector dimension, got {P.shape[-1]} and {Q.shape[-1]}")
    if P.dtype != Q.dtype or P.device != Q.device:
        raise ValueError(f"P and Q must have the same dtype and device, got {P.dtype} on {P.device} and "
                         f"{Q.dtype} on {Q.device}")
    try:
        torch.broadcast_shapes(P.shape[:-2], Q.shape[:-2])
    except RuntimeError:
        raise ValueError(f"P and Q must have batch dimensions that broadcast, got shapes {tuple(P.shape)} and "
                         f"{tuple(Q.shape)}") from None
    ct = compute_dtype(P.dtype)
    return _nngp_matrix(P.to(ct), Q.to(ct), depth=depth, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
                        first_layer=first_layer, channels=channels).to(P.dtype)


def _nngp_matrix(
    P: torch.Tensor, Q: torch.Tensor, *, depth: int, sigma_w2: float, sigma_b2: float, first_layer: FirstLayer,
    channels: int | None,
) -> torch.Tensor:
    """:func:`nngp_kernel` without the input checks (for validated inputs)."""
    d = P.shape[-1]
    P = first_layer_transform(P, first_layer, channels)
    Q = first_layer_transform(Q, first_layer, channels)
    pp = (P * P).sum(-1).unsqueeze(-1)
    qq = (Q * Q).sum(-1).unsqueeze(-2)
    pq = P @ Q.transpose(-1, -2)
    return nngp_from_inner_products(pp, qq, pq, dim=d, depth=depth, sigma_w2=sigma_w2, sigma_b2=sigma_b2)


class NNGPKernel:
    """The NNGP kernel as a :class:`patchmmd.core.kernels.Kernel` (``matrix`` and ``paired``).

    Example:
        >>> k = NNGPKernel(depth=2)
        >>> a = torch.randn(1, 5, 27, dtype=torch.float64)
        >>> torch.allclose(k.matrix(a, a).diagonal(dim1=1, dim2=2), k.paired(a, a))
        True
    """

    def __init__(
        self,
        depth: int,
        *,
        sigma_w2: float = 2.0,
        sigma_b2: float = 0.0,
        first_layer: FirstLayer = "he",
        channels: int | None = None,
    ) -> None:
        self.depth, self.sigma_w2, self.sigma_b2 = _check_kernel_options(depth, sigma_w2, sigma_b2, first_layer)
        if first_layer == "zero_mean" and channels is None:
            raise ValueError("first_layer='zero_mean' needs channels= (the colour channels of the patch vectors)")
        self.first_layer: FirstLayer = first_layer
        self.channels = None if channels is None else check_positive_int("channels", channels)

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _nngp_matrix(
            a, b, first_layer=self.first_layer, channels=self.channels,
            depth=self.depth, sigma_w2=self.sigma_w2, sigma_b2=self.sigma_b2,
        )

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a.shape[-1]
        a = first_layer_transform(a, self.first_layer, self.channels)
        b = first_layer_transform(b, self.first_layer, self.channels)
        return nngp_from_inner_products(
            (a * a).sum(-1), (b * b).sum(-1), (a * b).sum(-1), dim=d,
            depth=self.depth, sigma_w2=self.sigma_w2, sigma_b2=self.sigma_b2,
        )

    def __repr__(self) -> str:
        return (
            f"NNGPKernel(depth={self.depth}, sigma_w2={self.sigma_w2:g}, sigma_b2={self.sigma_b2:g}, "
            f"first_layer={self.first_layer!r})"
        )


def check_pooling(pooling: object) -> Pooling:
    """Validate a ``pooling`` argument: ``(window, stride)``, ``"global"`` or ``None``."""
    if pooling is None:
        return None
    if isinstance(pooling, str) and pooling == "global":  # compared as a string only: ``==`` on an array is elementwise
        return "global"
    if isinstance(pooling, (tuple, list)) and len(pooling) == 2:
        return (check_positive_int("pooling window", pooling[0]), check_positive_int("pooling stride", pooling[1]))
    raise ValueError(f"pooling must be a (window, stride) pair, 'global' or None, got {pooling!r}")


def _pool_window(pooling: Pooling) -> tuple[int | None, int]:
    """``(window, stride)`` for :func:`patchmmd.core.patches.window_grid`; ``None`` window is global."""
    if pooling == "global":
        return None, 1
    assert isinstance(pooling, tuple)
    return pooling


def _aligned_kernel_distance(x: torch.Tensor, y: torch.Tensor, kernel: NNGPKernel, patch_size: int) -> torch.Tensor:
    """``mean_u [k(p_u, p_u) + k(q_u, q_u) - 2 k(p_u, q_u)]`` of internal-scale images: ``(N,)``."""
    px = extract_patches(x, patch_size, center=False).movedim(1, -1)
    py = extract_patches(y, patch_size, center=False).movedim(1, -1)
    value = kernel.paired(px, px) + kernel.paired(py, py) - 2.0 * kernel.paired(px, py)
    return value.clamp_min(0.0).mean(dim=(1, 2))


@full_precision
def infinite_cnn_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    depth: int = 2,
    kernel_size: int = 3,
    pooling: Pooling = (32, 16),
    first_layer: FirstLayer = "he",
    sigma_w2: float = 2.0,
    sigma_b2: float = 0.0,
    value_range: Sequence[float] = (0.0, 1.0),
    out_of_range: OutOfRange = "raise",
    reduction: Reduction = "none",
) -> torch.Tensor:
    """The perceptual distance of the infinitely wide random CNN, in closed form.

    The windowed V-statistic MMD² between the patch sets of ``x`` and ``y`` with :func:`nngp_kernel`,
    averaged over the windows of ``pooling = (window, stride)`` (``"global"``: one window; ``None``: the
    aligned distance). The width-``N`` network distance of :class:`patchmmd.theory.cnn.RandomCNNDistance` with the
    same options converges to it with error ``O(N^-1/2)``. Exact (every kernel value), memory-bounded.

    Example:
        >>> x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
        >>> d = infinite_cnn_distance(x, x.flip(-1), pooling="global")
        >>> bool(d > 0), float(infinite_cnn_distance(x, x, pooling=None))
        (True, 0.0)
    """
    depth, sigma_w2, sigma_b2 = _check_kernel_options(depth, sigma_w2, sigma_b2, first_layer)
    kernel_size = check_patch_size(kernel_size, "kernel_size")
    check_first_layer_size(first_layer, kernel_size)
    pooling = check_pooling(pooling)
    reduction = check_reduction(reduction)
    xs, ys, dtype = prepare_pair(x, y, value_range=value_range, out_of_range=out_of_range, min_size=kernel_size)
    kernel = NNGPKernel(depth, sigma_w2=sigma_w2, sigma_b2=sigma_b2, first_layer=first_layer, channels=xs.shape[1])
    if pooling is None:
        values = _checkpointed(_aligned_kernel_distance, xs, ys, kernel, kernel_size)
    else:
        window, stride = _pool_window(pooling)
        grid = window_grid(xs.shape[-2], xs.shape[-1], window, stride)
        values = windowed_mmd2_exact(xs, ys, grid, kernel, patch_size=kernel_size, center=False).mean(dim=(1, 2))
    return reduce(values.to(dtype), reduction)


class InfiniteCNNDistance(nn.Module):
    """:func:`infinite_cnn_distance` as a module (no parameters; options only).

    ``reduction`` defaults to ``"mean"`` (a scalar), as for PyTorch loss modules and every module of the
    package; ``reduction="none"`` gives per-image distances ``(N,)`` (the function's default). Other arguments
    as in :func:`infinite_cnn_distance`.

    Example:
        >>> m = InfiniteCNNDistance(depth=2, pooling=(16, 8), reduction="none")
        >>> x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        >>> m(x, x.roll(3, -1)).shape
        torch.Size([2])
        >>> InfiniteCNNDistance(depth=2, pooling=(16, 8))(x, x.roll(3, -1)).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        depth: int = 2,
        kernel_size: int = 3,
        pooling: Pooling = (32, 16),
        first_layer: FirstLayer = "he",
        sigma_w2: float = 2.0,
        sigma_b2: float = 0.0,
        value_range: Sequence[float] = (0.0, 1.0),
        out_of_range: OutOfRange = "raise",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        depth, sigma_w2, sigma_b2 = _check_kernel_options(depth, sigma_w2, sigma_b2, first_layer)
        kernel_size = check_patch_size(kernel_size, "kernel_size")
        check_first_layer_size(first_layer, kernel_size)
        self.options: dict[str, Any] = dict(
            depth=depth, kernel_size=kernel_size, pooling=check_pooling(pooling), first_layer=first_layer,
            sigma_w2=sigma_w2, sigma_b2=sigma_b2, value_range=check_value_range(value_range),
            out_of_range=check_out_of_range(out_of_range), reduction=check_reduction(reduction),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return infinite_cnn_distance(x, y, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
