"""Training runs that resume: ``fit``'s checkpoint and the ``--resume`` of ``train-sr`` / ``train-ae``.

A run stopped by Ctrl-C or a kill keeps its finished steps in ``checkpoint.pt``; resumed, it gives exactly the
weights and the ``metrics.json`` of an uninterrupted run. A checkpoint of other settings, or one someone else
could have written, is refused; a finished run has nothing to resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from patchmmd._trust import UntrustedFileError
from patchmmd.cli import main
from patchmmd.tasks import _common
from patchmmd.tasks._common import CHECKPOINT_FILE, Checkpoint, CheckpointError
from patchmmd.tasks.autoencoder import train_autoencoder
from patchmmd.tasks.data import split_photos
from patchmmd.tasks.losses import make_loss
from patchmmd.tasks.superres import train_superres


def _split() -> Any:
    g = torch.Generator().manual_seed(0)
    return split_photos([torch.rand(3, 48, 64, generator=g, dtype=torch.float64) for _ in range(2)], 24)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _StopAt:
    """A callback that raises ``error`` when step ``step`` has finished (a kill or Ctrl-C there)."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def __call__(self, step: int, value: float) -> None:
        if step == self.step:
            raise self.error


@pytest.mark.parametrize("train", [train_superres, train_autoencoder], ids=["sr", "ae"])
def test_a_resumed_run_is_the_uninterrupted_one(tmp_path: Path, train: Any) -> None:
    split, loss = _split(), make_loss("mmdpp", preset="loss")
    full = train(split, loss, steps=7, batch=2, seed=3)
    ck = Checkpoint(tmp_path / CHECKPOINT_FILE, {"run": 1}, every=0)  # saved after every step
    with pytest.raises(RuntimeError, match="killed"):  # not an interruption: the last periodic save is kept
        train(split, loss, steps=7, batch=2, seed=3, checkpoint=ck, callback=_StopAt(3, RuntimeError("killed")))
    assert torch.load(ck.path, weights_only=True)["step"] == 4
    seen: list[int] = []
    res = train(split, loss, steps=7, batch=2, seed=3, checkpoint=ck, callback=lambda s, v: seen.append(s))
    assert res.resumed_steps == 4 and seen == list(range(7))
    assert res.history == full.history and _same_weights(res.model, full.model)
    again = train(split, loss, steps=7, batch=2, seed=3, checkpoint=ck)  # at its last step: nothing to run
    assert again.resumed_steps == 7 and _same_weights(again.model, full.model)


def test_ctrl_c_saves_the_finished_steps(tmp_path: Path) -> None:
    split, loss = _split(), make_loss("l2")
    ck = Checkpoint(tmp_path / CHECKPOINT_FILE, {"run": 1})  # saves once a minute: not before the interruption
    with pytest.raises(KeyboardInterrupt):
        train_superres(split, loss, steps=6, batch=2, checkpoint=ck, callback=_StopAt(1, KeyboardInterrupt()))
    assert torch.load(ck.path, weights_only=True)["step"] == 2
    res = train_superres(split, loss, steps=6, batch=2, checkpoint=ck)
    assert res.resumed_steps == 2
    assert _same_weights(res.model, train_superres(split, loss, steps=6, batch=2).model)


def test_a_checkpoint_of_other_settings_or_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    split, loss = _split(), make_loss("l2")
    path = tmp_path / CHECKPOINT_FILE
    train_superres(split, loss, steps=2, batch=2, checkpoint=Checkpoint(path, {"lr": 1, "crop": 16}))
    with pytest.raises(CheckpointError, match=r"other settings \(lr differ: lr=1 there\)"):
        train_superres(split, loss, steps=2, batch=2, checkpoint=Checkpoint(path, {"lr": 2, "crop": 16}))
    with pytest.raises(CheckpointError, match="at step 2 of a run of 1 steps"):
        train_superres(split, loss, steps=1, batch=2, checkpoint=Checkpoint(path, {"lr": 1, "crop": 16}))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train_superres(split, loss, steps=2, batch=2, checkpoint=Checkpoint(path, {}))
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a training checkpoint of this version"):
        train_superres(split, loss, steps=2, batch=2, checkpoint=Checkpoint(path, {}))
    train_superres(split, loss, steps=2, batch=2, checkpoint=Checkpoint(tmp_path / "good.pt", {}))
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    for settings in ("{not json", 7, "[1, 2]"):  # settings that are not a JSON object: refused, not a raw error
        torch.save({**state, "settings": settings}, path)
        with pytest.raises(CheckpointError, match="holds no readable settings"):
            train_superres(split, loss, steps=2, batch=2, checkpoint=Checkpoint(path, {}))


