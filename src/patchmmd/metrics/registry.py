"""The metric registry: every distance the CLI and the evaluation harness can use, by name.

A metric is a callable ``(x, y) -> (N,)`` on image batches ``(N, C, H, W)`` with values in [0, 1]. Its
:class:`MetricSpec` says whether larger values mean *more* different (a distance, the default) or more
similar (``higher_is_better=True``, e.g. PSNR, SSIM), so evaluation code can orient every metric alike.

Modules register their metrics with :func:`register`; the built-in modules listed in
:data:`BUILTIN_MODULES` are imported on the first lookup, so importing :mod:`patchmmd` stays light.

Example:
    >>> from patchmmd.metrics.registry import get_metric, metric_names
    >>> "mmdpp" in metric_names()
    True
    >>> import torch
    >>> d = get_metric("mmdpp")(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    >>> float(d)
    0.0
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(x, y) -> (N, 1, H, W)``: where two image batches differ (its mean over pixels is the metric's value).
MapMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Modules whose import registers metrics. Each must import without optional dependencies; a metric
#: needing one raises a clear ``ImportError`` when it is built, not when it is registered.
BUILTIN_MODULES: list[str] = [
    "patchmmd.metrics.builtin", "patchmmd.metrics.theory", "patchmmd.metrics.classic", "patchmmd.metrics.lpips",
    "patchmmd.metrics.dists",
]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its name, how to build it, and how to read its values."""

    name: str
    factory: Callable[..., Metric]
    description: str
    higher_is_better: bool = False
    group: str = "patchmmd"
    #: Gradients flow to both inputs (the metric can be a training loss; the differentiable distances are the
    #: loss names of :mod:`patchmmd.tasks.losses`). Every registration states it.
    differentiable: bool = True
    #: Builds the metric's spatial map with the same options (``None``: the metric has no map).
    map_factory: Callable[..., MapMetric] | None = None

    @property
    def has_map(self) -> bool:
        return self.map_factory is not None


_REGISTRY: dict[str, MetricSpec] = {}
_loaded = False


def register(
    name: str,
    description: str,
    *,
    higher_is_better: bool = False,
    group: str = "patchmmd",
    differentiable: bool = True,
    map_factory: Callable[..., MapMetric] | None = None,
) -> Callable[[Callable[..., Metric]], Callable[..., Metric]]:
    """Decorator registering ``factory(**options) -> metric`` under ``name``, with its capabilities. The factory's
    keyword arguments are the metric's options (others are refused, naming the valid ones); a name already
    registered is a ``ValueError``.

    Example:
        >>> import torch
        >>> from patchmmd.metrics import get_metric, get_spec, register
        >>> @register("mean-abs-example", "mean absolute difference (an example)", group="examples")
        ... def _mean_abs(*, scale: float = 1.0):
        ...     return lambda x, y: scale * (x - y).abs().flatten(1).mean(1)
        >>> get_metric("mean-abs-example", scale=2.0)(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
        tensor([2.])
        >>> get_spec("mean-abs-example").higher_is_better
        False
        >>> from patchmmd.metrics.registry import _REGISTRY
        >>> del _REGISTRY["mean-abs-example"]  # (this example's clean-up: a registration lasts for the process)
    """

    def deco(factory: Callable[..., Metric]) -> Callable[..., Metric]:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is already registered")
        _REGISTRY[name] = MetricSpec(name, _checking_options(name, factory), description, higher_is_better, group,
                                     differentiable, map_factory)
        return factory

    return deco


