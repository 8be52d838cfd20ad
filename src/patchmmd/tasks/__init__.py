"""Perceptual tasks with the library's distances as losses.

* :mod:`.gim`: the generalized image mean ``x* = argmin_x Σ_i D(x, y_i)`` (docs/method.md §5).
* :mod:`.autoencoder`: a small convolutional autoencoder trained on random crops.
* :mod:`.superres`: a small residual super-resolution network (pixel shuffle) trained on crops.

:mod:`.losses` turns a distance name into a differentiable training loss (the names come from the metric
registry's differentiable distances, plus ``l2``, ``l1`` and ``ssim``); :mod:`.report` computes what
every experiment reports (PSNR, SSIM, the project's distances and a sharpness ratio). The commands
``patchmmd gim``, ``patchmmd train-ae`` and ``patchmmd train-sr`` (:mod:`patchmmd.cli.tasks`) run them.
Heavy modules are imported by the functions that need them.
"""

from __future__ import annotations

from .losses import LOSS_NAMES, LOSSES_NEEDING_WEIGHTS, TASK_LOSSES, MissingWeightsError, make_loss

__all__ = ["LOSSES_NEEDING_WEIGHTS", "LOSS_NAMES", "TASK_LOSSES", "MissingWeightsError", "make_loss"]
