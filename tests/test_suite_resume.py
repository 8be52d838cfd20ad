"""An interrupted dev-benchmark run resumes where it stopped and reports what an uninterrupted run does."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.evaluation import CacheMismatchError
from patchmmd.evaluation.suite import HumanSet, SuiteConfig, run_suite, write_suite
from test_suite import tiny_human_set, without_seconds

SMALL = dict(bootstrap=5, shift_size=24, gim_steps=2, sr_steps=2, ae_steps=2, task_seeds=2)


class Stop(Exception):
    """Stands for a crash or a kill at a given step."""


def stopping_at(prefix: str, lines: list[str]) -> object:
    def log(line: str) -> None:
        lines.append(line)
        if line.startswith(prefix):
            raise Stop(line)
    return log


def test_an_interrupted_run_resumes_and_reports_what_an_uninterrupted_one_does(tmp_path: Path) -> None:
    human = [HumanSet("live-tiny", tiny_human_set(tmp_path))]
    cfg = SuiteConfig.quick_config(**SMALL)
    whole = run_suite(["mmdpp"], human=human, config=cfg)

    cache = tmp_path / "cache"
    first: list[str] = []
    with pytest.raises(Stop):  # after the human part and the candidate's shift check
        run_suite(["mmdpp"], human=human, config=cfg, cache=cache, log=stopping_at("shift: l2", first))
    second: list[str] = []
    with pytest.raises(Stop):  # in the tasks: after the candidate's SR runs and the first autoencoder run
        run_suite(["mmdpp"], human=human, config=cfg, cache=cache,
                  log=stopping_at("tasks: autoencoder with mmdpp (2 steps), seed 1", second))
    assert any(line.startswith("human: mmdpp reused from") for line in second)
    assert any(line.startswith("shift: mmdpp reused from the cache") for line in second)
    assert not any("reused" in line for line in first)
    third: list[str] = []
    resumed = run_suite(["mmdpp"], human=human, config=cfg, cache=cache, log=third.append)
    reused = [line for line in third if "reused" in line]
    # human: 3 metrics; shift: 3 metrics; tasks: SR seeds 0 and 1, autoencoder seed 0
    assert len(reused) == 3 + 3 + 3, reused
    assert not any(line.startswith("tasks: SR x4 with mmdpp") and "reused" not in line for line in third)
    assert resumed.data["notes"][-1].startswith("resumed: 9 finished pieces of work were read back")

    a, b = without_seconds(whole.data), without_seconds(resumed.data)
    assert isinstance(a, dict) and isinstance(b, dict)
    a["notes"], b["notes"] = a["notes"], a["notes"]
    assert a == b  # every number, run by run, as without the interruptions
    for task in ("sr", "ae", "gim"):
        assert whole.figures[task].keys() == resumed.figures[task].keys()
        for label, out in whole.figures[task].items():
            assert torch.equal(out, resumed.figures[task][label]), (task, label)
    write_suite(resumed, tmp_path / "out", figures=False)
    assert "resumed: 9 finished pieces" in (tmp_path / "out" / "report.md").read_text()

    # more seeds later: the finished ones are reused, only the new one trains
    more: list[str] = []
    run_suite(["mmdpp"], human=human, config=SuiteConfig.quick_config(**{**SMALL, "task_seeds": 3}), cache=cache,
              log=more.append)
    trained = [line for line in more if line.startswith("tasks: SR x4 with mmdpp") and "reused" not in line]
    assert trained == ["tasks: SR x4 with mmdpp (2 steps), seed 2"]


def test_a_cache_of_other_settings_is_refused_and_a_damaged_entry_recomputed(tmp_path: Path) -> None:
    cfg = SuiteConfig.quick_config(**{**SMALL, "task_seeds": 1})
    cache = tmp_path / "cache"
    run_suite(["l2"], config=cfg, cache=cache)
    with pytest.raises(CacheMismatchError, match=r"was computed with other settings \(config\.sr_steps: 2, now 3\)"):
        run_suite(["l2"], config=SuiteConfig.quick_config(**{**SMALL, "task_seeds": 1, "sr_steps": 3}), cache=cache)

    entry = next(cache.glob("sr-l2-seed0-*.json"))
    entry.write_text(entry.read_text()[:-20])  # cut short: a damaged file, not another run's
    outputs = entry.with_suffix(".npy")
    outputs.write_bytes(b"not an array")
    ae = next(cache.glob("ae-l2-seed0-*.npy"))
    ae.write_bytes(b"\x93NUMPY garbage")
    lines: list[str] = []
    with pytest.warns(RuntimeWarning, match="is damaged") as caught:
        again = run_suite(["l2"], config=cfg, cache=cache, log=lines.append)
    assert {Path(str(w.message).split()[4]).name for w in caught} == {entry.name, ae.name}
    assert "tasks: SR x4 with l2 (2 steps), seed 0" in lines  # retrained, and the entry rewritten whole
    sr = {k: v for k, v in again.data["tasks"]["sr"]["l2"].items() if k != "seconds"}
    assert without_seconds(json.loads(entry.read_text())["result"]) == sr
    lines.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the rewritten entries read back cleanly
        run_suite(["l2"], config=cfg, cache=cache, log=lines.append)
    assert not any(line.startswith("tasks: ") and "reused" not in line for line in lines), lines


def test_the_command_resumes_in_its_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["eval", "suite", "--quick", "--candidate", "l2", "--out", str(out), "--bootstrap", "5",
            "--train-steps", "2", "--no-figures"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert any((out / "cache").glob("sr-l2-seed0-*.json"))
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output and "--resume" in refused.output
    resumed = CliRunner().invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "reused from the cache" in resumed.output
    first = json.loads((out / "report.json").read_text())
    assert any(n.startswith("resumed:") for n in first["notes"])
    other = CliRunner().invoke(main, [*args[:-3], "--train-steps", "3", "--no-figures", "--resume"])
    assert other.exit_code == 2 and "other settings" in other.output and "--overwrite" in other.output
    both = CliRunner().invoke(main, [*args, "--resume", "--overwrite"])
    assert both.exit_code == 2 and "exclude each other" in both.output
    over = CliRunner().invoke(main, [*args[:-3], "--train-steps", "3", "--no-figures", "--overwrite"])
    assert over.exit_code == 0, over.output
    assert "reused" not in over.output  # --overwrite starts over: the old cache is gone
    assert json.loads((out / "report.json").read_text())["config"]["sr_steps"] == 3


def test_cache_file_names_hold_no_characters_a_file_system_refuses(tmp_path: Path) -> None:
    # a candidate's label was the human part's cache file name: "mmdpp:preset=loss.json" is, on Windows, the
    # alternate data stream "preset=loss.json" of a file "mmdpp"
    human = [HumanSet("live-tiny", tiny_human_set(tmp_path))]
    cfg = SuiteConfig.quick_config(**{**SMALL, "task_seeds": 1, "human_limit": 4})
    lines: list[str] = []
    result = run_suite(["mmdpp:num_scales=1"], human=human, config=cfg, cache=tmp_path / "cache", log=lines.append)
    names = [p.name for p in (tmp_path / "cache").rglob("*")]
    assert names and not any(set(n) & set(':/\\*?"<>|') for n in names), names
    assert any(n.startswith("mmdpp_num_scales=1-") and n.endswith(".json") for n in names)
    again = run_suite(["mmdpp:num_scales=1"], human=human, config=cfg, cache=tmp_path / "cache", log=lines.append)
    assert again.data["notes"][-1].startswith("resumed:")
    assert without_seconds(again.data["human"]) == without_seconds(result.data["human"])
    # the seconds of a task's row are those of the run that computed it, not the time of reading it back
    assert again.data["tasks"]["sr"]["l2"]["seconds"] == result.data["tasks"]["sr"]["l2"]["seconds"]
