"""The suite's ``unscored_ok``: every row without a score that could be checked (an identical pair) is right;
a row of two different images has nothing to check and does not make it false."""

from __future__ import annotations

from pathlib import Path

from patchmmd.evaluation.suite import HumanSet, SuiteConfig, SuiteMetric, _human
from patchmmd.metrics.registry import get_metric
from test_suite import tiny_human_set


def test_an_unscored_pair_of_different_images_leaves_unscored_ok_true(tmp_path: Path) -> None:
    labels = tiny_human_set(tmp_path)
    rows = labels.read_text().splitlines()
    rows.append("astronaut.png,coffee.png,noise,")  # different images, no score: nothing to check
    rows.append("astronaut.png,astronaut.png,noise,")  # identical: its value must be the value on (ref, ref)
    labels.write_text("\n".join(rows) + "\n")
    metric = SuiteMetric("l2", "l2", {}, "candidate")
    metric.fn = get_metric("l2")
    out, _, _ = _human([HumanSet("tiny", labels)], [metric], SuiteConfig(quick=True, bootstrap=0),
                       lambda _: None, None)
    assert out["tiny"]["n_rows"] == 10 and out["tiny"]["n_scored"] == 8
    assert out["tiny"]["unscored_ok"] == {"l2": True}


def test_a_human_set_is_grouped_by_its_distortion_column_in_any_case(tmp_path: Path) -> None:
    """The suite finds a set's distortion column as ``patchmmd eval mos`` does (one function for both): a header
    ``Reference, Distorted, Distortion, DMOS`` was grouped by ``eval mos`` and not by the suite."""
    from patchmmd.evaluation.suite import open_human_set

    labels = tiny_human_set(tmp_path)
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(["Reference, Distorted, Distortion, DMOS", *rows[1:]]) + "\n")
    ds = open_human_set(HumanSet("tiny", labels))
    assert ds.group_column == " Distortion"
    assert sorted(set(ds.groups)) == ["blur", "noise"]