@pytest.mark.skipif(os.name != "posix", reason="POSIX owners and modes")
def test_a_checkpoint_others_can_write_is_refused(tmp_path: Path) -> None:
    split, loss = _split(), make_loss("l2")
    ck = Checkpoint(tmp_path / CHECKPOINT_FILE, {})
    train_superres(split, loss, steps=2, batch=2, checkpoint=ck)
    os.chmod(ck.path, 0o666)
    with pytest.raises(UntrustedFileError, match="writable by others"):
        train_superres(split, loss, steps=2, batch=2, checkpoint=ck)


# ------------------------------------------------------------------------------------------------- the commands
ARGS = ["--crop", "16", "--no-progress", "--eval-distances", "", "--steps", "5", "--loss", "l2", "--batch", "2"]


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Ctrl-C in the middle of training step ``calls`` (its gradients computed, the update not made)."""
    real = _common.check_gradients_finite
    count = [0]

    def check(step: int, steps: int, tensors: Any) -> None:
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt
        real(step, steps, tensors)

    monkeypatch.setattr(_common, "check_gradients_finite", check)


@pytest.mark.parametrize("command", ["train-sr", "train-ae"])
def test_ctrl_c_then_resume_writes_the_uninterrupted_runs_results(tmp_path: Path, photo_dir: Path, command: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    runner = CliRunner()
    r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(whole)])
    assert r.exit_code == 0, r.output
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(stopped)])
    assert r.exit_code == 130
    assert f"kept in {stopped / CHECKPOINT_FILE}" in r.output and "--resume" in r.output
    assert torch.load(stopped / CHECKPOINT_FILE, weights_only=True)["step"] == 2
    assert not (stopped / "metrics.json").exists()

    r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(stopped)])  # no --resume: refused
    assert r.exit_code == 2 and "--resume continues it" in r.output
    r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--lr", "0.01", "--out", str(stopped), "--resume"])
    assert r.exit_code == 2 and "other settings (lr differ" in r.output
    r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(stopped), "--resume"])
    assert r.exit_code == 0, r.output
    assert not (stopped / CHECKPOINT_FILE).exists()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, stopped))
    assert a == b
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (whole, stopped))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(stopped), "--resume"])
    assert r.exit_code == 2 and "nothing to resume" in r.output and "its run finished" in r.output


def test_overwrite_starts_over_and_a_changed_photo_is_refused(tmp_path: Path, photo_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    photos, out = tmp_path / "photos", tmp_path / "out"
    shutil.copytree(photo_dir, photos)
    runner = CliRunner()
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        assert runner.invoke(main, ["train-sr", str(photos), *ARGS, "--out", str(out)]).exit_code == 130
    first = photos / "p0.png"
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # the photo replaced
    r = runner.invoke(main, ["train-sr", str(photos), *ARGS, "--out", str(out), "--resume"])
    assert r.exit_code == 2 and "files differ" in r.output
    r = runner.invoke(main, ["train-sr", str(photos), *ARGS, "--out", str(out), "--resume", "--overwrite"])
    assert r.exit_code == 2 and "exclude each other" in r.output
    with monkeypatch.context() as m:  # --overwrite removes the stopped run's checkpoint: training starts over
        _interrupt_after(m, 2)
        assert runner.invoke(main, ["train-sr", str(photos), *ARGS, "--out", str(out), "--overwrite"]).exit_code == 130
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["step"] == 1


def test_the_training_bar_is_drawn_on_a_terminal_only(tmp_path: Path, photo_dir: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """A log or a pipe (stderr not a terminal) gets no carriage-return frames of the progress bar."""
    with_bar = [a for a in ARGS if a != "--no-progress"]
    r = CliRunner().invoke(main, ["train-sr", str(photo_dir), *with_bar, "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    err = capfd.readouterr().err
    assert "\r" not in r.output + err and "train-sr l2" not in r.output + err


def test_an_interruption_at_any_line_of_a_step_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    """Ctrl-C lands between any two lines of the training loop (a trace function raises it before each line of the
    loop's body in turn, in the third step): the checkpoint saved then resumes to the uninterrupted run's weights.
    Saved between the update and its record, the step ran twice, or its batch was drawn twice."""
    import inspect
    import sys

    split, loss = _split(), make_loss("l2")
    full = train_superres(split, loss, steps=5, batch=2)
    source, first = inspect.getsourcelines(_common.fit)
    start = next(i for i, s in enumerate(source) if "for step in range(resumed, steps):" in s)
    stop = next(i for i, s in enumerate(source) if "except KeyboardInterrupt:" in s)
    lines = [first + i for i in range(start + 1, stop) if source[i].strip() and not source[i].strip().startswith("#")]
    assert len(lines) >= 12
    code = _common.fit.__code__
    for n, line in enumerate(lines):
        path = tmp_path / f"c{n}.pt"
        hits = [0]

        def local(frame: Any, event: str, arg: Any, line: int = line, hits: list[int] = hits) -> Any:
            if event == "line" and frame.f_lineno == line:
                hits[0] += 1
                if hits[0] == 3:
                    raise KeyboardInterrupt
            return local

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            return local if frame.f_code is code else None

        sys.settrace(tracer)
        try:
            train_superres(split, loss, steps=5, batch=2, checkpoint=Checkpoint(path, {}))
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        res = train_superres(split, loss, steps=5, batch=2, checkpoint=Checkpoint(path, {}))
        assert res.history == full.history and _same_weights(res.model, full.model), source[line - first]


def test_resume_refuses_a_folder_without_a_checkpoint_and_another_thread_count(tmp_path: Path, photo_dir: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    runner, out = CliRunner(), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = runner.invoke(main, ["train-sr", str(photo_dir), *ARGS, "--out", str(out), "--resume"])
    assert r.exit_code == 2 and "nothing to resume" in r.output and "holds no checkpoint.pt" in r.output
    assert (out / "notes.txt").read_text() == "mine" and not (out / "metrics.json").exists()
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        assert runner.invoke(main, ["train-sr", str(photo_dir), *ARGS, "--out", str(stopped)]).exit_code == 130
    stale = stopped / ".checkpoint.pt.ab12cd34.tmp"  # a save cut short by a kill
    stale.write_bytes(b"\0")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        r = runner.invoke(main, ["train-sr", str(photo_dir), *ARGS, "--out", str(stopped), "--resume"])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 2 and "threads differ" in r.output
    assert not stale.exists()


@pytest.mark.parametrize("command", ["train-sr", "train-ae"])
def test_sigterm_saves_the_finished_steps_and_resume_goes_on(tmp_path: Path, photo_dir: Path, command: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (a scheduler's stop, ``timeout``) in the middle of a step keeps the finished steps, as Ctrl-C does,
    and exits 143; the handler is the caller's again afterwards; --resume gives the uninterrupted run's results."""
    import signal

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    runner = CliRunner()
    assert runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(whole)]).exit_code == 0
    real, count = _common.check_gradients_finite, [0]

    def check(step: int, steps: int, tensors: Any) -> None:
        count[0] += 1
        if count[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, before the update
        real(step, steps, tensors)

    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(_common, "check_gradients_finite", check)
        r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(stopped)])
    assert r.exit_code == 143, r.output
    assert "stopped (SIGTERM)" in r.output and f"kept in {stopped / CHECKPOINT_FILE}" in r.output
    assert torch.load(stopped / CHECKPOINT_FILE, weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before
    r = runner.invoke(main, [command, str(photo_dir), *ARGS, "--out", str(stopped), "--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads((whole / "metrics.json").read_text()) == json.loads((stopped / "metrics.json").read_text())
