"""A killed ``patchmmd eval`` run can leave half-written temporary cache files (``.NAME.json.XXXXXXXX.tmp``,
the atomic writes' temporaries, in ``--out/cache``); the next run holding the folder's lock removes them, and
only them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchmmd.scoring import remove_stale_temporaries_in
from test_eval_unreadable import mos_cli
from test_evalrun_audit import mos_set


def test_a_resumed_eval_removes_a_killed_runs_temporaries_and_nothing_else(tmp_path: Path) -> None:
    labels = mos_set(tmp_path / "mos", n=6)
    out = tmp_path / "out"
    assert mos_cli(labels, out).exit_code == 0
    cache = out / "cache"
    stale = [cache / ".l2.json.ab12cd_3.tmp", cache / ".psnr.json.zz99_xyz.tmp"]
    for p in stale:
        p.write_text('{"settings": ')  # a write cut short
    kept = [cache / "notes.txt", cache / ".hidden", cache / ".l2.json.short.tmp"]  # not a temporary's name
    for p in kept:
        p.write_text("mine")
    r = mos_cli(labels, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "l2: reusing" in r.output
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in kept)


def test_remove_stale_temporaries_in_walks_down_but_not_through_links(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    victim = outside / ".x.json.abcdefgh.tmp"
    victim.write_text("not ours to remove")
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / ".y.json.abcdefgh.tmp").symlink_to(victim)  # a link with a temporary's name: left
    deep = tmp_path / "sub" / ".z.npy.a1b2c3d4.tmp"
    deep.write_bytes(b"\0")
    removed = remove_stale_temporaries_in(tmp_path)
    assert removed == [deep]
    assert victim.exists() and os.path.islink(tmp_path / ".y.json.abcdefgh.tmp")
    assert remove_stale_temporaries_in(tmp_path / "missing") == []


def test_without_the_lock_no_temporary_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that cannot be locked (no flock): another run may be writing its temporaries, so none is removed."""
    from patchmmd.scoring import OutputLock

    labels = mos_set(tmp_path / "mos", n=6)
    out = tmp_path / "out"
    assert mos_cli(labels, out).exit_code == 0
    live = out / "cache" / ".l2.json.ab12cd_3.tmp"
    live.write_text("being written")

    def no_lock(path: object) -> object:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(OutputLock, "acquire", staticmethod(no_lock))
    r = mos_cli(labels, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "cannot lock" in r.output and live.exists()


def test_a_metric_cached_under_another_version_is_refused_naming_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-metric cache did not record the versions of patchmmd and PyTorch: after an upgrade, ``--resume``
    silently reused values the new code may compute differently."""
    import patchmmd

    labels = mos_set(tmp_path / "mos", n=6)
    out = tmp_path / "out"
    assert mos_cli(labels, out).exit_code == 0
    monkeypatch.setattr(patchmmd, "__version__", "999.0")
    r = mos_cli(labels, out, "--resume")
    assert r.exit_code != 0 and "versions.patchmmd" in r.output and "999.0" in r.output, r.output
