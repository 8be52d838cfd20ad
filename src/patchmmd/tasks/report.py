"""What the task experiments report for every output: PSNR, SSIM, the project's distances and sharpness.

All metrics compare ``[0, 1]`` images ``(N, C, H, W)`` with references of the same shape and are averaged
over the batch. They are reported, never used for tuning.

* ``psnr`` (dB, higher is better) and ``ssim`` (pytorch-msssim, Gaussian window of 11 px or the largest odd
  size that fits; higher is better), the package's one PSNR and SSIM (:mod:`patchmmd.metrics.classic`);
* ``mse`` on ``[0, 1]``;
* the distances named in ``distances`` (default ``mmdpp`` and ``random-cnn``; ``vgg`` when a weights file is
  given), as the registry computes them (lower is better). The deep ones (``lpips-alex``, ``lpips-vgg``,
  ``dists``, ``vgg``) read their files from ``weights_dir``, a folder of the published weights laid out as
  ``patchmmd eval suite --weights`` takes it (:data:`patchmmd.metrics.weights.WEIGHT_FOLDER`), or ``vgg`` from
  ``vgg_weights``; without them :class:`~patchmmd.metrics.weights.WeightsError`;
* ``sharpness``: :func:`high_frequency_energy` of the outputs divided by that of the references. 1 means
  as much fine detail as the references; a blurry output gives well below 1, noise or ringing above 1.

Example:
    >>> import torch
    >>> y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> m = image_metrics(y, y, distances=())
    >>> m["psnr"], m["ssim"], m["sharpness"]
    (100.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..metrics import classic

#: Distances reported besides PSNR / SSIM / MSE / sharpness.
DEFAULT_DISTANCES: tuple[str, ...] = ("mmdpp", "random-cnn")

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared response to the 3x3 Laplacian (reflect padding), averaged over channels: ``(N,)``.

    Example:
        >>> float(high_frequency_energy(torch.full((1, 3, 8, 8), 0.5)))
        0.0
    """
    if x.dim() != 4 or min(x.shape[-2:]) < 2:
        raise ValueError(f"the high-frequency energy needs images (N, C, H, W) of at least 2x2 px, "
                         f"got {tuple(x.shape)}")
    c = x.shape[1]
    k = _LAPLACE.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    r = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=c)
    return r.pow(2).mean(dim=(1, 2, 3))


def sharpness_ratio(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-image high-frequency energy (:func:`high_frequency_energy`, itself a mean over pixels) of ``x``
    over that of ``reference`` (batches of any sizes; every image counts alike whatever its size)."""
    den = float(high_frequency_energy(reference).mean())
    return float(high_frequency_energy(x).mean()) / den if den > 0 else float("nan")


def psnr(x: torch.Tensor, y: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB on ``[0, 1]``, capped at ``max_db``: ``(N,)`` (:func:`patchmmd.metrics.classic.psnr`)."""
    return classic.psnr(x, y, max_db=max_db)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM with an 11 px window, or the largest odd one that fits: ``(N,)``
    (:func:`patchmmd.metrics.classic.ssim`)."""
    win = min(11, min(x.shape[-2:]))
    win = win if win % 2 == 1 else win - 1
    return classic.ssim(x, y, win_size=win)


class Evaluator:
    """Computes :func:`image_metrics` with distances built once (random features and weights are cached).

    ``weights_dir``: a folder of the published weights (:data:`patchmmd.metrics.weights.WEIGHT_FOLDER`), read by
    the deep distances among ``distances``; ``vgg_weights``: a VGG16 state dict, which adds ``vgg`` to the distances.

    Raises:
        MissingWeightsError: deep distances without ``weights_dir`` (all of them named).
        WeightsError: a file missing from ``weights_dir`` or not of the expected layout.
    """

    def __init__(
        self, distances: Sequence[str] = DEFAULT_DISTANCES, *, vgg_weights: str | os.PathLike[str] | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from ..metrics.registry import get_metric
        from ..metrics.weights import folder_files, folder_options
        from .losses import MissingWeightsError

        names = [distances] if isinstance(distances, str) else list(distances)  # one name, not its letters
        if vgg_weights is not None and "vgg" not in names:
            names.append("vgg")
        unserved = [n for n in names if weights_dir is None and folder_files(n)
                    and not (n == "vgg" and vgg_weights is not None)]
        if unserved:  # all of them in one message, before anything is built
            files = sorted({f for n in unserved for f in folder_files(n).values()})
            raise MissingWeightsError(
                f"{', '.join(unserved)} need{'s' if len(unserved) == 1 else ''} the published weights: a folder "
                f"laid out as shared/tools/published_weights.py writes it (here: {', '.join(files)}), given as "
                "weights_dir"
            )
        self.distances = {}
        for name in names:
            opts: dict[str, str] = {}
            if name == "vgg" and vgg_weights is not None:
                opts = {"weights": os.fspath(vgg_weights)}
            elif weights_dir is not None:
                opts = folder_options(name, weights_dir)
            self.distances[name] = get_metric(name, **opts)

    #: Most pixels (images x height x width) scored at once: the distances' features grow with the batch (the
    #: random CNN's take about 34 MB per 64 px image), and a folder of tall photos gives hundreds of held-out tiles.
    CHUNK_PIXELS = 16 * 64 * 64

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """The metrics of ``x`` against ``y`` (same shape ``(N, C, H, W)``), in chunks of at most
        :attr:`CHUNK_PIXELS` pixels (at least one image): every metric is a mean of per-image values (the sharpness
        a ratio of two such means), so the chunks change nothing but the memory."""
        if x.shape != y.shape or x.dim() != 4 or len(x) == 0:
            raise ValueError(f"x and y must be non-empty batches (N, C, H, W) of the same shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if min(x.shape[-2:]) < 2:  # (pytorch-msssim's error named neither the size nor the metric)
            raise ValueError(f"the metrics need images of at least 2x2 px (SSIM's window, the sharpness's Laplacian), "
                             f"got {tuple(x.shape)}")
        x, y = x.detach().clamp(0, 1), y.detach().clamp(0, 1)
        step = max(1, self.CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
        sums: dict[str, float] = {}
        energy_x = energy_y = 0.0
        for i in range(0, len(x), step):
            xs, ys = x[i : i + step], y[i : i + step]
            per_image = {"psnr": psnr(xs, ys), "ssim": ssim(xs, ys), "mse": (xs - ys).pow(2).flatten(1).mean(1)}
            for name, fn in self.distances.items():
                per_image[name] = fn(xs, ys)
            for k, v in per_image.items():
                sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            energy_x += float(high_frequency_energy(xs).double().sum())
            energy_y += float(high_frequency_energy(ys).double().sum())
        out = {k: v / len(x) for k, v in sums.items()}
        out["sharpness"] = energy_x / energy_y if energy_y > 0 else float("nan")  # as sharpness_ratio
        return {k: _round(v) for k, v in out.items()}


def image_metrics(
    x: torch.Tensor, y: torch.Tensor, *, distances: Sequence[str] = DEFAULT_DISTANCES,
    vgg_weights: str | os.PathLike[str] | None = None, weights_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """PSNR, SSIM, MSE, the ``distances`` and the sharpness ratio of ``x`` against references ``y``."""
    return Evaluator(distances, vgg_weights=vgg_weights, weights_dir=weights_dir)(x, y)


def _round(v: float) -> float:
    return v if not math.isfinite(v) else float(f"{v:.6g}")
