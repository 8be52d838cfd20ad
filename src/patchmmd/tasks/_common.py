"""Shared pieces of the task experiments: determinism, the training loop, progress, image I/O and figures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.validation import check_positive_float, check_positive_int, check_seed
from ..io import output_file


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and turn on deterministic algorithms for the block (the previous setting, ``warn_only``
    included, is restored)."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


def check_rgb_split(split: Any) -> None:
    """Raise :class:`ValueError` unless ``split``'s training regions and held-out tiles are floating-point RGB
    images (the networks take 3 channels of values in ``[0, 1]``)."""
    parts = [*split.train, split.heldout]
    if not split.train or {int(t.shape[-3]) if t.dim() >= 3 else 0 for t in parts} != {3}:
        raise ValueError(f"the networks take RGB images (3 channels), got shapes {[tuple(t.shape) for t in parts]}")
    if not all(t.is_floating_point() for t in parts):
        raise ValueError(f"the photos must be floating-point tensors in [0, 1], got {split.train[0].dtype}")


def check_gradients_finite(step: int, steps: int, tensors: Sequence[torch.Tensor]) -> None:
    """Raise :class:`TrainingDiverged` if a gradient of ``tensors`` holds a NaN or an infinity (Adam would turn
    them into NaN weights, and after the last step nothing else would say so)."""
    grads = [t.grad.detach() for t in tensors if t.grad is not None]
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        raise TrainingDiverged(step, steps, "the gradients are")


class TrainingDiverged(ValueError):
    """The optimised outputs, the loss or its gradients became NaN or infinite: going on would only spend the
    remaining steps on NaN (and the outputs could not be evaluated or saved)."""

    def __init__(self, step: int, steps: int, what: str) -> None:
        super().__init__(f"training diverged at step {step + 1} of {steps}: {what} NaN or infinite; "
                         "try a lower learning rate")
        self.step, self.steps, self.what = step, steps, what


def check_finite(step: int, steps: int, t: torch.Tensor, what: str) -> None:
    """Raise :class:`TrainingDiverged` (``what``: "the outputs hold", "the loss is") if ``t`` holds a NaN or an
    infinity."""
    if not bool(torch.isfinite(t.detach()).all()):
        raise TrainingDiverged(step, steps, what)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[float] = field(default_factory=list)
    #: The steps read back from a checkpoint (0: the run started from scratch).
    resumed_steps: int = 0


#: The file of an unfinished (or finished but not yet reported) training run in a task's output folder.
CHECKPOINT_FILE = "checkpoint.pt"

_CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: written for other settings, by another version of its format,
    damaged (a record that fails its CRC-32 or header check), or not a checkpoint at all (the message says which,
    naming the file)."""


@dataclass(frozen=True)
class Checkpoint:
    """Where :func:`fit` keeps its state so that a killed or interrupted run resumes where it stopped.

    ``settings``: everything the run's numbers depend on (JSON values); a checkpoint written with other settings
    is refused (:class:`CheckpointError`). ``every``: seconds between saves (0: after every step); the state is
    also saved when the run is interrupted (``KeyboardInterrupt``) and after the last step, so the caller removes
    the file once it has written its results. The file (model, Adam's state, the batch generator's state, the
    losses so far) is written atomically and read back with ``torch.load(weights_only=True)``, only if the user
    controls it (:mod:`patchmmd._trust`) and its records pass their CRC-32 and header checks (``torch.load`` does
    not check them: a damaged tensor would resume another run). A resumed run gives the same weights as an
    uninterrupted one.
    """

    path: Path
    settings: dict[str, Any]
    every: float = 60.0


