"""The files the package reads back under the trust rule (weight files, evaluation caches, training checkpoints)
are opened without blocking: a FIFO in such a file's place is an error at once, where ``open()`` used to wait for a
writer for ever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import patchmmd

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    code = (f"from patchmmd._trust import read_controlled\ntry:\n read_controlled({str(fifo)!r})\n"
            "except OSError as e:\n print(e)")
    env = {**os.environ, "PYTHONPATH": str(Path(patchmmd.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "is not a regular file" in done.stdout
