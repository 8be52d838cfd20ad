"""The dev benchmark, second audit: its config, cache keys, marks, report and lattice measure on small inputs."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import patchmmd.evaluation.suite as suite
from patchmmd.evaluation import CacheMismatchError
from patchmmd.evaluation.artifacts import lattice_power, lattice_ratio
from patchmmd.evaluation.suite import HumanSet, SuiteConfig, SuiteResult, run_suite, write_suite
from test_suite import tiny_human_set
from test_suite_audit import DEEP, checks, synthetic

TINY = dict(bootstrap=0, shift_size=24, gim_steps=1, sr_steps=1, ae_steps=1)


class Stop(Exception):
    """Stands for a crash or a kill."""


# ------------------------------------------------------------------------------------------ the config
@pytest.mark.parametrize("change, field", [
    ({"tile": 66}, "tile"),  # SR x4 needs multiples of 4, the autoencoder of 8
    ({"tile": 36}, "tile"),
    ({"sr_crop": 30}, "sr_crop"),
    ({"ae_crop": 36}, "ae_crop"),
    ({"sr_crop": 8}, "sr_crop"),  # under the ssim loss's window
    ({"gim_size": 8}, "gim_size"),
    ({"shift_size": 10}, "shift_size"),
    ({"tiles_per_image": 0}, "tiles_per_image"),
    ({"sr_batch": 0}, "sr_batch"),
    ({"ae_steps": 0}, "ae_steps"),
    ({"sr_lr": -1.0}, "sr_lr"),
    ({"gim_lr": math.nan}, "gim_lr"),
    ({"bootstrap": -1}, "bootstrap"),
    ({"human_limit": 0}, "human_limit"),
])
def test_sizes_the_tasks_cannot_take_are_refused_before_any_work(change: dict[str, Any], field: str) -> None:
    # they were taken, and failed only when their task started: after the human part and the shift check (30
    # minutes of the full suite), whose work a call without a cache lost
    with pytest.raises(ValueError, match=field):
        SuiteConfig.quick_config(**change)
    lines: list[str] = []
    with pytest.raises(ValueError, match=field):
        run_suite(["l2"], config=SuiteConfig.quick_config(**{**TINY, **change}), log=lines.append)
    assert lines == []
    SuiteConfig()  # the full sizes and the quick ones stay valid
    SuiteConfig.quick_config(human_limit=None)


# ------------------------------------------------------------------------------------------- the marks
def test_within_5_percent_is_decided_on_the_reported_values_not_their_binary_rounding() -> None:
    # 1.05 * 0.3011 is 0.31615499999999996 in binary: a DISTS exactly 5 % behind (0.316155) was marked FAIL
    sr = synthetic()["tasks"]["sr"]

    def row(d: float, d_lp: float) -> dict[str, Any]:
        return checks(synthetic(sr={**sr, "mmdpp": {**sr["mmdpp"], "dists": d},
                                    "lpips-vgg": {**sr["lpips-vgg"], "dists": d_lp}}))["sr-vs-lpips"]

    for d_lp, exact in ((0.3011, 0.316155), (0.3818, 0.40089), (0.1309, 0.137445), (0.2, 0.21)):
        assert row(exact, d_lp)["pass"] is True, (d_lp, exact)
        assert row(exact + 1e-6, d_lp)["pass"] is False, (d_lp, exact)
    # a fail 0.005 % over the bound read "DISTS 0.2100 vs LPIPS-vgg loss 0.2000 (≤ +5 %)": the bound itself
    r = row(0.21001, 0.2)
    assert r["pass"] is False and r["value"] == "DISTS 0.21001 vs LPIPS-vgg loss 0.20000 (≤ +5 %)"
    assert row(0.2262, 0.2096)["value"] == "DISTS 0.2262 vs LPIPS-vgg loss 0.2096 (≤ +5 %)"
    assert row(math.nan, 0.2)["pass"] is False


# ------------------------------------------------------------------------------------------ the cache
def test_a_task_entry_depends_on_its_own_sizes_not_the_other_tasks(tmp_path: Path) -> None:
    # every task's entries held every task's sizes and photos: the SR entry was refused for the image mean's
    # learning rate, and the image mean's (of the sample photos only) for more training photos
    cache = tmp_path / "cache"
    cfg = SuiteConfig.quick_config(**TINY)
    run_suite(["l2"], config=cfg, cache=cache)
    lines: list[str] = []
    with pytest.raises(CacheMismatchError, match=r"config\.gim_lr") as e:
        run_suite(["l2"], config=SuiteConfig.quick_config(**TINY, gim_lr=0.01), cache=cache, log=lines.append)
    assert e.value.path.name.startswith("gim-l2-")
    assert any(line.startswith("tasks: SR x4 with l2") and "reused" in line for line in lines), lines
    assert any(line.startswith("tasks: autoencoder with l2") and "reused" in line for line in lines), lines

    photo = torch.rand(3, 64, 160, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CacheMismatchError, match="train_sha256") as e:  # SR trains on them: refused
        run_suite(["l2"], config=cfg, cache=cache, train_photos=[photo])
    assert e.value.path.name.startswith("sr-l2-")
    for p in [*cache.glob("sr-*"), *cache.glob("ae-*")]:  # those trained again, the image means are reused
        p.unlink()
    lines.clear()
    run_suite(["l2"], config=cfg, cache=cache, train_photos=[photo], log=lines.append)
    entries = {loss: next(cache.glob(f"gim-{loss}-*.json")).stem for loss in ("l2", "ssim")}
    assert [line for line in lines if line.startswith("tasks: generalized image mean")] == [
        f"tasks: generalized image mean with {loss}: reused from the cache ({e})" for loss, e in entries.items()]


def test_a_task_entry_of_another_thread_count_is_refused_and_the_report_names_it(tmp_path: Path) -> None:
    # a training run with 1 thread and one with 2 round their sums differently, and training amplifies that into
    # other numbers (the autoencoder's PSNR moved in the 5th digit after 20 steps): a resume with another thread
    # count mixed the two silently, and neither report.json nor report.md said which was used
    cache = tmp_path / "cache"
    cfg = SuiteConfig.quick_config(**TINY)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = run_suite(["l2"], config=cfg, cache=cache)
        torch.set_num_threads(2)
        with pytest.raises(CacheMismatchError, match="threads: 1, now 2"):
            run_suite(["l2"], config=cfg, cache=cache)
        assert first.data["threads"] == 1
    finally:
        torch.set_num_threads(threads)


def _stop_at_shift(line: str) -> None:
    if line.startswith("shift:"):
        raise Stop(line)


@pytest.mark.parametrize("stamp", ["removed", "damaged"])
def test_human_values_without_a_readable_version_stamp_are_refused(tmp_path: Path, stamp: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a stamp removed or damaged (or a cache of a version that wrote none) was written afresh with this run's
    # versions: it then vouched for the values beside it, whatever version computed them
    human = [HumanSet("live-tiny", tiny_human_set(tmp_path))]
    cfg = SuiteConfig.quick_config(**{**TINY, "human_limit": 4})
    cache = tmp_path / "cache"
    with pytest.raises(Stop):
        run_suite(["l2"], human=human, config=cfg, cache=cache, log=_stop_at_shift)
    (path,) = cache.glob("human-live-tiny-versions-*.json")
    if stamp == "removed":
        path.unlink()
    else:
        path.write_text(path.read_text()[:-10])
    versions = suite._versions()
    monkeypatch.setattr(suite, "_versions", lambda: {**versions, "patchmmd": "0.0.0+other"})
    with pytest.warns(RuntimeWarning, match="damaged") if stamp == "damaged" else contextlib.nullcontext():
        with pytest.raises(CacheMismatchError, match="no readable record of the versions"):
            run_suite(["l2"], human=human, config=cfg, cache=cache, log=_stop_at_shift)


# ----------------------------------------------------------------------------------------- the report
def _data() -> dict[str, Any]:
    data = synthetic()
    data["checks"] = suite._checks(data, ["mmdpp"], DEEP)
    return data


def test_a_report_without_figures_leaves_no_earlier_run_s_figures_beside_it(tmp_path: Path) -> None:
    for name in suite.FIGURES:
        (tmp_path / name).write_bytes(b"an earlier run's figure")
    (tmp_path / "notes.txt").write_text("not the suite's")
    files = write_suite(SuiteResult(_data()), tmp_path, figures=False)
    assert not any((tmp_path / name).exists() for name in suite.FIGURES)
    assert (tmp_path / "notes.txt").exists()
    assert {p.name for p in files} == {"report.md", "report.json"}


def test_the_report_states_its_rounding_and_thread_count_and_its_numbers_are_the_json_s(tmp_path: Path) -> None:
    data = {**_data(), "threads": 2}
    write_suite(SuiteResult(data), tmp_path, figures=False)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    back = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert back["threads"] == 2 and "Seed 0; 2 CPU threads;" in md
    assert "Rounding: correlations and shift ratios to 3 decimals, their intervals to 2, the tasks' numbers to 4" in md
    for loss, r in back["tasks"]["sr"].items():  # every cell of the SR table is report.json's value, rounded
        cells = [f"{r[k]:.4f}" for k in ("dists", "lpips-vgg", "psnr", "ssim", "sharpness", "lattice")]
        assert f"| {loss} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |" in md
    for c in back["checks"]["mmdpp"]:
        assert f"| mmdpp | {c['check']} | " in md and f" | {c['value']} | {c['note']} |" in md


# ---------------------------------------------------------------------------------------- the lattice
def _dft_lattice(img: np.ndarray, period: int) -> float:
    """The lattice power of one grayscale image by the DFT's definition, bin by bin (no FFT)."""
    g = img - img.mean()
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    total = 0.0
    for k in range(period):
        for m in range(period):
            if k or m:
                total += abs((g * np.exp(-2j * np.pi * (k * yy / period + m * xx / period))).sum()) ** 2 / (h * w)
    return total


