"""``patchmmd metrics``: the registered distances and baselines."""

from __future__ import annotations

import json

import click

from . import main


def metrics_table() -> list[dict[str, object]]:
    """One dict per registered metric: name, group, higher_is_better, has_map, differentiable, description.

    Example:
        >>> rows = metrics_table()
        >>> [r for r in rows if r["name"] == "l2"][0]["higher_is_better"]
        False
    """
    from ..metrics.registry import metric_specs

    return [
        {
            "name": s.name,
            "group": s.group,
            "higher_is_better": s.higher_is_better,
            "has_map": s.has_map,
            "differentiable": s.differentiable,
            "description": s.description,
        }
        for s in metric_specs()
    ]


@main.command("metrics")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def metrics(as_json: bool) -> None:
    """List the metrics usable with --metric: name, group, whether higher means more similar, description.

    Distances (higher_is_better = no) are 0 for identical images; scores (PSNR, SSIM: yes) are highest
    for identical images. `map` marks metrics whose spatial map `patchmmd compare --map` can draw;
    `grad` those that pass gradients (the differentiable distances are the `--loss` choices of the tasks).
    """
    rows = metrics_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "group", "higher_is_better", "map", "grad", "description")
    cells = [
        (str(r["name"]), str(r["group"]), "yes" if r["higher_is_better"] else "no",
         "yes" if r["has_map"] else "", "yes" if r["differentiable"] else "", str(r["description"]))
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header[:-1])]
    for line in (header, *cells):
        click.echo("  ".join(v.ljust(w) for v, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1])
