"""A small convolutional autoencoder trained with a chosen loss on random crops of photos.

Architecture (:class:`ConvAutoencoder`): three stride-2 convolutions down to a ``crop/8`` grid of
``latent`` channels (default 16: a 64x64x3 crop becomes 8x8x16, 12x fewer numbers), then three
nearest-neighbour upsamplings each followed by a 3x3 convolution, and a final 3x3 convolution to RGB. The
output is not squashed: the losses accept values outside ``[0, 1]`` (``out_of_range="ignore"``, see
:mod:`patchmmd.tasks.losses`); reconstructions are clamped to ``[0, 1]`` for saving and evaluation.

Training: Adam, ``steps`` batches of ``batch`` random crops from the training part of every photo
(:mod:`patchmmd.tasks.data`), seeded. Evaluation: reconstructions of the held-out tiles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.validation import check_positive_int, check_seed
from ._common import Checkpoint, TrainResult, check_rgb_split, fit, predict
from .data import Split, random_crops

__all__ = ["ConvAutoencoder", "TrainResult", "reconstruct", "train_autoencoder"]


class ConvAutoencoder(nn.Module):
    """Encoder ``3 -> width -> 2 width -> 2 width -> latent`` (three stride-2 steps), mirrored decoder."""

    def __init__(self, width: int = 32, latent: int = 16) -> None:
        super().__init__()
        #: The constructor's arguments: ``ConvAutoencoder(**config)`` rebuilds the architecture.
        self.config = {"width": width, "latent": latent}
        w2 = 2 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, w2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w2, w2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w2, latent, 4, stride=2, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(latent, w2, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w2, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"the autoencoder needs sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        return self.decoder(self.encoder(x))


def train_autoencoder(
    split: Split,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int = 100,
    batch: int = 4,
    lr: float = 2e-3,
    width: int = 32,
    latent: int = 16,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train :class:`ConvAutoencoder` on random crops of ``split.train``; deterministic for ``seed``.

    The network is initialised from torch's global generator seeded with ``seed``, on a fork of it: the
    caller's global random state is left as it was. The network takes the dtype and device of the photos.
    ``checkpoint``: where to keep the run's state so that it resumes after a kill (:class:`~._common.Checkpoint`).

    Raises:
        ValueError: a bad argument (named), non-RGB photos, a crop size that is not a multiple of 8.
        TrainingDiverged: see :func:`patchmmd.tasks._common.fit`.
    """
    batch, width = check_positive_int("batch", batch), check_positive_int("width", width)
    latent = check_positive_int("latent", latent)
    seed = check_seed(seed)
    check_rgb_split(split)
    if split.crop % 8:
        raise ValueError(f"the crop size must be a multiple of 8, got {split.crop}")
    ref = split.train[0]

    def batches(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = random_crops(split.train, split.crop, batch, g)
        return x, x

    with torch.random.fork_rng(devices=[]):  # the CPU generator alone: fork_rng restores it, and only it
        torch.default_generator.manual_seed(seed)
        model = ConvAutoencoder(width, latent).to(device=ref.device, dtype=ref.dtype)
        return fit(model, loss, batches, steps=steps, lr=lr, seed=seed, callback=callback, checkpoint=checkpoint)


def reconstruct(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Reconstructions of ``x``, clamped to ``[0, 1]``."""
    return predict(model, x, chunk)
