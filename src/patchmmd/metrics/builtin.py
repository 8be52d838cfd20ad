"""Registration of the package's own distances in :mod:`patchmmd.metrics.registry`."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..core.aligned import l2_distance, local_distance
from ..core.mmd import patch_mmd
from ..core.mmdpp import distance_map, mmdpp
from .registry import Metric, register


@register("mmdpp", "MMD++: shift-tolerant aligned terms under the scale rule plus a multi-bandwidth windowed MMD "
          "at native resolution; the library's default perceptual distance",
          map_factory=lambda **options: partial(distance_map, **{"preset": "default", **options}),
          differentiable=True)
def _mmdpp(**options: Any) -> Metric:
    return partial(mmdpp, **{"preset": "default", **options})


@register("mmdpp-pixelwise", "the previous default MMD++: pixelwise aligned terms and one-bandwidth MMD, all under "
          "the scale rule (counts a 1-px shift as more than visible noise)",
          map_factory=lambda **options: partial(distance_map, preset="pixelwise", **options), differentiable=True)
def _mmdpp_pixelwise(**options: Any) -> Metric:
    return partial(mmdpp, preset="pixelwise", **options)


@register("mmdpp-followup", "the follow-up study's MMD++: native resolution, 512 i.i.d. random features",
          map_factory=lambda **options: partial(distance_map, preset="followup", **options), differentiable=True)
def _mmdpp_followup(**options: Any) -> Metric:
    return partial(mmdpp, preset="followup", **options)


@register("patch-mmd", "windowed squared patch MMD (centred Gaussian kernel), exact estimator", differentiable=True)
def _patch_mmd(**options: Any) -> Metric:
    return partial(patch_mmd, **{"estimator": "exact", **options})


@register("patch-mmd-rff", "windowed squared patch MMD, random-feature estimator", differentiable=True)
def _patch_mmd_rff(**options: Any) -> Metric:
    return partial(patch_mmd, **{"estimator": "rff", **options})


@register("local", "aligned 3x3 patch term of MMD++", differentiable=True)
def _local(**options: Any) -> Metric:
    return partial(local_distance, **options)


@register("l2", "mean squared error on the [-1, 1] scale (PSNR ranks images identically)", differentiable=True)
def _l2(**options: Any) -> Metric:
    return partial(l2_distance, **options)
