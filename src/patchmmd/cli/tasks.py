"""``patchmmd gim``, ``patchmmd train-ae``, ``patchmmd train-sr``: perceptual tasks with a chosen loss.

Each command is seeded and deterministic on CPU (same ``metrics.json`` for the same arguments), shows a
progress bar, and writes to ``--out DIR`` (refused if it exists and is not empty, unless ``--overwrite``):
its images, ``metrics.json`` and ``figure.png`` (side by side); ``train-ae`` and ``train-sr`` also save the trained
network's ``state_dict`` as ``model.pt`` (``metrics.json``'s ``"model"``: file, class and constructor arguments),
keep a stopped run's state in ``checkpoint.pt`` and continue it with ``--resume``.
See ``docs/tasks.md`` and :mod:`patchmmd.tasks`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from . import main
from ._common import (
    SEED,
    FinitePositiveFloat,
    check_input_file,
    lock_output_folder,
    parse_metric_options,
    prepare_output_dir,
    same_file,
)


def _check_loss(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--loss`` callback: one of :data:`patchmmd.tasks.losses.LOSS_NAMES` (imported here, on use, so that
    ``patchmmd --help`` stays light); the error lists the names."""
    from ..tasks.losses import LOSS_NAMES

    if value not in LOSS_NAMES:
        raise click.BadParameter(f"unknown loss {value!r}; choose one of {', '.join(LOSS_NAMES)}")
    return value


def _loss_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--eval-distances", default="mmdpp,random-cnn", show_default=True, metavar="NAMES",
                     help="Comma-separated registry distances reported besides PSNR/SSIM/MSE/sharpness "
                          "(vgg is added when --weights is a VGG16 file; lpips-alex, lpips-vgg, dists and vgg "
                          "read --weights DIR; empty: none).")(f)
    f = click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")(f)
    f = click.option("--overwrite", is_flag=True, help="Write into --out even if it exists and is not empty.")(f)
    f = click.option("--out", "out", type=click.Path(file_okay=False), default=None,
                     help="Output folder [default: runs/COMMAND-LOSS].")(f)
    f = click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Seed of the network's initialisation, the crops and the noise start (a loss's own random "
                          "features keep their seed: -o seed=N).")(f)
    f = click.option("--loss-option", "-o", "loss_option", multiple=True, metavar="KEY=VALUE",
                     help="Option of the loss's distance, repeatable (e.g. -o width=128 for random-cnn).")(f)
    f = click.option("--weights", type=click.Path(), default=None,
                     help="Local pretrained VGG16 state dict (torchvision layout) for --loss vgg, or a folder of the "
                          "published weights as `patchmmd eval suite --weights` takes it (alexnet.pth, vgg16.pth, "
                          "lpips/{alex,vgg}.pth, dists.pt) for the deep losses and --eval-distances (lpips-alex, "
                          "lpips-vgg, dists, vgg).")(f)
    f = click.option("--loss", "loss_name", default="mmdpp", show_default=True, metavar="NAME", callback=_check_loss,
                     help="Training / optimisation loss: l2, l1, ssim, or any distance that `patchmmd metrics` "
                          "marks differentiable (mmdpp, random-cnn, vgg, ...); an unknown name lists them all.")(f)
    return f


def _weights_folder(weights: str | None) -> str | None:
    """``--weights`` if it names a folder (the published weights, as ``patchmmd eval suite --weights`` takes them),
    else ``None`` (no ``--weights``, or the VGG16 file of ``--loss vgg``)."""
    return weights if weights is not None and Path(weights).is_dir() else None


