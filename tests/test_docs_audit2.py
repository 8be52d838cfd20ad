"""docs-audit2: claims of README.md and docs/ that a second documentation audit checked against the code.

tests/test_docs_audit.py checks what can be checked for every page mechanically (options exist, signatures,
paths, references); this module checks single claims: the README's opening test command against CI's, the
defaults its command synopsis shows, the test counts docs/theory.md gives, the training checkpoints of
docs/tasks.md, the messages docs/cli.md and docs/distributed.md quote, and which commands refuse an output
name too long for the file system as a usage error (docs/cli.md, "Output folders").
"""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _page(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def test_readme_test_command_is_the_ci_one() -> None:
    """README.md's "install and run the tests" line installs what .ci/run installs and runs its test command."""
    ci = [line.strip() for line in _page(".ci/run").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    ci_torch = next(m.group(0) for line in ci if (m := re.search(r"torch==[\w.+]+", line)))
    ci_extra = next(m.group(1) for line in ci if (m := re.search(r'-e "\.\[(\w+)\]"', line)))
    ci_tests = ci[-1]
    readme = _page("README.md")
    (line,) = [x for x in readme.splitlines() if x.startswith("python3 -m venv") and "pytest" in x]
    steps = [s.strip() for s in line.split("&&")]
    assert steps[-1] == ci_tests == "python -m pytest -q", (steps[-1], ci_tests)
    install = shlex.split(next(s for s in steps if s.startswith("pip install")))
    assert ci_torch in install and f".[{ci_extra}]" in install, (install, ci_torch, ci_extra)
    # the demo line installs the same PyTorch
    (demo,) = [x for x in readme.splitlines() if x.startswith("python3 -m venv") and "patchmmd demo" in x]
    assert ci_torch in demo


def test_readme_score_synopsis_shows_the_defaults() -> None:
    """README.md's ``patchmmd score ... [--metric mmdpp] [--batch-size N] [--device auto]`` shows the defaults
    (it said ``--batch-size 32``; the default is 16)."""
    from patchmmd.cli import main

    score = main.commands["score"]
    defaults = {opt: p.default for p in score.params for opt in p.opts}
    (line,) = [x for x in _page("README.md").splitlines() if x.startswith("patchmmd score ref/")]
    shown = re.findall(r"\[(--[\w-]+) ([^\]\s]+)\]", line)
    assert {name for name, _ in shown} == {"--metric", "--batch-size", "--device"}, shown
    for name, value in shown:
        assert str(defaults[name]) == value, (name, value, defaults[name])


def test_theory_md_test_counts() -> None:
    """docs/theory.md, "What the tests verify": the number of tests of tests/test_theory_*.py, in all and per
    file named (it said 119 before tests/test_theory_func.py's 10 were added)."""
    files = sorted((ROOT / "tests").glob("test_theory_*.py"))
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        *map(str, files)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    counts: dict[str, int] = {}
    for line in r.stdout.splitlines():
        if "::" in line:
            name = Path(line.split("::")[0]).name
            counts[name] = counts.get(name, 0) + 1
    text = " ".join(_page("docs/theory.md").split())
    m = re.search(r"`pytest tests/test_theory_\*\.py` \((\d+) tests: (.*?)\):", text)
    assert m, "docs/theory.md no longer gives the count in the form this test reads"
    assert int(m.group(1)) == sum(counts.values()), (m.group(1), counts)
    named = dict((f, int(n)) for n, f in re.findall(r"the (\d+) of `(test_theory_\w+\.py)`", m.group(2)))
    for name, n in named.items():
        assert counts.get(name) == n, (name, n, counts)
    (other,) = re.findall(r"the other (\d+)", m.group(2))
    assert int(other) == sum(counts.values()) - sum(named.values()), (other, counts, named)


def test_tasks_md_checkpoint_claims() -> None:
    """docs/tasks.md, "Stopped runs resume": ``DIR/checkpoint.pt`` saved every minute, ``DIR.lock`` beside the
    folder, ``fit(..., checkpoint=Checkpoint(path, settings, every=60))``, the ``checkpoint=`` of the two trainers
    and ``TrainResult.resumed_steps``."""
    from patchmmd.scoring import lock_path
    from patchmmd.tasks import _common
    from patchmmd.tasks.autoencoder import train_autoencoder
    from patchmmd.tasks.superres import train_superres

    text = _page("docs/tasks.md")
    assert _common.CHECKPOINT_FILE == "checkpoint.pt" and "`DIR/checkpoint.pt`" in text
    assert "saved every minute" in text
    assert inspect.signature(_common.Checkpoint).parameters["every"].default == 60
    assert "`fit(..., checkpoint=Checkpoint(path, settings, every=60))`" in text
    assert list(inspect.signature(_common.Checkpoint).parameters)[:2] == ["path", "settings"]
    assert lock_path("runs/x").as_posix() == "runs/x.lock" and "(`DIR.lock` beside it" in text
    for trainer in (_common.fit, train_superres, train_autoencoder):
        assert "checkpoint" in inspect.signature(trainer).parameters, trainer
    assert "resumed_steps" in {f for f in _common.TrainResult.__dataclass_fields__}


def test_quoted_lock_and_journal_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md and docs/distributed.md quote the messages of a held lock and of a journal still being
    written; docs/distributed.md gives the rendezvous timeout's default (3600 s, one hour)."""
    from patchmmd.scoring import JournalBusyError, OutputLockedError
    from patchmmd.scoring.distributed import default_timeout

    cli = " ".join(_page("docs/cli.md").split())
    dist = " ".join(_page("docs/distributed.md").split())
    busy = str(JournalBusyError(Path("OUT.rank1-of-2.journal")))
    assert busy.startswith("another process is still writing the journal OUT.rank1-of-2.journal (")
    assert busy.endswith("; wait for it or stop it")
    quoted = "`another process is still writing the journal OUT.rank1-of-2.journal (...); wait for it or stop it`"
    assert quoted in cli
    assert "`another process is still writing the journal OUT.rank1-of-2.journal ...`" in dist
    held = str(OutputLockedError(Path("OUT"), {"pid": 7, "host": "h", "argv": ["patchmmd", "score"]}))
    assert re.fullmatch(r"another run \(pid 7 on h.*\) is writing OUT; wait for it or stop it", held), held
    assert "is writing OUT; wait for it or stop it`" in cli
    monkeypatch.delenv("PATCHMMD_DIST_TIMEOUT", raising=False)
    assert default_timeout().total_seconds() == 3600
    assert "`PATCHMMD_DIST_TIMEOUT` (seconds, default 3600;" in dist


def test_the_temporary_file_name_cli_md_gives() -> None:
    """docs/cli.md: a killed write leaves ``.scores.csv.XXXXXXXX.tmp`` next to the output."""
    import patchmmd._files as files

    assert files._temp_prefix("scores.csv") == ".scores.csv."
    assert re.fullmatch(files._TEMP_RANDOM, "abcd_123.tmp")
    assert "(`.scores.csv.XXXXXXXX.tmp`," in _page("docs/cli.md")


LONG = "n" * 300

# each command that writes a folder, with arguments that reach its --out check at once
_FOLDER_COMMANDS = {
    "demo": ["demo", "--out", LONG],
    "theory": ["theory", "--widths", "2,4", "--seeds", "1", "--crop", "8", "--window", "4", "--stride", "4",
               "--out", LONG],
    "eval": ["eval", "mos", "labels.csv", "--out", LONG],
    "gim": ["gim", "--shifts", "4", "astronaut", "--steps", "1", "--no-progress", "--out", LONG],
    "train-ae": ["train-ae", "--steps", "1", "--no-progress", "--out", LONG],
    "train-sr": ["train-sr", "--steps", "1", "--no-progress", "--out", LONG],
}


def test_which_commands_refuse_a_name_too_long_as_docs_cli_md_says(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md, "Output folders": a name too long for the file system is a usage error (exit status 2) naming
    the option, except in the commands the page names as not checking it yet (exit status 1). The commands that
    give exit status 2 are exactly those the page does not except: once they are fixed, the page must say so."""
    from patchmmd.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_text("reference,distorted,dmos\na.png,b.png,1\n")
    text = " ".join(_page("docs/cli.md").split())
    m = re.search(r"the option; but (.*?) do not check the name's length yet: a name too long ends in exit status 1",
                  text)
    excepted = set(re.findall(r"`([\w-]+)`", m.group(1))) if m else set()
    runner = CliRunner()
    for name, args in _FOLDER_COMMANDS.items():
        r = runner.invoke(main, args)
        if name in excepted:
            assert r.exit_code == 1 and "File name too long" in r.output, (name, r.output)
        else:
            assert r.exit_code == 2, (name, r.output)
            assert f"--out {LONG}: the name is too long for the file system" in r.output, (name, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]  # nothing written
