"""Registration of the package's own distances in :mod:`patchmmd.metrics.registry`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ..core.aligned import l2_distance, local_distance
from ..core.mmd import Estimator, patch_mmd
from ..core.mmdpp import distance_map, get_config, mmdpp
from ..core.validation import check_out_of_range, check_value_range
from .registry import Metric, check_option_names, register


def _no_reduction(name: str, options: dict[str, Any]) -> None:
    if "reduction" in options:
        raise TypeError(f"{name} takes no reduction option: a registry metric gives one value per image (N,)")


def _bind(fn: Callable[..., torch.Tensor], name: str, options: dict[str, Any], fixed: tuple[str, ...] = ()) -> None:
    """Refuse, when the metric is built, the options that ``fn`` does not take (its values are checked when it
    is called), ``reduction`` (a registry metric gives one value per image) and the options in ``fixed``, which
    the metric's name sets or leaves unused."""
    _no_reduction(name, options)
    params = inspect.signature(fn).parameters
    check_option_names(name, options, [k for k, p in params.items()
                                       if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("reduction", *fixed)])


def _mmdpp_options(name: str, preset: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The options of an MMD++ metric, validated now: the configuration (``preset`` plus overrides, resolved by
    :func:`get_config`), ``value_range`` and ``out_of_range``. ``preset`` is fixed for the named presets."""
    options = dict(options)
    if preset is not None and "preset" in options:
        raise TypeError(f"{name} is MMD++ with preset={preset!r}; use the 'mmdpp' metric to choose a preset")
    _no_reduction(name, options)
    call: dict[str, Any] = {k: options.pop(k) for k in ("value_range", "out_of_range") if k in options}
    if "value_range" in call:
        check_value_range(call["value_range"])
    if "out_of_range" in call:
        check_out_of_range(call["out_of_range"])
    cfg = get_config(options.pop("preset", preset or "default"), **options)
    return {"preset": cfg, **call}


def _register_mmdpp(name: str, preset: str | None, description: str) -> None:
    """Register MMD++ under ``name`` (``preset`` fixed, or chosen by the option for ``None``) with its map."""

    def factory(**options: Any) -> Metric:
        return partial(mmdpp, **_mmdpp_options(name, preset, options))

    def map_factory(**options: Any) -> Metric:
        return partial(distance_map, **_mmdpp_options(name, preset, options))

    register(name, description, map_factory=map_factory, differentiable=True)(factory)


_register_mmdpp("mmdpp", None, "MMD++: shift-tolerant aligned terms under the scale rule plus a multi-bandwidth "
                "windowed MMD at native resolution; the library's default perceptual distance")
_register_mmdpp("mmdpp-pixelwise", "pixelwise", "the previous default MMD++: pixelwise aligned terms and "
                "one-bandwidth MMD, all under the scale rule (counts a 1-px shift as more than visible noise)")
_register_mmdpp("mmdpp-followup", "followup",
                "the follow-up study's MMD++: native resolution, 512 i.i.d. random features")


def _patch_mmd_metric(name: str, estimator: Estimator, options: dict[str, Any], fixed: tuple[str, ...]) -> Metric:
    """``patch_mmd`` with the estimator of the metric ``name``: another ``estimator`` would silently make it the
    other metric under this one's name, so it is refused, as are the options in ``fixed``."""
    options = dict(options)
    if options.pop("estimator", estimator) != estimator:
        other = "patch-mmd-rff" if estimator == "exact" else "patch-mmd"
        raise TypeError(f"{name} is the {estimator!r} estimator; use the {other!r} metric for the other one")
    _bind(patch_mmd, name, options, ("estimator", *fixed))
    return partial(patch_mmd, estimator=estimator, **options)


@register("patch-mmd", "windowed squared patch MMD (centred Gaussian kernel), exact estimator", differentiable=True)
def _patch_mmd(**options: Any) -> Metric:
    # the random features' options do nothing to the exact estimator
    return _patch_mmd_metric("patch-mmd", "exact", options, ("num_features", "features", "seed"))


@register("patch-mmd-rff", "windowed squared patch MMD, random-feature estimator", differentiable=True)
def _patch_mmd_rff(**options: Any) -> Metric:
    return _patch_mmd_metric("patch-mmd-rff", "rff", options, ())


@register("local", "aligned 3x3 patch term of MMD++", differentiable=True)
def _local(**options: Any) -> Metric:
    _bind(local_distance, "local", options)
    return partial(local_distance, **options)


@register("l2", "mean squared error on the [-1, 1] scale (PSNR ranks images identically)", differentiable=True)
def _l2(**options: Any) -> Metric:
    _bind(l2_distance, "l2", options)
    return partial(l2_distance, **options)