@pytest.mark.parametrize("period, h, w", [(4, 32, 32), (4, 24, 40), (2, 10, 6), (3, 27, 15), (8, 64, 32)])
def test_the_lattice_power_matches_an_independent_computation(period: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(period * 100 + h)
    tile = torch.rand(period, period, generator=g, dtype=torch.float64)
    grid = tile.repeat(h // period, w // period)
    # a pattern of that period holds all its power at the lattice bins: by Parseval, its sum of squares
    power = float(lattice_power(grid.expand(1, 3, h, w), period))
    assert power == pytest.approx(float(((grid - grid.mean()) ** 2).sum()), rel=1e-9)
    assert power == pytest.approx(_dft_lattice(grid.numpy(), period), rel=1e-9)
    photo = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    luma = (photo[0] * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)).sum(0)
    assert float(lattice_power(photo, period)) == pytest.approx(_dft_lattice(luma.numpy(), period), rel=1e-9)
    # the ratio of batches: the outputs' lattice power summed over the batch over the truths'
    truth = torch.cat([photo, grid.expand(1, 3, h, w)])
    each = lattice_power(truth, period)
    assert lattice_ratio(torch.cat([photo, photo]), truth, period) == pytest.approx(
        2 * float(each[0]) / float(each.sum()), rel=1e-12)
    with pytest.raises(ValueError, match="multiples of the period"):
        lattice_power(torch.rand(1, 3, h + 1, w), period)
