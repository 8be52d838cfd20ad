"""The suite's human sets: MOS sets (higher = better) next to DMOS sets, and how they are named."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.evaluation.suite import HumanSet, SuiteConfig, SuiteMetric, _build, _human
from test_suite import tiny_human_set


def _as_mos(labels: Path) -> Path:
    """The same pairs with the scores turned into qualities: 100 - DMOS, so higher = better."""
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    out = labels.with_name("mos.csv")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["reference", "distorted", "distortion", "mos"])
        w.writeheader()
        for r in rows:
            w.writerow({"reference": r["reference"], "distorted": r["distorted"], "distortion": r["distortion"],
                        "mos": 100 - float(r["dmos"])})
    return out


def test_a_mos_set_marked_higher_is_better_reads_as_its_dmos_twin(tmp_path: Path) -> None:
    dmos = tiny_human_set(tmp_path)
    mos = _as_mos(dmos)
    metrics = [_build(SuiteMetric("l2", "l2", {}, "baseline"))]
    cfg = SuiteConfig(bootstrap=0)
    sets = [HumanSet("dmos", dmos), HumanSet("mos", mos, higher_is_better=True), HumanSet("mos-as-dmos", mos)]
    out = _human(sets, metrics, cfg, lambda s: None, None)[0]
    a, b, c = (out[k]["metrics"]["l2"] for k in ("dmos", "mos", "mos-as-dmos"))
    for g in ("all", "noise", "blur"):
        assert a[g]["srocc"] > 0.5  # a distance rises with DMOS on these pairs
        assert b[g]["srocc"] == pytest.approx(a[g]["srocc"]) and b[g]["krocc"] == pytest.approx(a[g]["krocc"])
        assert c[g]["srocc"] == pytest.approx(-a[g]["srocc"])  # unmarked, a MOS set reads upside down
    assert b["all"]["plcc"] == pytest.approx(a["all"]["plcc"])  # (PLCC's logistic fit needs more than 4 rows)
    assert (out["mos"]["score_higher_is_better"], out["dmos"]["score_higher_is_better"]) == (True, False)


@pytest.mark.parametrize("extra, message", [
    (["--higher-is-better", "nope"], "'nope' is not the name of a --human set"),
    (["--human", " tiny=LABELS"], "the name 'tiny' is given twice"),  # names are compared as they are used
])
def test_suite_human_set_names_are_checked_before_any_work(tmp_path: Path, extra: list[str], message: str) -> None:
    labels = tiny_human_set(tmp_path)
    extra = [e.replace("LABELS", str(labels)) for e in extra]
    res = CliRunner().invoke(main, ["eval", "suite", "--quick", "--human", f"tiny={labels}", *extra,
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "out").exists()