def check_option_names(name: str, options: Iterable[str], valid: Iterable[str]) -> None:
    """``TypeError`` naming the metric (or loss) ``name`` and its valid options if ``options`` holds others.

    Example:
        >>> check_option_names("psnr", ["data_range"], ["max_db"])
        Traceback (most recent call last):
        ...
        TypeError: unknown option(s) ['data_range'] for psnr; valid options are ['max_db']
    """
    valid = sorted(valid)
    unknown = sorted(k for k in options if k not in valid)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {name}; valid options are {valid}")


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (the command line's ``-o``, a suite candidate's options) to a metric's options: values
    are read as JSON when they parse (numbers, lists), ``true``/``false`` as booleans, ``none``/``null`` as
    ``None``, anything else as a string.

    Raises:
        ValueError: an item without ``=`` or with an empty key; a key given twice with different values (which one
            was meant is not for the parser to guess).

    Example:
        >>> parse_options(["num_scales=3", "features=iid", "scale_weights=[1, 2, 1]", "base_size=none"])
        {'num_scales': 3, 'features': 'iid', 'scale_weights': [1, 2, 1], 'base_size': None}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE (e.g. num_scales=3), got {item!r}")
        key, parsed = key.strip(), _parse_value(value)
        if key in out and not _same_value(out[key], parsed):
            raise ValueError(f"{key} was given twice ({out[key]!r}, {parsed!r}); give it once")
        out[key] = parsed
    return out


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _same_value(a: Any, b: Any) -> bool:
    """Whether two parsed option values are the same, ``NaN`` included (``-o sigma=NaN -o sigma=NaN`` is one value
    given twice, not two; ``NaN != NaN``). A boolean is never the same as a number (``1 == True`` in Python, but
    ``-o k=1 -o k=true`` are two values).

    Example:
        >>> _same_value(float("nan"), float("nan")), _same_value(1, 1.0), _same_value(1, True), _same_value(0, False)
        (True, True, False, False)
    """
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b) or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _checking_options(name: str, factory: Callable[..., Metric]) -> Callable[..., Metric]:
    """``factory`` refusing the options it does not take with a ``TypeError`` naming the metric and its valid options
    (Python's own message names the private factory function). A factory taking ``**options`` checks them itself
    and is returned as it is; the wrapper keeps the factory's signature (:func:`inspect.signature`)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    valid = [k for k, p in params.items() if p.kind in named]

    @functools.wraps(factory)
    def checked(**options: Any) -> Metric:
        check_option_names(name, options, valid)
        return factory(**options)

    return checked


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True  # first: a built-in module that looks a metric up while it loads does not load them again
        try:
            for module in BUILTIN_MODULES:
                importlib.import_module(module)
        except BaseException:
            _loaded = False  # the next lookup fails the same way instead of seeing a partial registry
            raise


def metric_specs() -> list[MetricSpec]:
    """All registered metrics, sorted by group then name.

    Example:
        >>> from patchmmd.metrics import metric_specs
        >>> [s.name for s in metric_specs() if s.group == "baselines"][:3]
        ['dists', 'lpips-alex', 'lpips-vgg']
    """
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda s: (s.group, s.name))


def metric_names() -> list[str]:
    """The names of all registered metrics, in :func:`metric_specs`'s order.

    Example:
        >>> from patchmmd.metrics import metric_names
        >>> {"mmdpp", "psnr", "lpips-vgg"} <= set(metric_names())
        True
    """
    return [s.name for s in metric_specs()]


def get_spec(name: str) -> MetricSpec:
    """The spec of a metric; ``ValueError`` naming the valid names if unknown (``TypeError`` if not a string).

    Example:
        >>> from patchmmd.metrics import get_spec
        >>> spec = get_spec("psnr")
        >>> spec.higher_is_better, spec.differentiable, spec.has_map
        (True, True, False)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a metric name (a str), got {type(name).__name__} {name!r}")
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown metric {name!r}; available metrics: {', '.join(metric_names())}")
    return _REGISTRY[name]


def get_metric(name: str, **options: object) -> Metric:
    """Build the metric ``name`` (options go to its factory; an option it does not take is a ``TypeError`` listing
    the valid ones).

    Example:
        >>> import torch
        >>> from patchmmd.metrics import get_metric
        >>> x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> d = get_metric("mmdpp")(x, x.flip(-1))
        >>> d.shape, bool((d > 0).all())
        (torch.Size([2]), True)
        >>> get_metric("psnr", max_db=60.0)(x, x)
        tensor([60., 60.])
        >>> get_metric("psnr", window=3)
        Traceback (most recent call last):
        ...
        TypeError: unknown option(s) ['window'] for psnr; valid options are ['data_range', 'max_db']
    """
    return get_spec(name).factory(**options)
