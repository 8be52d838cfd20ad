"""Third audit of the task experiments: a damaged training checkpoint is refused instead of resumed into another
run, and a run stopped while its results are evaluated resumes to the uninterrupted run's results."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from patchmmd.cli import main
from patchmmd.tasks import report
from patchmmd.tasks._common import CHECKPOINT_FILE, Checkpoint, CheckpointError
from patchmmd.tasks.data import split_photos
from patchmmd.tasks.losses import make_loss
from patchmmd.tasks.superres import train_superres


def _split() -> Any:
    g = torch.Generator().manual_seed(0)
    return split_photos([torch.rand(3, 32, 48, generator=g) for _ in range(2)], 16)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a nested structure of dicts and lists, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _flip_a_tensor_byte(path: Path, where: str = "payload") -> None:
    """Flip a bit of the largest tensor record of the ``torch.save`` archive at ``path`` (a bit gone bad on the
    disk): in the middle of its bytes (``"payload"``), or in its local header's name length (``"header"``: torch
    then reads the tensor from the wrong place)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local file header
    start = info.header_offset + 30 + name_len + extra_len
    if where == "payload":
        data[start + info.file_size // 2] ^= 0x40
    else:
        data[info.header_offset + 27] ^= 0x10  # the name length's high byte
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_a_checkpoint_with_a_damaged_tensor_is_refused_not_resumed(tmp_path: Path, where: str) -> None:
    # torch.load does not check the archive's CRCs: a flipped bit in a weight was resumed as another number, and
    # the "resumed" run was silently another run
    split, loss = _split(), make_loss("l2")
    ck = Checkpoint(tmp_path / CHECKPOINT_FILE, {"run": 1})
    train_superres(split, loss, steps=2, batch=2, width=4, blocks=1, checkpoint=ck)
    intact = torch.load(ck.path, weights_only=True)
    _flip_a_tensor_byte(ck.path, where)
    damaged = torch.load(ck.path, weights_only=True)  # read without a word, with other numbers
    pairs = list(zip(_tensors(damaged), _tensors(intact), strict=True))
    assert sum(not torch.equal(a, b) for a, b in pairs) == 1
    damage = r"is damaged \(its record archive/data/[0-9]+ fails its CRC-32 or header check\)"
    with pytest.raises(CheckpointError, match=damage):
        train_superres(split, loss, steps=3, batch=2, width=4, blocks=1, checkpoint=ck)


def test_a_checkpoint_saved_without_crcs_still_resumes(tmp_path: Path) -> None:
    # torch.serialization.set_crc32_options(False) writes every record's CRC as 0: not damage
    split, loss = _split(), make_loss("l2")
    ck = Checkpoint(tmp_path / CHECKPOINT_FILE, {"run": 1})
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        train_superres(split, loss, steps=2, batch=2, width=4, blocks=1, checkpoint=ck)
    finally:
        torch.serialization.set_crc32_options(before)
    with zipfile.ZipFile(ck.path) as archive:
        assert {i.CRC for i in archive.infolist()} == {0}
    res = train_superres(split, loss, steps=3, batch=2, width=4, blocks=1, checkpoint=ck)
    full = train_superres(split, loss, steps=3, batch=2, width=4, blocks=1)
    assert res.resumed_steps == 2 and res.history == full.history and _same_weights(res.model, full.model)


ARGS = ["--crop", "16", "--no-progress", "--eval-distances", "", "--steps", "3", "--loss", "l2", "--batch", "2",
        "--width", "4"]


def test_ctrl_c_while_evaluating_then_resume_gives_the_uninterrupted_results(
        tmp_path: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    runner = CliRunner()
    r = runner.invoke(main, ["train-ae", str(photo_dir), *ARGS, "--out", str(whole)])
    assert r.exit_code == 0, r.output
    real = report.Evaluator.__call__

    def interrupted(self: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        if len(x) > 1:  # the held-out tiles, not the one-tile probe made before training
            raise KeyboardInterrupt
        return real(self, x, y)

    with monkeypatch.context() as m:
        m.setattr(report.Evaluator, "__call__", interrupted)
        r = runner.invoke(main, ["train-ae", str(photo_dir), *ARGS, "--out", str(stopped)])
    assert r.exit_code == 130 and "--resume" in r.output
    assert [p.name for p in stopped.iterdir()] == [CHECKPOINT_FILE]  # every step trained, nothing reported yet
    assert torch.load(stopped / CHECKPOINT_FILE, weights_only=True)["step"] == 3

    saved = (stopped / CHECKPOINT_FILE).read_bytes()
    _flip_a_tensor_byte(stopped / CHECKPOINT_FILE)
    r = runner.invoke(main, ["train-ae", str(photo_dir), *ARGS, "--out", str(stopped), "--resume"])
    assert r.exit_code == 2 and "--resume:" in r.output and "is damaged" in r.output, r.output
    assert not (stopped / "metrics.json").exists()

    (stopped / CHECKPOINT_FILE).write_bytes(saved)
    r = runner.invoke(main, ["train-ae", str(photo_dir), *ARGS, "--out", str(stopped), "--resume"])
    assert r.exit_code == 0, r.output
    assert not (stopped / CHECKPOINT_FILE).exists()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, stopped))
    assert a == b
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (whole, stopped))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_checkpoint_whose_record_reads_as_encrypted_is_refused_as_damaged(tmp_path: Path) -> None:
    # a flipped "encrypted" bit of a central directory entry made zipfile raise RuntimeError ("password required"),
    # which escaped as a raw error instead of the CheckpointError
    split, loss = _split(), make_loss("l2")
    ck = Checkpoint(tmp_path / CHECKPOINT_FILE, {"run": 1})
    train_superres(split, loss, steps=2, batch=2, width=4, blocks=1, checkpoint=ck)
    data = bytearray(ck.path.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central directory entry; +8: its general-purpose flags
    data[entry + 8] ^= 0x01
    ck.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        train_superres(split, loss, steps=3, batch=2, width=4, blocks=1, checkpoint=ck)