def _build_loss(name: str, weights: str | None, items: tuple[str, ...]) -> Any:
    from ..metrics.weights import WeightsError, folder_files, folder_options
    from ..tasks.losses import MissingWeightsError, make_loss

    try:
        options = parse_metric_options(items)
    except click.BadParameter as e:  # named after this command's option, not `score`'s --option
        raise click.BadParameter(e.message, param_hint="--loss-option") from None
    given, given_options = weights, set(options)
    if name == "vgg" and weights is None:
        raise click.UsageError(
            "--loss vgg needs --weights PATH, a local pretrained VGG16 state dict in torchvision's layout (or a "
            "folder of the published weights holding vgg16.pth); no file given, so this run is skipped (nothing "
            "written; patchmmd downloads nothing)."
        )
    if weights is None and folder_files(name) and not {"backbone", "weights"} & given_options:
        raise click.UsageError(
            f"--loss {name} needs its weight files: --weights DIR, a folder of the published weights (here: "
            f"{', '.join(sorted(set(folder_files(name).values())))}), or -o backbone=PATH -o weights=PATH; none "
            "given, so this run is skipped (nothing written; patchmmd downloads nothing)."
        )
    folder = _weights_folder(weights)
    if folder is not None:  # the deep losses take their files from the folder (-o backbone=/weights= win)
        if any(k not in options for k in folder_files(name)):
            try:
                options = {**folder_options(name, folder), **options}
            except WeightsError as e:
                raise click.BadParameter(str(e), param_hint="--weights") from None
        weights = None
    elif weights is not None and name != "vgg":
        what = "is not a folder" if Path(weights).exists() else "does not exist"  # a mistyped folder: say so
        raise click.BadParameter(
            f"{weights} {what}: a file given to --weights is the VGG16 state dict of --loss vgg only, not "
            f"{name!r} (a folder of the published weights serves lpips-alex, lpips-vgg, dists and vgg)",
            param_hint="--weights")
    try:  # without a folder, a head file of lpips-*/dists comes as -o weights=PATH
        return make_loss(name, **({"weights": weights} if weights is not None else {}), **options)
    except MissingWeightsError as e:
        raise click.BadParameter(str(e), param_hint="--weights") from None
    except WeightsError as e:  # an unreadable or wrong file: named after the option that gave it, on one line
        hint = "--weights" if given is not None and not {"weights", "backbone"} & given_options else "--loss-option"
        raise click.BadParameter(" ".join(str(e).split()), param_hint=hint) from None
    except (TypeError, ValueError) as e:
        raise click.BadParameter(f"{name}: {e}", param_hint="--loss-option") from None


def _probe_loss(loss: Any, name: str, probe: Any) -> None:
    """Try the loss on ``probe`` (one image of the trained size, against itself) before the run: a loss that
    cannot take images of that size (``ssim`` under its window, a patch larger than the crop) is a usage error
    before the output folder is made and training starts, not an exit-1 failure at the first step."""
    import torch

    try:
        with torch.no_grad():
            loss(probe, probe)
    except (TypeError, ValueError) as e:
        raise click.UsageError(f"--loss {name} cannot be used on these {tuple(probe.shape[-2:])} px images: "
                               f"{' '.join(str(e).split())}") from None


def _out_dir(out: str | None, command: str, loss: str, overwrite: bool, resume: bool = False,
             data_dir: str | None = None) -> Path:
    """The output folder (see :func:`prepare_output_dir`). For the training commands (``resume``: their
    ``--resume``): a stopped run's checkpoint makes the folder resumable, ``--overwrite`` removes it (training
    starts over), and the folder is locked while the command runs (one run per folder, as ``eval`` does). The
    folder of the photos (``data_dir``) is refused: the run's images would become photos of the next run."""
    from ..tasks._common import CHECKPOINT_FILE

    if overwrite and resume:
        raise click.UsageError("--resume and --overwrite exclude each other: continue a run, or start it over")
    path = Path(out) if out is not None else Path("runs") / f"{command}-{loss}"
    if data_dir is not None and same_file(path, data_dir):
        raise click.UsageError(f"--out {path} is DATA_DIR: the run's images (held-out tiles, outputs) would be read "
                               "as training photos by the next run on it, and could replace photos; give another "
                               "folder")
    try:
        stopped = (path / CHECKPOINT_FILE).is_file()
        holds_files = path.is_dir() and any(path.iterdir())
    except OSError:  # a name too long for the file system, a folder that cannot be listed: prepare_output_dir says
        stopped = holds_files = False
    if resume and not stopped and holds_files:  # (a missing or empty folder: a new run)
        if (path / "metrics.json").exists():
            why = f"its run finished (metrics.json, no {CHECKPOINT_FILE}); pass --overwrite to train it again"
        else:
            why = f"it holds no {CHECKPOINT_FILE}; pass --overwrite to write into it"
        raise click.UsageError(f"nothing to resume in {path}: {why}")
    try:
        path = prepare_output_dir(path, overwrite=overwrite or resume)
    except click.UsageError as e:
        if stopped:
            raise click.UsageError(f"{e.message} (it holds a stopped run: --resume continues it)") from None
        raise
    if command != "gim":
        if lock_output_folder(path):  # a killed save's temporary: no other run writes here while we hold it
            from ..scoring import remove_stale_temporaries

            remove_stale_temporaries([path / CHECKPOINT_FILE])
        if overwrite:
            (path / CHECKPOINT_FILE).unlink(missing_ok=True)
    return path


