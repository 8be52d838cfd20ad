"""A small super-resolution network trained with a chosen loss on crops of photos.

Degradation: the low-resolution input is the ``scale x scale`` box average of the high-resolution image
(:func:`degrade`). Network (:class:`SRNet`): a 3x3 convolution to ``width`` channels, ``blocks`` residual
blocks (conv-ReLU-conv), a 3x3 convolution to ``3 scale²`` channels and a pixel shuffle; its output is
added to the bilinear upsampling of the input (the last convolution starts at zero, so the untrained
network is bilinear upsampling), and the network learns the missing detail. The output is not
squashed (the losses use ``out_of_range="ignore"``); it is clamped to ``[0, 1]`` for saving and evaluation.

Training: Adam on ``steps`` batches of random high-resolution crops (:mod:`patchmmd.tasks.data`), seeded.
Evaluation: the held-out tiles, against their ground truth, with bicubic upsampling as a reference row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.validation import check_positive_int, check_seed
from ._common import Checkpoint, TrainResult, check_rgb_split, fit, predict
from .data import Split, random_crops


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Box-downsample by ``scale`` (sides must be multiples of it)."""
    scale = check_positive_int("scale", scale)
    if hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ValueError(f"image sides {tuple(hr.shape[-2:])} must be multiples of the scale {scale}")
    return F.avg_pool2d(hr, scale)


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling by ``scale``, clamped to ``[0, 1]`` (the reference row of the evaluation)."""
    scale = check_positive_int("scale", scale)
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class SRNet(nn.Module):
    """``scale``x super-resolution: residual blocks, pixel shuffle, plus a bilinear skip connection."""

    def __init__(self, scale: int = 4, width: int = 32, blocks: int = 4) -> None:
        super().__init__()
        #: The constructor's arguments: ``SRNet(**config)`` rebuilds the architecture.
        self.config = {"scale": scale, "width": width, "blocks": blocks}
        self.scale = scale
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        last = nn.Conv2d(width, 3 * scale * scale, 3, padding=1)
        self.tail = nn.Sequential(last, nn.PixelShuffle(scale))
        nn.init.zeros_(last.weight)  # start as bilinear upsampling
        assert last.bias is not None
        nn.init.zeros_(last.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr)
        up = F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return up + self.tail(h + self.body(h))


def train_superres(
    split: Split,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    scale: int = 4,
    steps: int = 100,
    batch: int = 4,
    lr: float = 1e-3,
    width: int = 32,
    blocks: int = 4,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train :class:`SRNet` on random crops of ``split.train``; deterministic for ``seed``.

    The network is initialised from torch's global generator seeded with ``seed``, on a fork of it: the
    caller's global random state is left as it was. The network takes the dtype and device of the photos.
    ``checkpoint``: where to keep the run's state so that it resumes after a kill (:class:`~._common.Checkpoint`).

    Raises:
        ValueError: a bad argument (named), non-RGB photos, a crop size that is not a multiple of ``scale``.
        TrainingDiverged: see :func:`patchmmd.tasks._common.fit`.
    """
    scale, batch = check_positive_int("scale", scale), check_positive_int("batch", batch)
    width, blocks = check_positive_int("width", width), check_positive_int("blocks", blocks, minimum=0)
    seed = check_seed(seed)
    check_rgb_split(split)
    if split.crop % scale:
        raise ValueError(f"the crop size {split.crop} must be a multiple of the scale {scale}")
    ref = split.train[0]

    def batches(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        hr = random_crops(split.train, split.crop, batch, g)
        return degrade(hr, scale), hr

    with torch.random.fork_rng(devices=[]):  # the CPU generator alone: fork_rng restores it, and only it
        torch.default_generator.manual_seed(seed)
        model = SRNet(scale, width, blocks).to(device=ref.device, dtype=ref.dtype)
        return fit(model, loss, batches, steps=steps, lr=lr, seed=seed, callback=callback, checkpoint=checkpoint)


def upscale(model: nn.Module, lr: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Super-resolved images, clamped to ``[0, 1]``."""
    return predict(model, lr, chunk)