def fit(
    model: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    seed: int,
    callback: Callable[[int, float], None] | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Adam on ``loss(model(input), target)`` for ``steps`` batches ``(input, target) = batches(g)``, ``g``
    a generator seeded with ``seed + 1``; the loss after each step goes to ``history`` and ``callback``.

    With ``checkpoint`` the state is saved as :class:`Checkpoint` says, and a checkpoint found there is resumed:
    its steps are not run again (``callback`` is called for each of them at once, so a progress bar starts where
    the run stopped).

    Raises:
        TrainingDiverged: the network's outputs, the loss or its gradients became NaN or infinite (stops at
            that step, before the weights are updated).
        CheckpointError: ``checkpoint`` holds a run of other settings, a damaged checkpoint, or no readable one.
        ValueError: ``steps`` not an integer >= 1, ``lr`` not a finite number > 0, ``seed`` not an integer.
    """
    import time

    steps = check_positive_int("steps", steps)
    lr = check_positive_float("lr", lr)
    seed = check_seed(seed)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    history: list[float] = []
    if checkpoint is not None and checkpoint.path.exists():
        history = _resume(checkpoint, model, opt, g, steps, lr)
        if callback is not None:
            for step, done in enumerate(history):
                callback(step, done)
    resumed = len(history)
    saved_at = time.monotonic()
    drawn_from: torch.Tensor | None = None  # the generator's state before the batch of an unfinished step
    updating = False  # inside Adam's update: the weights may be half updated
    model.train()
    try:
        for step in range(resumed, steps):
            drawn_from = g.get_state()
            inputs, target = batches(g)
            opt.zero_grad(set_to_none=True)
            outputs = model(inputs)
            check_finite(step, steps, outputs, "the outputs hold")  # before the loss: its checks name only "x"
            value = loss(outputs, target)
            check_finite(step, steps, value, "the loss is")
            value.backward()
            check_gradients_finite(step, steps, params)
            done = float(value.detach())
            # From here until the step is recorded, an interruption keeps the last periodic checkpoint: every line
            # before is "step not started" (rolled back), every line after "step finished".
            updating = True
            opt.step()
            history.append(done)
            drawn_from = None
            updating = False
            if checkpoint is not None and step + 1 < steps and time.monotonic() - saved_at >= checkpoint.every:
                _save_checkpoint(checkpoint, model, opt, g, history)
                saved_at = time.monotonic()
            if callback is not None:
                callback(step, history[-1])
    except KeyboardInterrupt:
        # The finished steps, not the one cut short: the generator as it was before that step drew its batch.
        # Cut short inside the update, the weights may be half updated: the last periodic checkpoint stays.
        if checkpoint is not None and len(history) > resumed and not updating:
            if drawn_from is not None:
                g.set_state(drawn_from)
            _save_checkpoint(checkpoint, model, opt, g, history)
        raise
    if checkpoint is not None and len(history) > resumed:
        _save_checkpoint(checkpoint, model, opt, g, history)
    model.eval()
    return TrainResult(model, history, resumed)


def _save_checkpoint(checkpoint: Checkpoint, model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
                     history: list[float]) -> None:
    """Write the state after ``len(history)`` steps to ``checkpoint.path`` atomically (the previous file or the
    new one, never half of one)."""
    import io
    import json

    from .._files import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({
        "format": _CHECKPOINT_FORMAT, "settings": json.dumps(checkpoint.settings, sort_keys=True),
        "step": len(history), "history": list(history), "model": model.state_dict(),
        "optimizer": opt.state_dict(), "generator": g.get_state(),
    }, buf)
    atomic_write_bytes(checkpoint.path, buf.getvalue())


def _resume(checkpoint: Checkpoint, model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
            steps: int, lr: float) -> list[float]:
    """Load the state saved in ``checkpoint.path`` into ``model``, ``opt`` and ``g``; the losses of its steps."""
    import io
    import json
    import pickle

    from .._trust import read_controlled

    path = checkpoint.path
    data = read_controlled(path)
    damaged = _damaged_record(data)
    if damaged is not None:  # torch.load reads a flipped bit in a tensor as another number: a different run
        raise CheckpointError(f"{path} is damaged (its record {damaged} fails its CRC-32 or header check); remove "
                              "it to start over")
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is not a training checkpoint that can be read ({type(e).__name__}); "
                              "remove it to start over") from None
    keys = {"settings", "step", "history", "model", "optimizer", "generator"}
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT or not keys <= state.keys():
        raise CheckpointError(f"{path} is not a training checkpoint of this version; remove it to start over")
    try:
        saved = json.loads(state["settings"])
    except (TypeError, ValueError):  # not text, or not JSON
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no readable settings (not a checkpoint this version wrote); remove it "
                              "to start over")
    wanted = json.loads(json.dumps(checkpoint.settings, sort_keys=True))
    if saved != wanted:
        differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        raise CheckpointError(f"{path} holds a run with other settings ({', '.join(differ)} differ: "
                              f"{', '.join(f'{k}={saved.get(k)!r}' for k in differ)} there); start over, or "
                              "resume with the settings it was written with")
    try:  # (into this run's objects: refused below if it is not this run's, and the run stops)
        history = [float(v) for v in state["history"]]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                              "remove it to start over") from None
    if state["step"] != len(history) or len(history) > steps:
        raise CheckpointError(f"{path} is at step {state['step']} of a run of {steps} steps; remove it to start over")
    if any(group["lr"] != lr for group in opt.param_groups):
        raise CheckpointError(f"{path} holds a run with another learning rate; start over")
    return history


def _damaged_record(data: bytes) -> str | None:
    """The first record of the ``torch.save`` archive ``data`` that fails its CRC-32 or whose header cannot be
    read, or ``None`` (also when ``data`` is no zip archive: ``torch.load`` then says it cannot read it).
    ``torch.load`` checks neither; records written without a CRC (``torch.serialization.set_crc32_options(False)``:
    0) pass."""
    import io
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.CRC != 0:
                    try:
                        archive.read(info)
                    except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError, OSError, ValueError,
                            RuntimeError):  # (RuntimeError: a flipped "encrypted" flag, "password required")
                        return info.filename  # its header is damaged (torch.load would read it elsewhere)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):  # not a zip archive, a damaged directory
        return None
    return None


#: The file name of a trained network's weights in a task's output folder.
MODEL_FILE = "model.pt"


def save_model(model: nn.Module, folder: str | os.PathLike[str], name: str = MODEL_FILE) -> dict[str, Any]:
    """Write ``model``'s ``state_dict`` (plain CPU tensors, ``torch.save``) to ``folder/name``, replacing a symbolic
    link there (:func:`patchmmd.io.output_file`), and return the record ``metrics.json`` keeps of it: ``file``
    (``name``, relative to the folder), ``class`` (the model class's dotted import path) and ``args`` (the keyword
    arguments that rebuild the architecture, the model's ``config``). ``torch.load(folder / name,
    weights_only=True)`` loaded into ``cls(**args)`` gives the same outputs.

    Example:
        >>> import tempfile
        >>> from patchmmd.tasks.autoencoder import ConvAutoencoder
        >>> save_model(ConvAutoencoder(4, 2), tempfile.mkdtemp())
        {'file': 'model.pt', 'class': 'patchmmd.tasks.autoencoder.ConvAutoencoder', 'args': {'width': 4, 'latent': 2}}
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no config dict of its constructor's arguments")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, output_file(Path(folder) / name))
    cls = type(model)
    return {"file": name, "class": f"{cls.__module__}.{cls.__qualname__}", "args": dict(config)}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """``model`` applied to ``x`` in chunks of ``chunk`` images, clamped to ``[0, 1]``."""
    chunk = check_positive_int("chunk", chunk)
    if len(x) == 0:
        raise ValueError(f"no images to predict: x has shape {tuple(x.shape)}")
    return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)]).clamp(0, 1)


def progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm progress bar on stderr when it is a terminal (a log or a pipe gets no carriage-return frames), or a
    silent stand-in."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True, file=sys.stderr)


def write_json(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``data`` as strict JSON (indented): a value that is not finite (NaN, e.g. the sharpness ratio against a
    flat reference, or a diverged loss) is written as ``null``, as the project's other JSON files do."""
    from ..evaluation.report import json_text

    output_file(path).write_text(json_text(data, indent=2))


def save_images(batch: torch.Tensor, folder: str | os.PathLike[str], prefix: str,
                keep: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """Save a batch as ``prefix_000.png, ...`` in ``folder``; returns the file names. Files of the same series
    beyond the batch (``prefix_NNN.png`` left by an earlier, longer run written into the folder) are removed, so
    the folder never mixes two runs' images; but never one of ``keep`` (the run's own input files).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> save_images(torch.rand(3, 3, 4, 4), d, "sr")
        ['sr_000.png', 'sr_001.png', 'sr_002.png']
        >>> save_images(torch.rand(1, 3, 4, 4), d, "sr"), sorted(p.name for p in d.iterdir())
        (['sr_000.png'], ['sr_000.png'])
    """
    import re

    from ..io import save_image

    names = []
    for i, img in enumerate(batch):
        name = f"{prefix}_{i:03d}.png"
        save_image(img.clamp(0, 1), output_file(Path(folder) / name))
        names.append(name)
    series = re.compile(re.escape(prefix) + r"_[0-9]{3,}\.png")
    kept = {os.path.realpath(p) for p in keep}
    for entry in os.scandir(folder):
        if (series.fullmatch(entry.name) and entry.name not in names and entry.is_file(follow_symlinks=False)
                and os.path.realpath(entry.path) not in kept):
            os.unlink(entry.path)
    return names


def image_grid_figure(
    rows: Sequence[Sequence[torch.Tensor]], row_labels: Sequence[str], col_labels: Sequence[str] | None,
    path: str | os.PathLike[str], *, title: str | None = None, cell: float = 1.8,
) -> None:
    """A matplotlib grid of ``[0, 1]`` images ``(C, H, W)``; rows share ``row_labels``. Drawn on a
    :class:`matplotlib.figure.Figure` without pyplot: the caller's backend (a notebook's) is left as it is."""
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    h, w = rows[0][0].shape[-2:]
    fig = Figure(figsize=(cell * n_cols * w / max(h, w) + 0.6, cell * n_rows * h / max(h, w) + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(row):
                img = row[j].detach().clamp(0, 1).float().cpu()
                ax.imshow(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy(),
                          cmap=None if img.shape[0] == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(output_file(path), dpi=100)
