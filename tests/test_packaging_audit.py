"""Packaging audit: the extras cover what the code imports, the script checks the whole ``cli`` extra, the sdist
holds what the tests read and the wheel's package data holds every data file of the package."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "patchmmd"


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(project: dict, extra: str | None) -> set[str]:
    """Normalized distribution names of the core dependencies (``extra=None``) or of an extra, its own
    ``patchmmd[...]`` references followed."""
    spec = project["project"]
    reqs = spec["dependencies"] if extra is None else spec["optional-dependencies"][extra]
    names: set[str] = set()
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", req)
        assert m, req
        if _normalize(m.group(1)) == "patchmmd":
            for sub in (m.group(2) or "").split(","):
                names |= _requirements(project, sub.strip())
        else:
            names.add(_normalize(m.group(1)))
    return names


def _third_party_imports(files: list[Path]) -> set[str]:
    """Top-level names of the absolute imports in ``files`` (at any depth: a function's too) that are neither the
    standard library nor this package."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("patchmmd", "__future__")}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    """The installed distributions (normalized names) that provide each module; skips when one is not installed."""
    provided = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in provided)
    if missing:
        pytest.skip(f"not installed here: {missing}")
    return {m: {_normalize(d) for d in provided[m]} for m in modules}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_cli_extra_covers_every_third_party_import():
    # The command line reaches every part of the package (`patchmmd eval` the evaluation, whose statistics need
    # scipy; scipy was only in the `eval` extra, so `patchmmd eval` failed with `[cli]` installed).
    project = _project()
    declared = _requirements(project, None) | _requirements(project, "cli")
    missing = {m: d for m, d in _distributions(_third_party_imports(_sources())).items() if not d & declared}
    assert not missing, f"imported in src/ but not in the dependencies or the cli extra: {missing}"


def test_eval_extra_covers_what_the_evaluation_imports():
    # The evaluation reads its datasets' image files with patchmmd.io (Pillow): `eval` did not declare Pillow.
    project = _project()
    declared = _requirements(project, None) | _requirements(project, "eval")
    files = [*sorted((PACKAGE / "evaluation").glob("*.py")), PACKAGE / "io.py"]
    missing = {m: d for m, d in _distributions(_third_party_imports(files)).items() if not d & declared}
    assert not missing, f"imported by the evaluation but not in the dependencies or the eval extra: {missing}"


def test_every_runtime_dependency_is_imported():
    project = _project()
    imported = set().union(*_distributions(_third_party_imports(_sources())).values())
    for extra in (None, *sorted(set(project["project"]["optional-dependencies"]) - {"all", "test"})):
        unused = _requirements(project, extra) - imported
        assert not unused, f"{extra or 'dependencies'}: declared but imported nowhere in src/: {sorted(unused)}"


def test_cli_modules_are_the_cli_extra():
    from patchmmd.__main__ import CLI_MODULES

    project = _project()
    modules = _distributions(set(CLI_MODULES))
    assert set().union(*modules.values()) == _requirements(project, "cli"), modules


@pytest.mark.parametrize("blocked", ["PIL", "scipy"])
def test_script_with_click_but_not_the_rest_of_the_extra_says_how_to_install_it(blocked, monkeypatch, capsys):
    # Before, only a missing click was caught: without Pillow `patchmmd demo` ended in
    # "patchmmd: error: No module named 'PIL' (ModuleNotFoundError)", and without scipy `patchmmd eval` only after
    # scoring the whole dataset. A blocked name (None in sys.modules) is one that cannot be imported.
    from patchmmd.__main__ import MISSING_CLI, run

    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.setattr(sys, "argv", ["patchmmd", "metrics"])  # a command that needs neither
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # run() sets it when it starts the CLI
    with pytest.raises(SystemExit) as exit_info:
        run()
    out = capsys.readouterr()
    assert exit_info.value.code == 1
    assert out.out == ""
    assert out.err.strip().splitlines() == [MISSING_CLI]


def test_package_data_holds_every_data_file():
    # Every file of the package that is not Python source (the sample photos and their LICENSES.md, the C source
    # of the compiled kernels, py.typed) matches a [tool.setuptools.package-data] pattern, so the wheel has it.
    patterns = _project()["tool"]["setuptools"]["package-data"]["patchmmd"]
    files = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc")]
    assert {"data/LICENSES.md", "_native/kernels.c", "py.typed", "data/astronaut.png"} <= set(files)
    unshipped = [f for f in files if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns)]
    assert not unshipped, unshipped
    from patchmmd.data import sample_names

    assert all(fnmatch.fnmatchcase(f"data/{n}.png", "data/*.png") for n in sample_names())


def test_sdist_holds_what_the_tests_read(tmp_path):
    # The sdist held tests/test_*.py but not conftest.py and the other helpers, nor the docs, scripts, benchmarks,
    # examples and .ci/run the tests read: its tests failed to collect. egg_info lists the sdist's files
    # (SOURCES.txt) without building one.
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"pyproject.toml needs setuptools >= 77, found {setuptools.__version__}")
    r = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "egg_info",
                        "--egg-base", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sources = set((tmp_path / "patchmmd.egg-info" / "SOURCES.txt").read_text(encoding="utf-8").splitlines())
    wanted = {".ci/run", "README.md", "pyproject.toml", "LICENSE"}
    for folder in ("tests", "docs", "scripts", "benchmarks", "examples"):
        wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                   if p.is_file() and p.suffix in (".py", ".md", ".png") and "__pycache__" not in p.parts
                   and "results" not in p.relative_to(ROOT).parts}
    assert {"tests/conftest.py", "tests/cli_runner.py", "docs/cli.md"} <= wanted
    assert not wanted - sources, sorted(wanted - sources)
    assert not [s for s in sources if s.endswith(".pyc") or "/results/" in s], sources
