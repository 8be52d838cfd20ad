"""Perceptual tasks with the library's distances as losses.

* :mod:`.gim`: the generalized image mean ``x* = argmin_x Σ_i D(x, y_i)`` (docs/method.md §5).
* :mod:`.autoencoder`: a small convolutional autoencoder trained on random crops.
* :mod:`.superres`: a small residual super-resolution network (pixel shuffle) trained on crops.

:mod:`.losses` turns a distance name into a differentiable training loss; :mod:`.metrics` computes what
every experiment reports (PSNR, SSIM, the project's distances and a sharpness ratio). The commands
``patchmmd gim``, ``patchmmd train-ae`` and ``patchmmd train-sr`` (:mod:`patchmmd.cli.tasks`) run them.
Heavy modules are imported by the functions that need them.
"""

from __future__ import annotations

from .losses import LOSS_NAMES, MissingWeightsError, make_loss

__all__ = ["LOSS_NAMES", "MissingWeightsError", "make_loss"]
