"""patchmmd: perceptual image distances as the MMD between local patch distributions.

Amir & Weiss (CVPR 2021) showed that the perceptual distance of a deep CNN, even one with random
filters, is the maximum mean discrepancy between the distributions of small patches of the two images.
This package computes that distance directly: no network, no downloaded weights, deterministic.

Example:
    >>> import torch, patchmmd
    >>> x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> patchmmd.mmdpp(x, x.roll(1, dims=-1)).shape
    torch.Size([2])
"""

from ._version import __version__
from .core.aligned import l2_distance, local_distance
from .core.mmd import patch_mmd
from .core.mmdpp import PRESETS, MMDPPConfig, MMDPPTarget, distance_map, get_config, mmdpp, precompute_target
from .core.modules import MMDPP, PatchMMD
from .theory.cnn import RandomCNNDistance, VGGDistance, load_vgg16_weights
from .theory.nngp import InfiniteCNNDistance, NNGPKernel, infinite_cnn_distance, kappa1, nngp_kernel

__all__ = [
    "MMDPP",
    "PRESETS",
    "InfiniteCNNDistance",
    "MMDPPConfig",
    "MMDPPTarget",
    "NNGPKernel",
    "PatchMMD",
    "RandomCNNDistance",
    "VGGDistance",
    "__version__",
    "distance_map",
    "get_config",
    "infinite_cnn_distance",
    "kappa1",
    "l2_distance",
    "load_vgg16_weights",
    "local_distance",
    "mmdpp",
    "nngp_kernel",
    "patch_mmd",
    "precompute_target",
]
