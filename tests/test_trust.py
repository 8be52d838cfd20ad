"""Files read back (the evaluation's caches, a scoring job's journal, weight files) are read only if no one but
the user (or root) could have written them: whoever can write them decides the numbers the package reports."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from patchmmd._trust import UntrustedFileError, read_controlled

pytestmark = pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners and modes only")


def _owned_by_someone_else(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` look owned by another user: given away when running as root, else the effective uid faked."""
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
    else:
        uid = path.stat().st_uid
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)


def test_the_rule_owner_and_who_can_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    folder.chmod(0o755)
    path = folder / "x.json"
    path.write_bytes(b"{}")
    path.chmod(0o644)
    assert read_controlled(path) == b"{}"
    path.chmod(0o666)
    with pytest.raises(UntrustedFileError, match=r"the file is writable by others \(mode 666\)") as caught:
        read_controlled(path)
    assert "`chmod go-w` it" in caught.value.fix and caught.value.path == path
    path.chmod(0o664)  # group-writable: fine only if the group is the user's own
    if path.stat().st_gid == os.getegid():
        assert read_controlled(path) == b"{}"
    if os.geteuid() == 0:
        os.chown(path, -1, 65534)
        with pytest.raises(UntrustedFileError, match=r"the file is writable by its group \(mode 664\)"):
            read_controlled(path)
        os.chown(path, -1, os.getegid())
    path.chmod(0o644)
    folder.chmod(0o777)  # anyone could replace the file
    with pytest.raises(UntrustedFileError, match=r"its folder .* is writable by others \(mode 777\)"):
        read_controlled(path)
    folder.chmod(0o777 | stat.S_ISVTX)  # sticky, like /tmp: no one replaces a file they do not own
    assert read_controlled(path) == b"{}"
    folder.chmod(0o755)
    link = tmp_path / "link.json"  # a link is followed: the file it leads to is checked
    link.symlink_to(path)
    path.chmod(0o646)
    with pytest.raises(UntrustedFileError, match="the file is writable by others"):
        read_controlled(link)
    path.chmod(0o644)
    _owned_by_someone_else(path, monkeypatch)
    with pytest.raises(UntrustedFileError, match=r"the file is owned by uid \d+, not by you"):
        read_controlled(path)


def test_a_cache_file_of_the_evaluation_others_can_write_is_refused(tmp_path: Path) -> None:
    """Before, ``run(..., cache=...)`` read back any ``<metric>.json`` in the folder: a file anyone could write
    decided the correlations reported."""
    from patchmmd.evaluation import EvaluationError, MOSDataset, run
    from test_evaluation import tiny_mos

    labels = tiny_mos(tmp_path / "data")
    cache = tmp_path / "cache"
    first = run(MOSDataset(labels), ["l2"], cache=cache, bootstrap=0)
    entry = cache / "l2.json"
    entry.chmod(0o666)
    with pytest.raises(EvaluationError, match=r"the cache file .*l2\.json is refused: the file is writable by "
                                              r"others \(mode 666\); whoever can write it decides"):
        run(MOSDataset(labels), ["l2"], cache=cache, bootstrap=0)
    entry.chmod(0o644)
    cache.chmod(0o777)
    with pytest.raises(EvaluationError, match=r"its folder .* is writable by others"):
        run(MOSDataset(labels), ["l2"], cache=cache, bootstrap=0)
    cache.chmod(0o755)
    again = run(MOSDataset(labels), ["l2"], cache=cache, bootstrap=0)
    assert again.metrics["l2"]["all"]["srocc"] == first.metrics["l2"]["all"]["srocc"]


def test_a_suite_cache_entry_others_can_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both parts of an entry: its ``.json`` (settings and figures) and its ``.npy`` (the outputs shown)."""
    from patchmmd.evaluation import EvaluationError
    from patchmmd.evaluation.suite_cache import SuiteCache

    cache = SuiteCache(tmp_path / "cache")
    cache.put("sr", {"size": 48}, {"dists": 0.25}, torch.zeros(1, 3, 4, 4))
    cache.folder.chmod(0o755)
    result, outputs = cache.get("sr", {"size": 48}) or (None, None)
    assert result == {"dists": 0.25} and outputs is not None and outputs.shape == (1, 3, 4, 4)
    entry, npy = cache.folder / "sr.json", cache.folder / "sr.npy"
    for path in (entry, npy):
        path.chmod(0o646)
        with pytest.raises(EvaluationError, match=rf"the suite cache file .*{path.name} is refused: the file is "
                                                  r"writable by others \(mode 646\)"):
            cache.get("sr", {"size": 48})
        path.chmod(0o644)
    _owned_by_someone_else(npy, monkeypatch)
    with pytest.raises(EvaluationError, match=r"sr\.npy is refused: the file is owned by uid \d+"):
        cache.get("sr", {"size": 48})


def test_resuming_from_a_journal_others_can_write_is_refused(tmp_path: Path) -> None:
    """A resumed job keeps the journal's rows as scores: one anyone could write is not read, by the library or
    the command (which says how to start over)."""
    from patchmmd import scoring
    from test_scoring import _images

    ref, dist = tmp_path / "ref", tmp_path / "dist"
    _images(ref, ["a.png", "b.png", "c.png"])
    _images(dist, ["a.png", "b.png", "c.png"], seed=1)
    out = tmp_path / "out" / "s.csv"
    out.parent.mkdir(mode=0o755)
    tasks = scoring.paired_tasks(ref, dist).tasks
    job = scoring.job_header("l2", {}, tasks, mode="RGB", resize=False, kind="paired",
                             ref_dir=str(ref.resolve()), dist_dir=str(dist.resolve()))
    journal = scoring.journal_path(out)
    with scoring.Journal.open(journal, job) as j:
        scoring.run_tasks(tasks[:2], "l2", j)
    journal.chmod(0o666)
    with pytest.raises(scoring.UntrustedJournalError, match=r"s\.csv\.journal: the file is writable by others"):
        scoring.read_journal(journal, job)
    with pytest.raises(scoring.UntrustedJournalError):
        scoring.Journal.open(journal, job, resume=True)
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 1 and "cannot resume: the journal" in r.output and "pass --overwrite" in r.output
    assert not out.exists()
    journal.chmod(0o644)
    out.parent.chmod(0o777)
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 1 and "its folder" in r.output and "is writable by others" in r.output
    out.parent.chmod(0o755)
    r = invoke("score", ref, dist, "--out", out, "-m", "l2", "--resume")
    assert r.exit_code == 0 and "2 from the journal" in r.output, r.output
