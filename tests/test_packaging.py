"""Packaging conventions: a light ``import patchmmd``, one version source, the script without the ``cli`` extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import patchmmd

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

#: Dependencies of the extras: ``import patchmmd`` must not load them.
OPTIONAL = ("click", "PIL", "tqdm", "scipy", "matplotlib", "pytorch_msssim")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_needs_only_torch_and_numpy():
    # torch itself imports tqdm where it is installed: block the optional modules only after `import torch`.
    # A blocked name (None in sys.modules) makes any import of it fail, so this fails if patchmmd imports one.
    code = f"""
import sys
import torch
for name in {OPTIONAL!r}:
    sys.modules[name] = None
import patchmmd, patchmmd.core, patchmmd.theory, patchmmd.data
x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
print(float(patchmmd.mmdpp(x, x.flip(-1))) > 0, patchmmd.__version__)  # a flipped image differs
print(sorted(n for n in {OPTIONAL!r} if sys.modules.get(n) is not None))
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [f"True {patchmmd.__version__}", "[]"]


def test_one_version_source():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "patchmmd._version.__version__"}
    from patchmmd._version import __version__

    assert patchmmd.__version__ == __version__


def test_version_option():
    r = _python("import sys; sys.argv = ['patchmmd', '--version']; from patchmmd.__main__ import run; run()")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"patchmmd, version {patchmmd.__version__}" and len(lines) == 3, r.stdout
    assert lines[1] == f"torch {torch.__version__}"
    assert lines[2].startswith(("compiled kernels: in use (", "compiled kernels: off: ")), r.stdout


def test_script_without_click_says_how_to_install_it():
    r = _python("import sys; sys.modules['click'] = None; sys.argv = ['patchmmd', '--help']\n"
                "from patchmmd.__main__ import run; run()")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == ['patchmmd: the command line needs the "cli" extra: '
                                             'pip install "patchmmd[cli]"']
