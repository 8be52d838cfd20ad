"""``patchmmd demo``: MMD++, L2 and SSIM on a ladder of distortions of a shipped photo.

The ladder: shifts by 1 and 2 pixels (both images cropped so they align, no wrap-around), Gaussian blur
(σ = 1, 2 px), Gaussian noise (σ = 0.03, 0.06 on the [0, 1] scale, seeded; the result clipped to [0, 1], which
takes a little of it off in the photo's darkest and brightest parts) and JPEG (quality 50, 20). Every
distorted image is compared with the same reference crop. The table ranks the distortions by each
metric (1 = judged least different).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..data.distortions import gaussian_blur, jpeg
from ..io import output_file
from . import main
from ._common import device_option, prepare_output_dir, resolve_device_or_fail, shown

#: Pixels cut from the right edge of every image so that shifts up to this size need no wrap-around.
MAX_SHIFT = 2


def distortion_ladder(image: Any, *, seed: int = 0) -> tuple[Any, list[str], Any]:
    """The reference crop ``(1, C, H, W - 2)``, the distortion names, and the distorted crops ``(8, C, H, W-2)``
    of one floating image ``(C, H, W)`` or ``(1, C, H, W)`` in [0, 1] (``C`` = 1 or 3, at least 7 px on a side:
    the blur of σ = 2 pads by 6), on its device and in its dtype.

    The noise is drawn from a generator seeded with ``seed`` (an integer with ``0 <= seed < 2**63``): the caller's
    global random state is neither used nor changed.

    Raises:
        TypeError: ``image`` is not a floating tensor.
        ValueError: another shape (a batch of several images included), an image too small, values outside
            [0, 1] (beyond rounding) or not finite (the distortions other than the shifts are clipped to [0, 1], so
            such an image would be compared partly clipped), or a bad ``seed``.

    Example:
        >>> import torch
        >>> ref, names, dist = distortion_ladder(torch.rand(3, 32, 32))
        >>> ref.shape, len(names), dist.shape
        (torch.Size([1, 3, 32, 30]), 8, torch.Size([8, 3, 32, 30]))
        >>> torch.equal(dist[0, ..., :-1], ref[0, ..., 1:])  # shifted by one pixel, no wrap-around
        True
    """
    import torch

    from ..core.validation import check_pair, check_seed

    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"distortion_ladder expects a floating tensor, got {getattr(image, 'dtype', type(image))}")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"distortion_ladder expects one image (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    # finite and in [0, 1] up to rounding (RANGE_TOLERANCE): the distortions other than the shifts are clipped to it
    check_pair(x, x, names=("image", "image"), range_text="[0, 1]", range_hint="rescale it to [0, 1]")
    seed = check_seed(seed)
    w = x.shape[-1] - MAX_SHIFT
    ref = x[..., :w]
    names: list[str] = []
    out: list[Any] = []

    def add(name: str, full: Any) -> None:
        names.append(name)
        out.append(full[..., :w].clamp(0, 1))

    for k in (1, 2):
        names.append(f"shift {k} px")
        out.append(x[..., k : k + w])
    for s in (1.0, 2.0):
        add(f"blur σ={s:g}", gaussian_blur(x, s))
    g = torch.Generator().manual_seed(seed)
    for s in (0.03, 0.06):
        # Drawn on the CPU, so that the noise is the same on every device.
        add(f"noise σ={s:g}", x + s * torch.randn(x.shape, generator=g, dtype=x.dtype, device="cpu").to(x.device))
    for q in (50, 20):
        add(f"JPEG q={q}", jpeg(x, q))
    return ref, names, torch.cat(out)


def _ssim_metric() -> tuple[Callable[[Any, Any], Any] | None, str]:
    """SSIM from the registry if registered, else pytorch-msssim directly, else ``None`` and why."""
    from ..metrics.registry import get_metric, metric_names

    if "ssim" in metric_names():
        try:
            return get_metric("ssim"), "the registry's `ssim`"
        except ImportError as e:
            note = f"registry ssim unavailable ({e})"
        else:  # pragma: no cover - unreachable
            note = ""
    else:
        note = "no `ssim` in the registry"
    try:
        from pytorch_msssim import ssim
    except ImportError:
        return None, f"SSIM skipped: {note} and pytorch-msssim is not installed (pip install pytorch-msssim)"

    def fn(x: Any, y: Any) -> Any:
        return ssim(x, y, data_range=1.0, size_average=False)

    return fn, "pytorch-msssim's ssim (data_range=1, Gaussian window 11, σ=1.5)"


def _ranks(values: list[float], higher_is_better: bool) -> list[int]:
    """Rank 1 = least different; ties share the lower rank.

    Example:
        >>> _ranks([0.3, 0.1, 0.2], False), _ranks([0.9, 0.5, 0.7], True)
        ([3, 1, 2], [1, 3, 2])
    """
    keyed = [-v if higher_is_better else v for v in values]
    return [1 + sum(o < k for o in keyed) for k in keyed]


@main.command("demo")
@click.option("--image", "image_name", default="astronaut", show_default=True,
              help="Shipped sample photo to distort (astronaut, chelsea, coffee).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("patchmmd-demo"),
              show_default=True, help="Folder for demo.md, demo.json and distance_map.png (refused if not empty, "
              "unless --overwrite).")
@click.option("--map-for", "map_for", default="JPEG q=20", show_default=True,
              help="Distortion whose MMD++ distance map is drawn.")
@click.option("--overwrite", is_flag=True, help="Write into --out even if it exists and is not empty.")
@device_option()
def demo(image_name: str, out_dir: Path, map_for: str, overwrite: bool, device: str) -> None:
    """MMD++ vs L2 vs SSIM on a ladder of distortions of a shipped photo: no data or download needed.

    Prints a table of the distances and each metric's ranking of the distortions (1 = least different),
    and writes it with a distance-map heat map to --out.
    """
    import torch

    from .. import distance_map, l2_distance, mmdpp
    from ..data import sample_image, sample_names
    from .compare import save_heatmap

    if image_name not in sample_names():
        raise click.BadParameter(f"must be one of {sample_names()}, got {image_name!r}", param_hint="--image")
    files = {"md": out_dir / "demo.md", "json": out_dir / "demo.json", "map": out_dir / "distance_map.png"}
    dev = resolve_device_or_fail(device)
    ref, names, dist = distortion_ladder(sample_image(image_name))
    if map_for not in names:
        raise click.BadParameter(f"must be one of {names}, got {map_for!r}", param_hint="--map-for")
    prepare_output_dir(out_dir, overwrite=overwrite)
    refs = ref.expand_as(dist).contiguous()

    ssim_fn, ssim_note = _ssim_metric()
    columns: list[tuple[str, bool, Callable[[Any, Any], Any]]] = [
        ("MMD++", False, mmdpp), ("L2", False, l2_distance),
    ]
    if ssim_fn is not None:
        columns.append(("SSIM", True, ssim_fn))
    values: dict[str, list[float]] = {}
    with torch.no_grad():
        for label, _, fn in columns:
            values[label] = [float(v) for v in fn(refs.to(dev), dist.to(dev)).cpu()]
    ranks = {label: _ranks(values[label], hib) for label, hib, _ in columns}

    # --- the table
    head = ["distortion"] + [f"{lab} ({'higher = closer' if hib else 'distance'})" for lab, hib, _ in columns]
    rows = [[n] + [f"{values[lab][i]:.4g}  (#{ranks[lab][i]})" for lab, _, _ in columns] for i, n in enumerate(names)]
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows])
    h, w = ref.shape[-2:]
    intro = f"{image_name} ({w}x{h} crop); rank #1 = judged least different by that metric"
    click.echo(intro)
    click.echo(text)

    # --- what it shows (computed, not asserted)
    i1, i2 = names.index("shift 1 px"), names.index("noise σ=0.03")
    findings = []
    for lab, _, _ in columns:
        findings.append(
            f"{lab} ranks the 1-px shift #{ranks[lab][i1]} of {len(names)} "
            f"(the mildest noise, σ=0.03, #{ranks[lab][i2]})"
        )
    mm = values["MMD++"]
    l2 = values["L2"]
    ratio_mm = mm[i1] / mm[i2] if mm[i2] > 0 else math.inf
    ratio_l2 = l2[i1] / l2[i2] if l2[i2] > 0 else math.inf
    findings.append(
        f"1-px shift relative to σ=0.03 noise: MMD++ {ratio_mm:.3g}x, L2 {ratio_l2:.3g}x"
    )
    if ssim_fn is None:
        findings.append(ssim_note)
    for f in findings:
        click.echo(f"- {f}")

    # --- the files
    k = names.index(map_for)
    with torch.no_grad():
        dmap = distance_map(ref.to(dev), dist[k : k + 1].to(dev))[0, 0].cpu()
    save_heatmap(ref[0], dmap, files["map"], title=f"MMD++ map: {image_name}, {map_for} ({mm[k]:.4g})",
                 label="MMD++ per pixel (mean = distance)")
    md = [
        f"# patchmmd demo: {image_name}",
        "",
        intro + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        *(f"- {f}" for f in findings),
        f"- SSIM: {ssim_note}" if ssim_fn is not None else "",
        "- Shifts: the reference is the image without its last 2 columns; the shifted image is the same-size "
        "crop k px to the right (no wrap-around). Other distortions are applied to the whole photo, then "
        "cropped like the reference. Noise is seeded (0) and the noisy image clipped to [0, 1].",
        "",
        f"![MMD++ distance map for {map_for}]({files['map'].name})",
        "",
    ]
    output_file(files["md"]).write_text("\n".join(md), encoding="utf-8")
    payload = {
        "image": image_name,
        "shape": list(ref.shape[1:]),
        "metrics": {lab: {"higher_is_better": hib} for lab, hib, _ in columns},
        "ssim": ssim_note,
        "distortions": [
            {"name": n, **{lab: {"value": values[lab][i], "rank": ranks[lab][i]} for lab, _, _ in columns}}
            for i, n in enumerate(names)
        ],
        "map": {"distortion": map_for, "file": files["map"].name},
    }
    output_file(files["json"]).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    click.echo(f"wrote {shown(files['md'])}, {shown(files['json'])} and {shown(files['map'])}", err=True)
