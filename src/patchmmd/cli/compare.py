"""``patchmmd compare A B``: the distance between two image files, and optionally its spatial map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..io import DEFAULT_MAX_PIXELS, ImageMode, output_file
from . import main
from ._common import (
    InputFile,
    OutputFile,
    build_metric,
    check_output_path,
    debug_enabled,
    device_option,
    json_line,
    metric_option,
    metric_options_option,
    metric_setup_error,
    mode_option,
    parse_metric_options,
    resolve_device_or_fail,
    same_file,
    shown,
)
from .score import max_pixels_option


def size_text(img: Any) -> str:
    """``"WxH"`` plus the channel count, for messages about a ``(C, H, W)`` image
    (:func:`patchmmd.runtime.shape_text`).

    Example:
        >>> import torch
        >>> size_text(torch.zeros(4, 20, 30))
        '30x20 (4 channels)'
    """
    from ..runtime import shape_text

    return shape_text(img)


def load_pair(
    a: str, b: str, *, mode: ImageMode, resize: bool, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[Any, Any, bool]:
    """Read A and B in ``mode``; check they match (or resize B to A). Returns ``(x, y, resized)``.

    Raises:
        click.ClickException: a file cannot be read (or is over ``max_pixels``); the channel counts differ
            (``--mode keep`` on an RGBA and an RGB file); the sizes differ and ``resize`` is false.
    """
    from ..io import ImageReadError, ImageTooLargeError, load_image
    from ..scoring import printable_paths, resize_to

    try:
        x = load_image(a, mode=mode, max_pixels=max_pixels)
        y = load_image(b, mode=mode, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        hint = "" if e.by_pillow else "; --max-pixels sets the limit"
        raise click.ClickException(f"{printable_paths(str(e), (a, b))}{hint}") from None
    except ImageReadError as e:
        raise click.ClickException(printable_paths(str(e), (a, b))) from None
    if x.shape[0] != y.shape[0]:
        raise click.ClickException(
            f"the images have different modes: A {shown(a)} has {x.shape[0]} channel(s), B {shown(b)} has "
            f"{y.shape[0]} (with --mode {mode}); use --mode RGB (alpha composited over white, gray replicated) or "
            "--mode L"
        )
    resized = False
    if x.shape != y.shape:
        if not resize:
            raise click.ClickException(
                f"the images differ in size: A {shown(a)} is {size_text(x)}, B {shown(b)} is {size_text(y)}; "
                "pass --resize to resize B to A's size"
            )
        y = resize_to(y, (x.shape[1], x.shape[2]))
        resized = True
    return x, y, resized


#: The longest side, in image pixels, that :func:`save_heatmap` draws at full resolution (its dots per inch grow
#: with the image up to it). Without a limit the figure's fixed-size title and colour bar grew with the square of
#: the image's long side: the map of a 3 x 50000 image took a 1.7-gigapixel figure and 9 GB of memory.
HEATMAP_MAX_SIDE = 2048


def save_heatmap(
    reference: Any, dmap: Any, path: str | Path, *, title: str, label: str = "distance per pixel"
) -> None:
    """Write a heat map of ``dmap`` (``(H, W)``) over a grayscale copy of ``reference`` (``(C, H, W)``) as PNG.

    Uses matplotlib's Agg backend (no display needed), imported here. The file is PNG whatever ``path`` ends with
    (matplotlib would otherwise pick the format from the suffix, and write ``path + ".png"`` for a name without
    one: not the file that was checked, maybe one that exists).

    The image takes 6 inches on its long side, at 1.2 figure pixels per image pixel or more. An image longer than
    :data:`HEATMAP_MAX_SIDE` is drawn averaged down to that (each drawn pixel the mean of the map over its area),
    so that the figure, whose title and colour bar have a fixed size in inches, stays a few megapixels whatever
    the image's size or shape.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    ref = reference.float()
    gray = ref.mean(dim=0) if ref.shape[0] in (1, 3) else ref[:3].mean(dim=0)
    dmap = dmap.float()
    h, w = gray.shape
    if max(h, w) > HEATMAP_MAX_SIDE:
        size = [max(1, round(n * HEATMAP_MAX_SIDE / max(h, w))) for n in (h, w)]
        gray, dmap = (F.interpolate(a[None, None], size=size, mode="area")[0, 0] for a in (gray, dmap))
        h, w = size
    scale = 6.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(w * scale + 1.6, h * scale + 0.6), dpi=max(100, int(max(h, w) / 5)))
    ax.imshow(gray.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im = ax.imshow(dmap.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10, parse_math=False)  # a file name may hold '$': text, not mathtext
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    fig.savefig(output_file(path), format="png", bbox_inches="tight")
    plt.close(fig)


def _checked_metric(name: str, options: dict[str, Any]) -> Any:
    """The metric, built and, with options, tried on a test pair before any image is read
    (:func:`patchmmd.scoring.check_metric`, as ``score`` does): options that fail are a usage error.
    Without options nothing the user typed can be at fault: a failure is reported when the images are scored."""
    from ..scoring import MetricSetupError, check_metric

    if not options:
        return build_metric(name, options)
    try:
        return check_metric(name, options)
    except MetricSetupError as e:
        if debug_enabled() and e.__cause__ is not None:
            raise e.__cause__ from e  # PATCHMMD_DEBUG=1: the metric's own traceback
        raise metric_setup_error(e) from None


@main.command("compare")
@click.argument("a", type=InputFile())
@click.argument("b", type=InputFile())
@metric_option()
@metric_options_option()
@mode_option()
@click.option("--resize", is_flag=True, help="Resize B to A's size (antialiased bilinear) if they differ.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (metric, value, shapes) instead.")
@click.option("--map", "map_path", type=OutputFile(), default=None,
              help="Write the spatial distance map as a heat map over A (PNG); MMD++ metrics only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --map file.")
@max_pixels_option()
@device_option()
def compare(
    a: str,
    b: str,
    metric: str,
    metric_options: tuple[str, ...],
    mode: ImageMode,  # click.Choice of the three modes
    resize: bool,
    as_json: bool,
    map_path: Path | None,
    overwrite: bool,
    max_pixels: int | None,
    device: str,
) -> None:
    """The distance between image files A (reference) and B.

    Prints the value alone (or with --json an object). Both images are read in --mode: by default RGB,
    with grayscale replicated and transparency composited over white. Images of different sizes are an
    error unless --resize.

    \b
    Examples:
      patchmmd compare ref.png test.png
      patchmmd compare ref.png test.png --metric l2 --json
      patchmmd compare ref.png test.png --map where.png
    """
    import torch

    from ..metrics.registry import get_spec
    from ..scoring.output import readable_text

    options = parse_metric_options(metric_options)
    spec = get_spec(metric)
    if map_path is not None and not spec.has_map:
        from ..metrics.registry import metric_specs

        with_map = ", ".join(s.name for s in metric_specs() if s.has_map)
        raise click.UsageError(f"--map needs a metric with a distance map ({with_map}), got --metric {metric}")
    fn = _checked_metric(metric, options)
    dev = resolve_device_or_fail(device)
    if map_path is not None:  # after the other usage errors: it creates the map's folder
        for role, image in (("A", a), ("B", b)):
            if same_file(map_path, image):  # --overwrite would replace the image with the heat map
                raise click.UsageError(f"--map {shown(map_path)} is the image {role} {shown(image)} (the same file, "
                                       "or a link to it); give a path that is not one of the images")
        check_output_path(map_path, overwrite=overwrite, option="--map")
    x, y, resized = load_pair(a, b, mode=mode, resize=resize, max_pixels=max_pixels)
    try:
        with torch.no_grad():
            value = float(fn(x[None].to(dev), y[None].to(dev))[0])
    except (TypeError, ValueError) as e:
        raise click.ClickException(f"{metric}: {e}") from None
    except ImportError as e:
        raise click.ClickException(f"metric {metric!r} needs an optional dependency: {e}") from None
    if map_path is not None:
        assert spec.map_factory is not None
        with torch.no_grad():
            dmap = spec.map_factory(**options)(x[None].to(dev), y[None].to(dev))
        try:
            save_heatmap(
                x, dmap[0, 0].cpu(), map_path,
                # names that are not UTF-8 as \xNN: matplotlib cannot draw a lone surrogate
                title=f"{metric}({readable_text(Path(a).name)}, {readable_text(Path(b).name)}) = {value:.4g}",
                label=f"{metric} per pixel (mean = distance)",
            )
        except OSError as e:  # a read-only folder, a full disk: one line naming the option (exit status 1)
            raise click.ClickException(f"--map {shown(map_path)}: cannot write the map: {e.strerror or e}") from None
    key = "score" if spec.higher_is_better else "distance"
    if as_json:
        obj = {
            "metric": metric,
            key: value,
            "higher_is_better": spec.higher_is_better,
            "a": readable_text(a),  # valid Unicode: a name that is not UTF-8 as \xNN, as `score` writes it
            "b": readable_text(b),
            "shape_a": list(x.shape),
            "shape_b": list(y.shape),
            "mode": mode,
            "resized": resized,
            "options": options,
            "map": readable_text(str(map_path)) if map_path is not None else None,
        }
        click.echo(json_line(obj))  # strict JSON: a value that is not finite is null
    else:
        click.echo(repr(value))
        if map_path is not None:
            click.echo(f"wrote distance map to {shown(map_path)}", err=True)
