"""The paper's theory (docs/method.md §4): finite random-filter CNNs (:mod:`.cnn`, with the VGG16 perceptual
distance for comparison) and their infinite-width limit, the arc-cosine (NNGP) patch kernel (:mod:`.nngp`)."""

from .cnn import RandomCNNDistance, VGGDistance, load_vgg16_weights
from .nngp import InfiniteCNNDistance, NNGPKernel, infinite_cnn_distance, kappa1, nngp_kernel

__all__ = [
    "InfiniteCNNDistance",
    "NNGPKernel",
    "RandomCNNDistance",
    "VGGDistance",
    "infinite_cnn_distance",
    "kappa1",
    "load_vgg16_weights",
    "nngp_kernel",
]
