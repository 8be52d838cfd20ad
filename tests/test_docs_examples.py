"""The Python examples of README.md and docs/*.md run as printed.

Every ```` ```python ```` block of the documentation is one test: it runs in a fresh namespace, in a temporary
working folder (so what it writes lands there), after the set-up the page implies (the human sets of
``../shared/data`` reached from that folder; a trained run folder for the loading recipe of docs/tasks.md). A
block that raises fails the test; the test then checks what the block claims in its comments where that can be
checked (the README's distance map averages to the distance). A new block without a set-up here fails
:func:`test_every_python_block_is_run`, so a new example cannot go unrun.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from test_docs_commands import DOC_FILES, ROOT, code_blocks  # the docs' code-block reader

SHARED_DATA = ROOT.parent / "shared" / "data"


def python_blocks() -> dict[str, str]:
    """``{"FILE:LINE": code}`` for every fenced ```` ```python ```` block (LINE: its first line of code)."""
    return {f"{path.relative_to(ROOT)}:{line}": "\n".join(block) + "\n"
            for path in DOC_FILES
            for line, block in code_blocks(path.read_text(encoding="utf-8"), tags={"python"}, indented=False)}


BLOCKS = python_blocks()


def _setup_readme(tmp_path: Path) -> None:
    pass


def _setup_evaluation(tmp_path: Path) -> None:
    if not (SHARED_DATA / "live-dev" / "labels.csv").is_file():
        pytest.skip("../shared/data/live-dev is not beside the repository")
    (tmp_path / "work").mkdir()
    os.chdir(tmp_path / "work")  # the block reads ../shared/data: a link beside the working folder stands for it
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA, target_is_directory=True)


def _setup_tasks(tmp_path: Path) -> None:
    from patchmmd.cli import main

    args = ["train-sr", "--crop", "32", "--scale", "4", "--steps", "2", "--width", "8", "--blocks", "1",
            "--loss", "l2", "--no-progress", "--eval-distances", "", "--out", "runs/train-sr-mmdpp"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


#: What each block's page implies before it runs, by the block's first line of code.
SETUPS = {
    "import torch, patchmmd": _setup_readme,
    "from patchmmd import evaluation": _setup_evaluation,
    "import importlib, json, torch": _setup_tasks,
}


def _setup_for(code: str) -> Any:
    first = next(line for line in code.splitlines() if line.strip() and not line.startswith("#"))
    return SETUPS.get(first.strip())


def test_every_python_block_is_run() -> None:
    assert BLOCKS, "no ```python block found: the reader is broken"
    unrun = [where for where, code in BLOCKS.items() if _setup_for(code) is None]
    assert not unrun, f"python blocks with no set-up in tests/test_docs_examples.py: {unrun}"


@pytest.mark.parametrize("where", list(BLOCKS))
def test_python_block_runs(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    code = BLOCKS[where]
    setup = _setup_for(code)
    assert setup is not None, f"{where}: no set-up (see test_every_python_block_is_run)"
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    exec(compile(code, where, "exec"), namespace)  # the repository's own documentation
    capsys.readouterr()
    if setup is _setup_readme:
        d, m, loss = namespace["d"], namespace["m"], namespace["loss"]
        assert d.shape == (4,) and m.shape == (4, 1, 256, 256)
        torch.testing.assert_close(m.mean((1, 2, 3)), d, rtol=1e-4, atol=1e-6)  # the comment's claim
        loss.backward()
        assert torch.isfinite(namespace["x"].grad).all()
    elif setup is _setup_evaluation:
        assert -1 <= namespace["result"].metrics["mmdpp"]["all"]["srocc"] <= 1
        assert (Path.cwd() / "eval-live" / "report.json").is_file()
    elif setup is _setup_tasks:
        assert not namespace["model"].training
