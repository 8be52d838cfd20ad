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
