"""``$CC`` with arguments (``ccache gcc``, ``gcc -m64``), as ``make`` and setuptools take it: the kernels are built
with that command line. It used to be looked up as one executable name, not found, and passed over in silence for
``cc``."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from patchmmd import _native
from test_native import _load_from

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no cc on this machine")


@needs_cc
def test_cc_with_arguments_is_a_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    cc = shutil.which("cc")
    monkeypatch.setenv("CC", "cc -DPATCHMMD_FROM_CC_ARGS")
    assert _native._compiler() == shlex.join([str(cc), "-DPATCHMMD_FROM_CC_ARGS"])
    monkeypatch.setenv("CC", "'no such compiler' -O2")  # not found: the usual ones are looked for
    assert _native._compiler() == shlex.join([str(cc)])
    monkeypatch.setenv("CC", "cc 'unbalanced")
    assert _native._compiler() == shlex.join([str(cc)])


@needs_cc
def test_the_kernels_are_built_with_the_arguments_of_cc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The arguments reach the compiler (an ``-include`` of a header that does not exist fails every build, and
    the warning says so), and a working command line with arguments builds kernels that pass their self-check."""
    monkeypatch.setenv("CC", f"cc -include {tmp_path / 'missing.h'}")
    with pytest.warns(RuntimeWarning, match=r"the build failed \(.*-include .*missing\.h"):
        assert _load_from(monkeypatch, tmp_path / "bad") is None
    monkeypatch.setenv("CC", "cc -DPATCHMMD_FROM_CC_ARGS=1")
    nk = _load_from(monkeypatch, tmp_path / "good")
    assert nk is not None
    record = json.loads(nk.path.with_name(nk.path.name + ".json").read_text())
    assert record["compiler"].endswith("-DPATCHMMD_FROM_CC_ARGS=1")


@needs_cc
def test_a_cc_that_names_no_executable_is_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's $CC passed over for cc is said in a warning (it was silent)."""
    monkeypatch.setenv("CC", "no-such-compiler-here -O2")
    with pytest.warns(RuntimeWarning, match=r"\$CC \('no-such-compiler-here -O2'\) names no executable found; "
                                            r"using .*cc instead"):
        assert _load_from(monkeypatch, tmp_path / "cache") is not None