def _checkpoint(folder: Path, settings: dict[str, Any], data_dir: str | None, loss: str, weights: str | None,
                loss_option: tuple[str, ...]) -> Any:
    """The checkpoint of a training command in ``folder``: ``settings`` (the command's arguments) with the
    versions and the identities (path, size, modification time) of the photo and weight files it reads, so
    that ``--resume`` refuses a run whose inputs changed."""
    import torch

    from .. import __version__
    from ..metrics.weights import WeightsError, file_stamps, folder_options
    from ..tasks._common import CHECKPOINT_FILE, Checkpoint

    files: dict[str, Any] = {}
    if data_dir is not None:  # (the shipped photos are the package version's)
        files.update(file_stamps({f"data:{n}": Path(data_dir) / n for n in settings["data"]}))
    files.update(file_stamps({f"option:{k}": v for k, v in parse_metric_options(loss_option).items()}))
    folder_ = _weights_folder(weights)
    if folder_ is not None:
        with contextlib.suppress(WeightsError):
            files.update(file_stamps({f"weights:{k}": v for k, v in folder_options(loss, folder_).items()}))
    elif weights is not None:
        files.update(file_stamps({"weights": weights}))
    # the thread count too: another one rounds the training's sums otherwise (as the suite's cache records it)
    return Checkpoint(folder / CHECKPOINT_FILE, {**settings, "files": files, "patchmmd": __version__,
                                                 "torch": torch.__version__, "threads": torch.get_num_threads()})


