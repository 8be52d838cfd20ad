"""The distance itself: validation, patches, kernels, random features, the scale rule, the aligned terms,
the exact and random-feature MMD estimators, MMD++ and the ``nn.Module`` wrappers (docs/method.md §1-3).

Data flows one way: :mod:`.validation` → :mod:`.patches` / :mod:`.kernels` / :mod:`.features` →
:mod:`.rff` (random-feature estimator, on :mod:`patchmmd._native`) → :mod:`.mmd` (exact estimator, dispatch) and
:mod:`.aligned` → :mod:`.mmdpp` (under :mod:`.scale`) → :mod:`.modules`.
Nothing here imports the CLI, image IO or any optional dependency.
"""

from .aligned import l2_distance, local_distance
from .mmd import patch_mmd
from .mmdpp import PRESETS, MMDPPConfig, MMDPPTarget, distance_map, get_config, mmdpp, precompute_target
from .modules import MMDPP, PatchMMD

__all__ = [
    "MMDPP",
    "PRESETS",
    "MMDPPConfig",
    "MMDPPTarget",
    "PatchMMD",
    "distance_map",
    "get_config",
    "l2_distance",
    "local_distance",
    "mmdpp",
    "patch_mmd",
    "precompute_target",
]
