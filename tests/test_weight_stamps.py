"""Results kept for a later run (the evaluation's caches, a scoring journal) remember the weight files they were
computed with by path, size and modification time: before, only the path as written was kept, so a weight file
replaced in place (or a relative path read from another folder) reused results of other weights, silently."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cli_runner import invoke
from patchmmd.metrics.trunks import alexnet_features
from patchmmd.metrics.weights import file_stamps

_ALEX_CHANNELS = (64, 192, 384, 256, 256)


def _lpips_files(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trunk, head = folder / "alex.pth", folder / "head.pth"
    torch.save({f"features.{k}": v for k, v in alexnet_features().state_dict().items()}, trunk)
    _save_head(head, seed=0)
    return trunk, head


def _save_head(path: Path, seed: int) -> None:
    """LPIPS-alex linear heads; another seed gives a file of the same size with other values."""
    g = torch.Generator().manual_seed(seed)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(_ALEX_CHANNELS)},
               path)


def _replace_in_place(path: Path, seed: int) -> None:
    before = path.stat()
    _save_head(path, seed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # a coarse clock could tie
    assert path.stat().st_size == before.st_size


def test_file_stamps_name_the_files_options_lead_to(tmp_path: Path, monkeypatch) -> None:
    trunk, head = _lpips_files(tmp_path / "w")
    stamps = file_stamps({"backbone": trunk, "weights": str(head), "net": "alex", "scale": 2.0,
                          "missing": str(tmp_path / "none.pth"), "folder": str(tmp_path)})
    assert list(stamps) == ["backbone", "weights"]
    assert stamps["weights"] == {"path": str(head), "size": head.stat().st_size, "mtime_ns": head.stat().st_mtime_ns}
    monkeypatch.chdir(tmp_path / "w")  # a relative path is recorded as the file it leads to
    assert file_stamps({"weights": "head.pth"})["weights"]["path"] == str(head)
    _replace_in_place(head, seed=1)
    assert file_stamps({"weights": head}) != {"weights": stamps["weights"]}


def test_eval_resume_refuses_values_of_a_weight_file_replaced_in_place(tmp_path: Path) -> None:
    from test_cli_eval import make_mos_csv

    trunk, head = _lpips_files(tmp_path / "w")
    args = ["eval", "mos", str(make_mos_csv(tmp_path / "mos")), "-m", "lpips-alex", "-o", f"backbone={trunk}",
            "-o", f"weights={head}", "--bootstrap", "0", "--no-plots", "--out", str(tmp_path / "out")]
    assert invoke(*args).exit_code == 0
    r = invoke(*args, "--resume")
    assert r.exit_code == 0 and "lpips-alex: reusing" in r.output, r.output
    _replace_in_place(head, seed=1)
    r = invoke(*args, "--resume")
    assert r.exit_code == 2 and "other settings" in r.output and "files" in r.output, r.output
    r = invoke(*args, "--overwrite")
    assert r.exit_code == 0 and "reusing" not in r.output


def test_score_resume_refuses_a_journal_of_a_weight_file_replaced_in_place(tmp_path: Path) -> None:
    from patchmmd import scoring
    from test_scoring import _images

    trunk, head = _lpips_files(tmp_path / "w")
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    names = ["a.png", "b.png", "c.png"]
    _images(ref, names, size=32)
    _images(dist, names, size=32, seed=1)
    out = tmp_path / "s.csv"
    options = {"backbone": str(trunk), "weights": str(head)}
    tasks = scoring.paired_tasks(ref, dist).tasks

    def journal_of_two_rows() -> None:
        job = scoring.job_header("lpips-alex", options, tasks, mode="RGB", resize=False, kind="paired",
                                 ref_dir=str(ref.resolve()), dist_dir=str(dist.resolve()), files=file_stamps(options))
        with scoring.Journal.open(scoring.journal_path(out), job) as j:
            scoring.run_tasks(tasks[:2], "lpips-alex", j, options=options)

    args = ["score", ref, dist, "--out", out, "-m", "lpips-alex", "-o", f"backbone={trunk}", "-o", f"weights={head}"]
    journal_of_two_rows()
    r = invoke(*args, "--resume")
    assert r.exit_code == 0 and "2 from the journal" in r.output, r.output
    out.unlink()
    journal_of_two_rows()
    _replace_in_place(head, seed=1)
    r = invoke(*args, "--resume")
    assert r.exit_code == 2 and "different job" in r.output and "files" in r.output, r.output


def test_a_suite_metric_is_described_with_its_files(tmp_path: Path) -> None:
    from patchmmd.evaluation.suite import SuiteMetric

    trunk, head = _lpips_files(tmp_path / "w")
    m = SuiteMetric("lpips-alex", "lpips-alex", {"backbone": str(trunk), "weights": str(head)}, "baseline")
    before = m.describe()
    assert before["files"]["weights"]["path"] == str(head)
    _replace_in_place(head, seed=1)
    assert m.describe() != before
    assert "files" not in SuiteMetric("l2", "l2", {}, "baseline").describe()  # no file: as before