#: The exit status after SIGTERM (128 + 15), as ``score`` under a launcher.
TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``timeout``, ``docker stop``) raised in the main thread, so that the
    training saves its finished steps as it does on Ctrl-C."""


@contextlib.contextmanager
def _resumable(folder: Path) -> Iterator[None]:
    """Around a training run with a checkpoint: Ctrl-C or SIGTERM saves the finished steps and says where they are
    and how to go on (exit status 130, 143 for SIGTERM); a checkpoint that cannot be resumed (other settings) is a
    usage error naming ``--resume``."""
    from ..tasks._common import CHECKPOINT_FILE, CheckpointError

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Terminated()

    installed, old = False, None
    if threading.current_thread() is threading.main_thread():  # (signal handlers can only be set there)
        old, installed = signal.signal(signal.SIGTERM, on_sigterm), True
    try:
        yield
    except KeyboardInterrupt as e:
        what = "stopped (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        if (folder / CHECKPOINT_FILE).is_file():
            click.echo(f"\n{what}: the finished steps are kept in {folder / CHECKPOINT_FILE}; rerun the same "
                       "command with --resume to go on", err=True)
        elif isinstance(e, _Terminated):
            click.echo(f"\n{what}", err=True)
        if isinstance(e, _Terminated):
            raise click.exceptions.Exit(TERMINATED) from None
        raise
    except CheckpointError as e:
        raise click.UsageError(f"--resume: {' '.join(str(e).split())}") from None
    finally:
        if installed:  # (None: the handler was not set from Python; the default action is the closest restore)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


@contextlib.contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int, float], None]]:
    """A progress bar over training steps, closed on exit; yields the ``callback(step, loss)`` that moves it."""
    from ..tasks._common import progress

    bar = progress(total, desc, enabled)

    def callback(step: int, value: float) -> None:
        bar.update(1)
        if step % 10 == 0 or step == total - 1:
            bar.set_postfix(loss=f"{value:.4g}")

    try:
        yield callback
    finally:
        bar.close()


def _history(values: list[float], points: int = 50) -> dict[str, Any]:
    """``metrics.json``'s losses: the last step's, and about ``points`` of the history (steps 0, every, 2·every,
    ...: ``loss_history_every`` says which), each to 6 significant digits."""
    every = max(1, len(values) // points)
    return {"final_loss": float(f"{values[-1]:.6g}"), "loss_history": [float(f"{v:.6g}") for v in values[::every]],
            "loss_history_every": every}


def _load_inputs(items: tuple[str, ...]) -> tuple[list[Any], list[str]]:
    from ..data import sample_image, sample_names
    from ..io import ImageReadError, load_image

    images, names = [], []
    for item in items:
        if not Path(item).exists() and item in sample_names():
            images.append(sample_image(item))
        elif not Path(item).exists():  # neither a file nor a shipped photo: a name mistyped
            raise click.BadParameter(f"image file not found: {item} (or name a shipped photo: "
                                     f"{', '.join(sample_names())})", param_hint="IMAGES")
        else:
            check_input_file(item, "IMAGES")  # a folder, a FIFO: the wrong kind of argument (exit status 2)
            try:
                images.append(load_image(item))
            except ImageReadError as e:  # a file that cannot be read: a failure, as in `compare` (exit status 1)
                raise click.ClickException(str(e)) from None
        names.append(item)
    return images, names


@main.command("gim")
@click.argument("images", nargs=-1, required=True)
@_loss_options
@click.option("--shifts", type=click.IntRange(min=0), default=0, show_default=True,
              help="Build the input set from ONE image: its crop and K copies cropped at offsets on a ring.")
@click.option("--max-shift", type=click.IntRange(min=1), default=3, show_default=True,
              help="Offset of the shifted copies, in pixels.")
@click.option("--size", type=click.IntRange(min=0), default=64, show_default=True,
              help="Side of the central square crop optimised (0: the largest that fits: with --shifts the largest "
                   "square, else the images' common height and width).")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Adam steps.")
@click.option("--lr", type=FinitePositiveFloat(), default=0.02, show_default=True,
              help="Adam learning rate (pixels in [0, 1]); a finite number > 0.")
@click.option("--init", type=click.Choice(["mean", "noise"]), default="mean", show_default=True,
              help="Start: the pixel mean of the set, or uniform noise from the seed.")
def gim_command(
    images: tuple[str, ...], loss_name: str, weights: str | None, loss_option: tuple[str, ...], seed: int,
    out: str | None, overwrite: bool, progress: bool, eval_distances: str, shifts: int, max_shift: int, size: int,
    steps: int, lr: float, init: str,
) -> None:
    """Generalized image mean: x* = argmin_x sum_i D(x, y_i) over IMAGES (files or shipped photo names).

    \b
    patchmmd gim --shifts 4 astronaut --loss mmdpp --out runs/gim-mmdpp
    patchmmd gim a.png b.png c.png --loss l2 --size 0 --out runs/gim-l2

    Writes DIR/result.png, DIR/pixel_mean.png, DIR/input_NNN.png, DIR/metrics.json and DIR/figure.png.
    The metrics compare the result (and the pixel mean) with every input (averaged) and with the first one.
    """
    import torch

    from ..io import output_file
    from ..tasks._common import deterministic, image_grid_figure, save_images, write_json
    from ..tasks.gim import center_crop_common, generalized_mean, shifted_set
    from ..tasks.report import sharpness_ratio

    loss = _build_loss(loss_name, weights, loss_option)
    imgs, names = _load_inputs(images)
    try:
        if shifts:
            if len(imgs) != 1:
                raise click.UsageError("--shifts builds the set from one image; give exactly one")
            ys, offsets = shifted_set(imgs[0], shifts, size=size or None, max_shift=max_shift)
        else:
            if click.get_current_context().get_parameter_source("max_shift") != click.core.ParameterSource.DEFAULT:
                raise click.UsageError("--max-shift is the offset of the --shifts copies; give it with --shifts K")
            if len(imgs) < 2:
                raise click.UsageError("give at least two images, or one image with --shifts K")
            if len({t.shape[0] for t in imgs}) != 1:
                raise click.UsageError("the images have different numbers of channels")
            ys, offsets = center_crop_common(imgs, size or None), None
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _probe_loss(loss, loss_name, ys[:1])
    evaluate = _evaluator(eval_distances, weights, ys[:1])
    folder = _out_dir(out, "gim", loss_name, overwrite)
    t0 = time.time()
    with deterministic(seed):
        with _bar(steps, f"gim {loss_name}", progress) as callback:
            res = generalized_mean(ys, loss, steps=steps, lr=lr, init=init, seed=seed, callback=callback)

        def report(x: torch.Tensor) -> dict[str, Any]:
            m_all = evaluate(x.expand_as(ys), ys)
            m_all["sharpness"] = float(f"{sharpness_ratio(x, ys):.6g}")
            return {"vs_inputs": m_all, "vs_first": evaluate(x, ys[:1])}

        metrics: dict[str, Any] = {
            "task": "gim", "loss": loss_name, "loss_options": parse_metric_options(loss_option), "seed": seed,
            "inputs": names, "shifts": shifts, "offsets": offsets, "size": list(ys.shape[-2:]),
            "steps": steps, "lr": lr, "init": init,
            **_history(res.history),
            "result": report(res.image), "pixel_mean": report(ys.mean(0, keepdim=True)), "weights": weights,
        }
    from ..io import save_image

    write_json(metrics, folder / "metrics.json")  # first: an image that cannot be written (NaN) loses no figure
    save_image(res.image, output_file(folder / "result.png"))
    save_image(ys.mean(0, keepdim=True), output_file(folder / "pixel_mean.png"))
    save_images(ys, folder, "input", keep=[n for n in names if Path(n).exists()])  # inputs inside --out stay
    shown = list(ys[: min(3, len(ys))])
    image_grid_figure(
        [[*shown, ys.mean(0), res.image[0]]], [f"K={len(ys)}"],
        [*(f"input {i}" for i in range(len(shown))), "pixel mean (L2 optimum)", f"GIM, {loss_name}"],
        folder / "figure.png",
    )
    _summary(folder, time.time() - t0, {"result": metrics["result"]["vs_inputs"],
                                         "pixel mean": metrics["pixel_mean"]["vs_inputs"]})


def _summary(folder: Path, seconds: float, rows: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(rows.values())))
    widths = [max(12, len(k) + 2) for k in keys]  # a long distance name (mmdpp-pixelwise) keeps a gap
    click.echo(f"{'':12s}" + "".join(f"{k:>{n}s}" for k, n in zip(keys, widths, strict=True)))
    for name, m in rows.items():
        click.echo(f"{name:12s}" + "".join(f"{m[k]:{n}.4g}" for k, n in zip(keys, widths, strict=True)))
    click.echo(f"wrote {folder}/ ({seconds:.0f} s)")


def _evaluator(names: str, weights: str | None, probe: Any) -> Any:
    """The :class:`~patchmmd.tasks.report.Evaluator` of ``--eval-distances``, built and tried on ``probe`` (one
    image of the evaluated size, against itself) before the run: an unknown name, a missing weight file (or
    folder, for ``lpips-alex``, ``lpips-vgg``, ``dists``) or a distance that cannot take images of that size is a
    usage error before training, not after it."""
    from ..tasks.losses import MissingWeightsError
    from ..tasks.report import Evaluator

    try:  # the metrics every run reports (PSNR, SSIM, sharpness) first: their size error is not a distance's
        Evaluator(())(probe, probe)
    except ValueError as e:
        raise click.UsageError(f"these {tuple(probe.shape[-2:])} px images cannot be scored: {e}") from None
    distances = [n.strip() for n in names.split(",") if n.strip()]
    folder = _weights_folder(weights)
    vgg_file = weights if folder is None else None
    try:
        evaluate = Evaluator(distances, vgg_weights=vgg_file, weights_dir=folder)
        evaluate(probe, probe)
    except MissingWeightsError as e:
        given = "no folder given" if weights is None else f"{weights} is not a folder"
        raise click.BadParameter(f"{e} (--weights DIR); {given}, so this run is skipped (nothing written; patchmmd "
                                 "downloads nothing)", param_hint="--eval-distances") from None
    except (TypeError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--eval-distances") from None
    return evaluate


def _split_options(f: Callable[..., Any], *, crop: int, steps: int, lr: float) -> Callable[..., Any]:
    f = click.option("--steps", type=click.IntRange(min=1), default=steps, show_default=True,
                     help="Training steps (batches).")(f)
    f = click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="Crops per batch.")(f)
    f = click.option("--crop", type=click.IntRange(min=8), default=crop, show_default=True,
                     help="Side of the training crops and of the held-out tiles.")(f)
    f = click.option("--lr", type=FinitePositiveFloat(), default=lr, show_default=True,
                     help="Adam learning rate, a finite number > 0.")(f)
    f = click.option("--width", type=click.IntRange(min=1), default=32, show_default=True, help="Network width.")(f)
    f = click.option("--max-tiles", type=click.IntRange(min=1), default=None,
                     help="Evaluate on at most this many held-out tiles, taken in turns from the photos "
                          "[default: all].")(f)
    f = click.option("--resume", is_flag=True,
                     help="Continue the run a kill or Ctrl-C stopped in --out (its checkpoint.pt, saved every minute "
                          "and when interrupted), with the same arguments; the result is the uninterrupted run's.")(f)
    return f


def _data(data_dir: str | None, crop: int, max_tiles: int | None) -> Any:
    from ..io import ImageReadError
    from ..tasks.data import load_photos, split_photos

    try:
        photos, names = load_photos(data_dir)
        return split_photos(photos, crop, max_tiles=max_tiles, names=names), names
    except ImageReadError as e:  # a photo that cannot be read: a failure, as in `compare` (exit status 1)
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # no photos, too many, too small for --crop: the arguments (exit status 2)
        raise click.UsageError(str(e)) from None


def _figure_columns(n: int, shown: int = 6) -> list[int]:
    if n <= shown:
        return list(range(n))
    return [round(i * (n - 1) / (shown - 1)) for i in range(shown)]


@main.command("train-ae")
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False))
@_loss_options
@lambda f: _split_options(f, crop=64, steps=100, lr=2e-3)
@click.option("--latent", type=click.IntRange(min=1), default=16, show_default=True,
              help="Bottleneck channels (on a crop/8 grid).")
def train_ae_command(
    data_dir: str | None, loss_name: str, weights: str | None, loss_option: tuple[str, ...], seed: int,
    out: str | None, overwrite: bool, progress: bool, eval_distances: str, steps: int, batch: int, crop: int,
    lr: float, width: int, max_tiles: int | None, resume: bool, latent: int,
) -> None:
    """Train a small convolutional autoencoder on random crops of the photos in DATA_DIR.

    DATA_DIR defaults to the photos the package ships. The right quarter of every photo is held out; the
    reconstructions of its crop x crop tiles are saved and scored against the originals. The trained network's
    state dict is saved as model.pt in the --out folder (metrics.json's "model" names its class and arguments).
    """
    from ..tasks._common import deterministic, image_grid_figure, save_images, save_model, write_json
    from ..tasks.autoencoder import reconstruct, train_autoencoder

    if crop % 8:
        raise click.BadParameter(f"must be a multiple of 8, got {crop}", param_hint="--crop")
    loss = _build_loss(loss_name, weights, loss_option)
    split, names = _data(data_dir, crop, max_tiles)
    _probe_loss(loss, loss_name, split.heldout[:1])
    evaluate = _evaluator(eval_distances, weights, split.heldout[:1])
    folder = _out_dir(out, "train-ae", loss_name, overwrite, resume, data_dir)
    arguments = {  # what the run depends on: in the checkpoint and, first, in metrics.json
        "task": "train-ae", "loss": loss_name, "loss_options": parse_metric_options(loss_option), "seed": seed,
        "data": names, "crop": crop, "batch": batch, "steps": steps, "lr": lr, "width": width, "latent": latent,
    }
    checkpoint = _checkpoint(folder, {**arguments, "weights": weights}, data_dir, loss_name, weights, loss_option)
    t0 = time.time()
    with deterministic(seed), _resumable(folder):
        with _bar(steps, f"train-ae {loss_name}", progress) as callback:
            res = train_autoencoder(split, loss, steps=steps, batch=batch, lr=lr, width=width, latent=latent,
                                    seed=seed, callback=callback, checkpoint=checkpoint)
        recon = reconstruct(res.model, split.heldout)
        m = evaluate(recon, split.heldout)
    model = save_model(res.model, folder)  # recon_NNN.png: ConvAutoencoder(**args)(heldout), clamped to [0, 1]
    metrics = {
        **arguments, "heldout_tiles": len(split.heldout), **_history(res.history), "heldout": m, "weights": weights,
        "model": model,
    }
    write_json(metrics, folder / "metrics.json")  # first: an image that cannot be written (NaN) loses no figure
    save_images(split.heldout, folder, "heldout")
    save_images(recon, folder, "recon")
    cols = _figure_columns(len(recon))
    image_grid_figure([[split.heldout[i] for i in cols], [recon[i] for i in cols]],
                      ["held-out", f"AE, {loss_name}"], None, folder / "figure.png")
    checkpoint.path.unlink(missing_ok=True)  # everything is written: the run is finished
    _summary(folder, time.time() - t0, {"held-out": m})


@main.command("train-sr")
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False))
@_loss_options
@lambda f: _split_options(f, crop=64, steps=100, lr=1e-3)
@click.option("--scale", type=click.IntRange(min=2), default=4, show_default=True, help="Upscaling factor.")
@click.option("--blocks", type=click.IntRange(min=0), default=4, show_default=True, help="Residual blocks.")
def train_sr_command(
    data_dir: str | None, loss_name: str, weights: str | None, loss_option: tuple[str, ...], seed: int,
    out: str | None, overwrite: bool, progress: bool, eval_distances: str, steps: int, batch: int, crop: int,
    lr: float, width: int, max_tiles: int | None, resume: bool, scale: int, blocks: int,
) -> None:
    """Train a small super-resolution network (residual blocks, pixel shuffle) on crops of DATA_DIR's photos.

    DATA_DIR defaults to the photos the package ships. Inputs are box-downsampled by --scale. The right
    quarter of every photo is held out; its tiles are super-resolved and scored against the ground truth,
    next to bicubic upsampling. The trained network's state dict is saved as model.pt in the --out folder
    (metrics.json's "model" names its class and arguments).
    """
    from ..tasks._common import deterministic, image_grid_figure, save_images, save_model, write_json
    from ..tasks.superres import bicubic, degrade, train_superres, upscale

    if crop % scale:
        raise click.BadParameter(f"must be a multiple of --scale {scale}, got {crop}", param_hint="--crop")
    loss = _build_loss(loss_name, weights, loss_option)
    split, names = _data(data_dir, crop, max_tiles)
    _probe_loss(loss, loss_name, split.heldout[:1])
    evaluate = _evaluator(eval_distances, weights, split.heldout[:1])
    folder = _out_dir(out, "train-sr", loss_name, overwrite, resume, data_dir)
    arguments = {  # what the run depends on: in the checkpoint and, first, in metrics.json
        "task": "train-sr", "loss": loss_name, "loss_options": parse_metric_options(loss_option), "seed": seed,
        "data": names, "scale": scale, "crop": crop, "batch": batch, "steps": steps, "lr": lr, "width": width,
        "blocks": blocks,
    }
    checkpoint = _checkpoint(folder, {**arguments, "weights": weights}, data_dir, loss_name, weights, loss_option)
    t0 = time.time()
    with deterministic(seed), _resumable(folder):
        with _bar(steps, f"train-sr {loss_name}", progress) as callback:
            res = train_superres(split, loss, scale=scale, steps=steps, batch=batch, lr=lr, width=width,
                                 blocks=blocks, seed=seed, callback=callback, checkpoint=checkpoint)
        low = degrade(split.heldout, scale)
        sr = upscale(res.model, low)
        bic = bicubic(low, scale)
        m_sr, m_bic = evaluate(sr, split.heldout), evaluate(bic, split.heldout)
    model = save_model(res.model, folder)  # sr_NNN.png: SRNet(**args)(degrade(heldout, scale)), clamped to [0, 1]
    metrics = {
        **arguments, "heldout_tiles": len(split.heldout), **_history(res.history), "heldout": m_sr, "bicubic": m_bic,
        "weights": weights,
        "model": model,
    }
    write_json(metrics, folder / "metrics.json")  # first: an image that cannot be written (NaN) loses no figure
    save_images(split.heldout, folder, "heldout")
    save_images(low, folder, "lowres")
    save_images(sr, folder, "sr")
    save_images(bic, folder, "bicubic")
    cols = _figure_columns(len(sr))
    image_grid_figure(
        [[bic[i] for i in cols], [sr[i] for i in cols], [split.heldout[i] for i in cols]],
        ["bicubic", f"SR x{scale}, {loss_name}", "ground truth"], None, folder / "figure.png",
    )
    checkpoint.path.unlink(missing_ok=True)  # everything is written: the run is finished
    _summary(folder, time.time() - t0, {"sr": m_sr, "bicubic": m_bic})
